"""Benchmark the smoke sweep: how much of a trial's wall time is training and evaluating.

    python benchmarks/bench_sweep.py            # the --preset smoke sweep (minutes on 2 cores)
    python benchmarks/bench_sweep.py --tiny     # 2 trials x 2 states x 1 epoch (CI, seconds)

A trial's wall time is measured by the driver, from Ray starting the trial to its end (actor
start-up, imports, data loading, checkpoint upload and reporting included); its training time
is the sum of its states' `wall_time_s` (train + evaluate + score/prune, measured inside the
loop). The goal is a training share >= 80 %. Also printed: the sweep's total time (Ray start
and the report included) and, for the smoke preset's acceptance, the best ticket at MACs <= 50 %
chosen by validation accuracy, with its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from rsst_tune.errors import SweepInterrupted  # noqa: E402
from rsst_tune.tune import SweepOptions, load_experiment, resolve_plan, run_sweep  # noqa: E402
from rsst_tune.tune.console import EVENTS_FILE  # noqa: E402


def trial_walls(exp_dir: Path) -> dict[str, float]:
    """Driver-side wall time per trial: from its start event to its end event."""
    start: dict[str, float] = {}
    wall: dict[str, float] = {}
    for line in (exp_dir / EVENTS_FILE).read_text().splitlines():
        event = json.loads(line)
        tid = event["trial_id"]
        if event["event"] == "start":
            start.setdefault(tid, event["time"])
        elif event["event"] in ("done", "pruned", "error") and tid in start:
            wall[tid] = event["time"] - start[tid]
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long sweep for CI")
    parser.add_argument("--space", default="vit_head_mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=None, help="keep the experiment here")
    args = parser.parse_args(argv)

    tmp = None
    storage = args.storage
    if storage is None:
        tmp = tempfile.mkdtemp(prefix="bench_sweep_")
        storage = tmp
    extra: dict[str, Any] = {}
    if args.tiny:
        extra = {"num_samples": 2, "states": 2, "epochs": 1}
    plan = resolve_plan(
        SweepOptions(
            space=args.space,
            preset="smoke",
            storage=storage,
            name="bench",
            seed=args.seed,
            command="python benchmarks/bench_sweep.py" + (" --tiny" if args.tiny else ""),
            **extra,
        )
    )
    t0 = time.perf_counter()
    try:
        run_sweep(plan, show=not args.tiny)
        status = 0
    except SweepInterrupted as stop:
        print(f"bench_sweep: {stop}", file=sys.stderr)
        status = 130
    total = time.perf_counter() - t0
    exp_dir = Path(plan.experiment_dir)
    try:
        exp = load_experiment(exp_dir)
        walls = trial_walls(exp_dir)
        train = {t.trial_id: sum(s.wall_time_s for s in t.states) for t in exp.trials}
        ids = sorted(set(walls) & set(train))
        whole = sum(walls[i] for i in ids)
        busy = sum(train[i] for i in ids)
        share = busy / whole if whole else 0.0
        tickets = [(s, t.trial_id) for t in exp.trials for s in t.states]
        within = [(s, tid) for s, tid in tickets if s.macs_frac <= 0.5]
        statuses = ", ".join(sorted({t.status for t in exp.trials}))
        print(f"trials            {len(exp.trials)} ({statuses})")
        print(f"sweep total       {total:.1f} s (Ray start-up and report included)")
        print(f"trial wall time   {whole:.1f} s summed over trials")
        print(f"train + evaluate  {busy:.1f} s summed over trials")
        print(f"training share    {100 * share:.1f} %  (goal >= 80 %)")
        if within:
            best, tid = max(within, key=lambda x: x[0].val_acc)
            print(
                f"best at MACs<=50% trial {tid} state {best.state}: val "
                f"{100 * best.val_acc:.1f} %, test {100 * best.test_acc:.1f} %, "
                f"MACs {100 * best.macs_frac:.1f} %"
            )
        else:
            print("best at MACs<=50% no ticket within the budget")
        print(
            json.dumps(
                {
                    "status": status,
                    "total_s": round(total, 1),
                    "training_share": round(share, 4),
                    "trials": len(exp.trials),
                }
            )
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
