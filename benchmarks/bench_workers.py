"""One trial on 1 process vs N data-parallel workers (`run_trial(..., workers=N)`), same global
batch: per-state wall time side by side, their ratio, and the accuracies.

resnet20 on the offline digits data (1,077 training images, global batch 64, SGD, no
augmentation), 3 states of 2 epochs, one torch thread per process; the N workers are Ray
Train workers with gloo on a local Ray bound to 127.0.0.1 (started here, in a short temporary
RAY_TMPDIR, and shut down at the end). On CPU the workers share the machine's cores with
each other and with the driver, so the ratio measures the DDP machinery's cost on this
machine as much as any speed-up: with fewer free cores than workers it cannot be faster.

    python benchmarks/bench_workers.py             # 1 vs 2 workers
    python benchmarks/bench_workers.py --workers 4
    python benchmarks/bench_workers.py --tiny      # 2 states of 1 epoch, for CI (no goal)
    python benchmarks/bench_workers.py --stream    # a streamed image folder instead

`--stream`: the same trial on a folder of random 48 px JPEGs written here (3 classes, 1,152
training images, 96 val and test), read from disk batch by batch (`data_placement stream`,
one DataLoader worker per process, random-resized crops to 32 px): each of the N workers
reads only the files of its slice of each batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from typing import Any

CFG: dict[str, Any] = dict(
    model="resnet20",
    dataset="digits",
    method="refill",
    pruning_times=3,
    filter_ratio=0.25,
    epochs=2,
    optimizer="sgd",
    lr=0.05,
    batch_size=64,
    device="cpu",
    amp=False,
    augment=False,
    warmup_epochs=0.0,
    score_batches=2,
    eval_batch_size=512,
    threads=1,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="data-parallel workers (>= 2)")
    parser.add_argument("--tiny", action="store_true", help="2 states of 1 epoch (CI)")
    parser.add_argument("--stream", action="store_true", help="a streamed image folder")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error(f"--workers must be at least 2, got {args.workers}")
    cfg = {**CFG, **({"pruning_times": 2, "epochs": 1} if args.tiny else {})}
    folder = None
    if args.stream:
        folder = tempfile.mkdtemp(prefix="bw-images-")
        _write_folder(folder, per_class=96 if args.tiny else 384)
        cfg.update(
            dataset="imagefolder", data_dir=folder, img_size=32, data_placement="stream",
            data_workers=1, augment=True,
        )  # fmt: skip
    if cfg["batch_size"] % args.workers:
        parser.error(f"--workers must divide the global batch {cfg['batch_size']}")

    import ray

    from rsst_tune.run import run_trial
    from rsst_tune.tune.run.ray_setup import prepare_ray_env, restore_ray_env

    t0 = time.perf_counter()
    one = run_trial(cfg)
    one_s = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="bw", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    saved = prepare_ray_env(None)
    try:
        ray.init(
            address="local", _node_ip_address="127.0.0.1", num_cpus=max(2, args.workers),
            include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
        )  # fmt: skip
        t0 = time.perf_counter()
        many = run_trial(cfg, workers=args.workers)
        many_s = time.perf_counter() - t0
    finally:
        restore_ray_env(saved)
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    n = args.workers
    data = "a streamed folder of 48 px JPEGs" if args.stream else "digits"
    print(
        f"resnet20 on {data}, global batch {cfg['batch_size']}, {cfg['pruning_times']} states "
        f"of {cfg['epochs']} epoch(s), 1 torch thread per process, {os.cpu_count()} cores"
    )
    print(f"{'state':>5} {'1 proc s':>9} {f'{n} workers s':>12} {'ratio':>6} "
          f"{'val 1':>7} {f'val {n}':>7} {'img/s 1':>8} {f'img/s {n}':>8}")  # fmt: skip
    for a, b in zip(one, many, strict=True):
        print(
            f"{a.state:>5} {a.wall_time_s:>9.2f} {b.wall_time_s:>12.2f} "
            f"{b.wall_time_s / a.wall_time_s:>6.2f} {a.val_acc:>7.3f} {b.val_acc:>7.3f} "
            f"{a.images_per_s or 0:>8.0f} {b.images_per_s or 0:>8.0f}"
        )
    total_a = sum(r.wall_time_s for r in one)
    total_b = sum(r.wall_time_s for r in many)
    print(
        f"states in all: {total_a:.2f}s vs {total_b:.2f}s ({total_b / total_a:.2f}x the time of "
        f"one process); whole runs with setup: {one_s:.1f}s vs {many_s:.1f}s (Ray Train start "
        "included)"
    )


def _write_folder(root: str, per_class: int) -> None:
    """`root/{train,val,test}/cK/i.jpg`: random 48 px JPEGs, 3 classes, seeded."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("val", 32), ("test", 32)):
        for k in range(3):
            folder = Path(root) / part / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
                pixels[..., k] //= 4  # a class is a colour cast: something to learn
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


if __name__ == "__main__":
    main()
