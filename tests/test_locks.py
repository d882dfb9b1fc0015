"""Lock owners' liveness comes from psutil: right without /proc (macOS) as with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rsst_tune import locks
from rsst_tune.locks import LockOwner, Staleness, pid_alive

_read_text = Path.read_text


@pytest.fixture
def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of a /proc file through pathlib (how the lock code reads) fails as on a
    system without /proc; psutil keeps its own way of asking the OS."""

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if str(self).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return _read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    assert locks.process_start(os.getpid()) is None  # the lock code sees no /proc


def _spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def live() -> Iterator[int]:
    proc = _spawn("import time; time.sleep(120)")
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = _spawn("pass")
    proc.wait()  # exited and reaped
    return proc.pid


@pytest.fixture
def zombie() -> Iterator[int]:
    proc = _spawn("pass")  # exits at once; not waited for, so not reaped: a zombie
    deadline = time.monotonic() + 30
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    yield proc.pid
    proc.wait()


@pytest.mark.usefixtures("no_proc")
def test_without_proc_live_dead_and_zombie_are_told_apart(live: int, zombie: int) -> None:
    assert pid_alive(live)
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(zombie)
    assert not pid_alive(0) and not pid_alive(-1)


@pytest.mark.usefixtures("no_proc")
def test_without_proc_a_live_owners_lock_is_never_stale(tmp_path: Path, live: int) -> None:
    me = LockOwner.me()
    assert me.start is None and me.created is not None  # recorded through psutil
    assert me.alive() is True
    lock = tmp_path / "k.lock"
    created = psutil.Process(live).create_time()
    lock.write_text(LockOwner(live, me.host, "t", created=created).to_text())
    judge = Staleness(stale_after=0.0)
    assert judge.is_stale(lock)[0] is False
    lock.write_text(LockOwner(_dead_pid(), me.host, "t").to_text())
    assert judge.is_stale(lock)[0] is True


@pytest.mark.usefixtures("no_proc")
def test_a_reused_pid_is_dead_by_its_creation_time(live: int) -> None:
    created = psutil.Process(live).create_time()
    assert pid_alive(live, created=created)
    assert pid_alive(live, created=created + locks.CREATED_TOLERANCE_S / 2)
    assert not pid_alive(live, created=created - 60)  # the pid's owner was another process
    # a lock written before psutil: its /proc start cannot be compared here, the pid lives
    assert pid_alive(live, start="12345")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_with_proc_an_older_lock_is_judged_as_it_was(live: int) -> None:
    """A lock an older rsst-tune wrote records /proc's start ticks only: still compared."""
    start = locks.process_start(live)
    assert start is not None
    assert pid_alive(live, start=start)
    assert not pid_alive(live, start=str(int(start) + 1))


def test_the_lock_file_keeps_the_fields_older_versions_read() -> None:
    me = LockOwner.me({"command": "rsst-tune tune"})
    data = json.loads(me.to_text())
    assert {"pid", "host", "token", "start", "created", "command"} <= set(data)
    back = LockOwner.parse(me.to_text())
    assert back == me
    assert LockOwner.parse(json.dumps({**data, "created": "soon"})) == LockOwner(
        me.pid, me.host, me.token, me.start, me.info
    )  # an unreadable creation time is not recorded
