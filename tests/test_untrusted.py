"""`rsst-tune report` reads an experiment directory as data: nothing in it is unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rsst_tune.cli import main
from rsst_tune.config import TrialConfig
from rsst_tune.experiment.layout import PLAN_FILE
from rsst_tune.experiment.reader import load_experiment
from rsst_tune.tune.plan import SweepOptions, resolve_plan


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


# ---------------------------------------------------------------------- --resume and pickles
def _resumable(root: Path, name: str = "r") -> Path:
    """A sweep directory as Ray leaves it: sweep.json, tuner.pkl, its state, a backup copy."""
    plan = resolve_plan(SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(root),
                                     name=name))  # fmt: skip
    exp = Path(plan.experiment_dir)
    exp.mkdir(parents=True)
    (exp / PLAN_FILE).write_text(plan.to_json())
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    session = "2026-01-01_00-00-00"
    state = {"trial_data": [[json.dumps({"trial_id": "t1", "status": "RUNNING"}), "{}"]]}
    (exp / f"experiment_state-{session}.json").write_text(json.dumps(state))
    (exp / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"searcher": 1}))
    (exp / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": 1}))
    return exp


def _resume(exp: Path, *extra: str) -> int:
    from rsst_tune.tune.cli import main as tune_main

    try:
        return tune_main(["--resume", str(exp), "--quiet", *extra])
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.fixture
def resume_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = tmp_path / "config" / "rsst-tune" / "resume.key"
    monkeypatch.setenv("RSST_TUNE_RESUME_KEY", str(key))
    return key


def test_options_resume_does_not_use_are_named_as_ignored(
    tmp_path: Path, resume_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The saved plan decides what a resumed sweep runs: the sweep's own command typed again
    with `--resume`, or a hoped-for change (`--set`), is named on stderr as ignored; the
    options `--resume` uses (`--quiet`, `--address`, ...) are not."""
    exp = _resumable(tmp_path)
    extra = ("--space", "vit_head_mlp", "--preset", "smoke", "--num-samples", "9",
             "--set", "amp=false")  # fmt: skip
    assert _resume(exp, *extra) == 2  # then refused: the directory is not signed here
    err = capsys.readouterr().err
    assert (
        f"--resume continues the sweep as it was planned ({exp / PLAN_FILE}); "
        "ignored: --space, --set, --preset, --num-samples"
    ) in err, err
    assert _resume(exp) == 2
    assert "ignored" not in capsys.readouterr().err


def test_resume_refuses_a_crafted_tuner_pkl_and_runs_none_of_it(
    tmp_path: Path, resume_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rsst_tune.tune.safety.trust import sign_all

    marker = tmp_path / "pwned"
    exp = _resumable(tmp_path)
    sign_all(exp)  # a directory this user's rsst-tune wrote...
    assert resume_key.stat().st_mode & 0o777 == 0o600
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Touch(marker)))  # ...then tampered with
    assert _resume(exp) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "tuner.pkl was not written by your rsst-tune" in line and "--trust-pickles" in line
    assert not marker.exists(), "the crafted pickle ran"
    assert not (exp / "sweep.lock").exists()

    # a directory from elsewhere, never signed here (no signatures.json), is refused the same
    other = _resumable(tmp_path, "other")
    (other / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    assert _resume(other) == 2
    assert "there is no valid signature" not in capsys.readouterr().err
    assert not marker.exists()


def test_a_signed_directory_verifies_and_a_killed_driver_falls_back_to_the_signed_copy(
    tmp_path: Path, resume_key: Path
) -> None:
    from rsst_tune.experiment.reader import RAY_STATE_BACKUP
    from rsst_tune.tune.run.ray_state import backup_ray_state
    from rsst_tune.tune.safety.trust import check_resume, sign_all

    exp = _resumable(tmp_path)
    assert check_resume(exp, trust=True) == []
    assert sign_all(exp) == 4  # the runner signs tuner.pkl (and the rest) before Ray runs
    assert backup_ray_state(exp)  # the driver's copy every 2 s: signed with the files it copies
    assert check_resume(exp) == []  # nothing rewritten since: every file verifies
    # Ray rewrites its state after the last signed copy, then the driver is SIGKILLed
    state = exp / "experiment_state-2026-01-01_00-00-00.json"
    copied = state.read_text()
    state.write_text(copied.replace("RUNNING", "PENDING"))
    (notes,) = check_resume(exp)
    assert "last signed copy" in notes
    assert state.read_text() == copied == (exp / RAY_STATE_BACKUP / state.name).read_text()
    assert Path(f"{state}.unsigned").is_file()
    assert check_resume(exp) == []
    # an unsigned error.pkl of a trial is set aside (Ray reads error.txt instead)
    (exp / "trial_t1").mkdir()
    (exp / "trial_t1" / "error.pkl").write_bytes(pickle.dumps(ValueError("x")))
    (note,) = check_resume(exp)
    assert "set aside 1 unsigned error.pkl (trial_t1/error.pkl;" in note
    assert not (exp / "trial_t1" / "error.pkl").exists()
    # the end of a sweep signs what is there
    (exp / "trial_t1" / "error.pkl").write_bytes(pickle.dumps(ValueError("y")))
    assert sign_all(exp) >= 5
    assert check_resume(exp) == [] and (exp / "trial_t1" / "error.pkl").exists()


def test_the_resume_key_must_be_private(tmp_path: Path, resume_key: Path) -> None:
    from rsst_tune.errors import ConfigError
    from rsst_tune.tune.safety import trust

    exp = _resumable(tmp_path)
    assert trust.sign_all(exp)
    resume_key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by you only"):
        trust.check_resume(exp)
    resume_key.chmod(0o600)
    assert trust.check_resume(exp) == []
