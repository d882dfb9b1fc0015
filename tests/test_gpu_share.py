"""`--gpus-per-trial auto` (`rsst_tune.tune.gpu_share`): the sizing rule, the option, the
plan, and its resolution on a real Ray cluster without GPUs. The probe itself needs CUDA:
tests/test_gpu.py runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsst_tune.errors import ConfigError
from rsst_tune.tune.gpu_share import (
    CONTEXT_BYTES,
    MAX_PACK,
    MEMORY_HEADROOM,
    ShareProbe,
    resolve_share,
    suggest_share,
)
from rsst_tune.tune.plan import SweepOptions, SweepPlan, describe_plan, resolve_plan
from tune_main import main as tune_main

GIB = 2**30


def test_the_share_packs_as_many_trials_as_memory_and_busy_time_allow() -> None:
    # a small ViT: little memory, GPU busy 23 % of its steps -> 4 trials per GPU
    assert suggest_share(peak_bytes=1 * GIB, total_bytes=80 * GIB, busy=0.23) == 1 / 4
    # a GPU kept busy: one trial
    assert suggest_share(peak_bytes=1 * GIB, total_bytes=80 * GIB, busy=0.95) == 1.0
    # almost idle: at most MAX_PACK
    assert suggest_share(peak_bytes=0, total_bytes=80 * GIB, busy=0.01) == 1 / MAX_PACK
    # memory decides: 30 GiB peak x headroom + a context fits twice in 80 GiB, not three times
    per_trial = 30 * GIB * MEMORY_HEADROOM + CONTEXT_BYTES
    assert 2 * per_trial <= 80 * GIB < 3 * per_trial
    assert suggest_share(peak_bytes=30 * GIB, total_bytes=80 * GIB, busy=0.1) == 1 / 2
    # more than the whole GPU's memory: still one trial per GPU (it will fail loudly there)
    assert suggest_share(peak_bytes=100 * GIB, total_bytes=80 * GIB, busy=0.1) == 1.0
    for bad in ({"busy": 1.5}, {"busy": float("nan")}, {"total_bytes": 0}):
        args = {"peak_bytes": GIB, "total_bytes": 80 * GIB, "busy": 0.5, **bad}
        with pytest.raises(ValueError, match="busy in"):
            suggest_share(**args)


def test_a_probe_record_round_trips_and_says_what_it_measured() -> None:
    probe = ShareProbe("NVIDIA H100 80GB HBM3", 80 * GIB, 2 * GIB, 0.23, 9870.0, 14.2)
    assert probe.share == 1 / 4
    assert ShareProbe.from_dict(probe.to_dict()) == probe
    text = probe.describe()
    for part in ("0.25 GPU per trial", "H100", "2.0 of 80 GiB", "busy 23%", "9,870 img/s"):
        assert part in text, (part, text)


def test_the_option_takes_auto_and_the_dry_run_says_it_is_sized_at_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--space", "vit_head_mlp", "--preset", "smoke", "--dry-run",
            "--storage", str(tmp_path), "--name", "dry"]  # fmt: skip
    assert tune_main([*args, "--gpus-per-trial", "auto"]) == 0
    out = capsys.readouterr().out
    assert "a GPU share sized at the start" in out, out
    assert tune_main([*args, "--gpus_per_trial", "AUTO"]) == 0  # both spellings, any case
    with pytest.raises(SystemExit) as exc:
        tune_main([*args, "--gpus-per-trial", "most"])
    assert exc.value.code == 2
    assert "or auto" in capsys.readouterr().err

    plan = resolve_plan(SweepOptions(space="vit_head_mlp", gpus_per_trial="auto",
                                     storage=str(tmp_path)))  # fmt: skip
    assert plan.gpus_per_trial == 0.0 and plan.gpu_share == {"auto": True}
    assert SweepPlan.from_json(plan.to_json()).to_json() == plan.to_json()  # sweep.json
    assert "sized at the start" in describe_plan(plan)
    with pytest.raises(ConfigError, match="or auto"):
        resolve_plan(SweepOptions(space="vit_head_mlp", gpus_per_trial="half",
                                  storage=str(tmp_path)))  # fmt: skip


def test_a_cluster_without_gpus_resolves_auto_to_cpu_trials(
    tmp_path: Path, ray_cluster: str
) -> None:
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", gpus_per_trial="auto",
                                     storage=str(tmp_path)))  # fmt: skip
    resolved, said = resolve_share(plan)
    assert resolved.gpus_per_trial == 0.0
    assert resolved.gpu_share["share"] == 0.0 and resolved.gpu_share["auto"] is True
    assert said is not None and "no GPU" in said
    # resolved once: a plan read back (--resume) is not probed again
    stored = SweepPlan.from_json(resolved.to_json())
    again, said_again = resolve_share(stored)
    assert again is stored and said_again is None
    # a given share is left alone
    given = resolve_plan(SweepOptions(space="vit_head_mlp", storage=str(tmp_path)))
    assert resolve_share(given) == (given, None)
