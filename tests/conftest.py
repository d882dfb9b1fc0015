"""Shared fixtures for the prune-engine tests: real digits data, real tiny models, CPU only."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle, load_dataset
from rsst_tune.models import create_model
from rsst_tune.results import TIMING_FIELDS, StateResult

# One thread per test process: the CI machines have 2 shared cores, and one thread per
# process is several times faster than two threads fighting for them.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def resume_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The key `--resume` signs Ray's pickles with (rsst_tune.tune.safety.trust): a session temp
    file, so the tests never create or read the user's ~/.config/rsst-tune/resume.key;
    subprocesses inherit it."""
    path = tmp_path_factory.mktemp("trust") / "resume.key"
    saved = os.environ.get("RSST_TUNE_RESUME_KEY")
    os.environ["RSST_TUNE_RESUME_KEY"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("RSST_TUNE_RESUME_KEY", None)
    else:
        os.environ["RSST_TUNE_RESUME_KEY"] = saved


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray for every test of a module; yields the GCS address subprocesses can
    join."""
    import logging

    from rsst_tune.tune.run.ray_setup import prepare_ray_env, restore_ray_env

    saved = prepare_ray_env(None)
    import ray

    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    finally:
        restore_ray_env(saved)  # later tests' subprocesses (a `ray start` worker node) need it
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# Keys that legitimately differ between two otherwise identical runs.
TIMING_KEYS = set(TIMING_FIELDS)


def strip_timing(results: Sequence[Any]) -> list[dict[str, Any]]:
    """Results (StateResults or their dicts) without the keys that vary between runs."""
    rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in results]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1,077 / 360 / 360), offline."""
    return load_dataset("digits", data_dir="data")


@pytest.fixture(scope="session")
def digits_small(digits: DataBundle) -> DataBundle:
    """A fixed subset of digits (256 / 96 / 96) for fast loop tests."""
    return DataBundle(
        digits.spec,
        digits.train.subset(torch.arange(256)),
        digits.val.subset(torch.arange(96)),
        digits.test.subset(torch.arange(96)),
    )


# Real tiny prune runs on digits_small (1 epoch per state, under a second each on a CPU).
TINY_RUN: dict[str, Any] = dict(
    model="vit_digits",
    dataset="digits",
    epochs=1,
    device="cpu",
    amp=False,
    augment=False,
    warmup_epochs=0.0,
    score_batches=1,
    eval_batch_size=512,
)
TINY_RUNS: tuple[dict[str, Any], ...] = (
    # the first: Refill, 1 of 4 heads and half the MLP removed per prune, states 0 and 1
    dict(method="refill", pruning_times=2, head_ratio=0.25, mlp_ratio=0.5),
    dict(method="rsst", pruning_times=3, head_ratio=0.25, mlp_ratio=0.25, lr=1e-2),
    dict(method="refill", pruning_times=3, head_ratio=0.5, mlp_ratio=0.25, lr=1e-3),
)


@pytest.fixture(scope="session")
def tiny_runs(
    tmp_path_factory: pytest.TempPathFactory, digits_small: DataBundle
) -> list[tuple[TrialConfig, Path, list[StateResult]]]:
    """The TINY_RUNS, really run (PruneLoop, CPU): (config, run directory, per-state results)
    each; the directories hold theta0.pt and every state's checkpoint."""
    from rsst_tune.loop import PruneLoop

    out = []
    for i, overrides in enumerate(TINY_RUNS):
        run = tmp_path_factory.mktemp(f"tiny_run{i}")
        cfg = TrialConfig.from_dict({**TINY_RUN, **overrides})
        out.append((cfg, run, PruneLoop(cfg, run, data=digits_small).run()))
    return out


FAST = dict(
    device="cpu",
    augment=False,
    amp=False,
    epochs=1,
    warmup_epochs=0.0,
    batch_size=64,
    eval_batch_size=512,
    score_batches=2,
    rewind_epoch=0,
    label_smoothing=0.0,
)


@pytest.fixture
def make_cfg() -> Callable[..., TrialConfig]:
    """A TrialConfig with fast CPU defaults; keyword arguments override."""

    def make(**overrides: Any) -> TrialConfig:
        return TrialConfig.from_dict({**FAST, **overrides})

    return make


def build(name: str, seed: int = 0, in_chans: int = 1, img_size: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)


@pytest.fixture
def build_model() -> Callable[..., nn.Module]:
    """`build_model(name, seed=0, in_chans=1, img_size=8)`: a seeded registry model."""
    return build


@pytest.fixture
def drop_timing() -> Callable[[Sequence[Any]], list[dict[str, Any]]]:
    return strip_timing


@pytest.fixture
def vit() -> nn.Module:
    return build("vit_digits")


@pytest.fixture
def resnet() -> nn.Module:
    return build("resnet20")


@pytest.fixture
def digits_batches(digits_small: DataBundle) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two normalised training batches of 32 digits."""
    from rsst_tune.data import DeviceData

    dd = DeviceData(digits_small.train, digits_small.spec, "cpu")
    return [(x, y) for x, y in list(dd.eval_batches(32))[:2]]


def pruned_checkpoint(out: Path, data: DataBundle, **overrides: Any) -> Path:
    """The last state checkpoint (state_01.pt) of a tiny real prune run on digits: CPU, one
    epoch per state, two states; `overrides` set the model and the ratios."""
    from rsst_tune.checkpoint import state_file
    from rsst_tune.loop import PruneLoop

    cfg = TrialConfig.from_dict(
        {
            **FAST,
            "dataset": "digits",
            "method": "refill",
            "pruning_times": 2,
            "score_batches": 1,
            **overrides,
        }
    )
    PruneLoop(cfg, out, data=data).run()
    return out / state_file(1)


@pytest.fixture(scope="session")
def vit_ticket(tmp_path_factory: pytest.TempPathFactory, digits_small: DataBundle) -> Path:
    """vit_digits after a real Refill run: 1 of 4 heads and half the MLP neurons pruned."""
    return pruned_checkpoint(
        tmp_path_factory.mktemp("vit_run"),
        digits_small,
        model="vit_digits",
        head_ratio=0.25,
        mlp_ratio=0.5,
    )


@pytest.fixture(scope="session")
def resnet_ticket(tmp_path_factory: pytest.TempPathFactory, digits_small: DataBundle) -> Path:
    """resnet20 after a real Refill run: half the filters pruned (removable ones sliced)."""
    return pruned_checkpoint(
        tmp_path_factory.mktemp("resnet_run"), digits_small, model="resnet20", filter_ratio=0.5
    )


def tune_main_env() -> dict[str, str]:
    """The environment of a `tune_main.py` subprocess that joins the module's `ray_cluster`:
    this checkout importable, the cluster on 127.0.0.1, token authentication off."""
    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the module's cluster is on 127.0.0.1
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _interrupt_after_first_state(proc: subprocess.Popen[str], exp_dir: Path) -> str:
    """SIGINT a `tune_main.py` subprocess once Ray has registered a state's checkpoint (the
    console's `saved` event in `exp_dir/events.jsonl`); returns its output. A state whose
    result Ray has seen but whose checkpoint it has not registered yet (a window of
    milliseconds) is not finished and runs again on resume; one trial at a time keeps the
    SIGINT (sent within 0.1 s) far from the next state's end."""
    events = exp_dir / "events.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (events.is_file() and '"event": "saved"' in events.read_text()):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no state checkpoint within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


@pytest.fixture
def interrupt_after_first_state() -> Callable[[subprocess.Popen[str], Path], str]:
    """`interrupt_after_first_state(proc, exp_dir) -> output` (see the function above)."""
    return _interrupt_after_first_state
