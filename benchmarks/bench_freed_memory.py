"""CPU timings with and without the freed memory held (`rsst_tune.latency.hold_freed_memory`).

glibc's malloc hands a large freed block back to the kernel (above its mmap threshold, or
trimmed off the top of the heap), so the next forward faults in fresh zeroed pages, and a
model's time depends on what the process allocated before. Every CPU timing of this project
(latency tables, the export step, `compare_latency`) therefore holds the freed memory first.

This benchmark times the same model's forward (the fastest of timed runs of at least 10 ms,
after a warm-up, eval mode, `torch.inference_mode()`, 1 torch thread) in three states of one
process: fresh; with 60 deep copies of the model alive (each run once, as a latency table's
build leaves the exported models it times); and after those are freed. Each state is timed
in a child process per mode, "default" (glibc as it is) and "held", the two alternating over
`--rounds` rounds; a state's time is its fastest over the rounds. It prints, per mode, the
spread of the three states (slowest / fastest: 1.00 means the history does not matter), and
per state held / default.

    python benchmarks/bench_freed_memory.py            # resnet20 at batch 64, 3 rounds
    python benchmarks/bench_freed_memory.py --tiny     # batch 8, 10 copies, 1 round (CI)
    python benchmarks/bench_freed_memory.py --model vit_tiny --batch 64

On a C library other than glibc, "held" changes nothing and says so.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

STATES = ("fresh", "copies alive", "copies freed")
MODES = ("default", "held")


def child(mode: str, model_name: str, batch: int, copies: int, repeats: int) -> dict[str, object]:
    """The forward's fastest time (ms) in each state of this process."""
    import torch

    from rsst_tune.latency import hold_freed_memory, time_forward
    from rsst_tune.models import create_model

    torch.set_num_threads(1)
    held = hold_freed_memory() if mode == "held" else False
    model = create_model(model_name, img_size=32).eval()
    x = torch.zeros(batch, 3, 32, 32)

    def fastest_ms() -> float:
        # the table's measure, written out: `latency_model.fastest_time` holds freed memory
        # itself, which the "default" mode must not
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            inner = 1
            while time_forward(model, x, inner) * inner < 0.01 and inner < 2**16:
                inner *= 2
            return 1000.0 * min(time_forward(model, x, inner) for _ in range(repeats))

    out: dict[str, object] = {"held": held, "fresh": fastest_ms()}
    alive = [copy.deepcopy(model) for _ in range(copies)]
    with torch.inference_mode():
        for m in alive:
            m(x)
    out["copies alive"] = fastest_ms()
    del alive
    gc.collect()
    out["copies freed"] = fastest_ms()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="batch 8, 10 copies, 1 round")
    parser.add_argument("--model", default="resnet20", help="a registered model at 32 px")
    parser.add_argument("--batch", type=int, default=None, help="default 64 (tiny 8)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (tiny 1)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or (8 if args.tiny else 64)
    rounds = args.rounds or (1 if args.tiny else 3)
    copies, repeats = (10, 3) if args.tiny else (60, 7)
    if batch < 1 or rounds < 1:
        parser.error("--batch and --rounds must be >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.model, batch, copies, repeats)))
        return

    start = time.perf_counter()
    print(
        f"CPU, 1 thread, {args.model} at 32 px, batch {batch}, {copies} copies, {rounds} "
        f"round(s) of a child process per mode, alternating"
    )
    best: dict[str, dict[str, float]] = {m: {} for m in MODES}
    held_took = True
    for _ in range(rounds):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", mode, "--model", args.model]
            cmd += ["--batch", str(batch), "--rounds", "1"] + (["--tiny"] if args.tiny else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                sys.exit(f"the {mode} child failed:\n{res.stderr}")
            got = json.loads(res.stdout.strip().splitlines()[-1])
            held_took = held_took and (mode != "held" or bool(got["held"]))
            for s in STATES:
                best[mode][s] = min(best[mode].get(s, float("inf")), float(got[s]))
    print(f"{'state':<14} {'default ms':>10} {'held ms':>8} {'held/default':>12}")
    for s in STATES:
        d, h = best["default"][s], best["held"][s]
        print(f"{s:<14} {d:>10.2f} {h:>8.2f} {h / d:>12.2f}")
    for mode in MODES:
        times = best[mode].values()
        print(f"{mode}: spread over the states (slowest / fastest) {max(times) / min(times):.2f}")
    if not held_took:
        print("freed memory could not be held here (not glibc): both modes are the same")
    print(f"wall time {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
