"""Shared dense training: epochs a smoke sweep trains with and without it, in one run.

    python benchmarks/bench_dense_share.py          # the --preset smoke sweep, twice (minutes)
    python benchmarks/bench_dense_share.py --tiny   # 2 trials x 2 states x 1 epoch, twice (CI)

Both sweeps use the same seed, so Optuna proposes the same trials; the smoke preset pins the
training recipe (`--fix lr=3e-3`), so every trial's state 0 is identical and, with sharing,
is trained once. Printed: epochs trained (sum of `epochs_trained` over all states of all
trials) and sweep wall time for each, and their ratios.
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

from rsst_tune.tune import SweepOptions, load_experiment, resolve_plan, run_sweep  # noqa: E402


def sweep(storage: str, share: bool, extra: dict[str, Any], seed: int) -> tuple[int, float, int]:
    """(epochs trained, wall seconds, trials) of one smoke sweep."""
    plan = resolve_plan(
        SweepOptions(
            space="vit_head_mlp",
            preset="smoke",
            storage=storage,
            name=f"share_{share}",
            seed=seed,
            share_dense=share,
            **extra,
        )
    )
    t0 = time.perf_counter()
    run_sweep(plan, show=False)
    wall = time.perf_counter() - t0
    exp = load_experiment(Path(plan.experiment_dir))
    epochs = sum(s.epochs_trained for t in exp.trials for s in t.states)
    return epochs, wall, len(exp.trials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long setting for CI")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {"num_samples": 2, "states": 2, "epochs": 1} if args.tiny else {}
    tmp = tempfile.mkdtemp(prefix="bench_dense_")
    try:
        off_epochs, off_wall, n = sweep(tmp, False, extra, args.seed)
        on_epochs, on_wall, _ = sweep(tmp, True, extra, args.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"trials per sweep        {n}")
    print(
        f"epochs trained          without sharing {off_epochs:5d}   with sharing {on_epochs:5d}"
        f"   ratio {on_epochs / max(off_epochs, 1):.3f}"
    )
    print(
        f"sweep wall time (s)     without sharing {off_wall:7.1f} with sharing {on_wall:7.1f}"
        f" ratio {on_wall / max(off_wall, 1e-9):.3f}"
    )
    print(
        json.dumps(
            {
                "epochs_off": off_epochs,
                "epochs_on": on_epochs,
                "wall_off_s": round(off_wall, 1),
                "wall_on_s": round(on_wall, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
