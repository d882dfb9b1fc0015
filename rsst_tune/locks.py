"""Lock files whose staleness is judged by their owner's liveness, not by a long timeout.

    lock = OwnerLock(path, info={"command": "rsst-tune tune ..."})
    if lock.acquire():          # atomic create (a hard link: safe on local and NFS file systems)
        try:
            ...                 # a background thread touches the file every `heartbeat_s`
        finally:
            lock.release()      # removes the file only while it is still ours

A lock file holds its owner as JSON: host, pid, the pid's creation time (`created`, from
psutil, against pid reuse), a token and what the owner is. Whether someone else's lock is
stale (`Staleness.is_stale`):

* owner on this host: stale at once when its pid is dead, a zombie, or reused by another
  process (created at another time); never while it lives. Liveness comes from psutil, so it
  holds where there is no /proc (macOS) too;
* owner on another host (or a file that cannot be read): stale once its modification time
  has not changed for `stale_after` seconds (`MISSED_BEATS` heartbeats) of this process's own
  observation, so clock skew between hosts does not matter; a file untouched for ten times
  that by the wall clock is stale at once.

A stale lock is broken with `break_lock`, which renames it away first so that two processes
breaking the same lock cannot remove each other's fresh one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # a lock's owner touches it this often
MISSED_BEATS = 3  # an owner on another host is dead after this many missed heartbeats
# Two creation times of one process may differ this much (psutil derives Linux's from the boot
# time, which the clock's adjustments move by up to a second); a pid reused by another
# process is created later than that.
CREATED_TOLERANCE_S = 1.0
PROC = Path("/proc")  # Linux only: the `start` older rsst-tune versions recorded

_HELD: weakref.WeakSet[OwnerLock] = weakref.WeakSet()


@atexit.register
def _release_held() -> None:
    """A process that exits normally (SIGTERM handled, sys.exit) leaves no lock behind."""
    for lock in list(_HELD):
        with contextlib.suppress(Exception):
            lock.release()


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot, from /proc (Linux), None where
    unknown. Written beside `created` so that older rsst-tune versions, which compare this,
    judge a new owner's lock as before."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def process_created(pid: int) -> float | None:
    """When `pid` was created (seconds since the epoch, psutil's), None where unknown."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError, ValueError):
        return None


def pid_alive(pid: int, start: str | None = None, created: float | None = None) -> bool:
    """Whether process `pid` of this host runs: it exists, is no zombie, and when `created`
    is recorded it was created then (within CREATED_TOLERANCE_S), so a reused pid does not
    count. Without `created` (a lock written before psutil), a recorded `start` is compared
    where /proc can tell (Linux), as those versions did."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # exited, not reaped
            return False
        if created is not None:
            return abs(float(proc.create_time()) - created) <= CREATED_TOLERANCE_S
    except psutil.NoSuchProcess:  # gone (a ZombieProcess is one too)
        return False
    except psutil.AccessDenied:
        return True  # it exists, as another user's process
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == start


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock file."""

    pid: int
    host: str
    token: str
    start: str | None = None  # /proc clock ticks (Linux; what older versions compare)
    info: dict[str, Any] = field(default_factory=dict)
    created: float | None = None  # psutil's creation time of pid (None: not recorded)

    @classmethod
    def me(cls, info: dict[str, Any] | None = None) -> LockOwner:
        pid = os.getpid()
        return cls(
            pid,
            this_host(),
            uuid.uuid4().hex,
            process_start(pid),
            dict(info or {}),
            process_created(pid),
        )

    def to_text(self) -> str:
        data: dict[str, Any] = {
            "pid": self.pid,
            "host": self.host,
            "token": self.token,
            "start": self.start,
        }
        if self.created is not None:
            data["created"] = self.created
        return json.dumps({**data, **self.info}, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        """From `to_text`, or the older one-line `pid@host/token`; None when unreadable."""
        text = text.strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            head, _, token = text.partition("/")
            pid, at, host = head.partition("@")
            if not at or not pid.isdigit():
                return None
            return cls(int(pid), host, token)
        if not isinstance(data, dict):
            return None
        try:
            owner_pid = int(data.pop("pid"))
            owner_host, owner_token = str(data.pop("host")), str(data.pop("token"))
        except (KeyError, TypeError, ValueError):
            return None
        start = data.pop("start", None)
        created = data.pop("created", None)
        if isinstance(created, bool) or not isinstance(created, int | float):
            created = None
        return cls(
            owner_pid,
            owner_host,
            owner_token,
            None if start is None else str(start),
            data,
            None if created is None else float(created),
        )

    def alive(self) -> bool | None:
        """True/False for an owner on this host; None (unknown) for one on another host."""
        if self.host != this_host():
            return None
        return pid_alive(self.pid, self.start, self.created)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def read_owner(path: Path) -> LockOwner | None:
    try:
        return LockOwner.parse(path.read_text())
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None


def create_lock(path: Path, owner: LockOwner) -> bool:
    """Create `path` holding `owner`, atomically and only if it does not exist."""
    tmp = path.with_name(f".{path.name}.{owner.token}.tmp")
    tmp.write_text(owner.to_text())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create instead
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(owner.to_text())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def remove_if_owned(path: Path, token: str) -> bool:
    """Remove the lock only if it is still `token`'s (a waiter may have broken it)."""
    owner = read_owner(path)
    if owner is None or owner.token != token:
        return False
    path.unlink(missing_ok=True)
    return True


def break_lock(path: Path, judged: str | None) -> None:
    """Remove a lock judged stale whose content was `judged` (None: unreadable).

    It is renamed away first; if what was renamed is not what was judged (someone broke it
    and took it meanwhile), it is put back.
    """
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.broken")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        content = aside.read_text()
    except OSError:
        content = None
    if judged is not None and content != judged:
        with contextlib.suppress(OSError):
            os.link(aside, path)  # a fresh lock: give it back (unless another was made since)
    aside.unlink(missing_ok=True)


class Staleness:
    """Judges other owners' locks; remembers when each file's modification time last moved."""

    def __init__(self, stale_after: float = MISSED_BEATS * HEARTBEAT_S) -> None:
        self.stale_after = stale_after
        self._seen: dict[Path, tuple[float, float]] = {}

    def is_stale(self, path: Path) -> tuple[bool, str | None]:
        """(stale?, the content judged: pass it to `break_lock`)."""
        try:
            content = path.read_text()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, IsADirectoryError):
            return False, None
        owner = LockOwner.parse(content)
        alive = owner.alive() if owner is not None else None
        if alive is not None:
            return not alive, content
        now = time.monotonic()
        last_mtime, since = self._seen.get(path, (mtime, now))
        if last_mtime != mtime:
            since = now
        self._seen[path] = (mtime, since)
        if time.time() - mtime > 10 * max(self.stale_after, 1.0):
            return True, content
        return now - since >= self.stale_after, content


class OwnerLock:
    """A lock file this process may hold, kept fresh by a heartbeat thread while held."""

    def __init__(
        self,
        path: str | Path,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.owner = LockOwner.me(info)
        self._stop: threading.Event | None = None
        self._beat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._stop is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; start the heartbeat. False when it is taken."""
        if self.held:
            return True
        # a new token per acquisition: a lock broken and retaken is never mistaken for ours
        self.owner = replace(self.owner, token=uuid.uuid4().hex)
        if not create_lock(self.path, self.owner):
            return False
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._keep_alive, args=(self._stop,), name="lock-heartbeat", daemon=True
        )
        self._beat.start()
        _HELD.add(self)
        return True

    def touch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def _keep_alive(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            owner = read_owner(self.path)
            if owner is None or owner.token != self.owner.token:
                log.warning("lock %s was taken over by %s", self.path, owner and owner.describe())
                return
            self.touch()

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=2 * self.heartbeat_s + 1)
        self._stop = self._beat = None
        _HELD.discard(self)
        with contextlib.suppress(OSError):
            remove_if_owned(self.path, self.owner.token)

    def __enter__(self) -> OwnerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
