"""docs/cluster.md, steps 1-5, on one machine: a head node and a worker node on 127.0.0.1 (each
`ray start --block` in its own process group, with its own Ray temp directory, stopped by pid,
never `ray stop`), the installed package on both (this venv), a storage folder both see, a
sweep driven with `--address ... --gpus-per-trial ...`, interrupted, and resumed to its report
by a second driver process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from test_reliability import (  # the 2-node helpers; ray_tmp is a fixture
    Node,
    Sweep,
    _env,
    _events,
    _sweep,
    _tune,
    ray_tmp,
    start_head,
    start_worker,
    stop_cluster,
)

pytestmark = pytest.mark.sweep
__all__ = ["ray_tmp"]


def test_the_cluster_guide_runs_a_sweep_on_two_nodes_and_a_second_driver_resumes_it(
    tmp_path: Path, ray_tmp: Path
) -> None:
    env = _env(ray_tmp)
    shared = tmp_path / "shared"  # the storage every node sees
    exp_dir = shared / "guide"
    address, head = start_head("guide", tmp_path, ray_tmp, env)  # step 3
    worker: Node | None = None
    sweep: Sweep | None = None
    worker_pids: set[int] = set()
    try:
        worker = start_worker("guide", address, tmp_path, ray_tmp, env)

        # step 4: the sweep, from a driver that is not a node
        cmd = _sweep(shared, "guide", "--states", "3", "--epochs", "2", "--num-samples", "2")
        sweep = Sweep([*cmd, "--address", address, "--gpus-per-trial", "0", "--quiet"], env,
                      tmp_path)  # fmt: skip
        on_worker = worker

        def started_and_saved() -> bool:  # trials under way and one state saved
            worker_pids.update(on_worker.pids())
            saved = {e["trial_id"] for e in _events(exp_dir) if e["event"] == "saved"}
            return len(saved) >= 1 and len(_events(exp_dir)) > 4

        sweep.wait_for("a saved state", started_and_saved)
        sweep.proc.send_signal(signal.SIGINT)  # the driver goes away (Ctrl+C)
        assert sweep.finish(timeout=120) == 130, sweep.err
        assert "--resume" in sweep.err, sweep.err

        # step 5: a second driver process resumes it to its report
        res = subprocess.run(
            _tune("--resume", str(exp_dir), "--address", address, "--quiet"),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
        worker_pids.update(worker.pids())
        assert res.returncode == 0, res.stderr
    finally:
        stop_cluster(sweep, worker, head)
    assert not head.pids() and (worker is None or not worker.pids()), "node processes remain"

    from rsst_tune.tune import load_experiment

    experiment = load_experiment(exp_dir)
    assert [t.status for t in experiment.trials] == ["complete", "complete"]
    assert (exp_dir / "report.md").is_file() and (exp_dir / "best_config.json").is_file()
    ran_on = {e["pid"] for e in _events(exp_dir) if e["event"] == "state"}
    assert ran_on & worker_pids, "no trial state ran on the worker node"
    assert ran_on - worker_pids, "no trial state ran on the head node"


def test_a_trial_on_two_workers_spans_two_nodes_that_share_the_experiment_directory(
    tmp_path: Path, ray_tmp: Path
) -> None:
    """docs/multi_gpu.md, several machines per trial: two 1-CPU nodes, trials of 2 workers at
    0.9 CPU each, so no node holds a trial's workers: each trial runs on both nodes (Ray's
    PACK placement, the trial's run in the experiment directory both nodes see), completes
    every state, and leaves nothing in the experiment directory's `worker_runs/`."""
    env = _env(ray_tmp)
    shared = tmp_path / "shared"
    exp_dir = shared / "span"
    address, head = start_head("span", tmp_path, ray_tmp, env)
    worker: Node | None = None
    sweep: Sweep | None = None
    try:
        worker = start_worker("span", address, tmp_path, ray_tmp, env)
        cmd = _sweep(shared, "span", "--states", "2", "--epochs", "1", "--num-samples", "2")
        sweep = Sweep(
            [*cmd, "--address", address, "--workers-per-trial", "2", "--cpus-per-trial", "0.9",
             "--gpus-per-trial", "0", "--quiet"],
            env, tmp_path,
        )  # fmt: skip
        assert sweep.finish(timeout=600) == 0, sweep.err
    finally:
        stop_cluster(sweep, worker, head)
    assert not head.pids() and (worker is None or not worker.pids()), "node processes remain"

    from rsst_tune.tune import load_experiment

    trials = load_experiment(exp_dir).trials
    assert [t.status for t in trials] == ["complete", "complete"], trials
    states = [s for t in trials for s in t.states]
    assert [s.state for t in trials for s in t.states] == [0, 1, 0, 1]
    assert {(s.world_size, s.device) for s in states} == {(2, "cpu x2 (gloo, 2 nodes)")}
    assert not any((exp_dir / "worker_runs").iterdir())
