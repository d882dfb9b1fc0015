"""What a user's own environment and folders meet: the package's requirements admit the torch a
cluster image already holds, a sweep reads its data from the folder it was launched from (and
says so, or fails in one line before Ray starts), `--pretrained` reaches sweeps, and config
files nested too deeply are bad input (exit 2), not a crash."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tune_main_env
from packaging.requirements import Requirement
from test_data import write_cifar10
from test_imagefolder import make_folder

from rsst_tune.tune.cli import main as tune_main

try:  # Python 3.10: tomli (a dependency of the dev tools there)
    import tomllib
except ImportError:  # pragma: no cover - 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


# ---------------------------------------------------------------------- requirements
def test_torch_and_torchvision_are_ranges_that_admit_a_cluster_images_torch() -> None:
    reqs = _requirements()
    for name, old, new, beyond in (
        ("torch", "2.11.0", "2.14.1", "3.0.0"),
        ("torchvision", "0.26.0", "0.29.1", "1.0.0"),
    ):
        spec = reqs[name].specifier
        assert spec.contains(old) and spec.contains(new), (name, str(spec))
        assert not spec.contains(beyond), (name, str(spec))
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned: {spec}"
    for req in reqs.values():  # every base dependency has an upper bound
        assert any(s.operator in ("<", "<=", "~=") for s in req.specifier), str(req)


def test_the_oldest_constraints_sit_at_the_floor_of_every_range() -> None:
    reqs = _requirements()
    pins = {}
    for line in (REPO / "constraints" / "oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name in ("torch", "torchvision", "ray", "optuna", "timm", "numpy"):
        floor = next(s.version for s in reqs[name].specifier if s.operator == ">=")
        assert pins[name].startswith(floor), (name, pins[name], floor)


# Base dependencies the package uses without importing them by that name.
USED_INDIRECTLY = {
    "onnxscript": "torch.onnx.export's exporter needs it (rsst-tune export --onnx)",
    "scikit-learn": "imported as sklearn (the digits dataset)",
    "pyyaml": "imported as yaml (sweep files, tune_main.py --config)",
}


def test_every_base_dependency_is_imported_by_the_package() -> None:
    imported: set[str] = set()
    for path in [*(REPO / "rsst_tune").rglob("*.py"), *(REPO / "search_spaces").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    unused = [
        name
        for name in _requirements()
        if name.replace("-", "_") not in imported and name not in USED_INDIRECTLY
    ]
    assert not unused, f"base dependencies the package never imports: {unused}"
    assert "sklearn" in imported and "yaml" in imported


def test_wandb_and_the_dashboard_are_extras_not_base_dependencies() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "wandb" not in _requirements()
    extras = data["project"]["optional-dependencies"]
    assert {"wandb", "dashboard", "dev"} <= set(extras)
    assert any(Requirement(r).name == "wandb" for r in extras["wandb"])


# ---------------------------------------------------------------------- data paths
def _tune_main_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tune_main.py"), *args],
        env=tune_main_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_dataset_is_one_line_and_exit_2_before_any_trial(tmp_path: Path) -> None:
    res = _tune_main_subprocess(
        ["--space", "vit_head_mlp", "--num-samples", "1", "--storage", "exps", "--name", "x"],
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert str(tmp_path / "data" / "cifar-10-batches-py") in line, line  # the launch folder
    assert not (tmp_path / "exps").exists(), "nothing is started or written"


def test_a_relative_data_dir_is_the_launch_folder_and_the_dry_run_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_cifar10(tmp_path / "data", per_batch=1010)  # CIFAR's default 5,000 val + 50 train
    make_folder(tmp_path / "imgs", {"train": 6, "val": 2})
    monkeypatch.chdir(tmp_path)
    assert tune_main(["--space", "vit_head_mlp", "--dry-run", "--storage", "exps"]) == 0
    out = capsys.readouterr().out
    folder = str(tmp_path / "data")
    assert re.search(rf"^  data_dir\s+'{re.escape(folder)}'$", out, flags=re.M), out
    assert f"data        cifar10 from {folder} (50 train / 5,000 val / 1,010 test" in out

    args = ["--space", "vit_head_mlp", "--dataset", "imagefolder", "--data-dir", "imgs"]
    assert tune_main([*args, "--img-size", "16", "--dry-run", "--storage", "exps"]) == 0
    out = capsys.readouterr().out
    assert f"data        imagefolder from {tmp_path / 'imgs'} (" in out, out
    assert not (tmp_path / "exps").exists()


def test_pretrained_reaches_a_sweep_and_set_points_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--space", "vit_head_mlp", "--preset", "smoke", "--storage", str(tmp_path)]
    assert tune_main([*args, "--pretrained", "--dry-run"]) == 0
    assert re.search(r"^  pretrained\s+True$", capsys.readouterr().out, flags=re.M)
    res = _tune_main_subprocess([*args, "--set", "pretrained=true", "--dry-run"], cwd=tmp_path)
    assert res.returncode == 2 and "use --pretrained" in res.stderr, res.stderr


# ---------------------------------------------------------------------- bad input
NESTED = ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000]


@pytest.mark.parametrize("text", NESTED)
def test_a_deeply_nested_config_file_is_bad_input(tmp_path: Path, text: str) -> None:
    path = tmp_path / "nested.json"
    path.write_text(text)
    rsst_tune = Path(sys.executable).with_name("rsst-tune")
    res = subprocess.run(
        [str(rsst_tune), "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "nests brackets" in line and "RecursionError" not in line, line


def test_a_huge_config_file_is_bad_input(tmp_path: Path) -> None:
    from rsst_tune.config import TrialConfig
    from rsst_tune.errors import ConfigError
    from rsst_tune.limits import MAX_CONFIG_BYTES

    path = tmp_path / "huge.json"
    path.write_text('{"model": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ConfigError, match="at most"):
        TrialConfig.from_json_file(path)
