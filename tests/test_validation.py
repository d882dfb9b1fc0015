"""Bad input and divergence (issue #8, items 3 and 4).

* Divergence: a NaN/inf epoch loss ends the trial as `TrialDiverged` ("diverged in state s,
  epoch e (loss nan)"), never reported; `rsst-tune run` exits 1 with that one line; nothing
  selects a state with a NaN accuracy or training loss.
* Validation before any work: every `TrialConfig` field and every sweep option is checked for
  type, finiteness and range; bad input is exit 2, one line on stderr, nothing written
  (property-based: hypothesis generates the bad values). An unexpected error is one line and
  the log file holding its traceback, exit 1.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsst_tune import checkpoint as ckpt
from rsst_tune.cli import main
from rsst_tune.config import (
    BOOL_FIELDS,
    BOOL_WORDS,
    FLOAT_RANGES,
    INT_RANGES,
    MAX_STATES,
    TrialConfig,
    available_cores,
)
from rsst_tune.data import DataBundle
from rsst_tune.errors import ConfigError, TrialDiverged
from rsst_tune.experiment.objectives import parse_objectives, trial_value
from rsst_tune.experiment.select import best_at_budget, rank_trials, ticket_front
from rsst_tune.experiment.tickets import Ticket
from rsst_tune.loop import PruneLoop
from rsst_tune.results import StateResult
from rsst_tune.run import LOG_FILE, run_trial
from rsst_tune.tune.cli import main as tune_main

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--device", "cpu", "--epochs", "1", "--batch_size", "128", "--augment", "false",
    "--warmup_epochs", "0", "--score_batches", "1", "--eval_batch_size", "512", "--quiet",
]  # fmt: skip
# SGD with a huge constant RSST pull: state 0 (no pull) trains, state 1's pull overflows.
DIVERGES_IN_STATE_1 = dict(
    optimizer="sgd", lr=0.05, reg_granularity_prune=1e6, RST_schedule="constant"
)
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_fresh = itertools.count()


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


def _exit_code(call: Callable[[], int]) -> int:
    """The exit status of an in-process CLI call (argparse errors raise SystemExit)."""
    try:
        return call()
    except SystemExit as exc:
        return int(exc.code or 0)


def _assert_one_line_exit_2(call: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    rc = _exit_code(call)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# =========================================================================== divergence
def test_run_with_a_huge_lr_exits_1_with_one_line_naming_state_and_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = main(["run", *FAST, "--pruning_times", "2", "--lr", "1e3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert line == "rsst-tune: error: diverged in state 0, epoch 1 (loss nan)"
    assert not ckpt.state_files(out) and not (out / "results.json").exists()  # never reported
    assert "diverged in state 0, epoch 1" in (out / LOG_FILE).read_text()


def test_divergence_in_a_later_state_keeps_the_states_before_it(
    tmp_path: Path, digits_small: DataBundle, make_cfg: Callable[..., TrialConfig]
) -> None:
    cfg = make_cfg(pruning_times=3, head_ratio=0.25, mlp_ratio=0.5, **DIVERGES_IN_STATE_1)
    seen: list[StateResult] = []
    with pytest.raises(TrialDiverged) as info:
        run_trial(cfg, tmp_path, data=digits_small, on_state=seen.append)
    assert (info.value.state, info.value.epoch) == (1, 1) and math.isnan(info.value.loss)
    assert str(info.value) == "diverged in state 1, epoch 1 (loss nan)"
    assert not isinstance(info.value, ConfigError)  # not bad input
    assert [r.state for r in seen] == [0]  # state 1 is never reported
    assert [r["state"] for r in json.loads((tmp_path / "results.json").read_text())] == [0]
    assert [p.name for p in ckpt.state_files(tmp_path)] == ["state_00.pt"]


def test_non_finite_weights_after_the_last_step_are_divergence_too(
    monkeypatch: pytest.MonkeyPatch,
    digits_small: DataBundle,
    make_cfg: Callable[..., TrialConfig],
) -> None:
    """The loss is read before each step, so the last step's overflow shows in the weights."""
    import rsst_tune.train as train
    from rsst_tune.data import DeviceData

    original = train.train_step
    cfg = make_cfg(pruning_times=1)
    steps = DeviceData(digits_small.train, digits_small.spec, "cpu").num_train_batches(64)
    calls = itertools.count(1)

    def step_then_break(*args: Any, **kwargs: Any) -> torch.Tensor:
        loss = original(*args, **kwargs)
        if next(calls) == steps:  # the epoch's last step, after its loss was computed
            with torch.no_grad():
                next(args[0].parameters()).fill_(math.inf)
        return loss

    monkeypatch.setattr(train, "train_step", step_then_break)
    with pytest.raises(TrialDiverged, match=r"diverged in state 0, epoch 1 \(non-finite weights"):
        PruneLoop(cfg, data=digits_small).run()


