"""Chaos tests (issue 8): sweeps that survive a killed worker, SIGINT, a killed driver, a second
sweep on their directory and a full disk, and keep the W&B key out of Ray and of every file
(docs/reliability.md lists each guarantee beside its test).

Each sweep runs `tune_main.py` in a subprocess that starts its own local Ray on 127.0.0.1
with `RAY_TMPDIR` in the test's own temporary directory (so its session directory can be
searched, and nothing is shared with other Ray processes on the machine); a sweep stops its
Ray itself, and a test that fails kills only the processes it started. Tiny: digits, the
`vit_digits` model, 2-3 states of a few epochs, 1-2 trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# fifo: these tests need every trial to run every state (MO-ASHA, the space's default, may
# stop one); they test recovery, not scheduling
TINY = [
    *("--preset", "smoke", "--dataset", "digits", "--model", "vit_digits", "--confirm", "0"),
    *("--scheduler", "fifo"),
]

pytestmark = [pytest.mark.sweep, pytest.mark.slow]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short temporary directory for Ray's session files (Unix socket paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_TMPDIR"] = str(ray_tmp)
    env["RSST_TUNE_RESUME_KEY"] = str(ray_tmp / "resume.key")  # the test's own signing key
    env.pop("WANDB_API_KEY", None)
    # as from a fresh shell, whatever ran in this process before (a sweep sets its own; a
    # worker node's `ray start --address` refuses to run with "0": the 2-node test)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.update(extra)
    return env


def _tune(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tune_main.py"), *args]


def _sweep(storage: Path, name: str, *args: str) -> list[str]:
    return _tune("--space", "vit_head_mlp", *TINY, "--storage", str(storage), "--name", name, *args)


class Sweep:
    """A sweep running in a subprocess; stopped (by its pid only) if the test ends early."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl+C of the test run is not the sweep's
        )
        self.out = self.err = ""

    def wait_for(self, what: str, check: Any, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                _out, err = self.proc.communicate()
                pytest.fail(f"the sweep ended (rc {self.proc.returncode}) before {what}:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f}s")
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> int:
        self.out, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its reaper ends the Ray processes it started
                self.proc.communicate()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _events(exp_dir: Path) -> list[dict[str, Any]]:
    path = exp_dir / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            out.append(json.loads(line))
    return out


def _rows(exp_dir: Path, trial_id: str) -> list[dict[str, Any]]:
    text = (exp_dir / f"trial_{trial_id}" / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _study_states(exp_dir: Path) -> dict[str, str]:
    from rsst_tune.tune import load_experiment

    study = load_experiment(exp_dir).study
    assert study is not None
    return {t.user_attrs.get("ray_trial_id", f"#{t.number}"): t.state.name for t in study.trials}


# ---------------------------------------------------------------------- retries
def test_killed_worker_restarts_from_its_last_state_and_completes(
    tmp_path: Path, ray_tmp: Path
) -> None:
    exp_dir = tmp_path / "kw"
    cmd = _sweep(tmp_path, "kw", "--states", "3", "--epochs", "3", "--num-samples", "1")
    sweep = Sweep(cmd, _env(ray_tmp), tmp_path)
    try:
        sweep.wait_for(
            "a saved state", lambda: any(e["event"] == "saved" for e in _events(exp_dir))
        )
        state0 = next(e for e in _events(exp_dir) if e["event"] == "state")
        os.kill(int(state0["pid"]), signal.SIGKILL)  # the trial's worker, mid state 1
        assert sweep.finish() == 0, sweep.err
    finally:
        sweep.stop()

    from rsst_tune.tune import load_experiment

    (trial,) = load_experiment(exp_dir).trials
    assert trial.status == "complete" and trial.error is None
    events = [e["event"] for e in _events(exp_dir) if e["trial_id"] == trial.trial_id]
    assert "retry" in events and events[-1] == "done" and "error" not in events, events
    rows = _rows(exp_dir, trial.trial_id)
    assert [r["state"] for r in rows] == [0, 1, 2]  # no state reported twice
    assert rows[-1]["resumed_from"] >= 1, "the retry restarted from scratch"
    assert _study_states(exp_dir) == {trial.trial_id: "COMPLETE"}
    report = (exp_dir / "report.md").read_text()
    assert f"| {trial.trial_id} | complete |" in report.replace("`", "")


def test_a_killed_rank_of_a_trial_on_two_workers_restarts_it_from_its_last_state(
    tmp_path: Path, ray_tmp: Path
) -> None:
    """`--workers-per-trial 2`: SIGKILL of one Ray Train worker during state 1 fails the
    trial's run; Ray retries the trial, which resumes on 2 new workers from its state 0
    checkpoint and completes, no state reported twice."""
    import psutil

    exp_dir = tmp_path / "kr"
    cmd = _sweep(
        tmp_path, "kr", "--states", "3", "--epochs", "3", "--num-samples", "1",
        "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
    )  # fmt: skip
    sweep = Sweep(cmd, _env(ray_tmp), tmp_path)
    try:
        sweep.wait_for(
            "a saved state", lambda: any(e["event"] == "saved" for e in _events(exp_dir))
        )
        ranks = [
            p
            for p in psutil.Process(sweep.proc.pid).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())
        ]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        ranks[-1].kill()  # one rank, mid state 1
        assert sweep.finish() == 0, sweep.err
    finally:
        sweep.stop()

    from rsst_tune.tune import load_experiment

    (trial,) = load_experiment(exp_dir).trials
    assert trial.status == "complete" and trial.error is None
    events = [e["event"] for e in _events(exp_dir) if e["trial_id"] == trial.trial_id]
    assert "retry" in events and events[-1] == "done" and "error" not in events, events
    rows = _rows(exp_dir, trial.trial_id)
    assert [r["state"] for r in rows] == [0, 1, 2]  # no state reported twice
    assert rows[-1]["resumed_from"] >= 1, "the retry restarted from scratch"
    assert all(r["world_size"] == 2 for r in rows)


_DIVERGING = """
import sys

from rsst_tune.experiment.records import Objective
from rsst_tune.tune.space import SMOKE_DIGITS, SearchSpace
from search_spaces import register_space


def define(trial):
    return {"lr": trial.suggest_categorical("lr", [3e-3, 1e3])}


register_space(
    "diverging",
    SearchSpace(
        description="the digits smoke recipe; the first trial's lr (1e3) diverges",
        base={**SMOKE_DIGITS, "method": "rsst", "head_ratio": 0.25, "mlp_ratio": 0.5},
        define=define,
        objectives=(Objective("val_acc", "max"), Objective("macs_frac", "min")),
        starting_points=({"lr": 1e3}, {"lr": 3e-3}),
    ),
)
from rsst_tune.tune.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_diverged_trial_is_an_error_at_once_and_the_sweep_goes_on(
    tmp_path: Path, ray_tmp: Path
) -> None:
    from rsst_tune.tune import load_experiment

    script = tmp_path / "diverging_sweep.py"
    script.write_text(_DIVERGING)
    exp_dir = tmp_path / "nan"
    res = subprocess.run(
        [
            *(sys.executable, str(script), "--space", "diverging", "--storage", str(tmp_path)),
            *("--name", "nan", "--num-samples", "2", "--states", "2", "--epochs", "2"),
            *("--max-failures", "2", "--quiet"),
        ],
        env=_env(ray_tmp),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr  # the other trial finished
    exp = load_experiment(exp_dir)
    by_lr = {t.config["lr"]: t for t in exp.trials}
    bad, good = by_lr[1e3], by_lr[3e-3]
    assert good.status == "complete", good
    assert bad.status == "error" and bad.error is not None
    assert "TrialDiverged: diverged in state 0, epoch" in bad.error, bad.error
    error_txt = (exp_dir / f"trial_{bad.trial_id}" / "error.txt").read_text()
    assert error_txt.count("Failure # ") == 1, "a diverged trial was retried"
    events = [e["event"] for e in _events(exp_dir) if e["trial_id"] == bad.trial_id]
    assert "error" in events and "retry" not in events, events
    assert exp.study is not None
    (ot,) = [t for t in exp.study.trials if t.user_attrs.get("ray_trial_id") == bad.trial_id]
    assert ot.state.name == "FAIL" and "diverged in state 0" in ot.user_attrs["fail_reason"]
    # nothing selects the diverged trial: it has no ticket, and no chosen config names it
    assert bad.states == () and all(t.trial_id == good.trial_id for t in exp.tickets())
    best = exp.best(macs=1.0)
    assert best is not None and best.trial_id == good.trial_id
    assert bad.trial_id not in (exp_dir / "best_config.json").read_text()
    report = (exp_dir / "report.md").read_text().replace("`", "")
    assert f"| {bad.trial_id} | error |" in report and "diverged in state 0" in report


# ---------------------------------------------------------------------- a 2-node cluster
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """One node of a local Ray cluster started with `ray start --block` in its own process
    group; its processes (raylet, workers, agents) carry `RSST_TEST_NODE=<tag>` in their
    environment, so they are found, and killed, by pid. Never `ray stop`: that stops every
    Ray process of the machine. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`: with "0" (which a local
    sweep sets) a worker node's `ray start` exits at once ("Multi-node Ray clusters are not
    supported on Windows and OSX"); with "1" Ray registers the node under the machine's own IP,
    `--node-ip-address=127.0.0.1` notwithstanding."""

    def __init__(
        self, tag: str, args: list[str], env: dict[str, str], log: Path | None = None
    ) -> None:
        self.mark = f"RSST_TEST_NODE={tag}"
        self.log = log
        ray_cli = str(Path(sys.executable).with_name("ray"))
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [ray_cli, "start", "--block", "--disable-usage-stats", *args],
            env={**env, "RSST_TEST_NODE": tag, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self, lines: int = 8) -> str:
        """The last lines `ray start` printed (when it was started with a log file)."""
        if self.log is None or not self.log.is_file():
            return ""
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def check_running(self, what: str) -> None:
        """Fail at once, with its output, when `ray start --block` has exited."""
        if self.proc.poll() is not None:
            pytest.fail(f"{what}: `ray start` exited ({self.proc.returncode}): {self.output()}")

    def pids(self) -> list[int]:
        return _live_processes_with(self.mark)

    def kill(self) -> None:
        for _ in range(3):  # processes started while others die
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else 0


def start_head(tag: str, tmp_path: Path, ray_tmp: Path, env: dict[str, str]) -> tuple[str, Node]:
    """A head node on 127.0.0.1 (1 CPU, no GPU), waited for: (its address, the node)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = Node(
        f"{tag}-head-{port}",
        ["--head", f"--port={port}", "--include-dashboard=false",
         "--temp-dir", str(ray_tmp / "h"), *NODE_ARGS],
        env,
        log=tmp_path / f"{tag}-head.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 1:
            head.check_running("the head node")
            assert time.monotonic() < deadline, f"the head node did not start: {head.output()}"
            time.sleep(1)
    except BaseException:
        head.kill()
        raise
    return address, head


def start_worker(
    tag: str, address: str, tmp_path: Path, ray_tmp: Path, env: dict[str, str]
) -> Node:
    """A worker node joining `address` (1 CPU, no GPU), waited for (the cluster then has 2)."""
    worker = Node(
        f"{tag}-worker-{address}",
        [f"--address={address}", "--temp-dir", str(ray_tmp / "w"), *NODE_ARGS],
        env,
        log=tmp_path / f"{tag}-worker.log",
    )
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts a node slowly
        while _alive_nodes(address, env) < 2:
            worker.check_running("the worker node")
            assert time.monotonic() < deadline, f"no worker node in 180 s: {worker.output()}"
            time.sleep(1)
    except BaseException:
        worker.kill()
        raise
    return worker


NODE_ARGS = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0"]


def stop_cluster(sweep: Sweep | None, *nodes: Node | None) -> None:
    """Stop the sweep, then every node by pid."""
    if sweep is not None:
        sweep.stop()
    for node in nodes:
        if node is not None:
            node.kill()


def test_a_killed_worker_node_moves_its_trial_to_the_head_and_the_sweep_finishes(
    tmp_path: Path, ray_tmp: Path
) -> None:
    env = _env(ray_tmp)
    address, head = start_head("wn", tmp_path, ray_tmp, env)
    worker: Node | None = None
    sweep: Sweep | None = None
    exp_dir = tmp_path / "wn"
    try:
        worker = start_worker("wn", address, tmp_path, ray_tmp, env)
        cmd = _sweep(tmp_path, "wn", "--states", "3", "--epochs", "3", "--num-samples", "2")
        sweep = Sweep([*cmd, "--address", address, "--quiet"], env, tmp_path)
        on_worker = worker

        def moved_trial() -> str | None:  # a trial on the worker node with a saved state
            pids = set(on_worker.pids())
            events = _events(exp_dir)
            there = {e["trial_id"] for e in events if e["event"] == "state" and e["pid"] in pids}
            saved = [e["trial_id"] for e in events if e["event"] == "saved"]
            return next((t for t in saved if t in there), None)

        sweep.wait_for("a state saved by a trial on the worker node", lambda: moved_trial())
        moved = moved_trial()
        worker.kill()  # the node's raylet, its workers and agents, by pid
        assert not worker.pids()
        assert sweep.finish(timeout=400) == 0, sweep.err
    finally:
        stop_cluster(sweep, worker, head)
    assert not head.pids() and (worker is None or not worker.pids()), "node processes remain"

    from rsst_tune.tune import load_experiment

    trials = load_experiment(exp_dir).trials
    assert [t.status for t in trials] == ["complete", "complete"], trials
    events = [e["event"] for e in _events(exp_dir) if e["trial_id"] == moved]
    assert "retry" in events and events[-1] == "done", events
    rows = _rows(exp_dir, moved)
    assert [r["state"] for r in rows] == [0, 1, 2]
    assert rows[-1]["resumed_from"] >= 1, "the moved trial restarted from scratch"
    assert set(_study_states(exp_dir).values()) == {"COMPLETE"}


# ---------------------------------------------------------------------- interrupts
def test_sigint_in_state0_releases_the_lock_and_resume_does_not_wait(
    tmp_path: Path, ray_tmp: Path
) -> None:
    from rsst_tune.locks import LockOwner

    exp_dir = tmp_path / "si"
    cache = exp_dir / "dense_cache"
    cmd = _sweep(tmp_path, "si", "--states", "1", "--epochs", "30", "--num-samples", "2", "--quiet")
    sweep = Sweep(cmd, _env(ray_tmp), tmp_path)
    try:
        sweep.wait_for("the dense-cache lock", lambda: any(cache.glob("*.lock")))
        (lock,) = cache.glob("*.lock")
        sweep.proc.send_signal(signal.SIGINT)
        assert sweep.finish(timeout=120) == 130, sweep.err
    finally:
        sweep.stop()
    assert sweep.out == ""  # --quiet
    last = sweep.err.strip().splitlines()[-1]
    assert "--resume" in last and str(exp_dir) in last, sweep.err
    # (Ray ends a trial within ~10 s of the SIGINT: 30 epochs of state 0 do not finish first on
    # 2 cores; on a faster machine the trial may publish state 0 and release the lock itself.)
    assert not list(cache.glob("*.lock")), "the interrupted trial's lock was left behind"
    assert (exp_dir / "report.md").is_file(), "an interrupted sweep writes its report too"

    # A lock whose owner was killed (SIGKILL: nothing could release it) is stale at once.
    owner = LockOwner(_dead_pid(), LockOwner.me().host, "dead-owner")
    lock.write_text(owner.to_text())
    res = subprocess.run(
        _tune("--resume", str(exp_dir), "--quiet"),
        env=_env(ray_tmp),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr
    from rsst_tune.tune import load_experiment

    trials = load_experiment(exp_dir).trials
    assert [t.status for t in trials] == ["complete", "complete"]
    # --resume released the dead owner's lock before any trial could wait for it
    assert (
        f"(its owner pid {owner.pid} on {owner.host} is gone)"
        in (exp_dir / "sweep.log").read_text()
    )
    logs = "".join(p.read_text() for p in exp_dir.glob("trial_*/checkpoint_*/trial.log"))
    assert f"waiting for pid {owner.pid}" not in logs, logs
    assert set(_study_states(exp_dir).values()) == {"COMPLETE"}


def _live_processes_with(env_entry: str) -> list[int]:
    """Live (not zombie) processes whose environment holds `env_entry`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
                continue
            if env_entry.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200].decode()
    except OSError:
        return "(gone)"


def test_sigkill_of_the_driver_leaves_no_process_and_resume_settles_every_trial(
    tmp_path: Path, ray_tmp: Path
) -> None:
    exp_dir = tmp_path / "kd"
    cmd = _sweep(tmp_path, "kd", "--states", "3", "--epochs", "2", "--num-samples", "2", "--quiet")
    sweep = Sweep(cmd, _env(ray_tmp), tmp_path)
    try:
        sweep.wait_for(
            "a saved state", lambda: any(e["event"] == "saved" for e in _events(exp_dir))
        )
        time.sleep(1.5)  # Ray's next experiment-state snapshot (every second)
        mark = f"RAY_TMPDIR={ray_tmp}"
        assert sweep.proc.pid in _live_processes_with(mark)  # how its processes are found
        sweep.proc.kill()
        sweep.proc.communicate(timeout=30)
    finally:
        sweep.stop()
    saved: dict[str, int] = {}
    for e in _events(exp_dir):
        if e["event"] == "saved":
            saved[e["trial_id"]] = max(saved.get(e["trial_id"], 0), int(e["state"]) + 1)

    # Every Ray process of the killed driver (they carry its RAY_TMPDIR) is gone within
    # seconds: usually 1-3 s; 30 s allowed, as a loaded 2-core CI machine once needed more than
    # 10 (Ray's own agents otherwise linger about a minute or two)
    deadline = time.monotonic() + 30
    while _live_processes_with(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _cmdline(pid) for pid in _live_processes_with(mark)}
    assert not left, f"Ray processes outlived the killed driver: {left}"

    res = subprocess.run(
        _tune("--resume", str(exp_dir), "--quiet"),
        env=_env(ray_tmp),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr
    from rsst_tune.tune import load_experiment

    exp = load_experiment(exp_dir)
    assert exp.study is not None
    assert all(t.status == "complete" for t in exp.trials), [t.status for t in exp.trials]
    for t in exp.trials:
        assert [s.state for s in t.states] == [0, 1, 2], t.trial_id
        # Ray's result.json is an append log: a state whose row reached it just before the
        # kill, but whose checkpoint missed Ray's last state snapshot, is run again on resume
        # and appears twice there; the record keeps the re-run's row (the one the next state
        # built on). At most that one state repeats.
        rows = _rows(exp_dir, t.trial_id)
        raw = [r["state"] for r in rows]
        assert sorted(set(raw)) == [0, 1, 2] and len(raw) - len(set(raw)) <= 1, (t.trial_id, raw)
        last = {r["state"]: r for r in rows}
        for st in t.states:
            d = st.to_dict()
            assert d == {k: last[st.state][k] for k in d}, (t.trial_id, st.state)
        # at most 1 state lost: the resumed run started at most one state before the last
        # state whose checkpoint was saved before the kill
        assert max(r["resumed_from"] for r in rows) >= saved.get(t.trial_id, 0) - 1, t.trial_id
    states = {t.user_attrs.get("ray_trial_id"): t for t in exp.study.trials}
    for ray_id, ot in states.items():
        if ray_id in {t.trial_id for t in exp.trials}:
            assert ot.state.name == "COMPLETE", ray_id
        else:  # started after Ray's last record: failed with a reason, files set aside
            assert ot.state.name == "FAIL" and "lost" in ot.user_attrs["fail_reason"]
    assert not list(exp_dir.glob("trial_*")) or {
        p.name[len("trial_") :] for p in exp_dir.glob("trial_*")
    } == {t.trial_id for t in exp.trials}, "a trial directory outside Ray's record"


# ---------------------------------------------------------------------- one sweep per dir
def test_a_second_sweep_on_the_same_directory_is_refused_naming_the_holder(
    tmp_path: Path, ray_tmp: Path
) -> None:
    from rsst_tune.experiment.layout import SWEEP_LOCK
    from rsst_tune.locks import LockOwner
    from rsst_tune.tune import SweepOptions, resolve_plan
    from rsst_tune.tune.run.storage import sweep_lock

    plan = resolve_plan(
        SweepOptions(space="vit_head_mlp", preset="smoke", storage=str(tmp_path), name="two")
    )
    exp_dir = Path(plan.local_dir)
    with sweep_lock(plan):  # what a running sweep holds, from before Ray starts to its end
        (exp_dir / "sweep.json").write_text(plan.to_json())
        for argv in (
            _sweep(tmp_path, "two", "--num-samples", "1"),
            _tune("--resume", str(exp_dir)),
        ):
            res = subprocess.run(
                argv, env=_env(ray_tmp), cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            assert res.returncode == 2, res.stderr
            (line,) = res.stderr.strip().splitlines()
            assert "in use by another sweep" in line and f"pid {os.getpid()} on " in line, line
    assert not (exp_dir / SWEEP_LOCK).exists(), "released on exit"
    assert not list(ray_tmp.glob("ray/session_*")), "refused before Ray started"

    # The lock of a sweep that was killed is taken over without a word from its owner.
    dead = LockOwner(_dead_pid(), LockOwner.me().host, "x")
    (exp_dir / SWEEP_LOCK).write_text(dead.to_text())
    with sweep_lock(plan) as held:
        assert LockOwner.parse((exp_dir / SWEEP_LOCK).read_text()) == held.owner


# ---------------------------------------------------------------------- storage errors
def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return res.returncode == 0


def test_a_full_disk_stops_the_sweep_in_one_line_and_it_resumes_once_freed(
    tmp_path: Path, ray_tmp: Path
) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "24m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        exp_dir = disk / "full"
        cmd = _sweep(
            disk,
            "full",
            "--states",
            "3",
            "--epochs",
            "2",
            "--num-samples",
            "2",
            "--max-concurrent",
            "1",
            "--quiet",
        )
        sweep = Sweep(cmd, _env(ray_tmp), tmp_path)
        try:
            sweep.wait_for(
                "a saved state", lambda: any(e["event"] == "saved" for e in _events(exp_dir))
            )
            with open(disk / "filler", "wb") as fh:  # fill the disk
                try:
                    while True:
                        fh.write(b"\0" * (1 << 16))
                        fh.flush()
                except OSError:
                    pass
            assert sweep.finish() == 130, sweep.err
        finally:
            sweep.stop()
        lines = sweep.err.strip().splitlines()
        assert len(lines) == 1, sweep.err
        line = lines[0]
        assert "No space left on device" in line and "--resume" in line, sweep.err
        import optuna

        from rsst_tune.tune.search.searcher import journal_storage

        study = optuna.load_study(
            study_name="full", storage=journal_storage(exp_dir / "optuna.journal")
        )
        assert study.trials, "the journal must stay readable"

        (disk / "filler").unlink()
        res = subprocess.run(
            _tune("--resume", str(exp_dir), "--quiet"),
            env=_env(ray_tmp),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
        # When the disk filled between the searcher's suggestion of a trial and Ray's record
        # of it, that trial is lost (its Optuna trial FAIL, "lost: ...") and generated again:
        # the resumed sweep still runs --num-samples trials (unit test:
        # test_tune.py::test_a_trial_generated_but_never_recorded_is_lost_and_generated_again).
        assert res.returncode == 0, res.stderr
        assert len(res.stderr.strip().splitlines()) <= 1, res.stderr  # "restored Ray's ..."
        assert "Traceback" not in res.stderr
        from rsst_tune.tune import load_experiment

        statuses = [t.status for t in load_experiment(exp_dir).trials]
        assert statuses == ["complete", "complete"], statuses
        study_states = _study_states(exp_dir)
        assert sorted(study_states.values()).count("COMPLETE") == 2, study_states
        assert set(_study_states(exp_dir).values()) <= {"COMPLETE", "FAIL"}
        assert "RUNNING" not in _study_states(exp_dir).values()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---------------------------------------------------------------------- secrets
def test_wandb_offline_keeps_the_api_key_out_and_every_run_holds_history_and_exit(
    tmp_path: Path, ray_tmp: Path
) -> None:
    key = "rsst-dummy-key-5f0c1d2e3a4b"
    res = subprocess.run(
        _sweep(
            tmp_path,
            "wb",
            "--states",
            "2",
            "--epochs",
            "1",
            "--num-samples",
            "2",
            "--wandb",
            "offline",
            "--quiet",
        ),
        env=_env(ray_tmp, WANDB_API_KEY=key),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr
    assert key not in res.stdout + res.stderr
    searched = 0
    for root in (tmp_path / "wb", ray_tmp):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                searched += 1
                assert key.encode() not in path.read_bytes(), path
    assert list(ray_tmp.glob("ray/session_*/logs/runtime_env_agent.log")), "Ray's logs searched"
    assert searched > 50

    # Every trial's offline run holds one history row per pruning state and an exit record.
    from rsst_tune.tune import load_experiment

    trials = load_experiment(tmp_path / "wb").trials
    assert [t.status for t in trials] == ["complete", "complete"]
    empty = []
    for trial in trials:
        (run,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{trial.trial_id}")
        (log,) = run.glob("*.wandb")
        records = _wandb_records(log)
        if not records:  # known, not yet understood: docs/reliability.md "Not guaranteed yet"
            empty.append(trial.trial_id)
            continue
        kinds = [r.WhichOneof("record_type") for r in records]
        assert "run" in kinds and "exit" in kinds, (trial.trial_id, kinds)
        states = [
            json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for item in r.history.item
            if (item.key or "/".join(item.nested_key)) == "state"
        ]
        assert states == [0, 1], (trial.trial_id, kinds)
    # The one known flake (docs/reliability.md, "Not guaranteed yet"): one run file of the two
    # without a single record, the other complete. Every run empty is a failure: W&B logging
    # is broken, not flaky.
    assert len(empty) <= 1, f"no W&B offline run holds a record: {empty}"
    if empty:
        pytest.xfail(f"W&B offline run file without records for trial(s) {empty} (seen once in CI)")


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file (`run-<id>.wandb`), parsed with W&B's own protobuf
    `Record`. The file is a LevelDB-style log: a 7-byte header (`:W&B`, magic, version),
    then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, a record
    being one FULL chunk or FIRST, MIDDLE..., LAST."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, pending, raw = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            raw.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            raw.append(pending + chunk)
    records = []
    for blob in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        records.append(record)
    return records
