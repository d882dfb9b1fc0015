"""Checks made in the driver before Ray starts, so that a sweep fails in one line or not at all.

- `check_data(plan)`: where every trial reads its data, and that it is there. The plan holds the
  data folder as an absolute path (a relative one, the default `data` included, is the folder
  the sweep was launched from); the dataset is opened here once, its images left on disk where
  the loader allows, so a missing or unreadable dataset is one `ConfigError` (exit 2) before
  any trial starts.
- `idle_gpu_warning(plan)`: CUDA devices are visible but `--gpus-per-trial` is 0, so every
  trial would train on the CPU.
"""

from __future__ import annotations

import logging

from rsst_tune.errors import ConfigError
from rsst_tune.tune.plan import SweepPlan

log = logging.getLogger(__name__)


def check_data(plan: SweepPlan, *, address: str | None = None) -> str:
    """One line saying where the sweep's trials read their data, after opening the dataset.

    Raises ConfigError when the dataset is missing or unreadable. With `address` (a cluster
    the driver may not be part of) a dataset this machine cannot see is a line that starts
    with "warning:" instead: the trials' nodes must see it at the same path."""
    # here, not at the top: the sweep's CLI stays free of torch until it runs something
    from rsst_tune.data import load_dataset
    from rsst_tune.dense_cache import BUILTIN_DATASETS

    base = plan.base_config
    name = str(base["dataset"])
    if name in BUILTIN_DATASETS:
        return f"data        {name} (built in: no data folder is read)"
    folder = str(base["data_dir"])
    data_log = logging.getLogger("rsst_tune.data")  # its split sizes: in the line returned
    level = data_log.level
    data_log.setLevel(max(level, logging.WARNING))
    try:
        bundle = load_dataset(
            name,
            data_dir=folder,
            val_size=base.get("val_size"),
            download=bool(base.get("download", False)),
            img_size=base.get("img_size"),
            lazy=True,
        )
    except ConfigError as exc:
        if address is None:
            raise
        return (
            f"warning: data {name} from {folder} is not readable from this driver ({exc}); "
            "every node that runs trials must see it at this path"
        )
    finally:
        data_log.setLevel(level)
    sizes = f"{len(bundle.train):,} train / {len(bundle.val):,} val / {len(bundle.test):,} test"
    return f"data        {name} from {folder} ({sizes} images; every trial reads this folder)"


def idle_gpu_warning(plan: SweepPlan) -> str | None:
    """A warning when this machine has CUDA devices and the sweep gives trials none."""
    if plan.gpus_per_trial > 0 or str(plan.base_config.get("device", "auto")) == "cpu":
        return None
    if plan.gpu_share.get("auto"):  # sized when the sweep starts
        return None
    gpus = _cuda_devices()
    if not gpus:
        return None
    return (
        f"warning: {gpus} CUDA device(s) visible but --gpus-per-trial is 0, so every trial "
        "trains on the CPU; pass --gpus-per-trial 1 (or 0.25 to share each GPU among 4 "
        "trials, or auto to have a probe size the share)"
    )


def _cuda_devices() -> int:
    import torch

    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except (RuntimeError, AssertionError) as exc:  # a broken driver: say nothing here
        log.debug("CUDA probe failed: %s", exc)
        return 0


# A state checkpoint holds the next state's weights and the ticket's (with optimizer-free masks
# and unit scores: about 2.5 copies of the weights; measured 1.41 MB for 0.56 MB of vit_digits
# weights, 2026-12-07 at 89bb7ef), plus the teacher with distillation; each checkpoint
# directory also holds its own copy of θ0.
STATE_COPIES = 2.5


def disk_estimate(plan: SweepPlan) -> str:
    """One `--dry-run` line: the disk the sweep's state checkpoints take under each
    `--keep-checkpoints` policy (fp32 weights of the dense model, counted without memory)."""
    import torch

    from rsst_tune.models import create_model

    cfg = plan.base_config
    try:
        with torch.device("meta"):  # shapes only: a ViT-B costs no memory and no time here
            model = create_model(str(cfg["model"]), img_size=cfg.get("img_size"))
        weights = 4 * sum(p.numel() for p in model.parameters())
    except Exception as exc:  # a model that cannot be built on "meta": say so, not fail
        return f"disk        not estimated ({type(exc).__name__}: {exc})"
    copies = STATE_COPIES + (1.0 if float(cfg.get("distill_alpha") or 0) > 0 else 0.0) + 1.0
    one = weights * copies
    trials, states = plan.num_samples, plan.states
    every = one * trials * states
    return (
        f"disk        about {_size(one)} per state checkpoint ({weights / 4e6:.2f} M params); "
        f"--keep-checkpoints all: {_size(every)}; last: {_size(one * trials)}; best: "
        f"{_size(one * trials)} plus one per state on the sweep's front (at most "
        f"{_size(every)}); this sweep keeps {plan.keep_checkpoints}"
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