def test_the_trainable_lets_divergence_propagate_and_never_reports_the_state(
    monkeypatch: pytest.MonkeyPatch, make_cfg: Callable[..., TrialConfig]
) -> None:
    """`train_trial` under a stand-in for `ray.tune`: state 0 is reported with its checkpoint,
    the diverged state 1 is not, and the error reaches Ray as `TrialDiverged`."""
    from rsst_tune.tune.run.trainable import train_trial

    reported: list[dict[str, Any]] = []
    tune = types.SimpleNamespace(
        get_context=lambda: types.SimpleNamespace(get_trial_id=lambda: "t0"),
        get_checkpoint=lambda: None,
        report=lambda metrics, checkpoint=None: reported.append(metrics),
        Checkpoint=types.SimpleNamespace(from_directory=lambda path: path),
    )
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(tune=tune))
    cfg = make_cfg(pruning_times=3, head_ratio=0.25, mlp_ratio=0.5, **DIVERGES_IN_STATE_1)
    objectives = parse_objectives("val_acc@macs<=0.9")
    with pytest.raises(TrialDiverged, match=r"^diverged in state 1, epoch 1 \(loss nan\)$"):
        train_trial(cfg.to_dict(), objectives)
    assert [m["state"] for m in reported] == [0]
    assert all(math.isfinite(m["train_loss"]) for m in reported)


def test_diverged_error_survives_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(TrialDiverged(2, 3, math.inf)))
    assert str(exc) == "diverged in state 2, epoch 3 (loss inf)"


# --------------------------------------------------------------------------- selection
def _state(state: int, **values: Any) -> StateResult:
    data: dict[str, Any] = dict.fromkeys(StateResult.keys(), 0)
    data.update(state=state, method="rsst", val_acc=0.5, test_acc=0.5, train_loss=1.0)
    data.update(values)
    return StateResult.from_dict(data)


@pytest.mark.parametrize("broken", ["val_acc", "test_acc", "train_loss"])
def test_a_state_with_a_nan_metric_is_never_selected(broken: str) -> None:
    good = _state(0, val_acc=0.6, macs_frac=0.4, params_frac=0.4)
    bad = _state(1, **{"val_acc": 0.9, "macs_frac": 0.3, "params_frac": 0.3, broken: math.nan})
    tickets = [
        Ticket("good", 0, "complete", good, order=0),
        Ticket("bad", 1, "complete", bad, order=1),
    ]
    for budget in (0.5, None):
        best = best_at_budget(tickets, budget)
        assert best is not None and best.trial_id == "good"
    assert [t.trial_id for t in ticket_front(tickets, "macs_frac")] == ["good"]
    assert rank_trials(tickets) == ["good"]
    (budgeted,) = parse_objectives("val_acc@macs<=0.5")
    (plain,) = parse_objectives("val_acc")
    assert trial_value(budgeted, [good, bad]) == 0.6
    assert trial_value(plain, [good, bad]) is None  # its last state is broken
    assert trial_value(budgeted, [bad]) is None


# =========================================================================== TrialConfig
def _interval_text(name: str) -> str:
    if name in INT_RANGES:
        low, high = INT_RANGES[name]
        return f"[{low}, {high}]"
    low_f, low_in, high_f, high_in = FLOAT_RANGES[name]
    return f"{'[' if low_in else '('}{low_f:g}, {high_f:g}{']' if high_in else ')'}"


