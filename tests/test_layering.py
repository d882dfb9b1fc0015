"""Which module may import which: `rsst_tune.pruning` takes tensors, modules and numbers only;
a config's MACs plan sits above `trial_setup`; the names that moved still resolve."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import rsst_tune.pruning
from rsst_tune import macs_plan, unit_budget

PRUNING = Path(rsst_tune.pruning.__file__).parent
# what the pruning package must never import: the config, data loaders, the trial's setup
# (the export file format, `pruning.exported`, rebuilds a model by name: `rsst_tune.models`)
ABOVE_PRUNING = ("rsst_tune.config", "rsst_tune.data", "rsst_tune.trial_setup")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_pruning_imports_no_config_data_or_setup() -> None:
    for path in sorted(PRUNING.glob("*.py")):
        bad = [m for m in _imports(path) if m.startswith(ABOVE_PRUNING)]
        assert not bad, f"{path.name} imports {bad}"


def test_importing_pruning_imports_no_config() -> None:
    code = (
        "import sys, importlib, pkgutil, rsst_tune.pruning as p\n"
        "for m in pkgutil.iter_modules(p.__path__):\n"
        "    importlib.import_module(f'rsst_tune.pruning.{m.name}')\n"
        "print(sorted(m for m in sys.modules if m in "
        "('rsst_tune.config', 'rsst_tune.trial_setup', 'rsst_tune.data')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_moved_budget_names_still_resolve_from_the_old_module() -> None:
    from rsst_tune.pruning import budget

    assert budget.MacsBudget is macs_plan.MacsBudget
    assert budget.planned_macs_frac is macs_plan.planned_macs_frac
    assert budget.layer_counts is macs_plan.layer_counts
    assert budget.conv_layers is macs_plan.conv_layers
    assert budget.ConvLayer is macs_plan.ConvLayer
    assert budget.analytic_model is macs_plan.analytic_model
    assert budget.planned_alive is unit_budget.planned_alive
    assert budget.layer_ratios is unit_budget.layer_ratios
    assert budget.check_layer_ratios is unit_budget.check_layer_ratios
    try:
        budget.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an unknown name must raise AttributeError")


def test_a_searcher_pickled_before_the_move_loads() -> None:
    """Ray saved sweeps' searchers (with their MacsBudget) under the old module path."""
    data = pickle.dumps(macs_plan.MacsBudget({"model": "vit_digits"}, 0.5), protocol=0)
    old = data.replace(b"rsst_tune.macs_plan", b"rsst_tune.pruning.budget")
    assert old != data
    loaded = pickle.loads(old)
    assert isinstance(loaded, macs_plan.MacsBudget)
    assert (loaded.base, loaded.budget) == ({"model": "vit_digits"}, 0.5)
