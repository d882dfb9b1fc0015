"""`--gpus-per-trial auto`: the share of one GPU each trial asks Ray for, from one probe.

    share = suggest_share(peak_bytes=..., total_bytes=..., busy=...)   # 1, 1/2, 1/3 ... 1/8
    probe = probe_share(base_config)    # on a CUDA device: a short run of the sweep's trial

The probe builds the sweep's base trial (its model, data, image size, batch and numerics,
`amp`/`compile` auto's own probe included) on the GPU and trains `PROBE_STEPS` steps of it:
the peak memory those steps allocate, and the share of their wall time the GPU spent in
kernels (torch.profiler's device time of the last `TIMED_STEPS` steps; CUDA events around a
step would count a launch-bound step's waits as busy). `suggest_share` then packs as many
trials on one GPU as both allow:

    k = min(floor(total / (peak x MEMORY_HEADROOM + CONTEXT_BYTES)), floor(1 / busy)),
    clamped to [1, MAX_PACK]; share = 1 / k

So a small ViT whose steps keep the GPU busy 23 % of the time (docs/data.md) asks for 1/4, a
large model that fills it asks for 1. The sweep runs the probe once, before its first trial,
as a Ray task holding one GPU of the cluster (in its own process, which exits after it); a
cluster without GPUs gives 0 (CPU trials). The probe's amp/compile auto choice goes to the
sweep's numerics cache, so the trials do not probe again. A probe that fails or finds no free
GPU within `PROBE_TIMEOUT_S` leaves 1 GPU per trial, saying why. The choice and its numbers
are printed and kept in sweep.json (`SweepPlan.gpu_share`), so `--resume` asks for the same
share.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_PACK = 8  # at most 8 trials per GPU: beyond it the per-process overheads dominate
MEMORY_HEADROOM = 1.3  # peak x this: the allocator's fragmentation, evaluation batches
CONTEXT_BYTES = 600 * 2**20  # each trial process's own CUDA context and kernels
PROBE_STEPS = 30
PROBE_TIMEOUT_S = 900.0
PROBE_BATCHES = 4
TIMED_STEPS = 15


@dataclass(frozen=True)
class ShareProbe:
    """What one probe measured on one GPU."""

    device: str  # e.g. "NVIDIA H100 80GB HBM3"
    total_bytes: int
    peak_bytes: int  # torch.cuda.max_memory_allocated over the probe's steps
    busy: float  # share of the timed steps' wall time with a kernel running, in [0, 1]
    images_per_s: float
    seconds: float  # the whole probe, set-up included

    @property
    def share(self) -> float:
        return suggest_share(peak_bytes=self.peak_bytes, total_bytes=self.total_bytes,
                             busy=self.busy)  # fmt: skip

    def describe(self) -> str:
        gib = 2**30
        return (
            f"{self.share:.3g} GPU per trial (probe on {self.device}: peak memory "
            f"{self.peak_bytes / gib:.1f} of {self.total_bytes / gib:.0f} GiB, GPU busy "
            f"{self.busy:.0%} of the steps, {self.images_per_s:,.0f} img/s; {self.seconds:.0f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share": self.share}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShareProbe:
        return cls(
            device=str(data["device"]),
            total_bytes=int(data["total_bytes"]),
            peak_bytes=int(data["peak_bytes"]),
            busy=float(data["busy"]),
            images_per_s=float(data["images_per_s"]),
            seconds=float(data["seconds"]),
        )


def suggest_share(*, peak_bytes: int, total_bytes: int, busy: float) -> float:
    """The GPU share to ask for per trial: 1/k for the largest k in [1, MAX_PACK] whose k
    trials fit in memory (each its peak x MEMORY_HEADROOM plus a CUDA context) and keep the
    GPU at most fully busy (k x busy <= 1)."""
    if total_bytes <= 0 or peak_bytes < 0 or not 0.0 <= busy <= 1.0 or math.isnan(busy):
        raise ValueError(
            f"need total_bytes > 0, peak_bytes >= 0 and busy in [0, 1], got {total_bytes}, "
            f"{peak_bytes}, {busy}"
        )
    per_trial = peak_bytes * MEMORY_HEADROOM + CONTEXT_BYTES
    by_memory = int(total_bytes // per_trial)
    by_busy = MAX_PACK if busy <= 1.0 / MAX_PACK else int(1.0 / busy)
    k = max(1, min(by_memory, by_busy, MAX_PACK))
    return 1.0 / k


def probe_share(config: Mapping[str, Any], numerics_dir: str | None = None) -> ShareProbe:
    """Run the sweep's base trial config (a `TrialConfig` dict) for a few training steps on
    this process's first CUDA device and measure what `suggest_share` needs; amp/compile auto
    keeps its choice in `numerics_dir` (the sweep's dense cache) when given. CUDA only."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("--gpus-per-trial auto: the probe needs a CUDA device")
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    from rsst_tune.config import TrialConfig
    from rsst_tune.data import make_generator
    from rsst_tune.numerics import NumericsCache
    from rsst_tune.pruning.masks import MaskEnforcer, full_masks
    from rsst_tune.train import build_optimizer, train_step
    from rsst_tune.trial_setup import build_setup

    t0 = time.perf_counter()
    cfg = TrialConfig.from_dict({**config, "device": "cuda"})
    device = torch.device("cuda", torch.cuda.current_device())
    cache = NumericsCache(numerics_dir) if numerics_dir else None
    setup = build_setup(cfg, numerics_cache=cache)  # amp/compile auto's own probe, if any
    torch.cuda.reset_peak_memory_stats(device)  # the training steps' peak, not that probe's
    batches = []  # a few of the trial's batches, cycled
    for batch in setup.train_data.train_batches(
        cfg.batch_size, make_generator(cfg.seed, setup.device), augment=False
    ):
        batches.append(batch)
        if len(batches) >= PROBE_BATCHES:
            break
    model = setup.model.train()
    opt = build_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    enforcer = MaskEnforcer(model, full_masks(model, list(setup.structure.maskable_names)))

    def steps(first: int, n: int) -> int:
        images = 0
        for i in range(first, first + n):
            x, y = batches[i % len(batches)]
            train_step(setup.forward, x, y, opt=opt, loss_fn=loss_fn, enforcer=enforcer,
                       pull=None, lam_value=0.0, amp=setup.amp)  # fmt: skip
            images += int(x.shape[0])
        return images

    steps(0, PROBE_STEPS - TIMED_STEPS)  # warm-up: kernels chosen, graphs captured
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        images = steps(PROBE_STEPS - TIMED_STEPS, TIMED_STEPS)
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    kernel_s = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    probe = ShareProbe(
        device=torch.cuda.get_device_name(device),
        total_bytes=int(torch.cuda.get_device_properties(device).total_memory),
        peak_bytes=int(torch.cuda.max_memory_allocated(device)),
        busy=min(1.0, kernel_s / wall) if wall > 0 else 1.0,
        images_per_s=images / wall if wall > 0 else 0.0,
        seconds=time.perf_counter() - t0,
    )
    log.info("--gpus-per-trial auto: %s", probe.describe())
    return probe


def resolve_share(plan: Any, *, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[Any, str | None]:
    """The plan with `--gpus-per-trial auto` sized (`plan.gpu_share` records how), and the
    line to print; a plan that did not ask for auto is returned as it is. Ray must be up:
    the probe runs as a task holding one of the cluster's GPUs (in its own process, which
    exits after it: the driver never holds GPU memory)."""
    import dataclasses

    if not plan.gpu_share.get("auto") or "share" in plan.gpu_share:
        return plan, None
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus <= 0:
        why = "the cluster has no GPU: trials run on CPU"
        share = {"auto": True, "share": 0.0, "reason": why}
        return dataclasses.replace(plan, gpus_per_trial=0.0, gpu_share=share), (
            f"--gpus-per-trial auto: 0 ({why})"
        )
    task = ray.remote(num_gpus=1, num_cpus=plan.cpus_per_trial, max_calls=1)(_probe_task)
    ref = task.remote(dict(plan.base_config), tuple(plan.worker_imports), plan.dense_cache_dir)
    try:
        measured: dict[str, Any] = ray.get(ref, timeout=timeout_s)
    except Exception as exc:  # no free GPU in time, or the probe failed (out of memory ...)
        ray.cancel(ref, force=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        why = f"the probe did not finish ({type(exc).__name__}: {first}): 1 GPU per trial"
        log.warning("--gpus-per-trial auto: %s", why)
        share = {"auto": True, "share": 1.0, "reason": why}
        return dataclasses.replace(plan, gpus_per_trial=1.0, gpu_share=share), (
            f"--gpus-per-trial auto: 1 ({why})"
        )
    probe = ShareProbe.from_dict(measured)
    share = {"auto": True, **probe.to_dict()}
    return dataclasses.replace(plan, gpus_per_trial=probe.share, gpu_share=share), (
        f"--gpus-per-trial auto: {probe.describe()}"
    )


def _probe_task(
    config: dict[str, Any], imports: tuple[str, ...], numerics_dir: str | None
) -> dict[str, Any]:
    """`probe_share` in a Ray task: the sweep's registrations first (its models, datasets)."""
    from rsst_tune.plugins import load_imports

    load_imports(imports)
    return probe_share(config, numerics_dir).to_dict()
