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
    gpus = _cuda_devices()
    if not gpus:
        return None
    return (
        f"warning: {gpus} CUDA device(s) visible but --gpus-per-trial is 0, so every trial "
        "trains on the CPU; pass --gpus-per-trial 1 (or 0.25 to share each GPU among 4 trials)"
    )


def _cuda_devices() -> int:
    import torch

    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except (RuntimeError, AssertionError) as exc:  # a broken driver: say nothing here
        log.debug("CUDA probe failed: %s", exc)
        return 0
