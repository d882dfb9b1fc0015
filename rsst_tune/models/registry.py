"""The model registry: ``@register_model`` names a factory, ``create_model`` builds it.

It follows timm's ``register_model`` / ``create_model`` convention. Every factory takes the
dataset's shape as keyword arguments::

    @register_model("my_net", "mynet")
    def my_net(*, num_classes: int, in_chans: int, img_size: int,
               pretrained: bool = False) -> nn.Module: ...

A name of the form ``timm:NAME`` builds any timm model through ``timm.create_model`` (this
is the only route to pretrained weights). Models never normalise their input: the data
pipeline (``rsst_tune.data.DeviceData``) does.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from torch import nn

from rsst_tune.errors import ConfigError, unknown_choice

__all__ = [
    "TIMM_PREFIX",
    "ModelFactory",
    "canonical_name",
    "create_model",
    "is_registered",
    "list_models",
    "register_model",
    "reject_pretrained",
    "unregister_model",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"


class ModelFactory(Protocol):
    """A model constructor: the dataset's shape in, an ``nn.Module`` out."""

    def __call__(
        self, *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
    ) -> nn.Module:
        """Build the model."""
        ...


F = TypeVar("F", bound=ModelFactory)

# name -> factory, and alias -> canonical name. These two dicts are the registry itself.
_FACTORIES: dict[str, ModelFactory] = {}
_ALIASES: dict[str, str] = {}


def _same_origin(a: Callable[..., object], b: Callable[..., object]) -> bool:
    """True when two callables are the same definition (e.g. a module that was reloaded)."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def register_model(name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator that registers a model factory under ``name`` and any ``aliases``.

    Registering a name that is already taken by a different factory raises ``ConfigError``;
    re-registering the same definition (a reloaded module) replaces it quietly.
    """
    for key in (name, *aliases):
        if not key or key.startswith(TIMM_PREFIX):
            raise ConfigError(f"invalid model name {key!r}: empty or starts with {TIMM_PREFIX!r}")

    def decorator(fn: F) -> F:
        for key in (name, *aliases):
            owner = _ALIASES.get(key, key)
            existing = _FACTORIES.get(owner)
            if existing is not None and not _same_origin(existing, fn):
                raise ConfigError(f"model name {key!r} is already registered")
        _FACTORIES[name] = fn
        _ALIASES[name] = name
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return decorator


def unregister_model(name: str) -> None:
    """Remove a model and its aliases from the registry (for plugins and tests)."""
    canonical = canonical_name(name)
    del _FACTORIES[canonical]
    for key in [k for k, v in _ALIASES.items() if v == canonical]:
        del _ALIASES[key]


def list_models() -> list[str]:
    """The registered model names (aliases excluded), sorted."""
    return sorted(_FACTORIES)


def is_registered(name: str) -> bool:
    """True when ``name`` is a registered name or alias, or a ``timm:`` name timm knows."""
    if name.startswith(TIMM_PREFIX):
        import timm

        return bool(timm.is_model(name[len(TIMM_PREFIX) :]))
    return name in _ALIASES


def canonical_name(name: str) -> str:
    """The registered name behind ``name`` (resolving aliases); ``timm:`` names unchanged."""
    if name.startswith(TIMM_PREFIX):
        return name
    try:
        return _ALIASES[name]
    except KeyError:
        raise unknown_choice(
            "model", name, [*list_models(), f"{TIMM_PREFIX}<any timm model>"]
        ) from None


def _check_shape(num_classes: int, in_chans: int, img_size: int) -> None:
    for key, value in (
        ("num_classes", num_classes),
        ("in_chans", in_chans),
        ("img_size", img_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def create_model(
    name: str, *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Build a registered model (or ``timm:NAME``) for the given dataset shape."""
    _check_shape(num_classes, in_chans, img_size)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(
            name[len(TIMM_PREFIX) :],
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            pretrained=pretrained,
        )
    factory = _FACTORIES[canonical_name(name)]
    return factory(
        num_classes=num_classes, in_chans=in_chans, img_size=img_size, pretrained=pretrained
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _create_timm(
    timm_name: str, *, num_classes: int, in_chans: int, img_size: int, pretrained: bool
) -> nn.Module:
    """Build ``timm_name`` through ``timm.create_model``; pass ``img_size`` where accepted."""
    import timm

    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5)
        hint = f"; did you mean: {', '.join(TIMM_PREFIX + c for c in close)}" if close else ""
        raise ConfigError(f"unknown timm model {timm_name!r}{hint} (see timm.list_models())")
    try:
        try:
            model = timm.create_model(
                timm_name,
                pretrained=pretrained,
                num_classes=num_classes,
                in_chans=in_chans,
                img_size=img_size,
            )
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            logger.debug("timm model %s takes no img_size; building without it", timm_name)
            model = timm.create_model(
                timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
            )
    except Exception as err:
        if not pretrained or isinstance(err, TypeError):
            raise
        raise ConfigError(
            f"could not load pretrained weights for timm model {timm_name!r} "
            f"({_first_line(err)}); is the machine offline? pass pretrained=False"
        ) from err
    assert isinstance(model, nn.Module)
    return model


def reject_pretrained(name: str, pretrained: bool) -> None:
    """Raise ``ConfigError`` when pretrained weights are asked of a model that has none."""
    if pretrained:
        raise ConfigError(
            f"model {name!r} has no pretrained weights; use a timm model for that, "
            f"e.g. {TIMM_PREFIX}deit_tiny_patch16_224"
        )
