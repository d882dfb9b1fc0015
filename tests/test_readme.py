"""README.md runs as written: every command of its ```bash blocks, and its Python example.

The commands run one after another in a temporary working directory, each in a subprocess
with this venv's executables (`rsst-tune` beside `sys.executable`, `tune_main.py` from the
repository), so later commands see what earlier ones wrote (`runs/demo`, `experiments/...`).
`make ...` and `source ...` lines are not run; the Makefile must have every `make` target.

To keep them tiny and offline, the test changes the commands by this table only:

    command                          change                                   why
    rsst-tune run (not --resume,     + --epochs 1 --pruning_times 3           seconds per state; 3
      not --config)                                                           states: state_02.pt
    rsst-tune run                    + --quiet                                no progress bar
    rsst-tune run --dataset cifar10  + --val_size 10 --train_subset 0.01      10 val, 50 train
    a sweep (--space, no --dry-run)  + --num-samples 1 --epochs 1 --states 2  1 trial, 2 states
    a sweep whose space allows it    + --model vit_digits --img-size 8        a small ViT at 8 px,
      (its --dry-run accepts it)                                              on the sweep's own
                                                                              dataset
    --gpus-per-trial X, no CUDA      --gpus-per-trial 0                       Ray would wait for one
    a sweep without --name           + --name readme-N                        for experiments/<name>
    experiments/<name> (placeholder) the last sweep's directory
    the environment                  RAY_AUTH_MODE=disabled                   Ray without tokens
                                     OMP_NUM_THREADS=1                        one torch thread (2
                                                                              shared cores); so
                                                                              --config is exact
    ./data/cifar-10-batches-py/      fake CIFAR-10 in CIFAR's file format     --download finds it,
                                     (tests/test_data.py::write_cifar10;      fetches nothing; the
                                     5,050 train images: the default 5,000    sweeps read it from
                                     are carved for validation)               the launch folder
    ./my_images/{train,val}/CLASS/   a tiny image folder of PNGs              the README's image-
                                                                              folder sweep

A sweep's dataset is never replaced: the CIFAR sweeps read ./data as a user's would (a relative
path is the folder the sweep was launched from, not Ray's trial directory), and the check
asserts that every trial's `data_dir` is that folder.

Nothing is interrupted: `rsst-tune run --resume` follows a finished run (it prints the saved
table, trains nothing and exits 0) and `tune_main.py --resume` a finished sweep (it rewrites
the report). `--pretrained` needs the network, so no runnable command may use it.

The Python block under "## Python API" is executed verbatim, in a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_data import write_cifar10

pytestmark = pytest.mark.sweep

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_S = 300  # per command
TINY_RUN = ["--epochs", "1", "--pruning_times", "3"]
TINY_SWEEP = ["--num-samples", "1", "--epochs", "1", "--states", "2"]
SMALL_MODEL = ["--model", "vit_digits", "--img-size", "8"]
FAKE_CIFAR_PER_BATCH = 1010  # 5 x 1010 train images: CIFAR's default 5,000 validation + 50
FAKE_CIFAR_VAL = ["--val_size", "10", "--train_subset", "0.01"]  # 10 val, 50 train images
TIMING_KEYS = {"wall_time_s", "images_per_s", "gpu_busy", "mfu"}  # results.TIMING_FIELDS


# ---------------------------------------------------------------------- reading the README
def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def bash_commands(text: str) -> list[list[str]]:
    """Every command of the ```bash blocks, `\\` continuations joined, comments dropped."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def python_example(text: str) -> str:
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = fenced_blocks(section, "python")
    assert len(blocks) == 1, "the Python API section holds one ```python block"
    return blocks[0]


def option(words: list[str], name: str) -> str | None:
    """The value of the last `name VALUE` (or `name=VALUE`) in `words`."""
    value = None
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


# ---------------------------------------------------------------------- running them
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _rsst_tune() -> list[str]:
    script = Path(sys.executable).parent / "rsst-tune"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rsst_tune.cli"]


