"""Atomic file writes: a crash (or a reader) never sees half a file.

One helper for every file the project writes that someone reads back: checkpoints, results,
reports, export records. Write to a temporary file beside the target, flush and fsync, then
rename over it (atomic on POSIX file systems, NFS included).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# The process's umask, read once: files get the mode a plain `open()` would give them
# (mkstemp alone would leave them 0600, unreadable to a colleague sharing the storage).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` atomically (read back with `torch.load(weights_only=True)`)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))
