"""TrialConfig validation and `rsst-tune run` end to end: outputs, resume, and bad input (one
line on stderr, exit status 2, no traceback, nothing overwritten)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsst_tune.cli import main
from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.pruning.criteria import CRITERIA
from rsst_tune.pruning.methods import METHODS
from rsst_tune.pruning.regularizer import SCHEDULES
from rsst_tune.results import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]


# =========================================================================== TrialConfig
def test_defaults_are_valid_and_round_trip_through_json(tmp_path) -> None:
    cfg = TrialConfig()
    assert cfg.method == "rsst" and cfg.criteria == "l1" and cfg.min_units == 1
    assert cfg.score_batches == 4 and cfg.fillback_rate == 0.0 and cfg.sorting == "layer"
    cfg2 = TrialConfig(rate=0.3, decreasing_lr=(3, 5), lr_schedule="multistep", extra={"a": 1})
    assert TrialConfig.from_dict(json.loads(cfg2.to_json())) == cfg2
    path = tmp_path / "c.json"
    path.write_text(cfg2.to_json())
    assert TrialConfig.from_json_file(path) == cfg2
    path.write_text(json.dumps({"config": cfg2.to_dict(), "score": 1.0}))  # best_config.json
    assert TrialConfig.from_json_file(path) == cfg2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


def test_research_code_aliases_and_coercion() -> None:
    cfg = TrialConfig.from_dict(
        {
            "arch": "resnet20",
            "struct": "refill",
            "states": 3,
            "epochs": 5.0,
            "rate": 1 / 5,
            "augment": "false",
        }
    )
    assert (cfg.model, cfg.method, cfg.pruning_times, cfg.epochs) == ("resnet20", "refill", 3, 5)
    assert cfg.augment is False
    assert TrialConfig.from_dict({"lr": torch.tensor(0.01)}).lr == pytest.approx(0.01)
    with pytest.raises(ConfigError):
        TrialConfig.from_dict({"epochs": 2.5})


def test_effective_rate() -> None:
    assert TrialConfig(method="imp").effective_rate() == 0.2
    assert TrialConfig(method="imp", rate=0.5).effective_rate() == 0.5
    # structured: derived (None) only when every pruned kind has an explicit ratio
    both = ["head", "neuron"]
    assert TrialConfig(method="rsst").effective_rate(both) == 0.2  # the method's default
    assert TrialConfig(method="rsst", head_ratio=0.25).effective_rate(both) == 0.2
    assert TrialConfig(method="rsst", head_ratio=0.25, mlp_ratio=0.5).effective_rate(both) is None
    assert TrialConfig(method="rsst", head_ratio=0.25).effective_rate(["head"]) is None
    assert TrialConfig(method="refill", rate=0.3).effective_rate(both) == 0.3


@pytest.mark.parametrize(
    ("field", "choices"),
    [
        ("method", tuple(METHODS.names())),
        ("criteria", tuple(CRITERIA.names())),
        ("RST_schedule", tuple(SCHEDULES.names())),
        ("target", ("head", "mlp", "both")),
        ("sorting", ("layer", "global")),
        ("prune_type", ("lt", "rewind_lt", "pt")),
        ("optimizer", ("sgd", "adamw")),
    ],
)
def test_unknown_choice_names_every_valid_choice(field: str, choices: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict({field: "nope"})
    msg = str(err.value)
    assert "\n" not in msg
    for c in choices:
        assert c in msg


def test_unknown_key_names_the_known_keys() -> None:
    with pytest.raises(ConfigError, match="reg_granularity_prune"):
        TrialConfig.from_dict({"reg_granularity": 1.0})


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"epochs": -1},
        {"pruning_times": 0},
        {"batch_size": 0},
        {"score_batches": 0},
        {"min_units": 0},
        {"head_ratio": 1.0},
        {"head_ratio": -0.1},
        {"mlp_ratio": 1.0},
        {"filter_ratio": 2.0},
        {"rate": 1.0},
        {"rate": -0.2},
        {"fillback_rate": 1.5},
        {"fillback_rate": -0.1},
        {"reg_granularity_prune": -1.0},
        {"exponents": 0.0},
        {"lr": 0.0},
        {"rewind_epoch": 5, "epochs": 3},
        {"warmup_epochs": -1.0},
        {"label_smoothing": 1.0},
        {"lr_schedule": "multistep"},
    ],
)
def test_out_of_range_values_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict(bad)
    assert "\n" not in str(err.value)


def test_ratio_bounds_are_half_open() -> None:
    assert TrialConfig(head_ratio=0.0, mlp_ratio=0.999, filter_ratio=0.5).head_ratio == 0.0
    assert TrialConfig(rate=0.0).rate == 0.0
    assert TrialConfig(fillback_rate=1.0).fillback_rate == 1.0


# =========================================================================== the CLI
FAST_FLAGS = [
    "--device",
    "cpu",
    "--epochs",
    "1",
    "--batch_size",
    "128",
    "--augment",
    "false",
    "--warmup_epochs",
    "0",
    "--score_batches",
    "1",
    "--quiet",
]
RUN_FLAGS = [
    "--model",
    "vit_digits",
    "--dataset",
    "digits",
    "--method",
    "rsst",
    "--head_ratio",
    "0.25",
    "--mlp_ratio",
    "0.5",
    "--pruning_times",
    "3",
    "--criteria",
    "magnitude",
    *FAST_FLAGS,
]


def _snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, str]:
    """One real `rsst-tune run` (3 RSST states on digits) and what it printed."""
    out = tmp_path_factory.mktemp("cli") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["run", *RUN_FLAGS, "--out", str(out)])
    assert rc == 0
    return out, buf.getvalue()


def test_run_writes_results_config_checkpoints_and_prints_a_table(finished_run) -> None:
    out, printed = finished_run
    names = {p.name for p in out.iterdir()}
    assert {
        "results.json",
        "results.csv",
        "config.json",
        "theta0.pt",
        "state_00.pt",
        "state_01.pt",
        "state_02.pt",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    results = json.loads((out / "results.json").read_text())
    assert [r["state"] for r in results] == [0, 1, 2]
    assert [r["heads"] for r in results] == [16, 12, 8]
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [int(r["state"]) for r in rows] == [0, 1, 2]
    assert float(rows[2]["test_acc"]) == pytest.approx(results[2]["test_acc"])
    cfg = TrialConfig.from_json_file(out / "config.json")
    assert (cfg.model, cfg.method, cfg.pruning_times, cfg.head_ratio) == (
        "vit_digits",
        "rsst",
        3,
        0.25,
    )
    for p in ("state_02.pt", "theta0.pt"):
        torch.load(out / p, weights_only=True)
    lines = [line for line in printed.splitlines() if line.strip()]
    header = lines[0].split()
    for col in ("state", "sparsity", "heads", "neurons", "val_acc", "test_acc", "MACs"):
        assert col in header
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]


def test_resume_continues_an_interrupted_run(finished_run, tmp_path, capsys) -> None:
    out, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "state_02.pt").unlink()  # as if killed during the last state
    (copy / "state_01.pt").unlink()
    rc = main(["run", "--resume", "--out", str(copy), "--quiet"])
    assert rc == 0
    assert (copy / "state_02.pt").exists()
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rs]  # noqa: E731
    assert strip(json.loads((copy / "results.json").read_text())) == strip(
        json.loads((out / "results.json").read_text())
    )
    printed = capsys.readouterr().out
    assert "state" in printed.splitlines()[0]


def test_run_with_config_file_and_flag_override(tmp_path, capsys) -> None:
    cfg = TrialConfig(
        model="vit_digits",
        method="imp",
        rate=0.5,
        pruning_times=2,
        epochs=3,
        device="cpu",
        augment=False,
        warmup_epochs=0.0,
        batch_size=128,
    )
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    out = tmp_path / "out"
    assert main(["run", "--config", str(path), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    saved = TrialConfig.from_json_file(out / "config.json")
    assert saved == cfg.replace(epochs=1)
    results = json.loads((out / "results.json").read_text())
    assert results[1]["density_U"] == pytest.approx(0.5, abs=1e-4)


def _bad(argv: list[str], capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    err = captured.err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


BAD_INPUT = [
    (["--model", "nope"], ["vit_digits", "resnet20", "vgg16_bn", "vit_tiny"]),
    (["--dataset", "nope"], ["digits", "cifar10", "synthetic"]),
    (["--method", "prune"], ["imp", "refill", "rsst"]),
    (["--criteria", "taylor"], ["remain", "magnitude", "l1", "l2", "saliency"]),
    (["--RST_schedule", "cosine"], ["constant", "x^2", "exp_custom_exponents"]),
    (["--head_ratio", "1.0"], ["[0, 1)"]),
    (["--mlp_ratio", "-0.5"], ["[0, 1)"]),
    (["--filter_ratio", "1.5"], ["[0, 1)"]),
    (["--rate", "1.0"], ["rate"]),
    (["--method", "imp", "--rate", "0.99", "--pruning_times", "5"], ["remove every weight"]),
    (["--epochs", "0"], ["epochs"]),
    (["--epochs", "-3"], ["epochs"]),
    (["--pruning_times", "0"], ["pruning_times"]),
    (["--target", "head", "--head_ratio", "0.25", "--min_units", "4"], ["min_units"]),
    (["--img-size", "0"], ["img_size", "[1, 4096]"]),
    (["--img_size", "13"], ["patch size 2", "12 or 14"]),
    (["--model", "timm:deit_tiny_patch16_224", "--img_size", "8"], ["multiples", "16"]),
    (["--pretrained_file", "no/such/weights.pt"], ["pretrained_file", "not found"]),
]


@pytest.mark.parametrize(("flags", "words"), BAD_INPUT, ids=[" ".join(f) for f, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(finished_run, capsys, flags, words):
    out, _ = finished_run
    before = _snapshot(out)
    argv = [
        "run",
        "--model",
        "vit_digits",
        "--head_ratio",
        "0.25",
        "--mlp_ratio",
        "0.5",
        *FAST_FLAGS,
        *flags,
        "--out",
        str(out),
        "--overwrite",
    ]
    err = _bad(argv, capsys)
    assert err.startswith("rsst-tune: error:")
    for w in words:
        assert w in err, (w, err)
    assert _snapshot(out) == before  # even with --overwrite, bad input touches nothing


def test_existing_out_without_resume_or_overwrite_is_refused(finished_run, capsys) -> None:
    out, _ = finished_run
    before = _snapshot(out)
    err = _bad(["run", *RUN_FLAGS, "--out", str(out)], capsys)
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before


def test_new_out_is_not_created_on_bad_input(tmp_path, capsys) -> None:
    out = tmp_path / "never"
    _bad(["run", *RUN_FLAGS, "--model", "nope", "--out", str(out)], capsys)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "other_config", "other_model", "other_run"]
)
def test_resume_with_corrupt_or_mismatched_checkpoint(finished_run, tmp_path, capsys, damage):
    out, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    extra: list[str] = []
    if damage == "garbage":
        (copy / "state_02.pt").write_bytes(os.urandom(4096))
    elif damage == "truncated":
        data = (copy / "state_02.pt").read_bytes()
        (copy / "state_02.pt").write_bytes(data[: len(data) // 3])
    elif damage == "other_config":
        extra = [*RUN_FLAGS, "--epochs", "2"]
    else:  # the checkpoint of a ResNet run under a ViT run's θ0 (other_run: and its θ0)
        other = tmp_path / "cnn"
        rc = main(
            [
                "run",
                "--model",
                "resnet20",
                "--method",
                "refill",
                "--filter_ratio",
                "0.5",
                "--pruning_times",
                "3",
                *FAST_FLAGS,
                "--out",
                str(other),
            ]
        )
        assert rc == 0
        (copy / "state_00.pt").write_bytes((other / "state_00.pt").read_bytes())
        (copy / "state_01.pt").unlink()
        (copy / "state_02.pt").unlink()
        if damage == "other_run":  # a consistent ResNet run, beside the ViT's config.json
            (copy / "theta0.pt").write_bytes((other / "theta0.pt").read_bytes())
    capsys.readouterr()
    before = _snapshot(copy)
    err = _bad(["run", "--resume", "--out", str(copy), *extra], capsys)
    assert err.startswith("rsst-tune: error:")
    if damage == "other_config":
        assert "epochs" in err
    if damage == "other_run":
        assert "model 'resnet20' in the checkpoint, 'vit_digits' in" in err
    assert _snapshot(copy) == before  # results.json untouched, no run.log


def test_non_numeric_flag_is_one_line_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--epochs", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert "--epochs" in err and "abc" in err
    assert len(err.splitlines()) == 1, f"{len(err.splitlines())} lines:\n{err}"


@pytest.mark.slow  # interpreter start-ups: not for the inner loop
def test_console_script_error_has_no_traceback(tmp_path) -> None:
    """The real process: stderr names the choices in one error line and has no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsst_tune.cli",
            "run",
            "--method",
            "nope",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "imp, refill, rsst" in errors[0]
    assert not (tmp_path / "x").exists()


def test_run_flags_of_optional_numeric_fields_are_read_as_numbers() -> None:
    """`rsst-tune run --train_subset 0.5 --data_workers 2`: fields whose default is None still
    parse their flag as a number (they reached the config as text and were refused)."""
    from rsst_tune.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["run", "--train_subset", "0.5", "--data-workers", "2", "--val_size", "10"]
    )
    cfg = config_from_args(args)
    assert (cfg.train_subset, cfg.data_workers, cfg.val_size) == (0.5, 2, 10)
    args = build_parser().parse_args(["run", "--train_subset", "none"])
    assert config_from_args(args).train_subset is None
