"""Tests for the best-config report: real records, a real Optuna study, real files on disk."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.study import StudyDirection

from rsst_tune.config import TrialConfig
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.records import Objective, TrialRecord
from rsst_tune.report import (
    BUDGETS,
    TIE_RULE,
    Ticket,
    best_at_budget,
    choose_at_budget,
    collect_tickets,
    param_importances,
    pareto_front,
    rank_trials,
    reproduce_config,
    ticket_front,
    write_report,
)
from rsst_tune.results import StateResult
from rsst_tune.stats import wilson_interval

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (Objective("val_acc", "max"), Objective("macs_frac", "min"))
DENSE_PARAMS, DENSE_MACS = 136_138, 2_380_928


def state(
    s: int,
    val: float,
    test: float,
    macs: float,
    params: float | None = None,
    heads: int = 16,
    neurons: int = 512,
    n: int | None = None,
) -> StateResult:
    """A per-state result as `PruneLoop._run_state` reports it (digits ViT shapes); without
    `n` (the val and test split size) as an rsst-tune before split sizes were recorded."""
    params = macs if params is None else params
    out: dict[str, Any] = {
        "state": s,
        "method": "rsst",
        "val_acc": val,
        "test_acc": test,
        "train_loss": 0.4,
        "rate": 0.0 if s == 0 else 0.27,
        "density_U": 1.0 - 0.27 * s,
        "density_R": 1.0 - 0.27 * s,
        "sparsity": 1.0 - params,
        "density_total": params,
        "heads": heads,
        "heads_per_layer": [heads // 4] * 4,
        "neurons": neurons,
        "neurons_per_layer": [neurons // 4] * 4,
        "params": round(DENSE_PARAMS * params),
        "macs": round(DENSE_MACS * macs),
        "params_frac": params,
        "macs_frac": macs,
        "wall_time_s": 1.9,
        "epochs_trained": 40,
    }
    if s > 0:
        out.update(acc_before_structure=val - 0.01, t_norm=1.7, lambda_reached=1.0)
    if n is not None:
        out.update(val_size=n, test_size=n)
    return StateResult.from_dict(out)


def config(seed: int, head_ratio: float, mlp_ratio: float, states: int = 3) -> dict[str, Any]:
    return TrialConfig(
        seed=seed, head_ratio=head_ratio, mlp_ratio=mlp_ratio, pruning_times=states, epochs=40
    ).to_dict()


def trial(
    tid: str,
    status: str,
    hr: float,
    mr: float,
    states: list[StateResult],
    error: str | None = None,
    seed: int = 0,
) -> TrialRecord:
    return TrialRecord(
        tid,
        status,
        config(seed, hr, mr),
        {"head_ratio": hr, "mlp_ratio": mr},
        tuple(states),
        error=error,
    )


def told_study(multi: bool) -> optuna.Study:
    """A real in-memory study whose told trials vary two parameters (one matters)."""
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE][: 2 if multi else 1]
    study = optuna.create_study(
        directions=directions, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(12):
        t = study.ask()
        hr = t.suggest_float("head_ratio", 0.0, 0.6)
        mr = t.suggest_float("mlp_ratio", 0.0, 0.6)
        acc = 0.97 - 0.3 * mr**2 + 0.001 * hr
        study.tell(t, [acc, 1.0 - 0.5 * mr] if multi else acc)
    pruned = study.ask()
    pruned.suggest_float("head_ratio", 0.0, 0.6)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    return study


def make_sweep(n: int | None = None) -> Experiment:
    """Three trials: complete (3 states), pruned by ASHA (2 states), error (no state); `n`:
    the split size every state records (None: not recorded, as before split sizes were)."""
    a = trial(
        "t_a",
        "complete",
        0.3,
        0.3,
        [
            state(0, 0.970, 0.962, 1.0, n=n),
            state(1, 0.960, 0.950, 0.73, 0.74, 12, 360, n=n),
            state(2, 0.940, 0.990, 0.48, 0.50, 8, 252, n=n),
        ],
    )  # test highest at state 2: never chooses
    b = trial(
        "t_b",
        "pruned",
        0.5,
        0.5,
        [state(0, 0.965, 0.960, 1.0, n=n), state(1, 0.950, 0.945, 0.45, 0.47, 8, 256, n=n)],
        seed=1,
    )
    c = trial("t_c", "error", 0.1, 0.1, [], error="RuntimeError: CUDA out of memory\ntrace...")
    return Experiment(
        name="smoke",
        path="/tmp/exp/smoke",
        space="vit_head_mlp",
        objectives=OBJECTIVES,
        trials=(a, b, c),
        command="python tune_main.py --space vit_head_mlp --preset smoke",
        study=told_study(multi=True),
    )


@pytest.fixture
def sweep() -> Experiment:
    return make_sweep()


# ------------------------------------------------------------------ pure computation
def dominated(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """q dominates p for (accuracy up, cost down)."""
    return q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])


def test_pareto_front_is_exactly_the_non_dominated_set() -> None:
    points: list[tuple[float | None, float | None]] = [
        (0.90, 0.50),  # 0 front
        (0.90, 0.50),  # 1 identical tie: stays on the front
        (0.90, 0.60),  # 2 same accuracy, more cost: dominated by 0
        (0.85, 0.50),  # 3 same cost, less accuracy: dominated by 0
        (0.95, 0.80),  # 4 front
        (0.80, 0.30),  # 5 front
        (0.70, 0.90),  # 6 dominated by everything
        (math.nan, 0.10),  # 7 NaN: never a candidate
        (0.99, None),  # 8 missing cost: never a candidate
    ]
    assert pareto_front(points, (True, False)) == [0, 1, 4, 5]
    assert pareto_front([], (True, False)) == []
    assert pareto_front([(math.nan, math.inf)], (True, False)) == []


def test_pareto_front_matches_brute_force_on_random_points() -> None:
    rng = random.Random(0)
    # coarse grid values so that ties on one or both axes are common
    points = [(rng.randint(0, 8) / 8, rng.randint(0, 8) / 8) for _ in range(200)]
    expected = [i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)]
    assert pareto_front(points, (True, False)) == expected
    assert len(expected) >= 2


def test_ticket_front_uses_validation_accuracy(sweep: Experiment) -> None:
    tickets = collect_tickets(sweep)
    assert len(tickets) == 5  # 3 + 2 + 0 states
    front = ticket_front(tickets, "macs_frac")
    # t_b/s1 (val 0.950 at 45 %) dominates t_a/s2 (val 0.940 at 48 %) though t_a/s2 tests higher
    assert [t.label for t in front] == ["t_b/s1", "t_a/s1", "t_a/s0"]


def test_best_at_budget_respects_budget_and_picks_val_not_test(sweep: Experiment) -> None:
    tickets = collect_tickets(sweep)
    assert best_at_budget(tickets, 0.25) is None
    best50 = best_at_budget(tickets, 0.5)
    assert best50 is not None and (best50.trial_id, best50.state) == ("t_b", 1)
    best75 = best_at_budget(tickets, 0.75)
    assert best75 is not None and (best75.trial_id, best75.state) == ("t_a", 1)
    best = best_at_budget(tickets, None)
    assert best is not None and (best.trial_id, best.state) == ("t_a", 0)
    for budget in BUDGETS:
        chosen = best_at_budget(tickets, budget)
        inside = [t for t in tickets if budget is None or (t.macs_frac or 2) <= budget]
        if chosen is not None:
            assert chosen.val_acc == max(t.val_acc or 0 for t in inside)


def test_best_at_budget_boundary_ties_and_missing_values() -> None:
    def ticket(order: int, val: float, test: float, macs: float, params: float) -> Ticket:
        result = dataclasses.replace(state(0, val, test, 1.0), macs_frac=macs, params_frac=params)
        return Ticket(f"t{order}", 0, "complete", result, order=order)

    nan = math.nan
    tickets = [
        ticket(0, 0.9, 0.5, 0.5, 0.6),  # exactly 50 %
        ticket(1, 0.9, 0.9, 0.5, 0.4),  # tie: fewer params
        ticket(2, nan, 1.0, 0.1, 0.1),  # NaN val: not a candidate
        ticket(3, 0.99, 0.99, nan, nan),  # no MACs: only unconstrained
    ]
    assert best_at_budget(tickets, 0.5) is tickets[1]
    assert best_at_budget(tickets, None) is tickets[3]
    assert best_at_budget(tickets[2:3], None) is None


def test_reproduce_config_stops_at_the_ticket(sweep: Experiment) -> None:
    ticket = collect_tickets(sweep)[1]
    cfg = TrialConfig.from_dict(reproduce_config(ticket))
    assert cfg.pruning_times == ticket.state + 1 == 2
    assert cfg.replace(pruning_times=3).to_dict() == sweep.trials[0].config


def test_rank_trials_prefers_in_budget_accuracy(sweep: Experiment) -> None:
    assert rank_trials(collect_tickets(sweep)) == ["t_b", "t_a"]  # 0.950 ≤ 50 % beats 0.940


def test_param_importances_single_and_multi_objective() -> None:
    for multi in (False, True):
        imp = param_importances(told_study(multi), OBJECTIVES)
        assert imp.values is not None, imp.note
        assert {name for name, _ in imp.values} == {"head_ratio", "mlp_ratio"}
        assert imp.values[0][0] == "mlp_ratio"  # the parameter the objective depends on
        assert math.isclose(sum(v for _, v in imp.values), 1.0)
    assert "val_acc" in param_importances(told_study(True), OBJECTIVES).note


def test_param_importances_not_available_says_why() -> None:
    assert param_importances(None).values is None
    study = optuna.create_study()
    t = study.ask()
    t.suggest_float("lr", 1e-4, 1e-2)
    study.tell(t, 0.5)
    one = param_importances(study)
    assert one.values is None and "2 complete trials" in one.note
    fixed = optuna.create_study()
    for value in (0.5, 0.6):
        t = fixed.ask()
        t.suggest_categorical("criteria", ["l1"])
        fixed.tell(t, value)
    assert "varies" in param_importances(fixed).note
    assert param_importances(object()).values is None  # not a study: a reason, not a crash


# ------------------------------------------------------------------ uncertainty and ties
def test_state_results_record_split_sizes_and_old_rows_still_read() -> None:
    new = state(1, 0.95, 0.94, 0.5, n=360)
    assert (new.val_size, new.test_size) == (360, 360)
    assert StateResult.from_dict(new.to_dict()) == new
    old_row = new.to_dict()
    del old_row["val_size"], old_row["test_size"]  # a result.json row written before
    old = StateResult.from_dict(old_row)
    assert (old.val_size, old.test_size) == (None, None)
    ticket = Ticket("t", 1, "complete", old)
    assert ticket.split_size() is None and ticket.interval() is None
    sized = Ticket("t", 1, "complete", new)
    assert sized.interval("val_acc") == wilson_interval(342, 360)
    assert sized.interval("test_acc") == wilson_interval(338, 360)
    assert sized.interval("macs_frac") is None  # not an accuracy


def sized_ticket(
    order: int, val: float, macs: float, params: float | None = None, n: int | None = 360
) -> Ticket:
    result = dataclasses.replace(
        state(0, val, val, 1.0, n=n), macs_frac=macs, params_frac=macs if params is None else params
    )
    return Ticket(f"t{order}", 0, "complete", result, order=order)


def test_tie_rule_chooses_fewest_macs_among_overlapping_intervals() -> None:
    # n = 360: 97.0 % is [94.6, 98.3]; 95.0 % [92.2, 96.8] overlaps it; 90.0 % [86.5, 92.7]
    # does not (92.7 < 94.6)
    top = sized_ticket(0, 0.970, 1.00)
    close = sized_ticket(1, 0.955, 0.60)
    cheap = sized_ticket(2, 0.950, 0.45, 0.40)
    cheap_more_params = sized_ticket(3, 0.950, 0.45, 0.50)
    cheap_lower_val = sized_ticket(4, 0.9445, 0.45, 0.30)
    far = sized_ticket(5, 0.900, 0.20)
    tickets = [top, close, cheap, cheap_more_params, cheap_lower_val, far]
    choice = choose_at_budget(tickets, None)
    assert choice is not None and choice.leader is top
    # fewest MACs, then the higher val (cheap_lower_val has fewer params but lower val), then
    # fewer params; `far` is not tied
    assert list(choice.tied) == [cheap, cheap_more_params, cheap_lower_val, close, top]
    assert choice.chosen is cheap and best_at_budget(tickets, None) is cheap
    assert choice.by_interval and far not in choice.tied and len(choice.others) == 4
    # within 50 %: the leader is `cheap`; `far` (90.0 [86.5, 92.7]) overlaps 95.0 [92.2, 96.8]
    at_half = choose_at_budget(tickets, 0.5)
    assert at_half is not None and at_half.leader is cheap and at_half.chosen is far
    # no recorded split size (an older rsst-tune): only an equal val ties, as before
    unsized = [sized_ticket(t.order, t.val_acc or 0, t.macs_frac or 0, n=None) for t in tickets]
    old = choose_at_budget(unsized, None)
    assert old is not None and old.chosen is unsized[0] and old.tied == (unsized[0],)
    assert not old.by_interval


def test_intervals_and_ties_in_the_report(tmp_path: Path) -> None:
    """Every budget picks t_b/s1 once the intervals (n = 360) tie it with the top val_acc:
    one section for the three budgets, ties explained, best_config.json lists them."""
    md = write_report(make_sweep(n=360), tmp_path).read_text()
    for text in (
        "val acc % [95 % CI], n=360",
        "| t_b | 1 | 95.00 [92.2, 96.8] | 94.50 [91.6, 96.4] |",
        "val 95.00 % (95 % interval 92.2–96.8 %, n = 360)",
        "one image of 360 is 0.28 points",
        TIE_RULE,
        "4 other tickets are tied with it",
        "A tie goes to fewer MACs: `t_b/s1`",
        "### MACs ≤ 50 % · MACs ≤ 75 % · unconstrained",
        "The same ticket is chosen at 3 budgets",
        "`best_configs/macs_le_75.json`, `best_configs/unconstrained.json` hold the same config",
        "2 other tickets are tied with `t_a/s0`, the front's highest val_acc",
        "| top val |",
        "| chosen; top val at MACs ≤ 50 % |",
        "| top val at unconstrained |",
    ):
        assert text in md, text
    assert md.count("\n### MACs") == 1  # one section per distinct answer
    assert md.count("Expected per-state accuracies") == 1
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert (best["trial_id"], best["state"], best["rule"]) == ("t_b", 1, TIE_RULE)
    assert best["metrics"]["val_size"] == 360
    assert best["val_interval"] == pytest.approx(list(wilson_interval(342, 360)))
    assert [(t["trial_id"], t["state"], t["chosen"]) for t in best["tied"]] == [
        ("t_b", 1, True),
        ("t_a", 2, False),
    ]  # within the headline budget, MACs ≤ 50 %: fewest MACs first
    assert best["leader"]["trial_id"] == "t_b" and best["tied"][0]["top_val"]


def test_old_results_say_they_have_no_interval(sweep: Experiment, tmp_path: Path) -> None:
    md = write_report(sweep, tmp_path).read_text()
    assert "val acc % (n not recorded)" in md and "[95 % CI]" not in md
    assert "The split sizes were not recorded" in md
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert best["val_interval"] is None and [t["trial_id"] for t in best["tied"]] == ["t_b"]


def test_many_tied_tickets_are_counted_not_listed(tmp_path: Path) -> None:
    trials = tuple(
        trial(f"t{i:02d}", "complete", 0.3, 0.3, [state(0, 0.95 - 0.001 * i, 0.9, 0.4, n=360)])
        for i in range(15)
    )
    md = write_report(Experiment("ties", str(tmp_path), "s", OBJECTIVES, trials), tmp_path)
    text = md.read_text()
    assert "14 other tickets are tied with it" in text
    assert "… and 5 more tied tickets." in text


def test_pareto_plot_draws_intervals(tmp_path: Path) -> None:
    from rsst_tune import plots

    args = ([40.0, 60.0, 100.0], [94.0, 95.0, 97.0], [0, 1, 2], ["a", "b", "c"])
    plain = plots.pareto_plot(*args, x_label="MACs", path=tmp_path / "plain.png")
    bars = plots.pareto_plot(
        *args,
        x_label="MACs",
        path=tmp_path / "bars.png",
        intervals=[(91.0, 96.0), None, (94.6, 98.3)],
        band=(94.6, 98.3),
    )
    assert bars.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bars.read_bytes() != plain.read_bytes()


# ------------------------------------------------------------------ interactive figures
def test_interactive_figures_are_built_from_the_records() -> None:
    from rsst_tune.report.interactive import (
        history_figure,
        hypervolume,
        importance_figure,
        parallel_figure,
        pareto_figure,
    )

    exp = make_sweep(n=360)
    tickets = collect_tickets(exp)
    # front b/s1 (45 %, 95.0), a/s1 (73 %, 96.0), a/s0 (100 %, 97.0): the area they dominate
    assert hypervolume(tickets) == pytest.approx(0.28 * 0.95 + 0.27 * 0.96)
    assert hypervolume([t for t in tickets if t.trial_id == "t_a"]) == pytest.approx(
        0.25 * 0.94 + 0.27 * 0.96
    )
    assert hypervolume([]) == 0.0
    fig = pareto_figure(tickets, "macs_frac")
    assert fig is not None
    front = next(tr for tr in fig.data if tr.name == "Pareto front")
    assert list(front.x) == pytest.approx([45.0, 73.0, 100.0])
    low, high = wilson_interval(round(0.95 * 360), 360)
    assert front.error_y.arrayminus[0] == pytest.approx(95.0 - 100 * low)
    assert front.error_y.array[0] == pytest.approx(100 * high - 95.0)
    assert "trial t_b, state 1</b> (pruned)" in front.text[0]
    assert "n = 360" in front.text[0] and "head_ratio = 0.5" in front.text[0]
    history = history_figure(exp, tickets)
    assert history is not None
    volumes = next(tr for tr in history.data if tr.name == "hypervolume").y
    assert list(volumes) == pytest.approx([0.4942, 0.5252, 0.5252])  # t_c errored: no change
    # a categorical and a conditional parameter: ints with labels, `absent` below the numbers
    trials = (
        trial("p0", "complete", 0.3, 0.3, [state(0, 0.9, 0.9, 1.0, n=100)]),
        dataclasses.replace(
            trial("p1", "complete", 0.5, 0.5, [state(0, 0.8, 0.8, 0.6, n=100)]),
            params={"mlp_ratio": 0.5, "target": "mlp"},
        ),
    )
    par = parallel_figure(Experiment("p", "", "s", OBJECTIVES, trials))
    assert par is not None
    dims = {d.label: d for d in par.data[0].dimensions}
    assert dims["head_ratio"].ticktext[0] == "absent"
    assert dims["head_ratio"].values[1] < dims["head_ratio"].values[0] == 0.3
    assert list(dims["target"].ticktext) == ["absent", "mlp"]
    assert list(dims["target"].values) == [0, 1]
    assert list(dims["val_acc (max)"].values) == [0.9, 0.8]
    assert importance_figure(param_importances(None)) is None


# ------------------------------------------------------------------ importances, quietly
def regime_study() -> optuna.Study:
    """8 complete trials; `rate` is missing in one, so optuna warns "Some regimes for
    parameter `rate` have less than 2 trials"."""
    study = optuna.create_study(
        directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i in range(8):
        t = study.ask()
        hr = t.suggest_float("head_ratio", 0.0, 0.6)
        rate = t.suggest_float("rate", 0.1, 0.5) if i else 0.3
        study.tell(t, [0.9 + 0.01 * hr - 0.1 * rate, 1.0 - hr])
    return study


def test_importances_per_objective_and_a_warning_below_the_minimum(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import warnings

    imp = param_importances(told_study(True), OBJECTIVES)
    assert [name for name, _ in imp.by_objective] == ["val_acc", "macs_frac"]
    assert imp.warning is None and imp.complete == 12
    for _, values in imp.by_objective:
        assert values[0][0] == "mlp_ratio" and math.isclose(sum(v for _, v in values), 1.0)
    assert param_importances(told_study(True), OBJECTIVES, min_trials=20).warning is not None

    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    (exp_dir / "sweep.log").write_text("earlier lines\n")
    exp = Experiment(
        "quiet", str(exp_dir), "s", OBJECTIVES, make_sweep(360).trials, study=regime_study()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md = write_report(exp, tmp_path / "out").read_text()
    # Optuna's importance warnings go to the experiment's log, not the terminal
    assert not [w for w in caught if "regimes" in str(w.message)]
    out, err = capfd.readouterr()
    assert "regimes" not in out + err
    log_text = (exp_dir / "sweep.log").read_text()
    assert log_text.startswith("earlier lines\n")
    assert "Some regimes for parameter `rate` have less than 2 trials" in log_text
    assert not (tmp_path / "out" / "report.log").exists()
    assert "Warning: only 8 complete trials (fewer than 10): these importances are unreliable" in md
    assert "| parameter | val_acc | macs_frac |" in md
    # no experiment directory here: the chatter goes to the report directory's report.log
    elsewhere = Experiment("q", str(tmp_path / "gone"), "s", OBJECTIVES, (), study=regime_study())
    write_report(elsewhere, tmp_path / "out2")
    assert "Some regimes" in (tmp_path / "out2" / "report.log").read_text()


def test_importance_errors_still_reach_the_user(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="rsst_tune.experiment.select"):
        imp = param_importances(object())
    assert imp.values is None
    assert any("parameter importances not available" in r.message for r in caplog.records)


# ------------------------------------------------------------------ the files
def test_write_report_writes_every_artifact(sweep: Experiment, tmp_path: Path) -> None:
    md_path = write_report(sweep, tmp_path / "report")
    out = md_path.parent
    assert md_path == out / "report.md"
    for name in (
        "report.html",
        "best_config.json",
        "pareto_macs.png",
        "pareto_params.png",
        "states.png",
        "importances.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto_macs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = md_path.read_text()
    for text in (
        "smoke",
        "vit_head_mlp",
        "python tune_main.py --space vit_head_mlp",
        "no ticket within budget",
        "rsst-tune run --config best_configs/macs_le_50.json",
        "CUDA out of memory",
        "mlp_ratio",
        "![",
        "| t_c | error | 0 |",
    ):
        assert text in md, text
    assert "trace..." not in md  # error messages: first line only

    # report.html: self-contained; plotly.js (whose text names URLs it never fetches here) is
    # inlined once, the Pareto fronts and importances are interactive, the states plot a PNG
    html_text = (out / "report.html").read_text()
    markup = re.sub(r"<script>.*?</script>", "", html_text, flags=re.S)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//|file:)', markup)
    assert "<link" not in html_text and not re.search(r"<script[^>]+src", html_text)
    assert html_text.count("* plotly.js v") == 1
    assert html_text.count('class="plotly-graph-div"') == 5
    assert markup.count('src="data:image/png;base64,') == 1


def test_best_configs_load_and_stop_at_their_ticket(sweep: Experiment, tmp_path: Path) -> None:
    write_report(sweep, tmp_path)
    files = sorted(p.name for p in (tmp_path / "best_configs").iterdir())
    assert files == ["macs_le_50.json", "macs_le_75.json", "unconstrained.json"]
    expected = {
        "macs_le_50.json": ("t_b", 1),
        "macs_le_75.json": ("t_a", 1),
        "unconstrained.json": ("t_a", 0),
    }
    by_id = {t.trial_id: t for t in sweep.trials}
    for name, (tid, s) in expected.items():
        raw = json.loads((tmp_path / "best_configs" / name).read_text())
        assert set(raw) == set(TrialConfig.field_names())  # a plain config, no metadata
        cfg = TrialConfig.from_json_file(tmp_path / "best_configs" / name)
        assert cfg.pruning_times == s + 1
        assert cfg.replace(pruning_times=3).to_dict() == by_id[tid].config

    best = json.loads((tmp_path / "best_config.json").read_text())
    assert (best["budget"], best["trial_id"], best["state"]) == (0.5, "t_b", 1)
    assert best["metrics"]["test_acc"] == 0.945
    assert best["command"] == "rsst-tune run --config best_configs/macs_le_50.json"
    assert [e["val_acc"] for e in best["expected_states"]] == [0.965, 0.950]
    assert TrialConfig.from_json_file(tmp_path / "best_config.json").pruning_times == 2


def test_best_config_falls_back_to_overall_best(tmp_path: Path) -> None:
    only_dense = trial("t_x", "complete", 0.2, 0.2, [state(0, 0.9, 0.8, 1.0)])
    exp = Experiment("one", str(tmp_path), "vit_head_mlp", OBJECTIVES, (only_dense,))
    write_report(exp, tmp_path)
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert (best["budget"], best["trial_id"], best["state"]) == (None, "t_x", 0)
    assert best["config_file"] == "best_configs/unconstrained.json"
    assert md_has(tmp_path, "No ticket within budget at MACs ≤ 25 %, MACs ≤ 50 %, MACs ≤ 75 %.")


def md_has(out: Path, text: str) -> bool:
    return text in (out / "report.md").read_text()


def test_empty_experiment_renders(tmp_path: Path) -> None:
    exp = Experiment("empty", str(tmp_path), "vit_head_mlp", OBJECTIVES, ())
    md = write_report(exp, tmp_path / "r")
    text = md.read_text()
    assert "The experiment has no trials yet." in text
    assert text.count("No ticket within budget at") == 1  # one sentence names every budget
    assert text.count("no ticket within budget") == len(BUDGETS)  # one table row per budget
    assert "Not available: no Optuna study" in text
    assert "not recorded" in text  # no command
    best = json.loads((md.parent / "best_config.json").read_text())
    assert best["config"] is None and best["trial_id"] is None
    assert not list((md.parent / "best_configs").iterdir())
    assert (md.parent / "report.html").exists()


def test_partial_data_renders_without_error(tmp_path: Path) -> None:
    nan_state = state(0, math.nan, 0.5, 1.0)
    trials = (
        trial("t_nan", "running", 0.1, 0.1, [nan_state]),
        TrialRecord("t_bad_cfg", "complete", {"not_a_field": 1}, {}, (state(0, 0.7, 0.7, 0.3),)),
        TrialRecord("t_err", "error", {}, {}, (), error=None),
    )
    study = optuna.create_study()  # no trials at all
    exp = Experiment("partial", str(tmp_path), "x", (), trials, study=study)
    md = write_report(exp, tmp_path)
    text = md.read_text()
    assert "| t_nan | running | 1 |" in text and "| t_err | error | 0 |" in text
    assert "Not available: needs ≥ 2 complete trials" in text
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert (best["trial_id"], best["budget"]) == ("t_bad_cfg", 0.5)  # only ticket ≤ 50 %
    assert json.loads((tmp_path / "best_configs" / "macs_le_50.json").read_text()) == {
        "not_a_field": 1,
        "pruning_times": 1,
    }  # kept as recorded, with a warning
    assert "NaN" not in (tmp_path / "best_config.json").read_text()


def test_single_trial_and_rerender_replace_stale_answers(tmp_path: Path) -> None:
    single = trial(
        "t_1",
        "complete",
        0.5,
        0.5,
        [state(0, 0.9, 0.9, 1.0), state(1, 0.8, 0.8, 0.2, 0.25, 8, 128)],
    )
    exp = Experiment("single", str(tmp_path), "s", OBJECTIVES, (single,))
    write_report(exp, tmp_path)
    assert (tmp_path / "best_configs" / "macs_le_25.json").exists()
    no_cost = trial("t_1", "complete", 0.5, 0.5, [state(0, 0.9, 0.9, 1.0)])
    write_report(Experiment("single", str(tmp_path), "s", OBJECTIVES, (no_cost,)), tmp_path)
    assert not (tmp_path / "best_configs" / "macs_le_25.json").exists()


def test_many_tickets_stay_fast(tmp_path: Path) -> None:
    """A 200-trial, 5-state sweep: 1,000 tickets, still one report (fronts are not labelled)."""
    rng = random.Random(1)
    trials = tuple(
        trial(
            f"t{i:03d}",
            "complete",
            0.3,
            0.3,
            [
                state(s, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0), 0.8**s, 0.8**s)
                for s in range(5)
            ],
        )
        for i in range(200)
    )
    exp = Experiment("big", str(tmp_path), "s", OBJECTIVES, trials)
    assert write_report(exp, tmp_path).exists()
    tickets = collect_tickets(exp)
    front = ticket_front(tickets, "macs_frac")
    for t, u in itertools.product(front, tickets):
        assert not dominated((t.val_acc or 0, t.macs_frac or 0), (u.val_acc or 0, u.macs_frac or 0))


# ------------------------------------------------------------------ physical exports
@pytest.fixture(scope="module")
def exported_sweep(tiny_runs: list[tuple[TrialConfig, Path, list[StateResult]]]) -> Experiment:
    """One trial of a real tiny Refill run on digits (conftest's first `tiny_runs`), reporting
    its state 1 (1 of 4 heads and half the MLP removed, 63 % MACs): the best ticket at MACs
    ≤ 75 % and unconstrained."""
    cfg, run, results = tiny_runs[0]
    record = TrialRecord(
        "t_x",
        "complete",
        cfg.to_dict(),
        {"head_ratio": 0.25},
        (results[1],),
        state_checkpoints={1: str(run)},
    )
    return Experiment("exp", str(run), "s", OBJECTIVES, (record,))


def test_a_real_run_records_its_split_sizes(exported_sweep: Experiment, tmp_path: Path) -> None:
    (result,) = exported_sweep.trials[0].states
    assert (result.val_size, result.test_size) == (96, 96)  # digits_small: 256 / 96 / 96
    assert round(result.val_acc * 96) == pytest.approx(result.val_acc * 96)  # correct / n
    md = write_report(exported_sweep, tmp_path).read_text()
    assert "val acc % [95 % CI], n=96" in md and "one image of 96 is 1.04 points" in md


def test_a_real_run_records_where_it_ran_and_the_report_says_so(
    exported_sweep: Experiment, tmp_path: Path
) -> None:
    """Every state records its device and numerics (the fp32 / bf16 autocast / compiled
    forward it ran with); the report's summary counts the trials per way they ran, and says
    nothing of results recorded before rsst-tune recorded it."""
    from rsst_tune.device import describe_device, describe_numerics, resolve_device

    record = exported_sweep.trials[0]
    (result,) = record.states
    device = resolve_device(str(record.config["device"]))
    expected = describe_numerics(torch.bfloat16 if device.type == "cuda" else None, None)
    assert (result.device, result.numerics) == (describe_device(device), expected)
    assert StateResult.from_dict(result.to_dict()) == result
    md = write_report(exported_sweep, tmp_path / "real").read_text()
    assert f"Ran on: {result.device}, {result.numerics} (1 trial)." in md
    assert "not all measured the same way" not in md

    gpu = dataclasses.replace(
        result, device="cuda (NVIDIA H100 80GB HBM3)", numerics="bf16 autocast"
    )
    cpu = dataclasses.replace(result, device="cpu", numerics="fp32")
    row = result.to_dict()
    del row["device"], row["numerics"]  # a result.json row written before they were recorded
    old = StateResult.from_dict(row)
    assert (old.device, old.numerics) == (None, None)
    trials = tuple(
        dataclasses.replace(record, trial_id=f"t{i}", states=states)
        for i, states in enumerate([(gpu,), (gpu,), (cpu, gpu), (old,)])
    )
    mixed = dataclasses.replace(exported_sweep, trials=trials)
    md = write_report(mixed, tmp_path / "mixed").read_text()
    assert (
        "Ran on: cuda (NVIDIA H100 80GB HBM3), bf16 autocast (3 trials); cpu, fp32 (1 trial). "
        "The tickets compared were not all measured the same way"
    ) in md
    older = dataclasses.replace(exported_sweep, trials=(trials[-1],))
    assert "Ran on:" not in write_report(older, tmp_path / "old").read_text()


def export_rows_in(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| t_x/s1 |")]


def test_report_renders_recorded_exports_without_measuring(
    exported_sweep: Experiment, tmp_path: Path
) -> None:
    from rsst_tune.export import read_report
    from rsst_tune.report import fmt_latency
    from rsst_tune.tune.run.runner import write_report_if_available

    assert write_report_if_available(exported_sweep, tmp_path, export="missing")  # sweep's end
    folder = tmp_path / "best_exports" / "t_x_s1"
    model_file, record_file = folder / "model.pt", folder / "export.json"
    stamp, recorded = model_file.stat().st_mtime_ns, record_file.read_text()
    report = read_report(record_file)
    assert [(lat.device, lat.batch) for lat in report.latency] == [("cpu", 1), ("cpu", 64)]
    # `rsst-tune report DIR` (and a resumed sweep's end) render the record, measuring nothing
    md_path = tmp_path / "report.md"
    for export in ("recorded", "missing"):
        assert write_report_if_available(exported_sweep, tmp_path, export=export) == md_path
        assert model_file.stat().st_mtime_ns == stamp and record_file.read_text() == recorded
        rows = export_rows_in(md_path.read_text())
        assert len(rows) == len(report.latency)  # one row per batch size, not per budget
        for row, lat in zip(rows, report.latency):
            assert "MACs ≤ 75 %; unconstrained" in row
            assert fmt_latency(lat.dense_ms, lat.dense_iqr_ms) in row
            assert fmt_latency(lat.pruned_ms, lat.pruned_iqr_ms) in row
            assert f"{lat.speedup:.2f}x" in row and f"{report.mac_ratio:.2f}x" in row
    md = md_path.read_text()
    assert write_report(exported_sweep, tmp_path).read_text() == md
    assert model_file.stat().st_mtime_ns == stamp


def test_report_measure_exports_again(exported_sweep: Experiment, tmp_path: Path) -> None:
    from rsst_tune.best_exports import export_best
    from rsst_tune.cli import build_parser
    from rsst_tune.export import read_report
    from rsst_tune.report import fmt_latency
    from rsst_tune.tune.run.runner import write_report_if_available

    assert build_parser().parse_args(["report", "exp"]).measure is False
    assert build_parser().parse_args(["report", "exp", "--measure"]).measure is True
    export_best(exported_sweep, tmp_path)  # the export step, then the renderer
    write_report(exported_sweep, tmp_path)
    record_file = tmp_path / "best_exports" / "t_x_s1" / "export.json"
    model_file = record_file.with_name("model.pt")
    stamp, old = model_file.stat().st_mtime_ns, read_report(record_file)
    md_path = write_report_if_available(exported_sweep, tmp_path, export="all")  # --measure
    assert md_path is not None
    assert model_file.stat().st_mtime_ns != stamp
    new = read_report(record_file)
    assert new.latency != old.latency and new.layers == old.layers
    rows = export_rows_in(md_path.read_text())
    assert len(rows) == 2
    for row, lat in zip(rows, new.latency):
        assert fmt_latency(lat.dense_ms, lat.dense_iqr_ms) in row


def test_report_export_rows_say_why_a_ticket_has_no_export(
    exported_sweep: Experiment, tmp_path: Path
) -> None:
    from dataclasses import replace

    from rsst_tune.best_exports import export_best
    from rsst_tune.tune.run.runner import write_report_if_available

    md = write_report(exported_sweep, tmp_path).read_text()
    assert "not exported yet" in md and not (tmp_path / "best_exports").exists()
    gone = replace(exported_sweep.trials[0], state_checkpoints={1: str(tmp_path / "gone")})
    broken = replace(exported_sweep, trials=(gone,))
    export_best(broken, tmp_path)  # a failed export is recorded, never raised
    md = write_report(broken, tmp_path).read_text()
    assert len(export_rows_in(md)) == 1
    assert "export failed: ConfigError: checkpoint not found" in md
    assert (tmp_path / "best_exports" / "t_x_s1" / "error.txt").is_file()
    no_checkpoint = replace(broken, trials=(replace(gone, state_checkpoints={}),))
    md = write_report(no_checkpoint, tmp_path / "other").read_text()
    assert "no checkpoint kept for this state" in md
    with pytest.raises(ValueError, match="export must be one of"):
        write_report_if_available(exported_sweep, tmp_path, export="always")


def test_the_ticket_within_a_latency_budget_is_held_to_its_prediction_raised_by_the_margin(
    tmp_path: Path,
) -> None:
    from rsst_tune.experiment.latency_budget import best_within_latency, latency_budget
    from rsst_tune.latency_model import LatencyTable

    def ticket(order: int, val: float, macs: float, ms: float) -> Ticket:
        result = dataclasses.replace(state(order, val, val, macs), latency_ms=ms)
        return Ticket("t", order, "complete", result, order=order)

    tickets = [ticket(0, 0.95, 0.9, 9.0), ticket(1, 0.90, 0.6, 8.0), ticket(2, 0.80, 0.4, 7.0)]
    table = LatencyTable(
        model="vit_digits", img_size=8, batch=1, device="cpu", dtype="float32", threads=1,
        dense_s=0.01, blocks={}, groups={}, num_units={}, margin=0.1,
    )  # fmt: skip
    path = table.save(tmp_path / "t.json")
    exp = Experiment(name="e", path=str(tmp_path), space="s", objectives=(), trials=())
    assert latency_budget(exp) is None and best_within_latency(tickets, None) is None
    under = dataclasses.replace(exp, latency_budget_ms=9.5, latency_table=str(path))
    budget = latency_budget(under)
    assert budget is not None and budget.margin == pytest.approx(0.1)
    # 9.0 ms is within 9.5 ms, but 9.0 * 1.1 = 9.9 ms is not: the most accurate ticket the
    # budget admits is the next one
    assert [budget.admits(t) for t in tickets] == [False, True, True]
    assert best_within_latency(tickets, budget) is tickets[1]
    assert budget.label() == "latency ≤ 9.5 ms"
    # a table that cannot be read: the prediction alone is held, and the margin is unknown
    lost = latency_budget(dataclasses.replace(under, latency_table=str(tmp_path / "gone.json")))
    assert lost is not None and lost.margin is None
    assert best_within_latency(tickets, lost) is tickets[0]
    assert best_within_latency(tickets, dataclasses.replace(budget, budget_ms=1.0)) is None
