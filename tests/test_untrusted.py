"""`rsst-tune report` reads an experiment directory as data: nothing in it is unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from rsst_tune.cli import main
from rsst_tune.config import TrialConfig
from rsst_tune.tune.experiment import load_experiment
from rsst_tune.tune.plan import PLAN_FILE, SweepOptions, resolve_plan


class _Touch:
    """A pickle that creates a file when it is loaded (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch.__get__(self.path), ())  # type: ignore[return-value]


def _hostile_experiment(root: Path, marker: Path) -> Path:
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(root),
                                     name="x"))  # fmt: skip
    exp = Path(plan.experiment_dir)
    exp.mkdir(parents=True)
    (exp / PLAN_FILE).write_text(plan.to_json())
    payload = _payload(marker)
    trial = {
        "trial_id": "t1",
        "status": "TERMINATED",
        "config": TrialConfig().to_dict(),
        "stub": payload,  # what Ray's own decoder would unpickle
        "placement_group_factory": payload,
    }
    state = {"trial_data": [[json.dumps(trial), json.dumps({"last_result": payload})]]}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (exp / "trial_t1").mkdir()
    return exp


def test_report_reads_ray_state_as_json_and_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    exp = _hostile_experiment(tmp_path, marker)
    pickle.loads(bytes.fromhex(_payload(marker)["value"]))
    assert marker.exists()  # the payload does run when unpickled...
    marker.unlink()
    experiment = load_experiment(exp)
    assert [t.trial_id for t in experiment.trials] == ["t1"]
    assert experiment.trials[0].config == TrialConfig().to_dict()
    assert main(["report", str(exp)]) == 0
    assert (exp / "report.md").is_file()
    assert not marker.exists()  # ...and nothing here unpickled it


def _payload(marker: Path) -> dict[str, str]:
    return {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Touch(marker)).hex()}


def test_a_copied_experiment_directory_resumes_in_place(tmp_path: Path) -> None:
    """No absolute path inside sweep.json is followed outside the directory it is in."""
    import shutil

    from rsst_tune.tune.plan import load_plan

    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke",
                                     storage=str(tmp_path / "orig"), name="x"))  # fmt: skip
    Path(plan.experiment_dir).mkdir(parents=True)
    (Path(plan.experiment_dir) / PLAN_FILE).write_text(plan.to_json())
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(plan.experiment_dir, copy)
    moved = load_plan(copy)
    assert moved.experiment_dir == moved.local_dir == str(copy.resolve())
    assert moved.dense_cache_dir == str(copy.resolve() / "dense_cache")
    assert moved.study_name == plan.study_name  # the Optuna study inside the journal
    assert str(tmp_path / "orig") not in moved.to_json()
