"""Benchmark search efficiency: hypervolume against trial-epochs for four search setups.

    python benchmarks/bench_search.py           # 3 seeds x 4 setups on digits (15-25 min, 2 cores)
    python benchmarks/bench_search.py --tiny    # 1 seed, a few 2-epoch trials (CI, ~1 minute)

Setups, on the digits profile of `vit_head_mlp` (`--preset smoke`: vit_digits, digits, `lr`
pinned so every trial shares one dense state 0), with 4 states (the space's own state count:
dense, then 3 pruned states), 4 epochs each, 2 trials at a time:

* `tpe+moasha`:    TPE sampler, MO-ASHA scheduler (rungs at states 1 and 2; η = 2, the default);
* `tpe+fifo`:      TPE sampler, every trial runs every state;
* `random+moasha`: random sampler, MO-ASHA scheduler: the same configurations as random+fifo,
  in the same order (the random sampler's draws do not depend on results), so the difference
  from random+fifo is MO-ASHA's alone;
* `random+fifo`:   random sampler, every trial runs every state (the baseline).

Every setup first runs the space's starting point; TPE's random start-up trials
(`rsst_tune.tune.search.samplers.tpe_startup`: a fifth of the full-length trials the budget buys,
3 of 16, for MO-ASHA too) come from the same seeded
stream as the random sampler's, so all setups share their first few trials (common random
numbers).

Budget: the same number of **trial-epochs** for every setup, B = (FIFO trials) x (pruned
states) x (epochs per state) + one dense state 0 (`epochs_trained` of every state of every
trial is what counts: a state 0 loaded from the shared dense cache costs 0), given to every
sweep as `--epoch-budget B` (`rsst_tune.tune.search.epoch_budget`: no trial starts once B are spent
or committed to running trials). A MO-ASHA sweep stops trials early, so it is allowed twice
the trials, and the budget decides how many it runs; every curve is cut at B.

Measured: after each reported state (in the order the driver saw them, `events.jsonl`), the
epochs spent so far and the **hypervolume** of the tickets so far (every state of every trial,
stopped trials' states included, as the report's Pareto front) in the plane
(val_acc, 1 - macs_frac), both maximised, against the fixed reference point (0.1, 0.0): chance
accuracy (10 classes) and no MACs saved. Printed: hypervolume at fractions of B (mean over
seeds, and min..max); per seed, the epochs each setup needed to reach random+fifo's final
hypervolume of that seed, as a ratio of the epochs random+fifo itself needed ("never" when not
reached within B), with random+fifo's own hypervolume at B/2 beside the target: how much of
its final hypervolume the baseline already had at half the budget (the ratio only tells who
first gets the rest); and the same ratio on the curves averaged over the seeds (the table's
means, at every epoch), which is what the goal is judged on (tpe+moasha <= 0.5), with the
number of seeds that meet it on their own beside it. Per seed the ratio swings with one
configuration (the hypervolume saturates early, and a baseline that finds a lucky point late
is out of everyone's reach), and a mean of per-seed ratios is undefined when one seed never
gets there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from rsst_tune.errors import SweepInterrupted  # noqa: E402
from rsst_tune.tune import SweepOptions, load_experiment, resolve_plan, run_sweep  # noqa: E402
from rsst_tune.tune.console import EVENTS_FILE  # noqa: E402

REFERENCE = (0.1, 0.0)  # (val_acc, 1 - macs_frac): chance accuracy on 10 classes, no saving
SETUPS = (
    ("tpe+moasha", "tpe", "moasha"),
    ("tpe+fifo", "tpe", "fifo"),
    ("random+moasha", "random", "moasha"),
    ("random+fifo", "random", "fifo"),
)
BASELINE = "random+fifo"
GOAL = 0.5
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# The smoke preset re-runs its best tickets with more seeds when a sweep ends (`confirm`) and
# exports them to ONNX too: neither is part of the search, so both are off here.
AFTER_SEARCH_OFF: dict[str, Any] = {"confirm": 0, "onnx": False}


@dataclass(frozen=True)
class Size:
    seeds: tuple[int, ...]
    states: int
    epochs: int
    fifo_trials: int
    moasha_trials: int
    max_concurrent: int = 2


FULL = Size(seeds=(0, 1, 2), states=4, epochs=4, fifo_trials=16, moasha_trials=32)
TINY = Size(seeds=(0,), states=3, epochs=2, fifo_trials=2, moasha_trials=3)


def budget_epochs(size: Size) -> int:
    """B: the FIFO trials' pruned states, and one dense state 0 (shared by every trial)."""
    return size.fifo_trials * (size.states - 1) * size.epochs + size.epochs


