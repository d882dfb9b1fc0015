"""Where a sweep writes: its storage must be writable, a new sweep must not overwrite one, and
only one sweep at a time may run in an experiment directory.

    check_storage(plan, resume=False)   # a one-line ConfigError, before anything is written
    with sweep_lock(plan):              # before Ray starts; a ConfigError naming the holder
        ...

Local storage is probed by writing (and removing) a small file; URI storage (`s3://...`,
`gs://...`) through pyarrow's filesystem, the same way Ray will write to it.

The sweep lock is `<experiment>/sweep.lock` (`rsst_tune.locks`): host, pid and command of the
sweep that runs there, touched every few seconds. A second sweep, or a `--resume`, of the same
directory exits with status 2 naming the holder while it lives; the lock of a dead holder (a
killed driver) is taken over: on the same host at once, from another host once it has missed
`MISSED_BEATS` heartbeats.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.layout import PLAN_FILE, SWEEP_LOCK
from rsst_tune.locks import (
    HEARTBEAT_S,
    MISSED_BEATS,
    LockOwner,
    OwnerLock,
    Staleness,
    break_lock,
    read_owner,
)
from rsst_tune.tune.plan import SweepPlan

log = logging.getLogger(__name__)

# errnos that mean "the storage cannot take our files": the sweep stops instead of failing
# every trial in turn
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def check_storage(plan: SweepPlan, *, resume: bool) -> None:
    """The storage must be writable; a new sweep must not overwrite an old one."""
    if plan.is_uri:
        check_uri_writable(plan.storage)
    else:
        check_writable(Path(plan.storage))
    local = Path(plan.local_dir)
    check_writable(local.parent)
    check_not_locked(local)
    if not resume and (local / PLAN_FILE).exists():
        raise ConfigError(
            f"{plan.local_dir} already holds a sweep; continue it with --resume "
            f"{plan.local_dir} or pick another --name"
        )


def check_writable(path: Path) -> None:
    """Create `path` if needed and write a probe file in it; a ConfigError when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rsst_write_probe_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to storage path {path}: {exc.strerror or exc}") from None


def check_uri_writable(uri: str) -> None:
    """The same probe through pyarrow's filesystem for a URI storage."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.rsst_write_probe_{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # pyarrow raises many types (ArrowInvalid, OSError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot write to storage {uri}: {first}") from None


# ---------------------------------------------------------------------- one sweep per directory
def _holder_message(local: Path, owner: LockOwner | None) -> str:
    if owner is None:
        return f"{local} is in use by another sweep ({local / SWEEP_LOCK} is held)"
    since = owner.info.get("since")
    command = owner.info.get("command")
    return (
        f"{local} is in use by another sweep: {owner.describe()}"
        + (f" since {since}" if since else "")
        + (f" ({command})" if command else "")
        + "; wait for it to end or stop it (Ctrl+C, or kill -INT "
        + f"{owner.pid} on {owner.host})"
    )


def check_not_locked(local: Path) -> None:
    """A ConfigError naming the holder when a live sweep holds `local`'s lock (a quick look;
    `sweep_lock` looks closer at an owner on another host)."""
    path = local / SWEEP_LOCK
    owner = read_owner(path)
    if owner is None:
        return
    alive = owner.alive()
    if alive is None:  # on another host: alive when its heartbeat is recent by our clock
        with contextlib.suppress(OSError):
            alive = time.time() - path.stat().st_mtime < MISSED_BEATS * HEARTBEAT_S
    if alive:
        raise ConfigError(_holder_message(local, owner))


@contextlib.contextmanager
def sweep_lock(plan: SweepPlan, *, heartbeat_s: float = HEARTBEAT_S) -> Iterator[OwnerLock]:
    """Hold `<local_dir>/sweep.lock` for the duration of the block (see the module doc)."""
    local = Path(plan.local_dir)
    path = local / SWEEP_LOCK
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {local}: {exc.strerror or exc}") from None
    info = {"command": plan.command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    lock = OwnerLock(path, heartbeat_s=heartbeat_s, info=info)
    judge = Staleness(MISSED_BEATS * heartbeat_s)
    deadline: float | None = None
    while True:
        try:
            acquired = lock.acquire()
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        if acquired:
            break
        stale, judged = judge.is_stale(path)
        owner = LockOwner.parse(judged or "")
        if stale:
            log.warning(
                "%s: taking over the lock of a sweep that is gone (%s)",
                local,
                owner.describe() if owner else "unreadable lock",
            )
            break_lock(path, judged)
            continue
        if judged is None:  # released meanwhile: try again
            continue
        if owner is not None and owner.alive():
            raise ConfigError(_holder_message(local, owner))
        # an owner on another host (or an unreadable lock): alive while its heartbeat moves
        if deadline is None:
            deadline = time.monotonic() + judge.stale_after + 1.0
            who = owner.describe() if owner else "an unreadable lock"
            log.warning("%s is locked by %s; checking its heartbeat", local, who)
        elif time.monotonic() > deadline:
            raise ConfigError(_holder_message(local, owner))
        time.sleep(min(1.0, heartbeat_s))
    try:
        yield lock
    finally:
        lock.release()


def storage_error(exc: BaseException) -> OSError | None:
    """`exc` (or its cause) when it says the storage cannot take our files (disk full,
    quota, permission, read-only), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def describe_storage_error(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"storage error ({exc.strerror or exc}{where})"
