"""One `SweepContext` per sweep (`rsst_tune.tune.run.context`): what a sweep's trials, searcher,
callbacks and stopper tell each other stays in their sweep, and never reaches Ray's files."""

from __future__ import annotations

import errno
import math
import pickle
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from rsst_tune.errors import TrialDiverged
from rsst_tune.experiment.layout import FAIL_REASON_ATTR
from rsst_tune.experiment.records import Objective
from rsst_tune.tune.run.context import CONTEXT_ATTR, SweepContext, running, running_context

DIVERGED = "TrialDiverged: diverged in state 1, epoch 2 (loss nan)"


def _trial() -> Any:
    """Ray's `Trial` as the driver holds it (no trial directory: nothing is written)."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial

    trial: Any = Trial("train_trial", stub=True, max_failures=2, config={"lr": 0.1})
    trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])
    trial.storage = SimpleNamespace(trial_driver_staging_path=None)
    return trial


def _diverged() -> Any:
    """A diverged trial's error as `ray.get` hands it over."""
    from ray.exceptions import RayTaskError

    return RayTaskError("f", "tb", TrialDiverged(1, 2, math.nan)).as_instanceof_cause()


def _define_lr(trial: Any) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}


def _searcher(context: SweepContext | None) -> Any:
    from rsst_tune.tune.search.searcher import PruningAwareOptunaSearch

    return PruningAwareOptunaSearch(
        _define_lr,
        metric="val_acc",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna.storages.InMemoryStorage(),
        context=context,
    )


def test_two_sweeps_in_one_process_do_not_share_failures() -> None:
    """Two sweeps' contexts side by side: a trial adopted by sweep A's `RetryPolicy` notes its
    failure in A only, A's searcher tells Optuna that failure and B's searcher knows nothing
    of it (Ray trial ids are per experiment: the same id may come back in another sweep); a
    storage error noted in A stops A's sweep only."""
    from rsst_tune.tune.console import StorageGuard
    from rsst_tune.tune.safety.retries import RetryPolicy

    a, b = SweepContext(), SweepContext()
    trial = _trial()
    RetryPolicy(a).on_trial_start(0, [trial], trial)
    trial.handle_error(_diverged())
    assert not trial.should_recover()  # final in A: not retried
    assert a.failure_line(trial.trial_id) == DIVERGED
    assert b.failure_line(trial.trial_id) is None and not b.trial_failures

    other = _trial()  # sweep B's trial, an infrastructure failure: retried
    RetryPolicy(b).on_step_begin(0, [other])
    other.handle_error(RuntimeError("CUDA error: launch failure"))
    assert other.should_recover()
    assert set(b.trial_failures) == {other.trial_id}
    assert set(a.trial_failures) == {trial.trial_id}

    for context, reason in ((a, DIVERGED), (b, "the trial raised")):
        searcher = _searcher(context)
        assert searcher.suggest(trial.trial_id) is not None
        searcher.on_trial_complete(trial.trial_id, error=True)
        (told,) = searcher.study.get_trials()
        assert told.state == optuna.trial.TrialState.FAIL
        assert told.user_attrs[FAIL_REASON_ATTR].startswith(reason), told.user_attrs

    full = OSError(errno.ENOSPC, "No space left on device")
    a.note_storage_failure(full)
    a.note_storage_failure(OSError(errno.EDQUOT, "Disk quota exceeded"))  # the first is kept
    assert a.storage_failure is full and b.storage_failure is None
    assert StorageGuard(a).stop_all() and not StorageGuard(b).stop_all()