def hypervolume(
    points: Sequence[tuple[float, float]], ref: tuple[float, float] = REFERENCE
) -> float:
    """The area dominated by `points` (both coordinates maximised) above `ref`."""
    inside = sorted(((a, b) for a, b in points if a > ref[0] and b > ref[1]), reverse=True)
    area, best_b = 0.0, ref[1]
    for a, b in inside:  # by a descending: each point adds the strip its b rises above
        if b > best_b:
            area += (a - ref[0]) * (b - best_b)
            best_b = b
    return area


def curve(exp_dir: Path) -> list[tuple[int, float]]:
    """(epochs spent, hypervolume) after each reported state, in the order the driver saw
    them; a state seen twice (a resumed trial) counts once."""
    exp = load_experiment(exp_dir)
    states = {(t.trial_id, s.state): s for t in exp.trials for s in t.states}
    seen: set[tuple[str, int]] = set()
    spent = 0
    points: list[tuple[float, float]] = []
    out: list[tuple[int, float]] = []
    for line in (exp_dir / EVENTS_FILE).read_text().splitlines():
        event = json.loads(line)
        if event.get("event") != "state":
            continue
        key = (str(event["trial_id"]), int(event["state"]))
        if key in seen or key not in states:
            continue
        seen.add(key)
        state = states[key]
        spent += int(state.epochs_trained)
        points.append((state.val_acc, 1.0 - state.macs_frac))
        out.append((spent, hypervolume(points)))
    return out


def value_at(points: list[tuple[int, float]], epochs: float) -> float:
    """The hypervolume reached within `epochs` epochs."""
    return max((hv for spent, hv in points if spent <= epochs), default=0.0)


def mean_curve(
    per_seed: dict[int, list[tuple[int, float]]], seeds: Sequence[int], budget: int
) -> list[tuple[int, float]]:
    """(epochs, the mean over `seeds` of the hypervolume reached within them) at every epoch
    1..budget: the seed-averaged curve of the printed table."""
    return [
        (e, statistics.mean(value_at(per_seed[s], e) for s in seeds)) for e in range(1, budget + 1)
    ]


def epochs_to(points: list[tuple[int, float]], target: float, budget: int) -> int | None:
    """The epochs spent when the hypervolume first reached `target` (None: not within budget)."""
    for spent, hv in points:
        if spent > budget:
            return None
        if hv >= target - 1e-12:
            return spent
    return None


