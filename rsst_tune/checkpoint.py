"""Atomic checkpoint files, read back with `torch.load(weights_only=True)` (ALGORITHMS.md §5)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rsst_tune.errors import ConfigError


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> Any:
    """Load a checkpoint safely; a missing or corrupt file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {path} is corrupt or not an rsst-tune checkpoint: {first}"
        ) from None