class Tour:
    """Runs README commands in `cwd`, one after another, and checks what each wrote."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.sweeps: list[str] = []  # experiment directory names, in order
        self.log: list[str] = []

    # ------------------------------------------------------------------ substitutions
    def substitute(self, words: list[str]) -> tuple[list[str], str]:
        """(argv to run, kind) for one README command; kind picks the checks."""
        if self.sweeps:
            words = [
                w.replace("experiments/<name>", f"experiments/{self.sweeps[-1]}") for w in words
            ]
        assert "--pretrained" not in words, f"needs the network: {shlex.join(words)}"
        if words[:2] == ["python", "tune_main.py"]:
            return self.substitute_tune([sys.executable, str(REPO / "tune_main.py")], words[2:])
        assert words[0] == "rsst-tune", f"a README command this test cannot run: {words}"
        sub, args = words[1], words[2:]
        if sub == "tune":
            return self.substitute_tune([*_rsst_tune(), "tune"], args)
        if sub == "run":
            if "--resume" not in args and "--config" not in args:
                args = [*args, *TINY_RUN]
            if option(args, "--dataset") in ("cifar10", "cifar100"):
                args = [*args, *FAKE_CIFAR_VAL]
            kind = "resume" if "--resume" in args else "config" if "--config" in args else "run"
            return [*_rsst_tune(), "run", *args, "--quiet"], kind
        if sub in ("report", "export"):
            return [*_rsst_tune(), sub, *args], sub
        raise AssertionError(f"a README command this test cannot run: {words}")

    def substitute_tune(self, prog: list[str], args: list[str]) -> tuple[list[str], str]:
        if "--list-spaces" in args:
            return [*prog, *args], "list-spaces"
        if "--dry-run" in args:
            return [*prog, *args], "dry-run"
        if "--resume" in args:
            return [*prog, *args], "sweep-resume"
        args = list(args)
        if not _has_cuda() and "--gpus-per-trial" in args:
            args[args.index("--gpus-per-trial") + 1] = "0"
        if option(args, "--name") is None:
            args += ["--name", f"readme-{len(self.sweeps)}"]
        args += TINY_SWEEP
        dry = self.run([*prog, *args, *SMALL_MODEL, "--dry-run"], check=False)
        if dry.returncode == 0:
            args += SMALL_MODEL
        name = option(args, "--name")
        assert name is not None
        self.sweeps.append(name)
        return [*prog, *args], "sweep"

    # ------------------------------------------------------------------ running
    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            argv,
            cwd=self.cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        self.log.append(f"$ {shlex.join(argv)}  -> exit {res.returncode}")
        if check:
            assert res.returncode == 0, (
                f"{shlex.join(argv)} exited {res.returncode}\n"
                f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}\n"
                "--- the README commands before it\n" + "\n".join(self.log[:-1])
            )
        return res

    # ------------------------------------------------------------------ checks per kind
    def check(self, kind: str, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        getattr(self, "check_" + kind.replace("-", "_"))(argv, res)

    def run_dir(self, argv: list[str]) -> Path:
        """The output directory of an `rsst-tune run` command (its --out or the default)."""
        from rsst_tune.cli import build_parser, config_from_args
        from rsst_tune.config import TrialConfig
        from rsst_tune.run import default_out

        args = build_parser().parse_args(argv[argv.index("run") :])
        if args.out:
            return self.cwd / args.out
        base = TrialConfig.from_json_file(self.cwd / args.config).to_dict() if args.config else {}
        return self.cwd / default_out(config_from_args(args, base))

    def check_run(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        out = self.run_dir(argv)
        config = json.loads((out / "config.json").read_text())
        rows = json.loads((out / "results.json").read_text())
        states = config["pruning_times"]
        assert [r["state"] for r in rows] == list(range(states))
        assert (out / "results.csv").is_file() and (out / "theta0.pt").is_file()
        assert [p.name for p in sorted(out.glob("state_*.pt"))] == [
            f"state_{s:02d}.pt" for s in range(states)
        ]
        assert rows[-1]["macs_frac"] < 1.0, "the last state is pruned"
        assert res.stdout.count("\n") >= states + 1, "the per-state table is printed"

    def check_resume(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        # a finished run: the saved table again, nothing trained, the results unchanged
        out = self.run_dir(argv)
        rows = json.loads((out / "results.json").read_text())
        assert len(rows) == json.loads((out / "config.json").read_text())["pruning_times"]
        assert res.stdout.count("\n") >= len(rows) + 1, res.stdout

    def check_config(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        self.check_run(argv, res)
        config = self.cwd / argv[argv.index("--config") + 1]
        again = json.loads((self.run_dir(argv) / "results.json").read_text())
        first = json.loads((config.parent / "results.json").read_text())
        assert _drop_timing(again) == _drop_timing(first), "same config, same numbers"

    def check_list_spaces(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        from search_spaces import list_spaces

        listed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
        assert listed == list_spaces()

    def check_dry_run(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        assert "would run" in res.stdout and "searched parameters" in res.stdout
        where = re.search(r"^experiment\s+(\S+)", res.stdout, flags=re.M)
        assert where and not Path(where.group(1)).exists(), "a dry run writes nothing"

    def check_sweep(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        from rsst_tune.experiment.reader import load_experiment

        exp_dir = self.experiment_dir(argv)
        for name in ("sweep.json", "report.md", "report.html", "optuna.journal"):
            assert (exp_dir / name).is_file(), f"{exp_dir} lacks {name}"
        experiment = load_experiment(exp_dir)
        assert [t.status for t in experiment.trials] == ["complete"], experiment.trials
        assert [s.state for s in experiment.trials[0].states] == [0, 1]
        assert experiment.pareto(), "a finished sweep has a Pareto front"
        config = experiment.trials[0].config
        if config["dataset"] not in ("digits", "synthetic"):  # read from the launch folder
            asked = option(argv, "--data-dir") or option(argv, "--data_dir") or "data"
            assert config["data_dir"] == str((self.cwd / asked).resolve()), config["data_dir"]

    def check_sweep_resume(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        exp_dir = self.cwd / argv[argv.index("--resume") + 1]
        assert (exp_dir / "report.md").is_file()
        assert "complete" in res.stdout, res.stdout

    def check_report(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        report = Path(res.stdout.strip().splitlines()[-1])
        assert report.name == "report.md" and report.is_file(), res.stdout
        assert report.parent == (self.cwd / argv[argv.index("report") + 1]).resolve()

    def check_export(self, argv: list[str], res: subprocess.CompletedProcess[str]) -> None:
        from rsst_tune.export import read_report
        from rsst_tune.pruning.exported import load_exported

        out = self.cwd / str(option(argv, "--out"))
        exported = read_report(out / "export.json")
        assert exported.params_pruned < exported.params_dense, exported
        model = load_exported(out / "model.pt")
        assert sum(p.numel() for p in model.parameters()) == exported.params_pruned
        assert "load with" in res.stdout

    def experiment_dir(self, argv: list[str]) -> Path:
        storage = option(argv, "--storage") or "experiments"
        return (self.cwd / storage / (option(argv, "--name") or "")).resolve()


def write_image_folder(root: Path, per_class: int = 12) -> None:
    """A tiny ImageNet-layout folder: train/ and val/ with two classes of 16x16 PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 3)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (16, 16, 3)) + 127 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def _drop_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


