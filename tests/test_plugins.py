"""The user's code and files in a sweep: `--import`, `--space FILE.py | module:NAME`, the sweep
file (`--config sweep.yaml`), `--keep-checkpoints`, and `rsst_tune.sweep`'s typed keywords."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

import rsst_tune
from rsst_tune.errors import ConfigError
from rsst_tune.plugins import load_imports, resolve_imports
from rsst_tune.tune.cli import main as tune_main
from rsst_tune.tune.plan import SweepOptions, SweepPlan, resolve_plan
from rsst_tune.tune.run.retention import Ledger

REPO = Path(__file__).resolve().parents[1]

CRITERION = """
import os
import torch
from rsst_tune.pruning.criteria import register_criterion


@register_criterion("{name}")
def by_position(model, groups, inputs):
    mark = os.environ.get("PLUGIN_MARK_DIR")
    if mark:  # which process scored units: a Ray worker has its raylet's pid
        where = "worker" if "RAY_RAYLET_PID" in os.environ else "driver"
        with open(os.path.join(mark, f"{{os.getpid()}}-{{where}}"), "a") as fh:
            fh.write("scored\\n")
    device = next(model.parameters()).device
    return [torch.arange(g.num_units, dtype=torch.float32, device=device) for g in groups]
"""

SPACE = """
import dataclasses
from search_spaces.vit_head_mlp import SPACE as BASE

