"""`--keep-checkpoints`: which state checkpoints of a sweep stay on disk.

    all    every state's checkpoint
    last   each trial's latest only (Ray's `num_to_keep=1`): what `--resume` needs; the
           report can export only tickets at a trial's last state
    best   (default) each trial's latest, and every state that at most K states of the whole
           sweep beat (K = `--confirm`, 0 without it)

A state b is *beaten* by a state a when a is at least as accurate (val_acc), has at most b's
MACs and params, and is more accurate or has fewer MACs. The report's ticket at a MACs budget
is the most accurate state within it, ties going to fewer MACs: a beaten state is never it
(its beater fits every budget it fits, and ranks first). Seed confirmation re-runs the top K
tickets of each budget; a state beaten K+1 times is below K others at every budget, so it is
never among them. States only ever gain beaters, so a checkpoint dropped stays unneeded.

`CheckpointRetention` is a Ray Tune callback in the driver: when a state's result arrives, the
checkpoints that became unneeded are queued, and deleted once `DELAY_S` have passed (through
the trial's storage filesystem, so URI storage works too): by then Ray's experiment snapshot
(every second) names the trial's newer checkpoint, so a driver killed at any moment never
resumes from a deleted one. A sweep's disk is then about (trials + the sweep's front) x one
checkpoint, not (trials x states) x one checkpoint.

Only checkpoints of states this driver saw reported are ever deleted, and never a trial's
latest. After `--resume` the states recorded before (`result.json` of each trial) only rank the
others: `result.json` can be ahead of Ray's snapshot, so its last row may not be the state Ray
resumes from, and those older checkpoints are left alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from rsst_tune.experiment.layout import RESULT_FILE, trial_dirname

log = logging.getLogger(__name__)

DELAY_S = 10.0  # > Ray's experiment snapshot period (TUNE_GLOBAL_CHECKPOINT_S = 1 in a sweep)


def ray_num_to_keep(keep: str) -> int | None:
    """Ray's `CheckpointConfig(num_to_keep=...)` for a policy (Ray drops the older ones)."""
    return 1 if keep == "last" else None


@dataclass
class _State:
    """One reported state of one trial: what ranks it, and where its checkpoint is."""

    trial_id: str
    state: int
    val_acc: float
    macs_frac: float
    params_frac: float
    checkpoint: str | None  # the checkpoint directory's name inside the trial's directory
    beaten_by: int = 0
    live: bool = True  # reported to this driver (False: read from result.json after a resume)


def beats(a: _State, b: _State) -> bool:
    """Whether `a` ranks above `b` at every MACs budget `b` fits (see the module)."""
    return (
        a.val_acc >= b.val_acc
        and a.macs_frac <= b.macs_frac
        and a.params_frac <= b.params_frac
        and (a.val_acc > b.val_acc or a.macs_frac < b.macs_frac)
    )


@dataclass
class Ledger:
    """The sweep's states so far and which checkpoints `best` still needs (no Ray, no files:
    `CheckpointRetention` does the deleting)."""

    confirm: int = 0
    states: dict[tuple[str, int], _State] = field(default_factory=dict)
    latest: dict[str, int] = field(default_factory=dict)
    dropped: set[tuple[str, int]] = field(default_factory=set)

    def add(self, row: Mapping[str, Any], trial_id: str, *, live: bool = True) -> list[_State]:
        """Record one result row (`live`: reported now; else read back after a resume, which
        only ranks the others); return the states whose checkpoints are no longer needed."""
        try:
            new = _State(
                trial_id,
                int(row["state"]),
                float(row["val_acc"]),
                float(row["macs_frac"]),
                float(row["params_frac"]),
                row.get("checkpoint_dir_name") or None,
                live=live,
            )
        except (KeyError, TypeError, ValueError):
            return []  # not a state result (Ray's own rows): nothing to rank
        key = (trial_id, new.state)
        old = self.states.pop(key, None)  # a state run again after a restart replaces its row
        if old is not None:
            for s in self.states.values():
                s.beaten_by -= beats(old, s)
        for s in self.states.values():
            s.beaten_by += beats(new, s)
            new.beaten_by += beats(s, new)
        self.states[key] = new
        if live:  # the state Ray now resumes the trial from
            self.latest[trial_id] = new.state
        return self.unneeded()

    def unneeded(self) -> list[_State]:
        out = []
        for key, s in self.states.items():
            if key in self.dropped or s.checkpoint is None or not s.live:
                continue
            latest = self.latest.get(s.trial_id)
            if latest is not None and s.state < latest and s.beaten_by > self.confirm:
                out.append(s)
        return out


class CheckpointRetention(Callback):
    """Deletes the checkpoints `--keep-checkpoints best` no longer needs, as results arrive."""

    def __init__(self, keep: str, confirm: int, local_dir: str | None) -> None:
        self.keep = keep
        self.ledger = Ledger(confirm=confirm)
        self.local_dir = local_dir  # where earlier result rows are read after --resume
        self.read_earlier = False
        self.pending: dict[tuple[str, int], tuple[float, _State]] = {}  # queued deletions

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if self.keep != "best":
            return
        if not self.read_earlier:
            self.read_earlier = True
            for trial_id, row in self._earlier_rows():
                self.ledger.add(row, trial_id, live=False)
        now = time.monotonic()
        for s in self.ledger.add(result, str(trial.trial_id)):
            self.pending.setdefault((s.trial_id, s.state), (now, s))
        self._drop_due(trials, now - DELAY_S)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # every trial over (not an interrupted sweep, which resumes): nothing to wait for
        if self.keep == "best" and all(t.status in ("TERMINATED", "ERROR") for t in trials):
            self._drop_due(trials, float("inf"))

    def _drop_due(self, trials: list[Any], before: float) -> None:
        for key, (queued, s) in list(self.pending.items()):
            if queued > before:
                continue
            del self.pending[key]
            if s.state < self.ledger.latest.get(s.trial_id, -1) and key not in self.ledger.dropped:
                self._drop(s, trials)

    def _earlier_rows(self) -> list[tuple[str, dict[str, Any]]]:
        rows: list[tuple[str, dict[str, Any]]] = []
        if self.local_dir is None:
            return rows
        for path in sorted(Path(self.local_dir).glob(f"{trial_dirname('*')}/{RESULT_FILE}")):
            trial_id = path.parent.name.removeprefix(trial_dirname(""))
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    rows.append((trial_id, json.loads(line)))
                except ValueError:
                    continue  # a row cut short by a killed driver
        return rows

    def _drop(self, s: _State, trials: list[Any]) -> None:
        owner = next((t for t in trials if str(t.trial_id) == s.trial_id), None)
        if owner is None or s.checkpoint is None:
            return
        storage = owner.storage
        path = Path(storage.trial_fs_path, s.checkpoint).as_posix()
        restores_from = getattr(getattr(owner, "checkpoint", None), "path", None)
        if restores_from is not None and Path(restores_from).name == s.checkpoint:
            return  # Ray's own latest checkpoint of the trial: never
        try:
            storage.storage_filesystem.delete_dir(path)
        except FileNotFoundError:
            pass  # gone already (a restart's dropped state)
        except OSError as exc:
            log.warning("could not drop checkpoint %s: %s", path, exc)
            return
        self.ledger.dropped.add((s.trial_id, s.state))
        log.debug("dropped %s (state %d of trial %s)", path, s.state, s.trial_id)
