"""What the machine a process runs on offers: its CPU cores, its memory, and the data-loading
workers that follow from them. No torch, no project imports: the config, the datasets and
the streamed loaders all ask here, without importing each other."""

from __future__ import annotations

import os

__all__ = ["available_cores", "default_workers", "host_memory"]

MAX_DEFAULT_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers when the config leaves it to us: one per core but one, at most 8
    (0, decoding in the trial's process, on a single core)."""
    return max(0, min(MAX_DEFAULT_WORKERS, available_cores() - 1))


def host_memory() -> int:
    """Bytes of physical memory of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0
