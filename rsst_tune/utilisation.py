"""How well a state's training used the device: images/s, GPU busy fraction and MFU.

Three numbers per state (`StateResult.images_per_s`, `gpu_busy`, `mfu`), all over the
state's training only (not evaluation, scoring or checkpoints):

* **images/s**: images trained / training seconds (host wall time from each epoch's first
  batch to its loss read, which waits for the device). Every device.
* **GPU busy** (CUDA only): the share of those seconds the GPU stream spent inside a training
  step. `BusyRecorder` records a CUDA event before and after every step into a list (no
  host synchronisation per step) and reads the spans once, after the epoch's loss read.
  Time between steps (the host preparing a batch, the LR schedule, Python) counts as idle;
  time the GPU waits *inside* a step for the host to launch its next kernel counts as busy,
  so a launch-bound step reads as busy: low MFU with high busy means exactly that (CUDA
  graphs, `compile_mode reduce-overhead`, are the cure).
* **MFU** (model FLOPs utilisation, CUDA on a known GPU): analytic training FLOPs /
  seconds / the GPU's peak for the dtype in use (`PEAKS`). Training FLOPs per image are 3x
  the forward's (forward, and backward's two products) x 2 FLOPs per MAC, from the dense
  model's analytic MACs (`pruning.cost.CostModel`): masked training runs the dense shapes,
  whatever the ticket's MACs. A distillation teacher adds one forward. None where the GPU
  or its dtype is not in the table.

Importing this module loads no torch (the report and the sweep's console format with it).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# 2 FLOPs per multiply-accumulate; a training step is forward + backward (2x the forward)
FLOPS_PER_MAC = 2
TRAIN_PASSES = 3


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no sparsity) peak FLOP/s of one GPU model, from its vendor's datasheet."""

    name: str
    pattern: str  # a regular expression matched (case-insensitively) against the device name
    bf16: float | None  # bf16/fp16 tensor cores, fp32 accumulation
    tf32: float | None  # fp32 matmuls on tensor cores (torch's allow_tf32)
    fp32: float  # plain fp32 (CUDA cores)


_T = 1e12
# First match wins: the more specific names come first (H100 NVL before H100; L40S before
# L4, whose pattern does not match L40). Datasheet values, dense.
PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 NVL", r"H100\s*NVL", 835 * _T, 418 * _T, 60 * _T),
    GpuPeak("H100 PCIe", r"H100\s*PCIe", 756 * _T, 378 * _T, 51 * _T),
    GpuPeak("H100 SXM", r"H100", 989 * _T, 495 * _T, 67 * _T),
    GpuPeak("H200 NVL", r"H200\s*NVL", 835 * _T, 418 * _T, 60 * _T),
    GpuPeak("H200", r"H200", 989 * _T, 495 * _T, 67 * _T),
    GpuPeak("A100", r"A100", 312 * _T, 156 * _T, 19.5 * _T),
    GpuPeak("L40S", r"L40S", 362 * _T, 183 * _T, 91.6 * _T),
    GpuPeak("L4", r"\bL4\b", 121 * _T, 60 * _T, 30.3 * _T),
    GpuPeak("V100 PCIe", r"V100[-\s]*PCIE", 112 * _T, None, 14 * _T),  # fp16 only, no bf16
    GpuPeak("V100 SXM2", r"V100", 125 * _T, None, 15.7 * _T),
    GpuPeak("RTX 4090", r"RTX\s*4090", 165 * _T, 82.6 * _T, 82.6 * _T),
)


def match_gpu(device_name: str) -> GpuPeak | None:
    """The table's entry for a `torch.cuda.get_device_name()`, or None when unknown."""
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def peak_flops(device_name: str, dtype: torch.dtype | None, tf32: bool = False) -> float | None:
    """Peak FLOP/s of the GPU for the training dtype: bf16/fp16 autocast, else fp32 (TF32
    tensor cores when `tf32`); None for an unknown GPU or a dtype it has no peak for (bf16 on
    a V100, which runs it emulated)."""
    import torch

    peak = match_gpu(device_name)
    if peak is None:
        return None
    if dtype == torch.float16 and peak.bf16 is not None:
        return peak.bf16
    if dtype == torch.bfloat16:
        return None if peak.name.startswith("V100") else peak.bf16
    if dtype is None or dtype == torch.float32:
        return peak.tf32 if tf32 and peak.tf32 is not None else peak.fp32
    return None


