"""Ray for a sweep: a quiet local cluster on 127.0.0.1, or a check that `--address` answers.

saved = prepare_ray_env(address)    # before `import ray`: the environment a quiet Ray needs
started = init_ray(address, saved)  # True when this call started (or joined) Ray: shut it down
reaper = start_reaper()     # a local cluster's helper processes die with the driver
reaper.close()              # after ray.shutdown(): a clean exit, nothing to reap

Ray saves its experiment state (which trials exist, their last registered checkpoint) every
`TUNE_GLOBAL_CHECKPOINT_S` seconds; a sweep sets 1 (unless set), not Ray's 10 s or more, so
that a driver killed with SIGKILL loses at most the state in flight of each trial.

When the driver of a local cluster is killed (SIGKILL), the kernel ends Ray's GCS and raylet
with it (Ray's fate sharing) but not the raylet's agents, which wait about a minute for the
dead GCS. `start_reaper` starts a small process that waits for the driver's end and then
kills the cluster's processes that remain: those the driver started (GCS, raylet, dashboard,
monitors; known by pid and start time), their children (the raylet's agents, which carry no
mark: the reaper learns them by parent every 2 s while the cluster lives) and the raylet's
workers (found by their `RAY_RAYLET_PID`), looking again until two looks in a row find none (a
process may fork while it is killed).

A local cluster is kept on 127.0.0.1 by `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which
`prepare_ray_env(None)` forces in this process's environment (Ray reads it when it is imported
and when it starts its processes). It returns the caller's own value (a `SavedRayEnv`, held by
the caller: the sweep's `SweepContext.ray_env`), which comes back once the cluster has started
(`init_ray(address, saved)`, or `restore_ray_env(saved)` for a caller that calls `ray.init`
itself): left in the environment, it reaches every process the caller starts later, and `ray
start --address` (a worker node) refuses to run under it ("Multi-node Ray clusters are not
supported on Windows and OSX"). Ray in this process keeps what it read at import. Nested
calls hand the same `SavedRayEnv` on (`prepare_ray_env(None, saved)`): it keeps the first
caller's value, and the first `restore_ray_env(saved)` gives that back.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

from rsst_tune.errors import ConfigError

SNAPSHOT_PERIOD_S = "1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class SavedRayEnv:
    """The caller's value of LOCAL_ONLY_ENV while `prepare_ray_env(None)` overrides it."""

    value: str | None = None  # None: unset
    held: bool = False  # overridden and not given back yet


def prepare_ray_env(address: str | None, saved: SavedRayEnv | None = None) -> SavedRayEnv:
    """Environment for a quiet local Ray; must run before `import ray` to take full effect.

    Returns `saved` (a new `SavedRayEnv` when None), which holds the caller's value of
    LOCAL_ONLY_ENV while a local cluster (`address` None) overrides it: hand it to
    `init_ray` or `restore_ray_env`. A `saved` that holds a value already keeps it."""
    saved = SavedRayEnv() if saved is None else saved
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the console prints one line
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # A local cluster on the loopback address: Ray uses 127.0.0.1 as the node IP. Forced
        # (not setdefault): an inherited "1" would bind an unauthenticated cluster to the LAN.
        # Until restore_ray_env(): a worker node started later from this process needs "1".
        if not saved.held:
            saved.value, saved.held = os.environ.get(LOCAL_ONLY_ENV), True
        os.environ[LOCAL_ONLY_ENV] = "0"
    return saved


def restore_ray_env(saved: SavedRayEnv) -> None:
    """Give back the caller's `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` that `prepare_ray_env(None)`
    overrode (a no-op otherwise, and once given back); call it once the local cluster has
    started, so that the processes this process starts later (`ray start --address`, a driver
    joining a cluster) do not inherit the override."""
    if not saved.held:
        return
    saved.held = False
    if saved.value is None:
        os.environ.pop(LOCAL_ONLY_ENV, None)
    else:
        os.environ[LOCAL_ONLY_ENV] = saved.value


