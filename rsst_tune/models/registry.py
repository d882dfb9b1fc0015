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
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import nn

from rsst_tune.errors import ConfigError
from rsst_tune.registry import Registry

__all__ = [
    "MODELS",
    "TIMM_PREFIX",
    "ModelEntry",
    "ModelFactory",
    "canonical_name",
    "check_model_name",
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


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and the input shape it is built for by default."""

    factory: ModelFactory
    num_classes: int = 10
    in_chans: int = 3
    img_size: int = 32


MODELS: Registry[ModelEntry] = Registry(
    "model", origin=lambda e: e.factory, extra_choices=(f"{TIMM_PREFIX}<any timm model>",)
)


def register_model(
    name: str,
    *aliases: str,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int = 32,
    override: bool = False,
) -> Callable[[F], F]:
    """Decorator that registers a model factory under ``name`` and any ``aliases``.

    ``num_classes``, ``in_chans`` and ``img_size`` are the shape ``create_model(name)`` builds
    when the caller gives none (CIFAR's by default). A taken name is a ``ConfigError`` unless
    ``override=True``; re-registering the same definition (a reloaded module) is quiet.
    """
    for key in (name, *aliases):
        if not key or key.startswith(TIMM_PREFIX):
            raise ConfigError(f"invalid model name {key!r}: empty or starts with {TIMM_PREFIX!r}")
    _check_shape(num_classes, in_chans, img_size)

    def decorator(fn: F) -> F:
        entry = ModelEntry(fn, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        MODELS.add(name, entry, *aliases, override=override)
        return fn

    return decorator


def unregister_model(name: str) -> None:
    """Remove a model and its aliases from the registry (for plugins and tests)."""
    MODELS.unregister(name)


def list_models() -> list[str]:
    """The registered model names (aliases excluded), sorted."""
    return MODELS.names()


def is_registered(name: str) -> bool:
    """True when ``name`` is a registered name or alias, or a ``timm:`` name timm knows."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        import timm

        return bool(timm.is_model(name[len(TIMM_PREFIX) :]))
    return name in MODELS


def canonical_name(name: str) -> str:
    """The registered name behind ``name`` (resolving aliases); ``timm:`` names unchanged."""
    if name.startswith(TIMM_PREFIX):
        return name
    return MODELS.canonical(name)


def check_model_name(name: str) -> None:
    """Raise the one-line ``ConfigError`` for a name no registry entry or timm model has."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        _check_timm_name(name[len(TIMM_PREFIX) :])
    elif name not in MODELS:
        raise MODELS.unknown(name)


def _check_shape(num_classes: int | None, in_chans: int | None, img_size: int | None) -> None:
    for key, value in (
        ("num_classes", num_classes),
        ("in_chans", in_chans),
        ("img_size", img_size),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build a registered model (or ``timm:NAME``) for the given dataset shape.

    Shape arguments left out take the model's defaults (the registration's, or timm's).
    """
    _check_shape(num_classes, in_chans, img_size)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(
            name[len(TIMM_PREFIX) :],
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            pretrained=pretrained,
        )
    entry = MODELS.get(name)
    return entry.factory(
        num_classes=entry.num_classes if num_classes is None else num_classes,
        in_chans=entry.in_chans if in_chans is None else in_chans,
        img_size=entry.img_size if img_size is None else img_size,
        pretrained=pretrained,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _check_timm_name(timm_name: str) -> None:
    import timm

    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5)
        hint = f"; did you mean: {', '.join(TIMM_PREFIX + c for c in close)}" if close else ""
        raise ConfigError(f"unknown timm model {timm_name!r}{hint} (see timm.list_models())")


def _create_timm(
    timm_name: str,
    *,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | None,
    pretrained: bool,
) -> nn.Module:
    """Build ``timm_name`` through ``timm.create_model``; pass ``img_size`` where accepted."""
    import timm

    _check_timm_name(timm_name)
    shape: dict[str, Any] = {
        k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None
    }
    try:
        try:
            sized = shape if img_size is None else {**shape, "img_size": img_size}
            model = timm.create_model(timm_name, pretrained=pretrained, **sized)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            logger.debug("timm model %s takes no img_size; building without it", timm_name)
            model = timm.create_model(timm_name, pretrained=pretrained, **shape)
    except Exception as err:
        if not pretrained or isinstance(err, TypeError):
            raise
        raise ConfigError(
            f"could not load pretrained weights for timm model {timm_name!r} "
            f"({_first_line(err)}); is the machine offline? pass pretrained_file=PATH with "
            f"the weights fetched elsewhere (docs/data.md), or pretrained=False"
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
