"""The Python API (`import rsst_tune`): a real tiny sweep read back, and a trial in memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rsst_tune
from rsst_tune.errors import ConfigError
from rsst_tune.experiment.select import choose_at_budget
from rsst_tune.results import StateResult

REPO = Path(__file__).resolve().parents[1]

# A few seconds of training on 2 cores: the digits profile, 1 CPU thread, no augmentation.
TINY_TRIAL: dict[str, Any] = {
    "model": "vit_digits",
    "dataset": "digits",
    "method": "rsst",
    "target": "head",
    "head_ratio": 0.5,
    "pruning_times": 2,
    "epochs": 1,
    "device": "cpu",
    "threads": 1,
    "augment": False,
    "amp": False,
    "warmup_epochs": 0.0,
    "rewind_epoch": 0,
    "score_batches": 2,
    "eval_batch_size": 512,
}


def test_import_is_cheap_and_names_resolve_lazily() -> None:
    code = (
        "import sys, rsst_tune\n"
        "assert 'rsst_tune.api' not in sys.modules\n"
        "for name in ('sweep', 'resume_sweep', 'load_experiment', 'Experiment', 'TrialConfig',\n"
        "             'StateResult', 'SweepInterrupted', 'ConfigError'):\n"
        "    getattr(rsst_tune, name)\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert set(rsst_tune.__all__) <= set(dir(rsst_tune))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rsst_tune.nope  # noqa: B018


def test_bad_sweep_options_fail_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="num_trials"):  # a typed signature: Python refuses it
        rsst_tune.sweep("vit_head_mlp", num_trials=2, storage=str(tmp_path))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="fix= or fixed="):
        rsst_tune.sweep("vit_head_mlp", fix={"lr": 1e-3}, fixed={"lr": 1e-3})
    with pytest.raises(ConfigError, match="does not search epochs"):
        rsst_tune.sweep("vit_head_mlp", fixed={"epochs": 3}, storage=str(tmp_path))
    with pytest.raises(ConfigError, match="holds no sweep to resume"):
        rsst_tune.resume_sweep(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.sweep
def test_sweep_then_read_back_tickets_front_best_and_report(tmp_path: Path) -> None:
    experiment = rsst_tune.sweep(
        "vit_head_mlp",
        preset="smoke",
        num_samples=2,
        epochs=2,
        states=2,
        storage=str(tmp_path),
        name="api",
        fixed={"lr": 2e-3},
        show=False,
    )
    assert isinstance(experiment, rsst_tune.Experiment)
    exp_dir = tmp_path / "api"
    assert Path(experiment.path) == exp_dir.resolve()
    assert experiment.command.startswith("rsst_tune.sweep('vit_head_mlp', preset='smoke'")
    assert [t.status for t in experiment.trials] == ["complete", "complete"], [
        (t.status, t.error) for t in experiment.trials
    ]

    loaded = rsst_tune.load_experiment(exp_dir)
    assert [(t.trial_id, t.states) for t in loaded.trials] == [
        (t.trial_id, t.states) for t in experiment.trials
    ]
    assert all(t.config["lr"] == 2e-3 for t in loaded.trials)  # pinned by `fixed`

    tickets = loaded.tickets()
    assert [(t.trial_id, t.state) for t in tickets] == [
        (trial.trial_id, s) for trial in loaded.trials for s in (0, 1)
    ]
    assert all(isinstance(t.result, StateResult) for t in tickets)

    # The front: no ticket on it is dominated; every ticket off it is dominated by one on it.
    def dominates(a: Any, b: Any) -> bool:
        return (a.val_acc >= b.val_acc and a.macs_frac <= b.macs_frac) and (
            a.val_acc > b.val_acc or a.macs_frac < b.macs_frac
        )

    front = loaded.pareto()
    assert front and [t.macs_frac for t in front] == sorted(t.macs_frac for t in front)
    assert not any(dominates(a, b) for a in tickets for b in front)
    assert all(any(dominates(f, t) for f in front) for t in tickets if t not in front)
    assert loaded.pareto(cost="params_frac")
    with pytest.raises(ConfigError, match="unknown cost 'val_acc'"):
        loaded.pareto(cost="val_acc")

    best = loaded.best(macs=None)
    assert loaded.best() is best  # no budget: the best overall
    top = max(t.val_acc for t in tickets)
    choice = choose_at_budget(tickets, None)
    assert best is not None and choice is not None and best is choice.chosen
    assert choice.leader.val_acc == top and best in choice.tied  # tied with the top ticket
    assert best.macs_frac == min(t.macs_frac for t in choice.tied)  # a tie goes to fewer MACs
    assert loaded.best(macs=1e-6) is None  # no ticket is that cheap
    cheapest = min(t.macs_frac for t in tickets)
    at_budget = loaded.best(macs=cheapest)
    assert at_budget is not None and at_budget.macs_frac <= cheapest
    # the report's budget, MACs <= 50 %: None exactly when no selectable ticket is that cheap
    half = loaded.best(macs=0.5)
    if any(t.selectable and t.macs_frac <= 0.5 + 1e-9 for t in tickets):
        at_half = choose_at_budget(tickets, 0.5)
        assert half is not None and at_half is not None and half is at_half.chosen
        assert half.macs_frac <= 0.5 + 1e-9
    else:
        assert half is None, half

    # notebook results: one row per trial state, the front as HTML, the ticket's model
    frame = loaded.to_dataframe()
    assert list(frame[["trial_id", "state"]].itertuples(index=False, name=None)) == [
        (t.trial_id, t.state) for t in tickets
    ]
    assert list(frame["val_acc"]) == [t.val_acc for t in tickets]
    assert {"macs_frac", "heads", "neurons"} <= set(frame.columns)
    assert any(c.startswith("param_") for c in frame.columns)
    html = loaded._repr_html_()
    assert html.count("<tr>") == len(loaded.pareto()) + 1 and loaded.pareto()[0].label in html
    model = best.load_model()
    exported = best.export(tmp_path / "best_export", measure=False)
    assert sum(p.numel() for p in model.parameters()) == exported.params_pruned
    assert (tmp_path / "best_export" / "model.pt").is_file()

    (exp_dir / "report.md").unlink()  # written by the sweep; the default is the same place
    report = rsst_tune.write_report(loaded)
    assert report == exp_dir.resolve() / "report.md" and report.is_file()
    elsewhere = rsst_tune.write_report(loaded, tmp_path / "elsewhere")
    assert elsewhere == tmp_path / "elsewhere" / "report.md" and elsewhere.is_file()


def test_run_trial_returns_one_state_result_per_state() -> None:
    results = rsst_tune.run_trial(TINY_TRIAL, batch_size=128)
    assert [r.state for r in results] == [0, 1]
    assert all(isinstance(r, rsst_tune.StateResult) for r in results)
    assert results[0].macs_frac == 1.0 and results[1].macs_frac < 1.0
    assert 0.0 <= results[1].val_acc <= 1.0