def test_the_context_never_reaches_rays_files() -> None:
    """Ray's experiment state holds a trial's JSON state and the stopper, `tuner.pkl` the
    callbacks and the searcher, `searcher-state-*.pkl` the searcher's `__dict__`: none of
    them holds the context (each is what it was before the context existed), and a piece
    unpickled from them holds none."""
    from ray import cloudpickle

    from rsst_tune.tune.console import StorageGuard, SweepConsole
    from rsst_tune.tune.safety.retries import RetryPolicy, adopt

    context = SweepContext()
    context.note_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(context)

    trial = _trial()
    plain = trial.get_json_state()[0]
    adopt(trial, context)
    trial.handle_error(_diverged())
    trial.invalidate_json_state()
    assert type(trial).__name__ == "_RetryAwareTrial"
    assert trial.get_json_state()[0] == plain  # Ray's experiment state: as its own Trial's
    assert getattr(pickle.loads(pickle.dumps(trial)), CONTEXT_ATTR) is None

    for cls in (RetryPolicy, StorageGuard):  # stateless, as before: no state in the pickle
        piece = cls(context)
        assert pickle.dumps(piece) == pickle.dumps(cls.__new__(cls))
        assert cloudpickle.dumps(piece) == cloudpickle.dumps(cls.__new__(cls))
    console = SweepConsole("events.jsonl", [Objective("val_acc", "max")], {}, context=context)
    restored = pickle.loads(pickle.dumps(console))
    assert restored._sweep_context is None
    assert set(restored.__dict__) == set(console.__dict__) - {CONTEXT_ATTR}


def test_the_searcher_saves_and_restores_without_its_context(tmp_path: Any) -> None:
    """`searcher-state-*.pkl` is Ray's `OptunaSearch.save` (the searcher's `__dict__`) less the
    context; restoring it keeps the context the searcher was given."""
    context = SweepContext()
    searcher = _searcher(context)
    path = tmp_path / "searcher-state.pkl"
    searcher.save(str(path))
    saved = pickle.loads(path.read_bytes())
    assert list(saved) == [k for k in searcher.__dict__ if k != CONTEXT_ATTR]
    searcher.restore(str(path))
    assert searcher.context is context
    assert _searcher(None).context is not context  # on its own: a context of its own


def test_rays_own_copy_of_the_stopper_reads_the_running_sweep() -> None:
    """On `--resume` Ray stops with the stopper it unpickles from its experiment state, which
    holds no context: it reads the context of the sweep running in this thread, only while
    that sweep's `fit` runs."""
    from rsst_tune.tune.console import StorageGuard

    failed, other = SweepContext(), SweepContext()
    failed.note_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    copy = pickle.loads(pickle.dumps(StorageGuard(failed)))  # as Ray restores it
    assert not copy.stop_all() and running_context() is None
    with running(failed):
        assert copy.stop_all()
        with running(other):
            assert not copy.stop_all()
        assert running_context() is failed
    assert not copy.stop_all() and running_context() is None
    with running(failed):  # a bound stopper reads its own sweep's
        assert not StorageGuard(other).stop_all()


def test_a_restored_tuner_is_bound_to_the_resuming_sweep() -> None:
    """`runner._bind_restored`: the callbacks, stopper and searchers of `tuner.pkl` get the
    resuming sweep's context; a `RetryPolicy` missing from an old `tuner.pkl` is added."""
    from ray.tune.search import ConcurrencyLimiter

    from rsst_tune.tune.console import StorageGuard, SweepConsole
    from rsst_tune.tune.run.runner import _bind_restored
    from rsst_tune.tune.safety.retries import RetryPolicy

    def unpickled(piece: Any) -> Any:
        return pickle.loads(pickle.dumps(piece))

    old = SweepContext()
    console = unpickled(SweepConsole("e.jsonl", [Objective("val_acc", "max")], {}, context=old))
    searcher = _searcher(old)
    searcher._sweep_context = None  # as tuner.pkl holds it
    run_config = SimpleNamespace(callbacks=[console], stop=unpickled(StorageGuard(old)))
    tune_config = SimpleNamespace(search_alg=ConcurrencyLimiter(searcher, max_concurrent=1))
    tuner = SimpleNamespace(
        _local_tuner=SimpleNamespace(_run_config=run_config, _tune_config=tune_config)
    )
    context = SweepContext()
    _bind_restored(tuner, context)
    policy = run_config.callbacks[0]
    assert isinstance(policy, RetryPolicy) and policy.context is context
    assert console.context is context and run_config.stop.context is context
    assert searcher.context is context
