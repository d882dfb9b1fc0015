"""Inference latency of two models measured side by side (docs/methods.md §7).

`compare_latency(dense, pruned, sample_shape, device, batch_sizes)` times both models on the
same random input, alternating runs (dense, pruned, dense, ...) so that drift in the machine's
load hits both alike, and reports the median time per forward of each, the spread of the
timed runs (their interquartile range) and the fastest run of each. Every run is under
`torch.inference_mode()` in eval mode, after a warm-up; on CUDA the device is synchronised
before and after each timed run (and nowhere else). A run repeats the forward enough times to
last at least `min_run_s`, so batch-1 timings are not dominated by timer noise.

On the CPU every timing first calls `hold_freed_memory()`: glibc's malloc otherwise gives a
large tensor fresh pages from the kernel on every forward (and hands freed ones back), so the
same model's time depends on what the process allocated before: resnet20 at batch 64 timed
95-135 ms in a fresh process and after deep copies of it, and 64-70 ms once the copies were
freed (2026-12-08, `4e5b9f3`, 1 thread). Held, it timed 63-69 ms in all three. This is the
steady state of a serving process that reuses its memory (or runs on jemalloc or tcmalloc).

`compare_forwards` is the same measurement for any two callables that take a batch tensor,
e.g. onnxruntime sessions (`rsst_tune.onnx_export.onnx_latency`). `Latency`, the record of one
measurement, is plain data in `rsst_tune.export_record` (importable from here as before).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune.export_record import Latency as Latency

log = logging.getLogger(__name__)

__all__ = [
    "Forward",
    "Latency",
    "compare_forwards",
    "compare_latency",
    "hold_freed_memory",
    "iqr",
    "sync_device",
    "time_forward",
]

Forward = Callable[[Tensor], object]  # a model, or anything else that runs a batch


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (Q3 − Q1, inclusive quartiles); 0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> Any | None:
    """The C library when it is glibc (it has `mallopt` and `gnu_get_libc_version`)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl does not)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def hold_freed_memory() -> bool:
    """Keep the memory this process frees for its next allocations (glibc only; True when it
    took effect, False elsewhere, where nothing changes).

    Raises glibc malloc's mmap threshold (1 GiB, or its ceiling of 32 MiB on an older glibc)
    and its trim threshold (1 GiB): a tensor freed after a forward then serves the next
    forward's tensor, instead of each forward faulting in fresh zeroed pages from the kernel,
    which made timings depend on the process's allocation history by up to 2x (module
    docstring). The setting is the process's for its lifetime: it keeps the resident memory
    near its peak, and changes no result, only how fast the CPU allocates."""
    libc = _glibc()
    if libc is None:
        return False
    mmap = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return bool(mmap and trim)


def sync_device(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA, MPS); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_forward(model: Forward, x: Tensor, inner: int) -> float:
    """Seconds per forward of `model(x)`, averaged over `inner` forwards (one timed run)."""
    device = x.device
    sync_device(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        model(x)
    sync_device(device)
    return (time.perf_counter() - t0) / inner


def compare_latency(
    dense: nn.Module,
    pruned: nn.Module,
    sample_shape: Sequence[int],
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    repeats: int = 11,
    warmup: int = 3,
    min_run_s: float = 0.02,
) -> list[Latency]:
    """Latency of `dense` and `pruned` on `device` at each batch size (models are not moved),
    in eval mode under `torch.inference_mode()`.

    `sample_shape` is one input's shape without the batch dimension, e.g. (3, 32, 32).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    modes = (dense.training, pruned.training)
    dense.eval()
    pruned.eval()
    try:
        with torch.inference_mode():
            return compare_forwards(
                dense,
                pruned,
                sample_shape,
                device,
                batch_sizes,
                repeats=repeats,
                warmup=warmup,
                min_run_s=min_run_s,
            )
    finally:
        dense.train(modes[0])
        pruned.train(modes[1])


def compare_forwards(
    dense: Forward,
    pruned: Forward,
    sample_shape: Sequence[int],
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    repeats: int = 11,
    warmup: int = 3,
    min_run_s: float = 0.02,
) -> list[Latency]:
    """`compare_latency`'s measurement for two callables taking a batch on `device` (no mode
    is set: the caller chooses eval mode, inference mode, or another runtime altogether)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if device.type == "cpu":
        hold_freed_memory()
    gen = torch.Generator().manual_seed(0)
    out: list[Latency] = []
    for batch in batch_sizes:
        x = torch.randn(batch, *sample_shape, generator=gen).to(device)
        for _ in range(warmup):
            time_forward(dense, x, 1)
            time_forward(pruned, x, 1)
        single = time_forward(dense, x, 1)
        inner = max(1, math.ceil(min_run_s / max(single, 1e-9)))
        d_times: list[float] = []
        p_times: list[float] = []
        for _ in range(repeats):
            d_times.append(time_forward(dense, x, inner))
            p_times.append(time_forward(pruned, x, inner))
        lat = Latency(
            device=str(device),
            batch=batch,
            dense_ms=1e3 * statistics.median(d_times),
            pruned_ms=1e3 * statistics.median(p_times),
            dense_iqr_ms=1e3 * iqr(d_times),
            pruned_iqr_ms=1e3 * iqr(p_times),
            repeats=repeats,
            inner=inner,
            dense_min_ms=1e3 * min(d_times),
            pruned_min_ms=1e3 * min(p_times),
            threads=torch.get_num_threads(),
        )
        log.debug("latency %s", lat)
        out.append(lat)
    return out
