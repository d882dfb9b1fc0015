"""Memory of a split's file list at ImageNet's size: a tuple of ``Path`` s vs ``FileList``.

An image folder's ``FileSplit`` keeps the list of its files in every trial process (and
``StreamData`` hands it to its DataLoader workers). This builds 1,281,167 synthetic
ImageNet-like paths (``<root>/n01440764/n01440764_10026.JPEG``, 1,000 class folders; no
files on disk) the way the folder scan lists them (class by class, sorted) and holds them:

- before: ``tuple[Path, ...]`` (what ``FileSplit.files`` was);
- now: ``rsst_tune.data.FileList`` (each folder once, a per-file folder index and the
  encoded file names in one fixed-width numpy bytes array).

It prints, side by side: the memory retained once built and the peak while building
(``tracemalloc``, which sees numpy's buffers too), the pickled size (what Ray and spawned
DataLoader workers get), and the time of 100,000 random ``files[i]`` lookups, with the
ratios; and, for reference, the size of the numpy array of encoded absolute paths that
``StreamData`` used to build for its workers. Both lists are checked to hold the same paths.

    python benchmarks/bench_filelist.py            # 1,281,167 paths (about a minute)
    python benchmarks/bench_filelist.py --tiny     # 20,000 paths, seconds, for CI
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from rsst_tune.data import FileList

IMAGENET_TRAIN = 1_281_167
CLASSES = 1000
LOOKUPS = 100_000

T = TypeVar("T")


def synthetic_paths(root: str, n: int, classes: int, seed: int = 0) -> list[list[str]]:
    """Per class folder (``n`` + 8 digits, sorted), its files' paths as strings: ``n`` files
    spread evenly, each ``<wnid>_<number>.JPEG`` with distinct numbers below 100,000."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{int(w):08d}" for w in np.sort(rng.choice(10**8, classes, replace=False))]
    out = []
    for c, wnid in enumerate(wnids):
        count = n // classes + (1 if c < n % classes else 0)
        numbers = rng.choice(np.arange(1, 100_000), count, replace=False).tolist()
        out.append([f"{root}/{wnid}/{wnid}_{k}.JPEG" for k in numbers])
    return out


def as_tuple(per_class: list[list[str]]) -> tuple[Path, ...]:
    """What the scan built before: each class folder's ``Path`` s sorted, all in one tuple."""
    found: list[Path] = []
    for strings in per_class:
        found.extend(sorted(Path(s) for s in strings))
    return tuple(found)


def as_file_list(per_class: list[list[str]]) -> FileList:
    """What the scan builds now: each class folder's ``Path`` s sorted and made a
    ``FileList`` at once (so only one folder's ``Path`` s live at a time), then joined."""
    return FileList.concat([FileList.from_paths(sorted(Path(s) for s in c)) for c in per_class])


def traced(build: Callable[[], T]) -> tuple[T, int, int, float]:
    """``build()``, the bytes it leaves allocated, its peak allocation (tracemalloc) and its
    time (seconds, tracemalloc slows it)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    value = build()
    seconds = time.perf_counter() - start
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, current - base, peak - base, seconds


def lookup_seconds(files: Sequence[Path], rows: list[int]) -> float:
    """Seconds ``files[i]`` takes for every ``i`` in ``rows`` (best of three)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in rows:
            files[i]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="20,000 paths: seconds, for CI")
    parser.add_argument("--paths", type=int, default=None, help=f"default {IMAGENET_TRAIN:,}")
    parser.add_argument("--root", default="/datasets/imagenet/train")
    args = parser.parse_args()
    n = args.paths or (20_000 if args.tiny else IMAGENET_TRAIN)

    per_class = synthetic_paths(args.root, n, CLASSES)
    tup, tup_kept, tup_peak, tup_s = traced(lambda: as_tuple(per_class))
    files, fl_kept, fl_peak, fl_s = traced(lambda: as_file_list(per_class))
    rng = random.Random(0)
    check = [rng.randrange(n) for _ in range(1000)] + [0, n - 1]
    assert len(files) == len(tup) == n and all(files[i] == tup[i] for i in check)
    assert all(files.encoded(i) == os.fsencode(tup[i]) for i in check)
    tup_pickle = len(pickle.dumps(tup, protocol=pickle.HIGHEST_PROTOCOL))
    fl_pickle = len(pickle.dumps(files, protocol=pickle.HIGHEST_PROTOCOL))
    assert pickle.loads(pickle.dumps(files)) == files
    rows = [rng.randrange(n) for _ in range(LOOKUPS)]
    tup_look, fl_look = lookup_seconds(tup, rows), lookup_seconds(files, rows)
    old_workers = np.array([os.fsencode(p) for p in tup])  # StreamData's array, before

    mb = 1e6
    print(
        f"file list of {n:,} synthetic ImageNet paths ({CLASSES:,} class folders, "
        f"{args.root}/<wnid>/<wnid>_<k>.JPEG); FileList: {files.nbytes / n:.1f} bytes a file "
        f"in its arrays (names {files._names.dtype}, folder index {files._dir_of.dtype})"
    )
    rows_out = [
        ("retained once built (MB)", tup_kept / mb, fl_kept / mb),
        ("tracemalloc peak while building (MB)", tup_peak / mb, fl_peak / mb),
        ("pickled (MB)", tup_pickle / mb, fl_pickle / mb),
    ]
    print(f"{'':40s} {'tuple[Path]':>12s} {'FileList':>12s}  ratio")
    for label, a, b in rows_out:
        print(f"{label:40s} {a:12.2f} {b:12.2f}  {a / b:.1f}x smaller")
    for label, a, b in (
        (f"{LOOKUPS // 1000}k random files[i] (ms)", tup_look * 1e3, fl_look * 1e3),
        ("build, as the scan does, traced (s)", tup_s, fl_s),
    ):
        print(f"{label:40s} {a:12.2f} {b:12.2f}  {b / a:.2f}x the time")
    print(
        f"{'one files[i] (microseconds)':40s} {tup_look * 1e6 / LOOKUPS:12.3f} "
        f"{fl_look * 1e6 / LOOKUPS:12.3f}"
    )
    print(
        f"for reference: StreamData's workers' array of encoded absolute paths, before: "
        f"{old_workers.nbytes / mb:.2f} MB ({old_workers.dtype}); now they get the FileList"
    )


if __name__ == "__main__":
    main()