def init_ray(address: str | None, saved: SavedRayEnv | None = None) -> bool:
    """Connect to `address` or start a local cluster; True when this call started Ray.

    A Ray already initialised in this process (`ray.init` called by the caller, e.g. tests
    sharing one cluster) is used as it is, and False is returned. `saved`: the caller's
    `prepare_ray_env` result, whose value is given back however this returns.
    """
    saved = prepare_ray_env(address, saved)
    try:
        import ray

        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address is None:
            ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
            return True
    finally:
        restore_ray_env(saved)  # the cluster's processes have what they need (module docstring)
    check_address(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    return True


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (a TCP connect with a timeout) instead of letting ray.init retry for minutes."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: nothing answers ({exc.strerror or exc}); is the cluster up?"
        ) from None


# ---------------------------------------------------------------------- reaper
_REAPER = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
mark = ("RAY_RAYLET_PID=" + sys.argv[1]).encode()
started = dict(a.split(":") for a in sys.argv[2:])  # the cluster's own: pid -> start time
parents = dict(started)
me, uid = os.getpid(), os.getuid()


def stat(name):  # (ppid, start time), start time None for a zombie: it is dead already
    with open("/proc/" + name + "/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return fields[1], None if fields[0] in ("Z", "X") else fields[19]


def start_time(name):
    return stat(name)[1]


def adopt():
    # The raylet's agents (dashboard agent, runtime env agent) carry no mark, and once the
    # raylet is dead their parent is gone too: learn them by parent while the cluster lives
    # (a parent still the one started: its pid not reused; a child of this user).
    alive = set()
    for name in parents:
        try:
            if start_time(name) == parents[name]:
                alive.add(name)
        except (OSError, IndexError):
            continue
    for name in os.listdir("/proc"):
        if not name.isdigit() or name in started:
            continue
        try:
            ppid, t = stat(name)
            if ppid in alive and t is not None and os.stat("/proc/" + name).st_uid == uid:
                started[name] = t
        except (OSError, IndexError):
            continue
    for name, t in list(started.items()):  # forget the dead (a worker churns): pids are reused
        try:
            if name not in parents and start_time(name) != t:
                del started[name]
        except (OSError, IndexError):
            del started[name]


adopt()
while not select.select([sys.stdin], [], [], 2.0)[0]:
    adopt()
if sys.stdin.buffer.read().strip() == b"bye":
    sys.exit(0)


def marked():
    for name, t in started.items():  # GCS, raylet, dashboard, monitors: most die with the driver
        try:
            if start_time(name) == t:
                yield int(name)
        except (OSError, IndexError):
            continue
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/" + name + "/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    yield int(name)
        except OSError:
            continue


# A process can fork (a data loader's workers, a worker being started) between one look at
# /proc and the kill of its parent: look again until two looks in a row find nothing.
time.sleep(0.5)
quiet, deadline = 0, time.monotonic() + 20
while quiet < 2 and time.monotonic() < deadline:
    found = 0
    for pid in marked():
        found += 1
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    quiet = 0 if found else quiet + 1
    time.sleep(0.2)
"""


class Reaper:
    """The reaper process of a local cluster; `close()` after a clean `ray.shutdown()`."""

    def __init__(self, proc: subprocess.Popen[bytes] | None) -> None:
        self.proc = proc

    def close(self) -> None:
        if self.proc is None:
            return
        stdin: IO[bytes] | None = self.proc.stdin
        try:
            if stdin is not None:
                stdin.write(b"bye")
                stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.proc = None


def _with_start_times(pids: list[int]) -> list[str]:
    """ "pid:start" for each live pid (start in clock ticks since boot): a reused pid differs."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                out.append(f"{pid}:{fh.read().rpartition(')')[2].split()[19]}")
        except (OSError, IndexError):
            continue
    return out


def start_reaper() -> Reaper:
    """Reap the local cluster's helpers if this process dies (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return Reaper(None)
    try:
        import ray

        node: Any = ray._private.worker._global_node
        raylet_pid = int(node.all_processes["raylet"][0].process.pid)
        own = [int(info.process.pid) for infos in node.all_processes.values() for info in infos]
    except (AttributeError, KeyError, IndexError, TypeError):
        logging.getLogger(__name__).debug("no raylet pid: no reaper", exc_info=True)
        return Reaper(None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(raylet_pid), *_with_start_times(own)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the terminal's process group: Ctrl+C is the driver's
        close_fds=True,
    )
    return Reaper(proc)
