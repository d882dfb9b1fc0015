"""The exported-model file format: one `model.pt` that loads without trusting pickle.

    save_exported(result, "export/model.pt", model_name="vit_digits", num_classes=10, ...)
    model = load_exported("export/model.pt")      # an nn.Module in eval mode, on CPU

The file holds only tensors and plain data (format tag and version, the architecture as data,
the heads left per attention block, the state dict on CPU, and free-form `meta`), so it loads
with `torch.load(weights_only=True)`. `load_exported` rebuilds the dense architecture with
`create_model`, shrinks it to the saved shapes and loads the state dict strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.errors import ConfigError
from rsst_tune.export_record import load_call
from rsst_tune.pruning.slicing import ExportResult, resize_to

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "load_call", "load_exported", "save_exported"]

EXPORT_FORMAT = "rsst-tune-export"
EXPORT_VERSION = 1


def save_exported(
    result: ExportResult,
    path: str | Path,
    *,
    model_name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the pruned model atomically: its architecture as data and its state dict (CPU).

    `model_name` must rebuild the dense architecture through `create_model`. Load it with
    `load_exported(path)`.
    """
    blob = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": model_name,
        "model_kwargs": {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size},
        "num_heads": dict(result.num_heads),
        "state_dict": {
            k: v.detach().to("cpu", copy=True) for k, v in result.model.state_dict().items()
        },
        "meta": dict(meta or {}),
    }
    return fileio.torch_save(blob, Path(path))


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by `save_exported` / `rsst-tune export`, in eval mode.

    Safe on untrusted files: it reads with `torch.load(weights_only=True)`. A missing, corrupt
    or other file, or another format version, is a one-line `ConfigError`.
    """
    from rsst_tune.models import create_model

    blob = ckpt.load_file(path)
    if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{path} is not an rsst-tune export (write one with `rsst-tune export`)")
    if blob.get("version") != EXPORT_VERSION:
        raise ConfigError(
            f"{path} has export format version {blob.get('version')!r}; this rsst-tune reads "
            f"version {EXPORT_VERSION} (export the checkpoint again)"
        )
    try:
        name, kwargs = str(blob["model"]), dict(blob["model_kwargs"])
        state: dict[str, Tensor] = dict(blob["state_dict"])
        num_heads = {str(k): int(v) for k, v in blob["num_heads"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is an incomplete rsst-tune export ({exc!r})") from None
    model = create_model(name, **kwargs)
    resize_to(model, state, num_heads)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path} does not fit model {name!r}: {first}") from None
    return model.to(map_location).eval()