def _words(cli: bool) -> st.SearchStrategy[str]:
    """Text that is never a valid value: any text for a Python value (a string is never a
    number); for a flag, letters only, and not one of the words a flag reads as None."""
    if not cli:
        return st.text(max_size=5)
    letters = st.text(st.characters(categories=["L"]), min_size=1, max_size=5)
    return letters.filter(lambda t: t.lower() not in ("none", "null"))


def _bad_int(name: str, cli: bool) -> st.SearchStrategy[Any]:
    low, high = INT_RANGES[name]
    cases = [
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda v: not (math.isfinite(v) and v.is_integer() and low <= v <= high)
        ),
        st.booleans(),
        _words(cli),
    ]
    if not cli:
        cases.append(st.lists(st.integers(), max_size=2))
    return st.one_of(cases)


def _bad_float(name: str, cli: bool) -> st.SearchStrategy[Any]:
    low, low_in, high, high_in = FLOAT_RANGES[name]

    def outside(v: float) -> bool:
        inside = (low <= v if low_in else low < v) and (v <= high if high_in else v < high)
        return not (math.isfinite(v) and inside)

    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.floats(allow_nan=False).filter(outside),
        st.integers().filter(lambda v: outside(float(v))),
        st.booleans(),
        _words(cli),
    )


def _bad_bool(cli: bool) -> st.SearchStrategy[Any]:
    return st.one_of(
        _words(cli).filter(lambda t: t.strip().lower() not in BOOL_WORDS),
        st.integers().filter(lambda v: v not in (0, 1)),
        st.floats(allow_nan=True).filter(lambda v: v not in (0.0, 1.0)),
    )


def _bad_epochs_list(cli: bool) -> st.SearchStrategy[Any]:
    cases: list[st.SearchStrategy[Any]] = [
        st.lists(st.integers(max_value=0), min_size=1, max_size=3),
        st.lists(st.integers(min_value=100_001), min_size=1, max_size=2),
        st.lists(
            st.floats(allow_nan=True).filter(lambda v: not v.is_integer()), min_size=1, max_size=2
        ),
    ]
    if not cli:  # a bare number or a word: the wrong type (a flag would read "5" as [5])
        cases += [st.integers(), st.text(min_size=1, max_size=4)]
    return st.one_of(cases)


def _bad_field_value(cli: bool = False) -> st.SearchStrategy[tuple[str, Any]]:
    """(field, a value TrialConfig must refuse) for every numeric, boolean and list field."""
    cases = [st.tuples(st.just(n), _bad_int(n, cli)) for n in INT_RANGES]
    cases += [st.tuples(st.just(n), _bad_float(n, cli)) for n in FLOAT_RANGES]
    cases += [st.tuples(st.just(n), _bad_bool(cli)) for n in sorted(BOOL_FIELDS)]
    cases.append(st.tuples(st.just("decreasing_lr"), _bad_epochs_list(cli)))
    return st.one_of(cases)


@PROPERTY
@given(case=_bad_field_value())
def test_every_bad_field_value_is_a_one_line_config_error_naming_field_and_range(
    case: tuple[str, Any],
) -> None:
    name, value = case
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({name: value})
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(name), msg
    if name in INT_RANGES or name in FLOAT_RANGES:
        assert _interval_text(name) in msg, msg


def test_bounds_at_their_edges() -> None:
    cfg = TrialConfig.from_dict(
        {
            "pruning_times": MAX_STATES,
            "epochs": 100_000,
            "batch_size": 2**20,
            "seed": 2**32 - 1,
            "decreasing_lr": [1, 2.0],
            "amp": "yes",
            "lr": 1e3,
        }
    )
    assert cfg.decreasing_lr == (1, 2) and cfg.amp is True
    assert ckpt.state_file(MAX_STATES - 1) == "state_99.pt"  # the last state has a name
    with pytest.raises(ValueError):
        ckpt.state_file(MAX_STATES)
    assert TrialConfig(lr=1).lr == 1.0 and isinstance(TrialConfig(lr=1).lr, float)
    assert TrialConfig(decreasing_lr=[3], lr_schedule="multistep").decreasing_lr == (3,)
    with pytest.raises(ConfigError, match="extra"):
        TrialConfig.from_dict({"extra": {"k": math.nan}})


