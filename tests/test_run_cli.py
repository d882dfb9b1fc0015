"""`rsst-tune run` speaks in the config's groups, tracks a trial in W&B (`--wandb`), and
`rsst_tune.run_trial` names every config field in its signature."""

from __future__ import annotations

import dataclasses
import glob
import inspect
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rsst_tune
from rsst_tune.cli import CONFIG_GROUPS, NO_FLAG, RUN_GROUP, TRACKING_GROUP, main
from rsst_tune.config import GROUPS, TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.results import StateResult
from rsst_tune.run import run_trial
from rsst_tune.tracking import WandbOptions, WandbTracker, parse_tags, state_row

TINY = [
    "--model", "vit_digits", "--dataset", "digits", "--img-size", "8", "--epochs", "1",
    "--states", "2", "--train_subset", "0.1", "--threads", "1", "--quiet",
]  # fmt: skip
RUN_TITLES = ["run", "tracking", "dense training", "pruning", "numerics", "execution"]


# ---------------------------------------------------------------------- --help in groups
def _help_sections(capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    """`rsst-tune run --help` as {group title: the flags listed under it}."""
    with pytest.raises(SystemExit) as stop:
        main(["run", "--help"])
    assert stop.value.code == 0
    sections: dict[str, list[str]] = {}
    title = None
    for line in capsys.readouterr().out.splitlines():
        if re.fullmatch(r"\S.*:", line):  # a group's title (and "usage:", "examples:")
            title = line[:-1]
            sections[title] = []
        elif title is not None and line.startswith("  -"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            sections[title] += [w.rstrip(",") for w in invocation.split() if w.startswith("-")]
    return sections


def test_run_help_groups_the_flags_as_the_config_groups_its_fields(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    sections = _help_sections(capsys)
    titles = [t for t in sections if t not in ("usage", "options", "examples")]
    assert titles == RUN_TITLES
    assert [CONFIG_GROUPS[g][0] for g in GROUPS] == RUN_TITLES[2:]
    assert (RUN_GROUP[0], TRACKING_GROUP[0]) == ("run", "tracking")
    for f in dataclasses.fields(TrialConfig):
        if f.name in NO_FLAG:
            continue
        under = [t for t, flags in sections.items() if f"--{f.name}" in flags]
        assert under == [CONFIG_GROUPS[f.metadata["group"]][0]], (f.name, under)
    for flag in ("--config", "--out", "--resume", "--overwrite", "--quiet"):
        assert [t for t, flags in sections.items() if flag in flags] == ["run"], flag
    for flag in ("--wandb", "--wandb-project", "--wandb-entity", "--wandb-tags"):
        assert [t for t, flags in sections.items() if flag in flags] == ["tracking"], flag
    assert "--gpu" in sections["numerics"]


def test_each_group_has_a_one_line_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for title, description in [*CONFIG_GROUPS.values(), RUN_GROUP, TRACKING_GROUP]:
        assert "\n" not in description and len(description) <= 78, title
        assert f"\n{title}:\n  {description}\n" in text, title


def test_grouped_flags_parse_in_both_spellings() -> None:
    from rsst_tune.cli import build_parser, config_from_args, wandb_options

    tracking = ["--wandb", "offline", "--wandb_tags", "a, b,,c", "--wandb_entity", "team"]
    args = build_parser().parse_args(
        ["run", "--head-ratio", "0.25", "--eval_batch_size", "32", *tracking]
    )
    cfg = config_from_args(args)
    assert (cfg.head_ratio, cfg.eval_batch_size) == (0.25, 32)
    assert wandb_options(args) == WandbOptions("offline", None, "team", ("a", "b", "c"))
    args = build_parser().parse_args(["run", "--wandb_project", "p"])
    with pytest.raises(ConfigError, match="--wandb-project needs --wandb offline"):
        wandb_options(args)


# ---------------------------------------------------------------------- W&B for one trial
def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", COLUMNS="100")
    return env


def _records(path: Path) -> list[Any]:
    """The records of a W&B run file (`run-ID.wandb`): W&B's 7-byte header, then LevelDB log
    blocks of 32 KiB, each chunk a 7-byte header (crc, length, type) and its bytes; a record
    is a FULL chunk or FIRST + MIDDLE... + LAST."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out


def _run_file(out: Path) -> Path:
    (run_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    return Path(run_file)


def _history(records: list[Any]) -> list[dict[str, str]]:
    return [
        {item.key or ".".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def _only(records: list[Any], kind: str) -> Any:
    (record,) = [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]
    return record


def test_run_wandb_offline_logs_every_state_into_the_run_directory(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "demo"
    tracking = ["--wandb", "offline", "--wandb-project", "rsst-test", "--wandb-tags", "smoke,ci"]
    res = subprocess.run(
        [sys.executable, "-m", "rsst_tune.cli", "run", *TINY, "--out", str(out), *tracking],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(tmp_path / "home"),
    )
    assert res.returncode == 0, res.stderr
    records = _records(_run_file(out))
    run = _only(records, "run")
    assert (run.project, list(run.tags), run.display_name) == (
        "rsst-test",
        ["smoke", "ci"],
        "demo",
    )
    config = {item.key: item.value_json for item in run.config.update}
    assert config["pruning_times"] == "2" and config["model"] == '"vit_digits"'
    rows = _history(records)
    assert [row["_step"] for row in rows] == ["0", "1"]
    assert [row["state"] for row in rows] == ["0", "1"]
    assert {"val_acc", "test_acc", "macs_frac", "params", "sparsity"} <= set(rows[1])
    assert "method" not in rows[1] and "heads_per_layer" not in rows[1]  # numbers only
    assert _only(records, "exit").exit_code == 0
    assert not (tmp_path / "wandb").exists()  # nothing outside the run directory


def test_wandb_online_without_a_key_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out), "--wandb", "online"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "WANDB_API_KEY" in err, err
    assert not out.exists()


def test_wandb_without_the_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec: not installed
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out), "--wandb", "offline"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "pip install 'rsst-tune[wandb]'" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wandb-project", "p"], "--wandb-project needs --wandb offline or --wandb online"),
        (["--wandb", "offline", "--wandb-project", "a/b"], "W&B project 'a/b' must have"),
        (["--wandb", "offline", "--wandb-tags", "x" * 65], "each tag is 1 to 64 characters"),
    ],
)
def test_bad_tracking_flags_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *TINY, "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "run").exists()


def _result(state: int) -> StateResult:
    return StateResult.from_dict({
        "state": state, "method": "rsst", "val_acc": 0.5, "test_acc": 0.5, "sparsity": 0.0,
        "density_total": 1.0, "params": 100, "macs": 1000, "params_frac": 1.0,
        "macs_frac": 1.0, "rate": 0.0, "density_U": 1.0, "train_loss": 0.1,
        "epochs_trained": 1, "wall_time_s": 1.0, "heads_per_layer": [2, 2],
    })  # fmt: skip


def test_a_failed_trial_finishes_its_wandb_run_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "failed"
    tracker = WandbTracker(TrialConfig(), out, mode="offline", tags=["t"])
    with pytest.raises(RuntimeError, match="boom"), tracker:
        tracker.log_state(_result(0))
        raise RuntimeError("boom")
    assert tracker.run is None  # finished
    records = _records(_run_file(out))
    assert [row["state"] for row in _history(records)] == ["0"]
    assert _only(records, "exit").exit_code == 1
    assert _only(records, "run").display_name == "failed"


def test_state_rows_hold_the_numbers_only() -> None:
    row = state_row(_result(1))
    assert row["state"] == 1 and row["val_acc"] == 0.5 and row["params"] == 100
    assert not {"method", "heads_per_layer", "density_R", "device"} & set(row)
    assert parse_tags(" a, b ,,c ") == ("a", "b", "c")


def test_tracking_options_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    assert WandbOptions("offline").resolved_project() == "rsst-tune"
    assert WandbOptions("offline").resolved_entity() is None
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    assert WandbOptions("offline").resolved_project() == "from-env"
    assert WandbOptions("offline", project="given").resolved_project() == "given"
    assert WandbOptions("offline").resolved_entity() == "team"
    with pytest.raises(ConfigError, match="unknown --wandb mode 'cloud'"):
        WandbOptions("cloud").check()
    WandbOptions().check()  # off: nothing to check


# ---------------------------------------------------------------------- run_trial's keywords
def _annotation(f: dataclasses.Field[Any]) -> str:
    text = str(f.type)
    return text if text.endswith(" | None") else f"{text} | None"


def test_run_trial_takes_every_config_field_as_a_typed_keyword() -> None:
    params = inspect.signature(rsst_tune.run_trial).parameters
    for f in dataclasses.fields(TrialConfig):
        assert f.name in params, f"run_trial lacks a keyword argument for {f.name}"
        p = params[f.name]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None, f.name
        assert p.annotation == _annotation(f), (f.name, p.annotation)
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["config", "out_dir"]
    assert params["aliases"].kind is inspect.Parameter.VAR_KEYWORD


def test_run_trial_keywords_override_and_unknown_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown run_trial keyword argument 'epoch'; .*epochs"):
        run_trial(TrialConfig(), epoch=3)
    with pytest.raises(ConfigError, match="give pruning_times or its alias states, not both"):
        run_trial(None, pruning_times=2, states=3)
    # the values reach the config (a bad one is named before anything runs)
    with pytest.raises(ConfigError, match="pruning_times must be an integer"):
        run_trial({"model": "vit_digits"}, states=0)
    with pytest.raises(ConfigError, match="rate must be a finite number"):
        run_trial(TrialConfig(), rate=1.5)
