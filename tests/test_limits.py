"""Every input limit lives in `rsst_tune.limits`, a module that imports nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rsst_tune.config as config
from rsst_tune import limits

CONFIG_LIMITS = (
    "MAX_STATES",
    "MAX_EPOCHS",
    "MAX_BATCH",
    "MAX_SEED",
    "MAX_THREADS",
    "MAX_COUNT",
    "MAX_VAL_SIZE",
    "MAX_WORKERS",
    "MAX_IMG_SIZE",
    "MAX_TEMPERATURE",
    "MAX_COEFF",
    "MAX_LAYERS",
)


def test_limits_module_imports_nothing() -> None:
    """Any module, however light it must stay (the sweep's CLI), may import the limits."""
    tree = ast.parse(Path(limits.__file__).read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_config_still_exports_its_limits() -> None:
    for name in CONFIG_LIMITS:
        assert getattr(config, name) == getattr(limits, name), name
    assert limits.MAX_STATE == limits.MAX_STATES - 1  # state_99.pt is the last file name


def test_models_do_not_import_the_config() -> None:
    """The models read MAX_IMG_SIZE from `limits`: no `config -> models -> config` circle."""
    code = "import sys, rsst_tune.models; print('rsst_tune.config' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