# =========================================================================== rsst-tune run
@PROPERTY
@given(case=_bad_field_value(cli=True))
def test_bad_run_flags_exit_2_with_one_line_and_write_nothing(
    case: tuple[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, value = case
    if isinstance(value, list):
        flag_args = [f"--{name}", *(str(v) for v in value)]
    else:
        flag_args = [f"--{name}={value}"]  # `=`: argparse would read "-1" as a flag
    out = tmp_path / f"out{next(_fresh)}"
    err = _assert_one_line_exit_2(lambda: main(["run", *flag_args, "--out", str(out)]), capsys)
    assert err.startswith("rsst-tune")
    assert not out.exists()


def _threads_over_the_cores() -> st.SearchStrategy[int]:
    return st.integers(min_value=available_cores() + 1, max_value=10**7)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(threads=_threads_over_the_cores())
def test_threads_beyond_the_machines_cores_are_refused_before_the_data_loads(
    threads: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"out{next(_fresh)}"
    err = _assert_one_line_exit_2(
        lambda: main(["run", "--threads", str(threads), "--out", str(out)]), capsys
    )
    assert "threads" in err and str(threads) in err
    assert not out.exists()


@pytest.mark.slow  # three interpreter start-ups (torch, Ray imports): not for the inner loop
def test_subprocess_bad_input_has_no_traceback(tmp_path: Path) -> None:
    """The real processes: `threads=1000000` once crashed the interpreter; NaN a traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    for argv in (
        [sys.executable, "-m", "rsst_tune.cli", "run", "--threads", "1000000"],
        [sys.executable, "-m", "rsst_tune.cli", "run", "--lr", "nan"],
        [sys.executable, str(REPO / "tune_main.py"), "--space", "vit_head_mlp", "--seed", "-1"],
    ):
        proc = subprocess.run(
            [*argv, *(["--out", str(tmp_path / "x")] if "run" in argv else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- unexpected errors
def test_an_unexpected_error_after_work_started_is_one_line_and_the_log_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(self: Any, data: Any) -> float:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(PruneLoop, "_eval", boom)
    out = tmp_path / "run"
    rc = main(["run", *FAST, "--pruning_times", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    (line,) = _error_lines(err)
    assert "RuntimeError: boom" in line and str(out / LOG_FILE) in line
    log = (out / LOG_FILE).read_text()
    assert "Traceback" in log and "second line" in log
    # with -v the traceback is printed too
    rc = main(["-v", "run", *FAST, "--pruning_times", "1", "--out", str(out), "--overwrite"])
    assert rc == 1 and "Traceback" in capsys.readouterr().err


def test_an_unexpected_error_before_work_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr("rsst_tune.run.open_run", boom)
    assert main(["run", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == "rsst-tune: error: unexpected KeyError: 'surprise' (run with -v for the traceback)"
    )


# =========================================================================== sweep options
BAD_SWEEP_FLAGS: list[tuple[str, st.SearchStrategy[str]]] = [
    ("--seed", st.integers(max_value=-1).map(str)),
    ("--seed", st.integers(min_value=2**32).map(str)),
    ("--cpus-per-trial", st.sampled_from(["nan", "inf", "-inf", "0", "-1", "x", "1e9"])),
    ("--gpus-per-trial", st.sampled_from(["nan", "inf", "-0.5", "x", "1e9"])),
    ("--time-budget", st.sampled_from(["nan", "inf", "0", "-5", "x"])),
    ("--num-samples", st.sampled_from(["0", "-3", "1.5", "1e3", "nan", "x", "10000000"])),
    ("--max-concurrent", st.sampled_from(["0", "-1", "2.5", "x"])),
    ("--epochs", st.integers(min_value=100_001, max_value=2**70).map(str)),
    ("--states", st.integers(min_value=MAX_STATES + 1, max_value=10**6).map(str)),
    ("--fix", st.sampled_from(["lr=nan", "lr=NaN", "lr=-1", "lr=inf", "lr=abc", "lr=true"])),
    ("--fix", st.sampled_from(["head_ratio=1.5", "mlp_ratio=-0.1", "exponents=0", "target=x"])),
    ("--fix", st.sampled_from(["reg_granularity_prune=-1", "criteria=nope", "rate=1"])),
    ("--device", st.sampled_from(["gpu", "cuda:0", "tpu"])),
    ("--set", st.sampled_from(["amp=maybe", "compile_mode=cudagraphs", "eval_batch_size=0"])),
    ("--set", st.sampled_from(["lr=0.1", "threads=2", "device=cpu", "nope=1", "amp"])),
]


@PROPERTY
@given(flag=st.sampled_from(BAD_SWEEP_FLAGS).flatmap(lambda fv: st.tuples(st.just(fv[0]), fv[1])))
def test_bad_sweep_flags_exit_2_with_one_line_and_write_nothing(
    flag: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, value = flag
    storage = tmp_path / f"store{next(_fresh)}"
    argv = ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", str(storage)]
    argv += [f"{name}={value}", "--dry-run"]
    err = _assert_one_line_exit_2(lambda: tune_main(argv), capsys)
    assert err.startswith("tune_main.py: error:")
    assert not storage.exists()


@pytest.fixture
def no_sweeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A sweep that would start fails the test instead."""

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a sweep started")

    monkeypatch.setattr("rsst_tune.tune.cli.run_sweep", never)
    yield


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--gpus-per-trial", "1"], "--gpus-per-trial must be in [0, 0]"),
        (["--cpus-per-trial", str(available_cores() + 1)], "--cpus-per-trial must be in (0, "),
    ],
)
def test_a_local_sweep_this_machine_cannot_run_is_refused_up_front(
    flags: list[str],
    words: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_sweeps: None,
) -> None:
    storage = tmp_path / "store"
    argv = ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", str(storage), *flags]
    err = _assert_one_line_exit_2(lambda: tune_main(argv), capsys)
    assert words in err
    assert not storage.exists()


def test_sweep_options_from_python_are_checked_too() -> None:
    from rsst_tune.tune.plan import SweepOptions, resolve_plan

    for bad in (
        {"seed": -1},
        {"seed": 1.5},
        {"cpus_per_trial": math.nan},
        {"gpus_per_trial": math.nan},
        {"time_budget": math.inf},
        {"num_samples": True},
        {"fixed": {"lr": math.nan}},
        {"share_dense": "no"},
    ):
        with pytest.raises(ConfigError) as info:
            resolve_plan(SweepOptions.from_keywords("vit_head_mlp", {"preset": "smoke", **bad}))
        assert "\n" not in str(info.value)


# =========================================================================== resume checks
@pytest.fixture
def two_state_run(
    tmp_path: Path, digits_small: DataBundle, make_cfg: Callable[..., TrialConfig]
) -> tuple[Path, TrialConfig]:
    cfg = make_cfg(pruning_times=3, head_ratio=0.25, mlp_ratio=0.5)
    loop = PruneLoop(cfg, tmp_path / "run", data=digits_small)
    for result in loop.states():
        if result.state == 1:
            break
    return tmp_path / "run", cfg


@pytest.mark.parametrize("damage", ["units", "masks", "spec", "renamed", "results"])
def test_resume_refuses_a_checkpoint_that_does_not_fit(
    two_state_run: tuple[Path, TrialConfig], digits_small: DataBundle, damage: str
) -> None:
    run, cfg = two_state_run
    path = run / "state_01.pt"
    data = torch.load(path, weights_only=True)
    if damage == "units":
        data["alive"].popitem()
    elif damage == "masks":
        name = next(iter(data["M"]))
        data["M"][name] = data["M"][name][:1]
    elif damage == "spec":
        data["spec"]["num_classes"] = 7
    elif damage == "results":
        data["results"] = data["results"][:1]
    if damage == "renamed":
        (run / "state_00.pt").unlink()
        path.rename(run / "state_02.pt")
    else:
        torch.save(data, path)
    words = {
        "units": "units do not match",
        "masks": "mask M does not fit",
        "spec": "other data",
        "renamed": "not the state its name says",
        "results": "inconsistent",
    }[damage]
    for given_cfg in (cfg, None):
        with pytest.raises(ConfigError, match=words) as info:
            PruneLoop.resume(run, given_cfg, data=digits_small)
        assert "\n" not in str(info.value)
