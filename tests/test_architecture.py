"""The report renders only what was recorded: `rsst_tune.report` imports no model, pruning,
export, ONNX, latency-measuring or sweep code (nor torch), statically and at run time; the
export records are plain data that the measuring modules re-export."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import rsst_tune.report

REPORT = Path(rsst_tune.report.__file__).parent
# what the renderer must never import (a name or any module below it)
HEAVY = (
    "torch",
    "rsst_tune.best_exports",
    "rsst_tune.checkpoint",
    "rsst_tune.export",
    "rsst_tune.latency",
    "rsst_tune.loop",
    "rsst_tune.models",
    "rsst_tune.onnx_export",
    "rsst_tune.pruning",
    "rsst_tune.train",
    "rsst_tune.trial_setup",
    "rsst_tune.tune",
)


def _is_heavy(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HEAVY)


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (and `from m import n`
    as both m and m.n)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            assert node.module is not None
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_report_package_imports_nothing_that_measures_statically() -> None:
    files = sorted(REPORT.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "files.py", "exports.py", "sections.py"}
    for path in files:
        bad = sorted(m for m in _imported(path) if _is_heavy(m))
        assert not bad, f"rsst_tune/report/{path.name} imports {bad}"


# what rendering never loads, not even through the config validation below
NEVER = tuple(h for h in HEAVY if h not in ("torch", "rsst_tune.models", "rsst_tune.pruning"))


def _run(script: str, cwd: Path) -> dict[str, list[str]]:
    """Run `script` in a fresh interpreter; it prints one JSON object last."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=cwd,
    )
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _heavy_expr(names: tuple[str, ...], where: str) -> str:
    return f"sorted(m for m in {where} if any(m == h or m.startswith(h + '.') for h in {names!r}))"


def test_importing_the_report_and_the_record_layer_loads_no_torch(tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "import rsst_tune.report, rsst_tune.experiment, rsst_tune.experiment.exports\n"
        "import rsst_tune.export_record, rsst_tune.experiment.seeds\n"
        f"print(json.dumps({{'heavy': {_heavy_expr(HEAVY, 'sys.modules')}}}))\n"
    )
    assert _run(script, tmp_path) == {"heavy": []}


RENDER = """
import json, sys
from pathlib import Path
from rsst_tune.config import TrialConfig
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.layout import EXPORT_RECORD_FILE, export_name
from rsst_tune.experiment.records import Objective, TrialRecord
from rsst_tune.export_record import ExportReport, LayerReport, Latency
from rsst_tune.report import write_report
from rsst_tune.results import StateResult

def state(s, val, macs):
    return StateResult.from_dict({
        "state": s, "method": "rsst", "val_acc": val, "test_acc": val,
        "sparsity": 1 - macs, "density_total": macs, "params": round(1e5 * macs),
        "macs": round(1e6 * macs), "params_frac": macs, "macs_frac": macs,
        "rate": 0.2 * s, "density_U": macs, "train_loss": 0.5, "epochs_trained": 1,
        "wall_time_s": 1.0, "val_size": 360, "test_size": 360,
    })

config = {"model": "vit_digits", "dataset": "digits", "seed": 0, "pruning_times": 2}
trial = TrialRecord(
    "t0", "complete", config, {}, (state(0, 0.95, 1.0), state(1, 0.93, 0.4)),
    state_checkpoints={1: "/nowhere"},
)
exp = Experiment("light", "/nonexistent", "s",
                 (Objective("val_acc", "max"), Objective("macs_frac", "min")), (trial,))
out = Path("report")
dest = out / export_name("t0", 1)
dest.mkdir(parents=True)
record = ExportReport(
    model="vit_digits", checkpoint="/nowhere/state_01.pt", file=str(dest / "model.pt"),
    params_dense=100, params_pruned=40, params_analytic=40, macs_dense=1000,
    macs_pruned=400, layers=(LayerReport("blocks.0.attn", "heads", 4, 2, 2, 0, 0),),
    num_heads={"blocks.0.attn": 2}, max_abs_diff=1e-6, atol=1e-4,
    latency=(Latency("cpu", 1, 2.0, 1.0, 0.1, 0.05, 11, 3),), input_shape=(1, 8, 8),
    input_mean=(0.5,), input_std=(0.25,),
)
(dest / EXPORT_RECORD_FILE).write_text(json.dumps(record.to_dict()))
before_render = set(sys.modules)
TrialConfig.from_dict(config)  # best_configs/ holds validated configs: what that loads
validated = set(sys.modules)
md = write_report(exp, out).read_text()
assert "| t0/s1 |" in md and "2.000 (IQR 0.100)" in md and "2.50x" in md, md
"""


def test_rendering_a_report_with_a_recorded_export_measures_nothing(tmp_path: Path) -> None:
    """The renderer reads a best ticket's export.json (its latency table) and loads no
    export, ONNX, latency, checkpoint or sweep code; torch, the models and pruning's
    registries come in only through validating the trial's `TrialConfig` (best_configs/,
    `rsst_tune.experiment.select.reproduce_config` -> `TrialConfig._validate`), and not
    at all before it."""
    script = RENDER + (
        "print(json.dumps({"
        f"'before_render': {_heavy_expr(HEAVY, 'before_render')}, "
        f"'beyond_config': {_heavy_expr(HEAVY, 'set(sys.modules) - validated')}, "
        f"'never': {_heavy_expr(NEVER, 'sys.modules')}"
        "}))\n"
    )
    assert _run(script, tmp_path) == {"before_render": [], "beyond_config": [], "never": []}


def test_the_export_records_moved_and_stay_importable_from_their_old_modules() -> None:
    from rsst_tune import export, export_record, latency, onnx_export
    from rsst_tune.experiment import layout
    from rsst_tune.pruning import exported, slicing

    assert export.ExportReport is export_record.ExportReport
    assert export.read_report is export_record.read_report
    assert latency.Latency is export_record.Latency
    assert onnx_export.OnnxCheck is export_record.OnnxCheck
    assert slicing.LayerReport is export_record.LayerReport
    # one file layout and one load call, whichever module names them
    assert export_record.load_call("a/model.pt") == exported.load_call("a/model.pt")
    assert (export.MODEL_FILE, export.REPORT_FILE, onnx_export.ONNX_FILE) == (
        layout.EXPORT_MODEL_FILE,
        layout.EXPORT_RECORD_FILE,
        layout.EXPORT_ONNX_FILE,
    )


def test_the_report_takes_no_export_request() -> None:
    import inspect

    from rsst_tune.report import build_blocks, write_report

    for fn in (write_report, build_blocks):
        assert {"export", "onnx"}.isdisjoint(inspect.signature(fn).parameters)
    assert not hasattr(rsst_tune.report, "export_best")
