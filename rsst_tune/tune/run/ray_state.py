"""Ray's experiment state, kept whole by the sweep: a signed backup of its last intact copy
(`backup_ray_state`, every few seconds while the sweep runs) and the repair before a resume
(`repair_ray_state`). Reading the state is the record layer's (`rsst_tune.experiment.reader`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.layout import RAY_STATE_BACKUP
from rsst_tune.experiment.reader import file_intact, ray_state_files, ray_state_intact
from rsst_tune.tune.safety.trust import sign_copies


def backup_ray_state(exp_dir: Path) -> bool:
    """Copy Ray's newest experiment state to `.ray_state_backup/` when it is intact (each file
    written aside, signed (`trust.sign_copies`) and renamed, so a failed copy leaves the
    previous backup whole and signed)."""
    files = ray_state_files(exp_dir)
    if not ray_state_intact(files):
        return False
    backup = exp_dir / RAY_STATE_BACKUP
    backup.mkdir(exist_ok=True)
    copies = [(backup / f".{path.name}.tmp", backup / path.name, path) for path in files]
    try:
        for path, (tmp, _, _) in zip(files, copies, strict=True):
            shutil.copyfile(path, tmp)
        if not all(file_intact(tmp) for tmp, _, _ in copies):  # Ray rewrote one meanwhile
            return False
        sign_copies(exp_dir, copies)  # before they replace the signed backup
        for tmp, target, _ in copies:
            os.replace(tmp, target)
    finally:
        for tmp, _, _ in copies:
            tmp.unlink(missing_ok=True)
    names = {p.name for p in files}
    for old in backup.iterdir():
        if old.name not in names and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    return True


def repair_ray_state(exp_dir: Path) -> str | None:
    """Before a resume: when Ray's newest experiment state is damaged (a full disk cut it),
    put it aside (`*.damaged`) and restore the last intact copy from `.ray_state_backup/`.
    Returns what was done, None when nothing needed doing; raises ConfigError when the state
    is damaged and no intact copy exists."""
    files = ray_state_files(exp_dir)
    if not files or ray_state_intact(files):
        return None
    backup = ray_state_files(exp_dir / RAY_STATE_BACKUP)
    if not ray_state_intact(backup):
        raise ConfigError(
            f"Ray's experiment state in {exp_dir} ({files[0].name}) is damaged (cut off by a "
            "full disk?) and there is no intact copy to resume from; the trials' checkpoints, "
            "results and the Optuna journal are intact: start a new sweep"
        )
    for path in files:
        path.rename(path.with_name(path.name + ".damaged"))
    for path in backup:
        shutil.copyfile(path, exp_dir / path.name)
    return f"restored Ray's experiment state from {backup[0].parent} ({files[0].name} was damaged)"
