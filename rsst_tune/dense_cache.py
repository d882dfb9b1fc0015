"""Shared dense training: trials whose state 0 is identical train it once.

State 0 of every method is the same dense training run, determined by the model, the data,
the seed and the training hyper-parameters (`dense_key`). The first trial to need a key trains
it and publishes the weights (atomically) under the experiment's storage; concurrent trials,
on this node or any node that shares the directory, wait for it instead of training again.

Concurrency: a trial takes `<key>.lock` with an exclusive create (atomic on local and NFS
file systems) and touches it after every epoch; a waiter that sees a lock untouched for
`stale_after` seconds (its owner died) removes it and trains itself. A failed training run
releases the lock, so the next trial retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.config import DENSE, NUMERICS, TrialConfig

log = logging.getLogger(__name__)

# Datasets that do not depend on `data_dir` (bundled or generated).
BUILTIN_DATASETS = ("digits", "synthetic")


def dense_key(cfg: TrialConfig) -> str:
    """A short hash of everything that determines state 0's trained weights (and θr).

    The fields are those of the DENSE and NUMERICS groups of `TrialConfig` (field metadata:
    a new field must name its group, so none can be forgotten here), plus the rewind epoch
    when θr is part of what state 0 produces, and the resolved data folder of datasets read
    from disk (another folder is other data).
    """
    names = TrialConfig.fields_in(DENSE) + TrialConfig.fields_in(NUMERICS)
    data: dict[str, Any] = {name: getattr(cfg, name) for name in names}
    data["decreasing_lr"] = list(cfg.decreasing_lr)
    data["rewind_epoch"] = cfg.rewind_epoch if cfg.prune_type == "rewind_lt" else None
    if cfg.dataset not in BUILTIN_DATASETS:
        data["data_dir"] = str(Path(cfg.data_dir).expanduser().resolve())
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DenseCache:
    """A directory of trained dense states, keyed by `dense_key`."""

    def __init__(self, root: str | Path, *, poll_s: float = 1.0, stale_after: float = 600.0):
        self.root = Path(root)
        self.poll_s = poll_s
        self.stale_after = stale_after

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get_or_train(
        self, key: str, train: Callable[[Callable[[], None]], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """The cached payload for `key`, training it with `train(heartbeat)` if nobody has.

        Returns (payload, trained_here).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        target, lock = self.path(key), self.root / f"{key}.lock"
        while True:
            if target.exists():
                log.info("dense state 0 %s: reusing %s", key, target)
                return ckpt.load_file(target), False
            token = self._acquire(lock)
            if token is not None:
                stop = threading.Event()
                beat = threading.Thread(target=self._keep_alive, args=(lock, stop), daemon=True)
                beat.start()
                try:
                    if target.exists():  # published between our check and the lock
                        continue
                    payload = train(lambda: _touch(lock))
                    fileio.torch_save(payload, target)
                    return payload, True
                finally:
                    stop.set()
                    beat.join()
                    _release(lock, token)
            if self._stale(lock):
                log.warning("dense state 0 %s: lock %s is stale; taking over", key, lock)
                lock.unlink(missing_ok=True)
                continue
            time.sleep(self.poll_s)

    @staticmethod
    def _acquire(lock: Path) -> str | None:
        """Create the lock exclusively; returns this owner's token, or None if it is taken."""
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        token = f"{os.getpid()}@{os.uname().nodename}/{uuid.uuid4().hex}"
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token

    def _keep_alive(self, lock: Path, stop: threading.Event) -> None:
        """Touch the lock well within `stale_after`, however long an epoch takes."""
        while not stop.wait(max(self.stale_after / 4, 0.05)):
            _touch(lock)

    def _stale(self, lock: Path) -> bool:
        try:
            return time.time() - lock.stat().st_mtime > self.stale_after
        except FileNotFoundError:
            return False


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _release(lock: Path, token: str) -> None:
    """Remove the lock only if it is still ours (a waiter may have taken over a stale one)."""
    try:
        if lock.read_text().strip() == token:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
