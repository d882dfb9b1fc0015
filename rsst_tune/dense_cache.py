"""Shared dense training: trials whose state 0 is identical train it once.

State 0 of every method is the same dense training run, determined by the model, the data,
the seed and the training hyper-parameters (`dense_key`). The first trial to need a key trains
it and publishes the weights (atomically) under the experiment's storage; concurrent trials,
on this node or any node that shares the directory, wait for it instead of training again.

Concurrency: a trial takes `<key>.lock` (`rsst_tune.locks`: an atomic create, safe on local
and NFS file systems) holding its host and pid, and touches it after every epoch and every few
seconds (`HEARTBEAT_S`). A waiter judges the lock by its owner's liveness: on the same host a
dead pid makes it stale at once; an owner on another host is dead once its lock has gone
`MISSED_BEATS` heartbeats untouched. A stale lock is taken over and trained by the waiter. A
failed training run releases the lock, so the next trial retries; the sweep's driver removes
the locks of trials it stopped (`release_dead_locks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.config import DENSE, NUMERICS, TrialConfig
from rsst_tune.locks import (
    HEARTBEAT_S,
    MISSED_BEATS,
    LockOwner,
    OwnerLock,
    Staleness,
    break_lock,
    read_owner,
)

log = logging.getLogger(__name__)

# Datasets that do not depend on `data_dir` (bundled or generated).
BUILTIN_DATASETS = ("digits", "synthetic")
LOCK_SUFFIX = ".lock"


def dense_key(cfg: TrialConfig) -> str:
    """A short hash of everything that determines state 0's trained weights (and θr).

    The fields are those of the DENSE and NUMERICS groups of `TrialConfig` (field metadata:
    a new field must name its group, so none can be forgotten here; `compile_mode` only
    when `compile` is on), plus the rewind epoch when θr is part of what state 0 produces,
    and the resolved data folder of datasets read from disk (another folder is other data).
    """
    names = TrialConfig.fields_in(DENSE) + TrialConfig.fields_in(NUMERICS)
    data: dict[str, Any] = {name: getattr(cfg, name) for name in names}
    data["decreasing_lr"] = list(cfg.decreasing_lr)
    if not cfg.compile:  # a mode that is not used does not split the cache
        del data["compile_mode"]
    data["rewind_epoch"] = cfg.rewind_epoch if cfg.prune_type == "rewind_lt" else None
    if cfg.dataset not in BUILTIN_DATASETS:
        data["data_dir"] = str(Path(cfg.data_dir).expanduser().resolve())
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DenseCache:
    """A directory of trained dense states, keyed by `dense_key`."""

    def __init__(
        self,
        root: str | Path,
        *,
        poll_s: float = 1.0,
        heartbeat_s: float | None = None,
        stale_after: float | None = None,
    ):
        """`heartbeat_s`: how often the trainer touches its lock (default `locks.HEARTBEAT_S`);
        `stale_after`: how long a lock of an owner on another host may stay untouched
        (default `MISSED_BEATS` heartbeats). Either one sets the other when only it is given.
        """
        if heartbeat_s is None:
            heartbeat_s = HEARTBEAT_S if stale_after is None else max(stale_after, 0.15) / 3
        self.root = Path(root)
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_after = MISSED_BEATS * heartbeat_s if stale_after is None else stale_after

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def lock_path(self, key: str) -> Path:
        return self.root / f"{key}{LOCK_SUFFIX}"

    def get_or_train(
        self, key: str, train: Callable[[Callable[[], None]], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """The cached payload for `key`, training it with `train(heartbeat)` if nobody has.

        Returns (payload, trained_here).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        target, lock_path = self.path(key), self.lock_path(key)
        judge = Staleness(self.stale_after)
        waiting_for: str | None = None
        while True:
            if target.exists():
                log.info("dense state 0 %s: reusing %s", key, target)
                return ckpt.load_file(target), False
            lock = OwnerLock(
                lock_path, heartbeat_s=self.heartbeat_s, info={"what": f"dense state 0 {key}"}
            )
            if lock.acquire():
                with lock:
                    if target.exists():  # published between our check and the lock
                        continue
                    payload = train(lock.touch)
                    fileio.torch_save(payload, target)
                    return payload, True
            stale, judged = judge.is_stale(lock_path)
            if stale:
                owner = LockOwner.parse(judged or "")
                log.warning(
                    "dense state 0 %s: the lock of %s is stale (its owner is gone); taking over",
                    key,
                    owner.describe() if owner else "an unknown owner",
                )
                break_lock(lock_path, judged)
                continue
            owner = read_owner(lock_path)
            if owner is not None and owner.token != waiting_for:
                waiting_for = owner.token
                log.info("dense state 0 %s: waiting for %s, which trains it", key, owner.describe())
            time.sleep(self.poll_s)


def release_dead_locks(root: str | Path, *, wait_s: float = 0.0) -> list[Path]:
    """Remove the dense-cache locks in `root` whose owners (on this host) are dead.

    The sweep's driver calls it when a sweep stops (Ctrl+C, SIGTERM, an error), waiting up to
    `wait_s` seconds for stopped trials' processes to exit; locks of owners that still run,
    or run on other hosts, are left to them and to their heartbeats. Returns what it removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    deadline = time.monotonic() + wait_s
    removed: list[Path] = []
    pending = sorted(root.glob(f"*{LOCK_SUFFIX}"))
    while pending:
        still: list[Path] = []
        for path in pending:
            try:
                judged = path.read_text()
            except FileNotFoundError:
                continue
            owner = LockOwner.parse(judged)
            alive = owner.alive() if owner is not None else None
            if alive is False:
                break_lock(path, judged)
                removed.append(path)
                log.info("released %s (its owner %s is gone)", path, owner and owner.describe())
            elif alive:
                still.append(path)
        if not still or time.monotonic() >= deadline:
            break
        pending = still
        time.sleep(0.2)
    return removed