# ---------------------------------------------------------------------- the tests
def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    made = [w[1] for w in bash_commands(README.read_text()) if w[0] == "make"]
    made += re.findall(r"`make ([\w.-]+)`", README.read_text())
    assert made, "the README names its make commands"
    missing = sorted(set(made) - targets)
    assert not missing, f"README names make targets the Makefile lacks: {missing}"


def test_every_readme_command_runs(tmp_path: Path) -> None:
    commands = [w for w in bash_commands(README.read_text()) if w[0] not in ("make", "source")]
    assert len(commands) >= 10, commands
    write_cifar10(tmp_path / "data", per_batch=FAKE_CIFAR_PER_BATCH)
    write_image_folder(tmp_path / "my_images")
    tour = Tour(tmp_path)
    for words in commands:
        argv, kind = tour.substitute(words)
        res = tour.run(argv)
        tour.check(kind, argv, res)
    assert tour.sweeps, "the README shows a sweep"


def test_python_example_runs_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rsst_tune
    from rsst_tune.experiment.experiment import Experiment
    from rsst_tune.results import StateResult

    code = python_example(README.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, f"{README}:python", "exec"), namespace)

    results = namespace["results"]
    assert [type(r) for r in results] == [StateResult] * 3
    assert [r.state for r in results] == [0, 1, 2] and results[-1].macs_frac < 1.0
    experiment = namespace["experiment"]
    assert isinstance(experiment, Experiment) and Path(experiment.path).parent == (
        tmp_path / "experiments"
    )
    assert [t.status for t in experiment.trials] == ["complete", "complete"]
    assert all(len(t.states) == 2 for t in experiment.trials)
    front, best = namespace["front"], namespace["best"]
    assert front and {t.label for t in front} <= {t.label for t in experiment.tickets()}
    # best(macs=0.75) is None exactly when no selectable ticket is within 75 % of the MACs
    within = {
        t.label
        for t in experiment.tickets()
        if t.selectable and t.val_acc is not None and (t.macs_frac or 2.0) <= 0.75 + 1e-9
    }
    if within:
        assert best is not None and best.label in within, (best, within)
        assert best.val_acc is not None and best.macs_frac is not None
    else:
        assert best is None, best
    report = namespace["report"]
    assert report == Path(experiment.path) / "report.md" and report.is_file()
    printed = capsys.readouterr().out
    assert printed.count("MACs") >= 3, printed
    assert rsst_tune.load_experiment(experiment.path).tickets()