SPACE = dataclasses.replace(BASE, description="vit_head_mlp, from a file")
OTHER = "not a space"
"""


# ---------------------------------------------------------------------- --import
def test_an_imported_file_registers_once_and_resolves_to_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsst_tune.pruning.criteria import CRITERIA

    (tmp_path / "crit_a.py").write_text(CRITERION.format(name="plugin_crit_a"))
    monkeypatch.chdir(tmp_path)
    try:
        specs = resolve_imports(["crit_a.py", "crit_a.py"])
        assert specs == (str(tmp_path / "crit_a.py"),)
        assert "plugin_crit_a" in CRITERIA
        load_imports(specs)  # a Ray worker's second trial: nothing registers twice
        load_imports(specs)
    finally:
        CRITERIA.unregister("plugin_crit_a")
        sys.modules.pop("crit_a", None)


def test_a_module_in_the_working_directory_is_found_and_recorded_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsst_tune.pruning.criteria import CRITERIA

    (tmp_path / "crit_b.py").write_text(CRITERION.format(name="plugin_crit_b"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert resolve_imports(["crit_b"]) == (f"crit_b@{tmp_path}",)
        assert "plugin_crit_b" in CRITERIA
    finally:
        CRITERIA.unregister("plugin_crit_b")
        sys.modules.pop("crit_b", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope_not_a_module_xyz", "no module of that name on the Python path"),
        ("missing.py", "no such file"),
        ("not a name", "not a module name"),
        ("broken.py", r"broken.py failed: ZeroDivisionError: division by zero \(.*broken.py:2\)"),
    ],
)
def test_a_bad_import_is_one_line_naming_it(
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.py").write_text("x = 1\ny = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        resolve_imports([spec])
    assert "\n" not in str(err.value)
    assert "broken" not in sys.modules


# ---------------------------------------------------------------------- --space FILE
def test_a_space_from_a_file_or_module_resolves_and_is_stored_by_its_full_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search_spaces import SPACES, get_space

    (tmp_path / "file_space.py").write_text(SPACE)
    monkeypatch.chdir(tmp_path)
    try:
        plan = resolve_plan(SweepOptions(space="file_space.py", preset="smoke"))
        assert plan.space == str(tmp_path / "file_space.py")
        assert get_space(plan.space).description == "vit_head_mlp, from a file"
        assert plan.worker_imports == (str(tmp_path / "file_space.py"),)
        again = SweepPlan.from_json(plan.to_json())  # what --resume reads
        assert again.worker_imports == plan.worker_imports
        named = get_space("search_spaces.vit_head_mlp:SPACE")
        assert named.define is get_space("vit_head_mlp").define
        with pytest.raises(ConfigError, match="must be a SearchSpace"):
            get_space("file_space.py:OTHER")
        with pytest.raises(ConfigError, match="defines no NOPE; it defines: BASE, OTHER, SPACE"):
            get_space("file_space.py:NOPE")
    finally:
        for name in list(SPACES.names()):
            if name.startswith((str(tmp_path), "search_spaces.")):
                SPACES.unregister(name)
        sys.modules.pop("file_space", None)


# ---------------------------------------------------------------------- sweep file
def _dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = tune_main([*argv, "--storage", str(tmp_path / "exp"), "--dry-run"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_sweep_file_gives_the_options_and_the_flags_beside_it_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(
        textwrap.dedent(
            """\
            space: vit_head_mlp
            preset: smoke
            num_samples: 3          # underscores or dashes
            max-failures: 1
            fix: {lr: 0.005, rate: 0.3}
            set:
              batch_size: 64
            wandb-tags: [a, b]
            keep-checkpoints: last
            no-onnx: true
            """
        )
    )
    code, out = _dry_run(tmp_path, capsys, "--config", "sweep.yaml", "--num-samples", "5",
                         "--fix", "lr=0.001")  # fmt: skip
    assert code == 0, out
    merged = yaml.safe_load(out.split("\n\n")[0].split("\n", 1)[1])
    assert merged["num-samples"] == 5  # the flag beside the file
    assert merged["fix"] == {"lr": 0.001, "rate": 0.3}  # per name: the flag's lr
    assert merged["set"] == {"batch_size": 64}
    assert merged["max-failures"] == 1 and merged["keep-checkpoints"] == "last"
    assert merged["wandb-tags"] == ["a", "b"] and merged["no-onnx"] is True
    assert "batch_size             64" in out  # the plan uses them
    assert "disk        about" in out and "this sweep keeps last" in out
    # the printed file runs the same sweep again
    (tmp_path / "again.yaml").write_text(out.split("\n\n")[0].split("\n", 1)[1])
    code, again = _dry_run(tmp_path, capsys, "--config", "again.yaml")
    assert code == 0 and again.split("\n\n")[0] == out.split("\n\n")[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_sample: 3\n", "unknown key 'num_sample'; a sweep file takes: address, confirm"),
        ("space: vit_head_mlp\nnum-samples: 0\n", "argument --num-samples: must be an integer"),
        ("space: [vit\n", "not valid YAML at line 2"),
        ("- space\n", "must be a map of options"),
        ("fix: lr=3\n", "fix: must be a map"),
        ("no-onnx: 1\n", "no-onnx: must be true or false"),
        ("resume: x\n", "unknown key 'resume'"),
        ("config: other.yaml\n", "unknown key 'config'"),
        ("space:\n", "space: has no value"),
    ],
)
def test_a_bad_sweep_file_is_refused_in_one_line_naming_the_file(
    text: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    res = subprocess.run(
        [sys.executable, str(REPO / "tune_main.py"), "--config", "bad.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("bad.yaml: error: ") and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_rsst_tune_tune_reads_a_sweep_file_too(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("space: vit_head_mlp\npreset: smoke\nnum-samples: 3\n")
    res = subprocess.run(
        [sys.executable, "-m", "rsst_tune.cli", "-v", "tune", "--config", "s.yaml", "--dry-run",
         "--storage", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "num-samples: 3" in res.stdout and "would run   3 trials" in res.stdout


# ---------------------------------------------------------------------- --keep-checkpoints best
def _row(state: int, acc: float, macs: float, ckpt: bool = True) -> dict[str, object]:
    return {
        "state": state,
        "val_acc": acc,
        "macs_frac": macs,
        "params_frac": macs,
        "checkpoint_dir_name": f"checkpoint_{state:06d}" if ckpt else None,
    }


def test_best_drops_exactly_the_states_no_budget_can_choose() -> None:
    ledger = Ledger(confirm=0)
    assert ledger.add(_row(0, 0.90, 1.0), "a") == []
    # state 1 beats state 0 (more accurate, fewer MACs): 0 is never the best at any budget
    dropped = ledger.add(_row(1, 0.92, 0.8), "a")
    assert [(s.trial_id, s.state) for s in dropped] == [("a", 0)]
    ledger.dropped |= {("a", 0)}
    assert ledger.add(_row(2, 0.85, 0.5), "a") == []  # cheaper: on the front, kept
    # another trial's state at the same accuracy and fewer MACs beats a/1; a/2 is the latest
    dropped = ledger.add(_row(0, 0.92, 0.7), "b")
    assert [(s.trial_id, s.state) for s in dropped] == [("a", 1)]
    # a tie on every metric beats nothing: both could be chosen
    ledger2 = Ledger()
    ledger2.add(_row(0, 0.9, 0.5), "x")
    ledger2.add(_row(1, 0.8, 0.4), "x")
    assert ledger2.add(_row(0, 0.9, 0.5), "y") == []
    # a trial's latest state is always kept (resume starts from it)
    ledger3 = Ledger()
    ledger3.add(_row(0, 0.95, 0.5), "p")
    assert ledger3.add(_row(0, 0.5, 0.9), "q") == []


def test_with_seed_confirmation_best_keeps_every_state_of_a_top_k() -> None:
    ledger = Ledger(confirm=1)  # the top 1 + 1 of a budget may be re-run: beaten once is kept
    ledger.add(_row(0, 0.80, 1.0), "a")
    ledger.add(_row(1, 0.90, 0.9), "a")
    ledger.add(_row(2, 0.50, 0.1), "a")
    assert ledger.unneeded() == []
    dropped = ledger.add(_row(0, 0.95, 0.5), "b")  # a/0 now beaten twice
    assert [(s.trial_id, s.state) for s in dropped] == [("a", 0)]


# ---------------------------------------------------------------------- Python API
def test_sweep_takes_every_sweep_option_as_a_typed_keyword() -> None:
    params = inspect.signature(rsst_tune.sweep).parameters
    for f in dataclasses.fields(SweepOptions):
        if f.name in ("space", "command"):
            continue
        assert f.name in params, f"rsst_tune.sweep lacks {f.name}="
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].annotation is not inspect.Parameter.empty
    assert {"fix", "set", "address", "show", "verbose"} <= set(params)


# ---------------------------------------------------------------------- a real sweep
@pytest.mark.sweep
@pytest.mark.slow
def test_a_sweep_file_with_an_outside_space_and_criterion_runs_them_in_the_ray_workers(
    tmp_path: Path,
) -> None:
    """A criterion and a space defined outside the package, named in a sweep file, reach
    every Ray worker; the file is stored with the sweep and shown in its report; `best` keeps
    every checkpoint the report exports."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "outside_crit.py").write_text(CRITERION.format(name="by_position"))
    (plugins / "outside_space.py").write_text(SPACE)
    marks = tmp_path / "marks"
    marks.mkdir()
    ray_dir = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    (tmp_path / "sweep.yaml").write_text(
        textwrap.dedent(
            """\
            space: plugins/outside_space.py
            import: [plugins/outside_crit.py]
            preset: smoke
            scheduler: fifo
            num-samples: 2
            epochs: 1
            states: 3
            confirm: 0
            fix: {criteria: by_position}
            storage: runs
            name: outside
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PLUGIN_MARK_DIR": str(marks),
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": ray_dir,  # short: Ray's socket paths must fit 107 bytes
    }
    env.pop("WANDB_API_KEY", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tune_main.py"), "--config", "sweep.yaml", "--quiet"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp_dir = tmp_path / "runs" / "outside"
    stored = yaml.safe_load((exp_dir / "sweep.yaml").read_text())
    assert stored["import"] == [str(plugins / "outside_crit.py")]  # absolute: runs anywhere
    assert stored["space"] == str(plugins / "outside_space.py")
    assert stored["fix"] == {"criteria": "by_position"}
    plan = json.loads((exp_dir / "sweep.json").read_text())
    assert plan["space"] == str(plugins / "outside_space.py")
    assert plan["imports"] == [str(plugins / "outside_crit.py")]
    report = (exp_dir / "report.md").read_text()
    assert f"import:\n- {plugins / 'outside_crit.py'}" in report

    experiment = rsst_tune.load_experiment(exp_dir)
    assert [t.status for t in experiment.trials] == ["complete", "complete"]
    assert all(t.config["criteria"] == "by_position" for t in experiment.trials)
    marks_left = sorted(p.name.split("-")[1] for p in marks.iterdir())
    assert marks_left and set(marks_left) == {"worker"}, marks_left  # scored in Ray workers
    for trial in experiment.trials:
        assert max(trial.state_checkpoints) == 2, trial.trial_id  # the latest is always kept
    # every ticket the report chose still has its checkpoint, and was exported
    best = experiment.best()
    assert best is not None and best.checkpoint is not None
    assert list((exp_dir / "best_exports").glob("*/export.json"))
    # what was dropped is what no budget can choose: each dropped state is beaten
    ledger = Ledger()
    for t in experiment.trials:
        for st in t.states:
            ledger.add({**st.to_dict(), "checkpoint_dir_name": "c"}, t.trial_id)
    unneeded = {(s.trial_id, s.state) for s in ledger.unneeded()}
    for t in experiment.trials:
        for st in t.states:
            assert (st.state not in t.state_checkpoints) == ((t.trial_id, st.state) in unneeded)


def test_a_module_found_in_the_working_directory_resolves_again_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pkg.mod@DIR` (what a plan stores) imports again from any directory, also as a space
    `pkg.mod@DIR:SPACE`, whose sweep gets a plain default name."""
    from rsst_tune.tune.plan import _default_name
    from search_spaces import SPACES, get_space

    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "spaces.py").write_text(SPACE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        (spec,) = resolve_imports(["plugpkg.spaces"])
        assert spec == f"plugpkg.spaces@{tmp_path}"
        monkeypatch.chdir(REPO)
        assert resolve_imports([spec]) == (spec,)  # from elsewhere: unchanged, importable
        space = get_space(f"{spec}:SPACE")
        assert space.description == "vit_head_mlp, from a file"
        assert _default_name(space.name, "smoke").startswith("spaces-smoke-")
    finally:
        for name in list(SPACES.names()):
            if "plugpkg" in name:
                SPACES.unregister(name)
        for m in ("plugpkg.spaces", "plugpkg"):
            sys.modules.pop(m, None)


def test_resume_imports_the_space_module_before_ray_unpickles_the_searcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsst_tune.tune.plan import load_plan
    from search_spaces import SPACES

    (tmp_path / "resume_space.py").write_text(SPACE)
    monkeypatch.chdir(tmp_path)
    try:
        plan = resolve_plan(
            SweepOptions(space="resume_space.py", preset="smoke", storage=str(tmp_path), name="r")
        )
        Path(plan.local_dir).mkdir()
        (Path(plan.local_dir) / "sweep.json").write_text(plan.to_json())
        sys.modules.pop("resume_space")  # a fresh driver process
        load_plan(plan.local_dir)
        assert "resume_space" in sys.modules
    finally:
        for name in list(SPACES.names()):
            if name.startswith(str(tmp_path)):
                SPACES.unregister(name)
        sys.modules.pop("resume_space", None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("fix: {lr: 1e-3}", ("fixed", {"lr": 0.001})),  # YAML leaves 1e-3 a string
        ("set: {batch_size: 64, amp: false}", ("settings", {"batch_size": 64, "amp": False})),
        ("wandb: off", ("wandb", "off")),  # YAML reads off as false
    ],
)
def test_sweep_file_values_mean_what_the_same_flags_mean(
    line: str, expected: tuple[str, object], tmp_path: Path
) -> None:
    from rsst_tune.tune.cli import build_parser, sweep_file_args

    (tmp_path / "s.yaml").write_text(f"space: vit_head_mlp\n{line}\n")
    args = build_parser().parse_args(sweep_file_args(tmp_path / "s.yaml"))
    field, value = expected
    got = getattr(args, "fix" if field == "fixed" else field)
    if field == "settings":
        got = args.settings
    assert (dict(got) if isinstance(value, dict) else got) == value


def test_a_sweep_file_boolean_for_a_text_option_asks_for_quotes(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("space: vit_head_mlp\nname: yes\n")
    res = subprocess.run(
        [sys.executable, str(REPO / "tune_main.py"), "--config", "s.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 2 and "name: YAML read True; write the value in quotes" in res.stderr


def test_after_a_resume_rows_read_back_only_rank_the_others() -> None:
    ledger = Ledger()
    # result.json may be ahead of Ray's snapshot: its rows are never dropped nor "latest"
    assert ledger.add(_row(0, 0.80, 1.0), "a", live=False) == []
    assert ledger.add(_row(1, 0.90, 0.9), "a", live=False) == []
    assert ledger.latest == {}
    # the trial reports again: its state 1 (re-run) is now live and latest; state 0 stays
    assert ledger.add(_row(1, 0.90, 0.9), "a") == []
    dropped = ledger.add(_row(2, 0.95, 0.8), "a")
    assert [(s.trial_id, s.state) for s in dropped] == [("a", 1)]
