"""Pretrained weights from a local file (``pretrained_file``), for nodes without the hub.

``load_pretrained_file(model, path, name=...)`` reads a timm or torchvision state dict (a
``.pt`` / ``.pth`` file read with ``torch.load(weights_only=True)``, or a ``.safetensors``
file) into ``model``:

* a training checkpoint that wraps the weights (``{"state_dict": ...}``, ``{"model": ...}``)
  and DDP's ``module.`` prefixes are unwrapped;
* for ``timm:`` models, the model family's own checkpoint filter runs first (as timm's
  ``pretrained=True`` does): a ViT's position embedding is resampled to the model's image
  size and its patch embedding to its patch size;
* the classifier is kept only when its shape fits (another number of classes starts it
  afresh, as timm does), and a first convolution made for another number of input channels
  is adapted (timm's ``adapt_input_conv``);
* every other weight must match by name and shape: missing, unexpected and mismatched keys
  are a one-line ``ConfigError`` that names a few of each. So are a missing file and a file
  that holds no state dict.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune.errors import ConfigError
from rsst_tune.models.registry import TIMM_PREFIX

__all__ = ["load_pretrained_file", "read_state_dict"]

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net")
SHOWN = 3  # keys named per kind of mismatch


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a state-dict file, unwrapped; a one-line ``ConfigError`` otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"pretrained_file {str(path)!r} not found (or not a file)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(file), device="cpu")
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, SafetensorError, EOFError, OSError, ...
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(err).strip().splitlines() or [""])[0])
        if "Weights only load failed" in first:
            first = "it holds objects other than tensors (save model.state_dict() instead)"
        else:
            first = f"{type(err).__name__}: {first[:200]}"
        kind = "safetensors" if file.suffix == ".safetensors" else "torch (weights_only=True)"
        raise ConfigError(
            f"pretrained_file {str(path)!r} is not a {kind} state dict: {first}"
        ) from err
    return _unwrap(data, path)


def _unwrap(data: Any, path: str | Path) -> dict[str, Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(data, Mapping) or all(isinstance(v, Tensor) for v in data.values()):
            break
        inner = next((data[k] for k in WRAPPER_KEYS if isinstance(data.get(k), Mapping)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"pretrained_file {str(path)!r} holds no state dict (a mapping of parameter names "
            f"to tensors), got {type(data).__name__}"
        )
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ConfigError(
            f"pretrained_file {str(path)!r} is not a state dict: entries that are not "
            f"tensors, e.g. {', '.join(map(str, bad[:SHOWN]))}"
        )
    state = dict(data)
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _timm_filter(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint filter of the timm module that defines ``model`` (pos_embed resampling,
    patch-embedding resizing, format conversions), where it has one."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if not callable(filter_fn):
        return state
    try:
        out = filter_fn(dict(state), model)
    except Exception as err:  # the filter is best effort; the key check follows
        log.debug("timm checkpoint filter of %s failed (%s); loading as is", module, err)
        return state
    return dict(out) if isinstance(out, Mapping) else state


def _classifier_names(model: nn.Module) -> list[str]:
    """Parameter names of the classifier: timm's ``pretrained_cfg['classifier']``, else the
    last ``nn.Linear`` of the model."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(heads, str):
        heads = (heads,)
    if not heads:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        heads = linears[-1:]
    return [f"{h}.{p}" for h in heads for p in ("weight", "bias")]


def _first_conv(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(first, str):
        return f"{first}.weight"
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return f"{convs[0]}.weight" if convs else None


def _fit(model: nn.Module, state: dict[str, Tensor], target: Mapping[str, Tensor]) -> list[str]:
    """Drop a classifier of another shape and adapt a first conv of other input channels, in
    place; the names of the weights left at their initial values."""
    fresh = []
    for key in _classifier_names(model):
        if key in state and key in target and state[key].shape != target[key].shape:
            del state[key]
            fresh.append(key)
    conv = _first_conv(model)
    if conv and conv in state and conv in target:
        have, want = state[conv], target[conv]
        other_chans = have.dim() == 4 and have.shape[1] != want.shape[1]
        if other_chans and (have.shape[0], *have.shape[2:]) == (want.shape[0], *want.shape[2:]):
            from timm.models import adapt_input_conv

            state[conv] = adapt_input_conv(int(want.shape[1]), have)
            log.info("pretrained %s adapted to %d input channels", conv, want.shape[1])
    return fresh


def load_pretrained_file(model: nn.Module, path: str | Path, *, name: str) -> None:
    """Load the weights of ``path`` into ``model`` (built as ``name``); see the module doc."""
    state = read_state_dict(path)
    if name.startswith(TIMM_PREFIX):
        state = _timm_filter(model, state)
    target = model.state_dict()
    fresh = _fit(model, state, target)
    missing = [k for k in target if k not in state and k not in fresh]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    problems = [
        f"{what} {len(keys)} (e.g. {', '.join(keys[:SHOWN])})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    if problems:
        raise ConfigError(
            f"pretrained_file {str(path)!r} does not fit {name}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)  # only `fresh` (a new classifier) is left out
    log.info(
        "weights of %s loaded from %s%s",
        name,
        path,
        f" (new classifier: {', '.join(fresh)})" if fresh else "",
    )
