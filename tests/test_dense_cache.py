"""Shared dense training (issue 4): identical state-0 trials train it once, also concurrently."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from rsst_tune.config import TrialConfig
from rsst_tune.dense_cache import DenseCache, dense_key
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop

BASE = dict(epochs=1, pruning_times=2, head_ratio=0.25, mlp_ratio=0.5, batch_size=128)


def test_key_ignores_pruning_settings_but_not_training_ones() -> None:
    a = TrialConfig(**BASE)
    assert dense_key(a) == dense_key(a.replace(method="refill", criteria="magnitude", rate=0.3))
    assert dense_key(a) == dense_key(a.replace(reg_granularity_prune=10.0, head_ratio=0.5))
    assert dense_key(a) != dense_key(a.replace(lr=1e-3))
    assert dense_key(a) != dense_key(a.replace(seed=1))
    assert dense_key(a.replace(prune_type="rewind_lt", rewind_epoch=1)) != dense_key(
        a.replace(prune_type="rewind_lt", rewind_epoch=0)
    )


def test_key_has_the_compile_mode_only_when_compiling() -> None:
    """`compile_mode` changes the kernels only under `compile`: off, it does not split the
    cache; on, each mode is its own dense state (max-autotune picks other kernels)."""
    a = TrialConfig(**BASE)
    assert dense_key(a) == dense_key(a.replace(compile_mode="reduce-overhead"))
    on = a.replace(compile=True)
    assert dense_key(on) != dense_key(a)
    assert dense_key(on) != dense_key(on.replace(compile_mode="max-autotune"))
    with pytest.raises(ConfigError, match=r"compile_mode 'cudagraphs'.*reduce-overhead"):
        a.replace(compile_mode="cudagraphs")


def test_second_trial_reuses_state0_and_matches_a_solo_run(tmp_path: Path) -> None:
    cache = DenseCache(tmp_path / "cache")
    first = PruneLoop(TrialConfig(**BASE), dense_cache=cache).run()
    other = TrialConfig(**{**BASE, "method": "refill", "head_ratio": 0.5})
    shared = PruneLoop(other, dense_cache=cache).run()
    solo = PruneLoop(other).run()
    assert [r.epochs_trained for r in first] == [1, 1]
    assert [r.epochs_trained for r in shared] == [0, 1]  # state 0 came from the cache
    assert shared[0].test_acc == first[0].test_acc
    for a, b in zip(shared, solo, strict=True):  # reusing changes nothing downstream
        assert a.val_acc == b.val_acc and a.test_acc == b.test_acc
        assert a.heads == b.heads and a.sparsity == b.sparsity


def _run(cfg: dict[str, Any], cache_dir: str, out: Any) -> None:
    results = PruneLoop(TrialConfig(**cfg), dense_cache=DenseCache(cache_dir, poll_s=0.1)).run()
    out.put([(r.epochs_trained, r.test_acc) for r in results])


@pytest.mark.slow
def test_concurrent_trials_train_state0_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    cfgs = [{**BASE, "epochs": 2}, {**BASE, "epochs": 2, "method": "refill"}]
    procs = [ctx.Process(target=_run, args=(c, str(tmp_path), out)) for c in cfgs]
    for p in procs:
        p.start()
    got = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    state0 = sorted(g[0] for g in got)
    assert [epochs for epochs, _ in state0] == [0, 2]  # exactly one process trained it
    assert state0[0][1] == state0[1][1]  # and both evaluated the same weights
    assert not list(tmp_path.glob("*.lock"))


def test_stale_lock_is_taken_over(tmp_path: Path) -> None:
    cache = DenseCache(tmp_path, poll_s=0.01, stale_after=0.0)
    (tmp_path / "k.lock").write_text("dead owner\n")
    payload, trained = cache.get_or_train("k", lambda beat: {"x": 1})
    assert trained and payload == {"x": 1}
    assert cache.get_or_train("k", lambda beat: {"x": 2}) == ({"x": 1}, False)


def test_failed_training_releases_the_lock(tmp_path: Path) -> None:
    cache = DenseCache(tmp_path)

    def boom(beat: Any) -> dict[str, Any]:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_train("k", boom)
    assert not (tmp_path / "k.lock").exists()
    assert cache.get_or_train("k", lambda beat: {"ok": True}) == ({"ok": True}, True)


def test_key_ignores_the_pruned_kinds_and_tracks_the_data_folder(tmp_path: Path) -> None:
    a = TrialConfig(**BASE)
    assert dense_key(a) == dense_key(a.replace(target="head", prune_stem=True))
    folder = TrialConfig(dataset="imagefolder", data_dir=str(tmp_path / "a"))
    assert dense_key(folder) != dense_key(folder.replace(data_dir=str(tmp_path / "b")))
    assert dense_key(a) == dense_key(a.replace(data_dir=str(tmp_path)))  # digits is bundled


def test_owner_keeps_its_lock_fresh_and_never_removes_a_successor_lock(tmp_path: Path) -> None:
    import time

    cache = DenseCache(tmp_path, stale_after=0.2)
    lock = tmp_path / "k.lock"
    seen: list[float] = []

    def slow(beat: Any) -> dict[str, Any]:  # one long "epoch": no per-epoch heartbeat
        t0 = lock.stat().st_mtime
        time.sleep(0.5)
        seen.append(lock.stat().st_mtime - t0)
        lock.write_text("someone else\n")  # a waiter took over a lock it judged stale
        return {"x": 1}

    assert cache.get_or_train("k", slow) == ({"x": 1}, True)
    assert seen[0] > 0  # the background heartbeat touched the lock during the long epoch
    assert lock.read_text() == "someone else\n"  # not ours any more: left in place


# ---------------------------------------------------------------------- lock liveness (issue 8)
def _dead_pid() -> int:
    import subprocess

    proc = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_lock_whose_owner_died_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    import time

    from rsst_tune.locks import LockOwner

    cache = DenseCache(tmp_path, poll_s=0.01)  # stale_after: 15 s, were the owner elsewhere
    dead = LockOwner(_dead_pid(), LockOwner.me().host, "dead")
    (tmp_path / "k.lock").write_text(dead.to_text())
    t0 = time.monotonic()
    assert cache.get_or_train("k", lambda beat: {"x": 1}) == ({"x": 1}, True)
    assert time.monotonic() - t0 < 2.0
    assert not (tmp_path / "k.lock").exists()


def test_a_live_owner_on_this_host_is_never_stale_and_another_hosts_after_missed_beats(
    tmp_path: Path,
) -> None:
    import os
    import time

    from rsst_tune.locks import LockOwner, Staleness

    lock = tmp_path / "k.lock"
    judge = Staleness(stale_after=0.3)
    lock.write_text(LockOwner(os.getpid(), LockOwner.me().host, "me").to_text())
    time.sleep(0.4)
    assert judge.is_stale(lock)[0] is False  # alive here: however old its heartbeat

    lock.write_text(LockOwner(1234, "another-host", "far").to_text())
    assert judge.is_stale(lock)[0] is False  # unknown liveness: watch its heartbeat
    time.sleep(0.2)
    os.utime(lock)  # a beat
    assert judge.is_stale(lock)[0] is False
    time.sleep(0.2)
    assert judge.is_stale(lock)[0] is False  # 0.2 s since the beat we saw
    time.sleep(0.2)
    stale, judged = judge.is_stale(lock)
    assert stale and judged == lock.read_text()  # no beat for 0.4 s > 3 missed beats of 0.1 s


def test_release_dead_locks_keeps_live_owners_and_reads_old_locks(tmp_path: Path) -> None:
    import os

    from rsst_tune.dense_cache import release_dead_locks
    from rsst_tune.locks import LockOwner

    me = LockOwner.me()
    (tmp_path / "alive.lock").write_text(me.to_text())
    (tmp_path / "dead.lock").write_text(LockOwner(_dead_pid(), me.host, "d").to_text())
    (tmp_path / "old.lock").write_text(f"{_dead_pid()}@{me.host}/abc\n")  # the older format
    (tmp_path / "far.lock").write_text(LockOwner(os.getpid(), "another-host", "f").to_text())
    removed = release_dead_locks(tmp_path)
    assert sorted(p.name for p in removed) == ["dead.lock", "old.lock"]
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["alive.lock", "far.lock"]