def run_setup(
    storage: str, name: str, sampler: str, scheduler: str, seed: int, size: Size
) -> list[tuple[int, float]]:
    trials = size.moasha_trials if scheduler == "moasha" else size.fifo_trials
    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            storage=storage,
            name=name,
            seed=seed,
            sampler=sampler,
            scheduler=scheduler,
            states=size.states,
            epochs=size.epochs,
            num_samples=trials,
            epoch_budget=budget_epochs(size),
            max_concurrent=size.max_concurrent,
            command="python benchmarks/bench_search.py",
            **AFTER_SEARCH_OFF,
        )
    )
    try:
        run_sweep(plan, show=False)
    except SweepInterrupted as stop:
        print(f"bench_search: {name}: {stop}", file=sys.stderr)
    exp_dir = Path(plan.experiment_dir)
    exp = load_experiment(exp_dir)
    stopped: dict[int, int] = {}
    for t in exp.trials:
        if t.status == "pruned" and t.states:
            stopped[t.states[-1].state] = stopped.get(t.states[-1].state, 0) + 1
    where = ", ".join(f"{n} at state {s}" for s, n in sorted(stopped.items())) or "none"
    points = curve(exp_dir)
    print(
        f"  {name:<24} {len(exp.trials)} trials, stopped early: {where}; "
        f"{points[-1][0] if points else 0} epochs",
        flush=True,
    )
    return points


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="1 seed, tiny trials (CI)")
    parser.add_argument("--storage", default=None, help="keep the experiments here")
    dev = parser.add_argument_group("smaller runs while developing (the goal is for the defaults)")
    dev.add_argument("--seeds", type=_ints, help="comma-separated sampler seeds")
    for flag in ("--states", "--epochs", "--fifo-trials", "--moasha-trials"):
        dev.add_argument(flag, type=int)
    dev.add_argument("--curves", default=None, help="also write every curve to this JSON file")
    dev.add_argument(
        "--from-curves",
        default=None,
        metavar="FILE",
        help="run nothing: print the report of the curves a run wrote with --curves",
    )
    args = parser.parse_args(argv)
    if args.from_curves:
        saved = json.loads(Path(args.from_curves).read_text())
        size = Size(**{**saved["size"], "seeds": tuple(saved["size"]["seeds"])})
        saved_curves = {
            label: {int(seed): [(int(e), float(hv)) for e, hv in points]
                    for seed, points in per_seed.items()}
            for label, per_seed in saved["curves"].items()
        }  # fmt: skip
        missing = [
            f"{label} seed {seed}"
            for label, _, _ in SETUPS
            for seed in size.seeds
            if seed not in saved_curves.get(label, {})
        ]
        if missing:
            parser.error(f"{args.from_curves} has no curve for {', '.join(missing)}")
        return report(saved_curves, size, int(saved["budget"]), math.nan)
    size = TINY if args.tiny else FULL
    changes = {
        key: getattr(args, key)
        for key in ("seeds", "states", "epochs", "fifo_trials", "moasha_trials")
        if getattr(args, key) is not None
    }
    size = dataclasses.replace(size, **changes)
    budget = budget_epochs(size)
    print(
        f"bench_search: vit_head_mlp --preset smoke, {size.states} states x {size.epochs} "
        f"epochs, seeds {list(size.seeds)}; budget {budget} trial-epochs ({size.fifo_trials} "
        f"FIFO trials; MO-ASHA may run up to {size.moasha_trials}; every sweep has --epoch-budget "
        f"{budget}); "
        f"hypervolume of (val_acc, 1 - macs_frac) against {REFERENCE}",
        flush=True,
    )
    tmp = None
    storage = args.storage
    if storage is None:
        tmp = tempfile.mkdtemp(prefix="bench_search_")
        storage = tmp
    from rsst_tune.tune.run.ray_setup import prepare_ray_env, restore_ray_env

    saved = prepare_ray_env(None)
    import ray

    try:
        ray.init(
            address="local",
            num_cpus=size.max_concurrent,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    finally:
        restore_ray_env(saved)  # the cluster has what it needs (ray_setup's module doc)
    t0 = time.perf_counter()
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {s[0]: {} for s in SETUPS}
    try:
        for seed in size.seeds:
            for label, sampler, scheduler in SETUPS:
                name = f"{label.replace('+', '_')}_s{seed}"
                curves[label][seed] = run_setup(storage, name, sampler, scheduler, seed, size)
    finally:
        ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    if args.curves:
        Path(args.curves).write_text(
            json.dumps({"size": dataclasses.asdict(size), "budget": budget, "curves": curves})
        )

    return report(curves, size, budget, elapsed)


def _ratio_text(ratio: float) -> str:
    return "-" if math.isnan(ratio) else "never" if math.isinf(ratio) else f"{ratio:.2f}"


def _ratio_json(ratio: float) -> float | str:
    """A ratio, "never" (not reached within the budget) or "undefined" (nothing to reach)."""
    return "undefined" if math.isnan(ratio) else "never" if math.isinf(ratio) else round(ratio, 3)


def report(
    curves: dict[str, dict[int, list[tuple[int, float]]]], size: Size, budget: int, elapsed: float
) -> int:
    """Print the hypervolume table, the ratios and the goal line, then one JSON line."""
    # hypervolume against epochs spent
    labels = [s[0] for s in SETUPS]
    print(f"\nhypervolume (mean over {len(size.seeds)} seeds, [min..max]) by trial-epochs spent")
    print(f"{'epochs':>8}  " + "  ".join(f"{label:>24}" for label in labels))
    for at in sorted({max(1, round(frac * budget)) for frac in FRACTIONS}):
        cells = []
        for label in labels:
            values = [value_at(curves[label][s], at) for s in size.seeds]
            cells.append(f"{statistics.mean(values):.4f} [{min(values):.3f}..{max(values):.3f}]")
        print(f"{at:>8}  " + "  ".join(f"{c:>24}" for c in cells))

    # epochs to reach the baseline's final hypervolume
    print(f"\nepochs to reach {BASELINE}'s final hypervolume (ratio to {BASELINE}'s own epochs)")
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for seed in size.seeds:
        target = value_at(curves[BASELINE][seed], budget)
        own = epochs_to(curves[BASELINE][seed], target, budget)
        parts = []
        for label in labels:
            needed = epochs_to(curves[label][seed], target, budget)
            if target <= 0.0:  # nothing to reach: no ratio
                ratios[label].append(math.nan)
                parts.append(f"{label} -")
            elif needed is None or not own:
                ratios[label].append(math.inf)
                parts.append(f"{label} never")
            else:
                ratios[label].append(needed / own)
                parts.append(f"{label} {needed} ({needed / own:.2f})")
        half = value_at(curves[BASELINE][seed], budget / 2)
        print(
            f"  seed {seed}: target {target:.4f} ({BASELINE} had {half:.4f} at B/2): "
            + ", ".join(parts)
        )
    within = {label: sum(r <= GOAL for r in ratios[label]) for label in labels}
    for label in labels:
        shown = ", ".join(_ratio_text(r) for r in ratios[label])
        print(f"  {label:<13} per seed {shown}; <= {GOAL} in {within[label]} of {len(size.seeds)}")

    # the same on the curves averaged over the seeds (the table above)
    mean_curves = {label: mean_curve(curves[label], size.seeds, budget) for label in labels}
    target = mean_curves[BASELINE][-1][1]
    own = epochs_to(mean_curves[BASELINE], target, budget)
    print(
        f"\non the curve averaged over the {len(size.seeds)} seeds: {BASELINE}'s final "
        f"hypervolume {target:.4f}, reached by"
    )
    summary: dict[str, float] = {}
    for label in labels:
        needed = epochs_to(mean_curves[label], target, budget)
        if target <= 0.0 or not own:  # nothing to reach: no ratio
            summary[label], shown = math.nan, "-"
        elif needed is None:
            summary[label], shown = math.inf, "never"
        else:
            summary[label] = needed / own
            shown = f"{needed} epochs ({summary[label]:.2f})"
        print(f"  {label:<13} {shown}")
    met = summary["tpe+moasha"] <= GOAL
    print(
        f"goal tpe+moasha <= {GOAL} of {BASELINE}'s epochs, on the seed-averaged curve: "
        + ("met" if met else "NOT met")
        + f" ({summary['tpe+moasha']:.2f}); per seed: met in {within['tpe+moasha']} of "
        f"{len(size.seeds)}"
    )
    if math.isfinite(elapsed):
        print(f"total {elapsed:.0f} s")
    print(
        json.dumps(
            {
                "budget_epochs": budget,
                "seeds": list(size.seeds),
                "ratio": {k: _ratio_json(v) for k, v in summary.items()},
                "ratio_per_seed": {k: [_ratio_json(r) for r in v] for k, v in ratios.items()},
                "final_hypervolume": {
                    label: round(
                        statistics.mean(value_at(curves[label][s], budget) for s in size.seeds), 4
                    )
                    for label in labels
                },
                "goal_met": met,
                "total_s": round(elapsed, 1) if math.isfinite(elapsed) else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