def train_flops_per_image(forward_macs: int, *, teacher_macs: int = 0) -> float:
    """Analytic training FLOPs of one image: 3 x forward MACs x 2, plus a teacher's forward
    (distillation: 1 x its MACs x 2)."""
    return float(FLOPS_PER_MAC * (TRAIN_PASSES * forward_macs + teacher_macs))


def mfu(flops_per_image: float, images: int, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: `flops_per_image` x `images` / `seconds` / `peak` (None when
    the peak is unknown or nothing was timed)."""
    if peak is None or peak <= 0 or seconds <= 0 or images <= 0:
        return None
    return flops_per_image * images / seconds / peak


def tf32_enabled() -> bool:
    """Whether fp32 work may run on TF32 tensor cores now: matmuls (torch's default: no) or
    cuDNN convolutions (torch's default: yes). Either one puts MFU in fp32 against the TF32
    peak, so MFU is never inflated by a slower peak than the kernels used; for a model whose
    matmuls run plain fp32 beside TF32 convolutions it is a lower bound."""
    import torch

    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


@dataclass(frozen=True)
class Utilisation:
    """What one state's training measured (`StateResult.images_per_s`, `gpu_busy`)."""

    images: int
    seconds: float
    gpu_busy: float | None  # CUDA only

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 and self.images > 0 else None


class BusyRecorder:
    """Training time, images and (CUDA) the GPU's time inside the steps, for one state.

        rec = BusyRecorder(device)
        for each epoch:
            rec.epoch_start()
            for each batch: rec.step_start(); <the step>; rec.step_end(batch_size)
            <the epoch's loss read: one host synchronisation>
            rec.epoch_end()
        rec.result()

    A step costs two `Event.record()` calls on CUDA (no synchronisation); the spans are read
    in `epoch_end`, after the loss read has waited for the device anyway."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.cuda = device.type == "cuda"
        # the trial's device's current stream (cuda:1 too, whatever the current device is)
        self._stream = functools.partial(torch.cuda.current_stream, device)
        self._event: Callable[..., torch.cuda.Event] = torch.cuda.Event
        self.images = 0
        self.seconds = 0.0
        self.busy_ms = 0.0
        self._t0: float | None = None
        self._pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: torch.cuda.Event | None = None

    def epoch_start(self) -> None:
        self._t0 = time.perf_counter()

    def step_start(self) -> None:
        if self.cuda:
            self._start = self._event(enable_timing=True)
            self._start.record(self._stream())

    def step_end(self, images: int) -> None:
        self.images += images
        if self.cuda and self._start is not None:
            end = self._event(enable_timing=True)
            end.record(self._stream())
            self._pairs.append((self._start, end))
            self._start = None

    def epoch_end(self) -> None:
        """After the epoch's host synchronisation: add its wall time and its steps' spans."""
        if self._pairs:
            self._pairs[-1][1].synchronize()  # the stream is done already; this is cheap
            self.busy_ms += sum(start.elapsed_time(end) for start, end in self._pairs)
            self._pairs = []
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def result(self) -> Utilisation:
        busy = None
        if self.cuda and self.seconds > 0:
            busy = min(self.busy_ms / 1000.0 / self.seconds, 1.0)
        return Utilisation(self.images, self.seconds, busy)


def fmt_utilisation(
    images_per_s: float | None, gpu_busy: float | None, mfu_value: float | None
) -> str:
    """`1,234 img/s, GPU busy 87%, MFU 12.3%` (the parts that are known; empty if none)."""
    parts: list[str] = []
    if images_per_s is not None:
        parts.append(f"{images_per_s:,.0f} img/s")
    if gpu_busy is not None:
        parts.append(f"GPU busy {100 * gpu_busy:.0f}%")
    if mfu_value is not None:
        parts.append(f"MFU {100 * mfu_value:.1f}%")
    return ", ".join(parts)


def median(values: Sequence[float]) -> float | None:
    """The median of the values (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
