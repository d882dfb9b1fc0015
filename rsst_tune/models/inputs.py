"""The input a model takes: its image size (default and valid sizes) and its normalisation.

* ``default_img_size(name)``: the size a model is built for when the config gives none:
  a ``timm:`` model's pretrained input size (timm's data config, e.g. 224 for
  ``deit_tiny_patch16_224``); None for the registered models, which take the dataset's size
  (32 for CIFAR, 8 for digits).
* ``input_stats(name, model, in_chans)``: the mean and std a ``timm:`` model was trained with
  (timm's data config), when they have one entry per input channel; else None (the
  dataset's own statistics).
* ``check_img_size(model, name, img_size, in_chans, build)``: a one-line ``ConfigError``
  naming the valid sizes when the model cannot take ``img_size`` (not a multiple of its patch
  size; so small that a kernel is larger than its input or the feature map shrinks below one
  pixel), raised before any training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rsst_tune.errors import ConfigError
from rsst_tune.limits import MAX_IMG_SIZE  # the largest side a config takes; ends the search
from rsst_tune.models.registry import TIMM_PREFIX

__all__ = ["MAX_IMG_SIZE", "check_img_size", "default_img_size", "input_stats", "patch_size"]


def _timm_data_config(timm_name: str, model: nn.Module | None = None) -> dict[str, Any] | None:
    """timm's data config (input_size, mean, std, ...) of a model, or None if it has none."""
    from timm.data import config as timm_config
    from timm.models import get_pretrained_cfg

    resolve: Any = timm_config.resolve_data_config  # untyped in timm
    if model is not None and getattr(model, "pretrained_cfg", None):
        config: dict[str, Any] = resolve(model=model)
        return config
    pretrained: Any = get_pretrained_cfg(timm_name)
    if pretrained is None:
        return None
    config = resolve(pretrained_cfg=pretrained.to_dict())
    return config


def default_img_size(name: str) -> int | None:
    """The image size ``name`` is built for when none is asked: a ``timm:`` model's pretrained
    input size (its data config's ``input_size``); None (the dataset's size) otherwise."""
    if not name.startswith(TIMM_PREFIX):
        return None
    config = _timm_data_config(name[len(TIMM_PREFIX) :])
    if not config or not config.get("input_size"):
        return None
    return int(config["input_size"][-2])  # height; timm's ViT/DeiT/CNN configs are square


def input_stats(
    name: str, model: nn.Module, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) of a ``timm:`` model's data config when it has ``in_chans`` entries
    each (RGB data on an RGB model); None: normalise with the dataset's statistics."""
    if not name.startswith(TIMM_PREFIX):
        return None
    config = _timm_data_config(name[len(TIMM_PREFIX) :], model)
    if not config:
        return None
    mean = tuple(float(v) for v in config.get("mean", ()))
    std = tuple(float(v) for v in config.get("std", ()))
    if len(mean) != in_chans or len(std) != in_chans or min(std, default=0.0) <= 0:
        return None
    return mean, std


def patch_size(model: nn.Module) -> int | None:
    """The (square) patch size of a patch-embedding model (timm ViT/DeiT), else None."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        return None
    if isinstance(size, tuple | list):
        return int(max(size))
    return int(size)


@torch.no_grad()
def _runs_at(model: nn.Module, in_chans: int, img_size: int) -> BaseException | None:
    """None when ``model`` maps one zero image of ``img_size`` to logits, else the error."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        return err
    finally:
        model.train(was_training)
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def check_img_size(
    model: nn.Module,
    name: str,
    img_size: int,
    in_chans: int,
    build: Callable[[int], nn.Module],
) -> None:
    """Raise a one-line ``ConfigError`` naming the valid sizes when ``model`` (built by
    ``build(img_size)``) cannot take ``img_size`` x ``img_size`` images.

    Patch models need a multiple of the patch size. Every model must then run one image of
    that size; when it cannot, the smallest size it can run is searched (building the model
    at each size tried, on the error path only) and named.
    """
    patch = patch_size(model)
    default = default_img_size(name)
    hint = f"; {name}'s default is {default}" if default else ""
    if patch is not None and img_size % patch:
        below, above = (img_size // patch) * patch, (img_size // patch + 1) * patch
        near = f"{below} or {above}" if below else f"{above}"
        raise ConfigError(
            f"img_size {img_size} does not fit {name}: valid sizes are multiples of its patch "
            f"size {patch} (e.g. {near}){hint}"
        )
    err = _runs_at(model, in_chans, img_size)
    if err is None:
        return
    step = patch or 1
    smallest = _smallest_size(build, in_chans, start=img_size, step=step)
    valid = (
        f"valid sizes are {smallest} and larger" + (f" (multiples of {patch})" if patch else "")
        if smallest
        else f"no size up to {MAX_IMG_SIZE} runs"
    )
    raise ConfigError(
        f"img_size {img_size} is too small for {name} ({type(err).__name__}: "
        f"{_first_line(err)}): {valid}{hint}"
    )


def _smallest_size(
    build: Callable[[int], nn.Module], in_chans: int, *, start: int, step: int
) -> int | None:
    """The smallest multiple of ``step`` above ``start`` that the model runs at (doubling,
    then bisection); None when none up to ``MAX_IMG_SIZE`` does."""

    def runs(size: int) -> bool:
        try:
            candidate = build(size)
        except (ConfigError, RuntimeError, ValueError, AssertionError):
            return False
        return _runs_at(candidate, in_chans, size) is None

    low = start // step  # fails (in units of step)
    high = max(low * 2, 1)
    while high * step <= MAX_IMG_SIZE and not runs(high * step):
        low, high = high, high * 2
    if high * step > MAX_IMG_SIZE:
        return None
    while high - low > 1:
        mid = (low + high) // 2
        if runs(mid * step):
            high = mid
        else:
            low = mid
    return high * step
