"""Streaming image folders from disk (rsst_tune.data.streaming): the same batches as resident
data where the two share a pipeline, torchvision's crop rules where they do not, the placement
choice, training subsets, unreadable images, and memory that does not grow with the folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsst_tune.config import TrialConfig
from rsst_tune.data import (
    RRC_DRAWS,
    DeviceData,
    FileList,
    FileSplit,
    decode_crop,
    load_dataset,
    make_generator,
    rrc_box,
    seeded_subset,
)
from rsst_tune.data.streaming import StreamData, choose_placement
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop

MODES = ("RGB", "L", "CMYK", "P")


def make_folder(root: Path, counts: dict[str, int], *, size: tuple[int, int] = (12, 60)) -> Path:
    """``root/SPLIT/CLASS/i.(jpg|png)`` in mixed modes, sizes and formats, seeded."""
    rng = np.random.default_rng(0)
    for sub, n in counts.items():
        for cls in ("cat", "dog"):
            (root / sub / cls).mkdir(parents=True)
            for i in range(n):
                mode = MODES[i % len(MODES)]
                ext = "jpg" if mode == "CMYK" or (mode != "P" and i % 2) else "png"
                h, w = (int(v) for v in rng.integers(*size, 2))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(root / sub / cls / f"{i}.{ext}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("stream") / "data", {"train": 20, "val": 5})


def batches(
    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(iterator)


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluation_and_unaugmented_batches_are_the_resident_ones_bit_for_bit(
    folder: Path, workers: int
) -> None:
    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    assert isinstance(bundle.train, FileSplit) and bundle.lazy
    resident = DeviceData(bundle.train.decode(), bundle.spec, "cpu")
    streamed = StreamData(bundle.train, bundle.spec, "cpu", workers=workers)
    for a, b in zip(resident.eval_batches(7), streamed.eval_batches(7), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    gen_a, gen_b = make_generator(3, "cpu"), make_generator(3, "cpu")
    pairs = zip(
        resident.train_batches(8, gen_a, augment=False),
        streamed.train_batches(8, gen_b, augment=False),
        strict=True,
    )
    for a, b in pairs:
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].is_contiguous() and b[0].is_contiguous()


def test_a_lazy_bundle_decoded_is_the_eager_bundle(folder: Path) -> None:
    lazy = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    eager = load_dataset("imagefolder", data_dir=folder, img_size=16)
    assert lazy.spec == eager.spec  # the same channel statistics
    for a, b in zip(
        (lazy.train, lazy.val, lazy.test), (eager.train, eager.val, eager.test), strict=True
    ):
        decoded = a.decode() if isinstance(a, FileSplit) else a
        assert torch.equal(decoded.x, b.x) and torch.equal(decoded.y, b.y)  # type: ignore[union-attr]


def test_the_scan_keeps_a_compact_file_list_in_path_order_that_workers_read(
    tmp_path: Path,
) -> None:
    """The lazy scan holds each split's files in a ``FileList`` (no per-file objects), in the
    order of sorted ``Path`` s class by class (nested folders, non-ASCII and undecodable
    names), labelled by class; it pickles small, and a worker process reads it: streamed
    evaluation batches are the decoded split's."""
    root = make_folder(tmp_path / "data", {"train": 6, "val": 2})
    odd = ("a-b", "é 日本", os.fsdecode(b"\xff") + "x")  # \xff: a surrogate-escaped str
    for cls in ("cat", "dog"):
        folder = root / "train" / cls
        (folder / "a").mkdir()
        files = sorted(folder.glob("*.*"))
        for k, name in enumerate(odd):  # 0, 1, 2 renamed; 3, 4, 5 moved to a/ and renamed
            files[k].rename(folder / f"{name}{files[k].suffix}")
            files[k + 3].rename(folder / "a" / f"{name}{files[k + 3].suffix}")
    bundle = load_dataset("imagefolder", data_dir=root, img_size=16, val_size=3, lazy=True)
    scan_order = [  # what the scan lists: each class folder's files sorted as Paths
        p for c in ("cat", "dog") for p in sorted((root / "train" / c).rglob("*")) if p.is_file()
    ]
    assert scan_order != sorted(scan_order, key=str)  # a/... before a-b...: Path order
    train, val = bundle.train, bundle.val
    assert isinstance(train, FileSplit) and isinstance(val, FileSplit)
    assert isinstance(train.files, FileList) and isinstance(val.files, FileList)
    for split in (train, val):  # each split in scan order; together every file once
        at = [scan_order.index(f) for f in split.files]
        assert at == sorted(set(at))
    assert sorted([*train.files, *val.files]) == sorted(scan_order) and len(scan_order) == 12
    for split in (train, val):
        classes = [0 if f.is_relative_to(root / "train" / "cat") else 1 for f in split.files]
        assert split.y.tolist() == classes
    assert sum(f.stem in odd for f in [*train.files, *val.files]) == 12
    assert len(pickle.dumps(train)) < 4000
    resident = DeviceData(train.decode(), bundle.spec, "cpu")
    streamed = StreamData(train, bundle.spec, "cpu", workers=1)
    for a, b in zip(resident.eval_batches(4), streamed.eval_batches(4), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_training_crops_follow_torchvisions_rules_and_the_generator(folder: Path) -> None:
    """Every crop box lies in the image with 8-100 % of its area and an aspect ratio in
    3/4..4/3 (or is the fallback centre crop); a crop is PIL's resize of that box of the whole
    image; the same generator seed gives the same epoch, another seed another."""
    gen = torch.Generator().manual_seed(0)
    branches = {True: 0, False: 0}  # a draw found, the fallback: both must be checked
    for _ in range(300):
        w, h = (int(v) for v in torch.randint(1, 400, (2,), generator=gen))
        u = torch.rand(RRC_DRAWS, generator=gen).tolist()
        left, top, cw, ch = rrc_box(w, h, u)
        assert left >= 0 and left + cw <= w and top >= 0 and top + ch <= h and cw >= 1 and ch >= 1
        found = any(
            0 < round(math.sqrt(a * r)) <= w and 0 < round(math.sqrt(a / r)) <= h
            for a, r in (
                (
                    (0.08 + 0.92 * u[t]) * w * h,
                    math.exp(math.log(0.75) + math.log(16 / 9) * u[10 + t]),
                )
                for t in range(10)
            )
        )
        branches[found] += 1
        if found:
            assert 0.08 * w * h * 0.8 <= cw * ch <= w * h  # rounding of the sides
        else:  # torchvision's fallback: the centre crop, its ratio clamped to 3/4..4/3
            assert (left, top) == ((w - cw) // 2, (h - ch) // 2)
            if w / h < 3 / 4:
                assert (cw, ch) == (w, round(w / (3 / 4)))
            elif w / h > 4 / 3:
                assert (cw, ch) == (round(h * 4 / 3), h)
            else:
                assert (cw, ch) == (w, h)
    assert branches[True] and branches[False], branches
    png = next(p for p in sorted((folder / "train").rglob("*.png")))
    u = [0.5] * 20 + [0.3, 0.7, 0.9]  # no flip
    with Image.open(png) as raw:
        image = raw.convert("RGB")
    left, top, cw, ch = rrc_box(*image.size, u)
    expected = image.resize(
        (16, 16), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
    )
    got = decode_crop(png, 16, u, flip=True)
    assert torch.equal(got, torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    flipped = decode_crop(png, 16, [*u[:22], 0.1], flip=True)
    assert torch.equal(flipped, got.flip(-1))

    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    data = StreamData(bundle.train, bundle.spec, "cpu", workers=0)  # type: ignore[arg-type]
    one = batches(data.train_batches(8, make_generator(5, "cpu")))
    two = batches(data.train_batches(8, make_generator(5, "cpu")))
    other = batches(data.train_batches(8, make_generator(6, "cpu")))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two, strict=True)
    )
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(one, other, strict=True))
    assert all(x.shape[1:] == (3, 16, 16) and torch.isfinite(x).all() for x, _ in one)
    assert sum(len(y) for _, y in one) == len(data)


def test_decoding_on_the_device_matches_pil_closely_and_falls_back_for_cmyk(
    folder: Path,
) -> None:
    """The GPU decoder's code path (torchvision.io.decode_jpeg), run on the CPU here: every
    image is served (CMYK JPEGs through the PIL fallback), close to PIL's pixels."""
    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    pil = StreamData(bundle.train, bundle.spec, "cpu", workers=0)  # type: ignore[arg-type]
    tv = StreamData(bundle.train, bundle.spec, "cpu", workers=0, decode_on_device=True)  # type: ignore[arg-type]
    for (xa, ya), (xb, yb) in zip(pil.eval_batches(10), tv.eval_batches(10), strict=True):
        assert torch.equal(ya, yb)
        assert (xa - xb).abs().mean() < 0.15  # normalised units: a few grey levels of noise
    crops = batches(tv.train_batches(8, make_generator(0, "cpu")))
    assert sum(len(y) for _, y in crops) == len(tv) and tv.skipped == 0


def test_an_unreadable_image_is_skipped_in_its_batch_and_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bundle = load_dataset("imagefolder", data_dir=root, img_size=16, lazy=True)
    data = StreamData(bundle.train, bundle.spec, "cpu", workers=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="rsst_tune.streaming"):
        for seed in (0, 1):
            served = sum(len(y) for _, y in data.train_batches(5, make_generator(seed, "cpu")))
            assert served == 12  # 13 files, one unreadable
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and data.skipped == 1  # none from the statistics at load
    assert warnings[0].startswith("skipped 1 unreadable image in train/ (streamed): first: ")
    assert "broken.jpg" in warnings[0]


def test_placement_auto_keeps_small_folders_resident_and_streams_large_ones(
    folder: Path,
) -> None:
    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    cpu = torch.device("cpu")
    assert choose_placement("auto", bundle, cpu) == "device"
    assert choose_placement("stream", bundle, cpu) == "stream"
    assert isinstance(bundle.train, FileSplit)
    huge = dataclasses.replace(bundle.train, side=10**6)  # 3 TB an image decoded
    assert choose_placement("auto", dataclasses.replace(bundle, train=huge), cpu) == "stream"
    digits = load_dataset("digits", data_dir=".", lazy=True)  # held in memory: never lazy
    assert not digits.lazy and choose_placement("auto", digits, cpu) == "device"
    with pytest.raises(
        ConfigError, match=r"'stream' needs a dataset read from files .*'device' or 'auto'"
    ):
        choose_placement("stream", digits, cpu)
    with pytest.raises(
        ConfigError, match=r"unknown data_placement 'disk'; choose one of: auto, device, stream"
    ):
        TrialConfig(data_placement="disk")


def test_train_subset_is_a_fixed_seed_fraction_the_same_for_every_trial(folder: Path) -> None:
    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    half = seeded_subset(bundle.train, 0.5)
    assert len(half) == math.ceil(0.5 * len(bundle.train))
    assert half.files == seeded_subset(bundle.train, 0.5).files  # type: ignore[union-attr]
    assert seeded_subset(bundle.train, 1.0) is bundle.train
    for bad in (0.0, 1.5, float("nan"), -0.1):
        with pytest.raises(ConfigError, match=r"train_subset must be .*in \(0, 1\]"):
            TrialConfig(train_subset=bad)
    cfgs = [
        TrialConfig(
            model="vit_digits",
            dataset="imagefolder",
            data_dir=str(folder),
            img_size=16,
            device="cpu",
            amp=False,
            epochs=1,
            pruning_times=1,
            batch_size=6,
            seed=seed,
            train_subset=0.5,
            data_placement=placement,
        )
        for seed, placement in ((0, "device"), (1, "stream"))
    ]
    from rsst_tune.trial_setup import build_setup

    sizes = {len(build_setup(cfg).train_data) for cfg in cfgs}
    assert sizes == {len(half)}


def test_a_streamed_trial_gives_the_resident_trials_numbers_when_unaugmented(
    folder: Path, tmp_path: Path
) -> None:
    """Two states of RSST on the folder: streamed and resident (augmentation off, so that
    both use the same crops) give the same accuracies and weights, bit for bit."""
    results: dict[str, list[tuple[float, float, float]]] = {}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for placement in ("device", "stream"):
        cfg = TrialConfig(
            model="vit_digits", dataset="imagefolder", data_dir=str(folder), img_size=16,
            device="cpu", amp=False, epochs=1, warmup_epochs=0.0, batch_size=6, augment=False,
            pruning_times=2, score_batches=1, data_placement=placement, data_workers=1,
        )  # fmt: skip
        loop = PruneLoop(cfg, tmp_path / placement)
        states = list(loop.states())
        assert loop.setup.placement == placement
        results[placement] = [(r.val_acc, r.test_acc, r.sparsity) for r in states]
        saved = torch.load(tmp_path / placement / "state_01.pt", weights_only=True)
        weights[placement] = saved["model"]
    assert results["device"] == results["stream"]
    for name, tensor in weights["device"].items():
        assert torch.equal(tensor, weights["stream"][name]), name


RSS_SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, json, os, sys, threading, time
    import torch
    from rsst_tune.data import load_dataset, make_generator
    from rsst_tune.data.streaming import StreamData

    root, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    bundle = load_dataset("imagefolder", data_dir=root, img_size=64, lazy=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed set-up memory back first

    def memory(pid, keys):  # an OSError (no such process) ends the script: no silent 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = [line for line in f if line.startswith(keys)]
        if not lines:
            raise RuntimeError(f"no {keys} lines in /proc/{pid}/smaps_rollup")
        return sum(int(line.split()[1]) for line in lines) * 1024

    def worker():  # the one DataLoader worker (persistent: alive through epoch 1)
        me = os.getpid()
        pids = []
        for task in os.listdir(f"/proc/{me}/task"):
            try:
                with open(f"/proc/{me}/task/{task}/children") as f:
                    pids += [int(pid) for pid in f.read().split()]
            except FileNotFoundError:  # a thread that has just ended
                pass
        if len(pids) != 1:
            raise RuntimeError(f"expected one worker process, found {pids}")
        return pids[0]

    def measure():  # the trial process: anonymous and shared memory (not the libraries);
        if mode != "workers":  # a worker: the pages only it maps
            return memory(os.getpid(), ("Pss_Anon:", "Pss_Shmem:"))
        return memory(worker(), ("Private_",))

    peak, samples, done, failed = [0], [0], [False], []

    def watch():
        try:
            while not done[0]:
                peak[0] = max(peak[0], measure())
                samples[0] += 1
                time.sleep(0.005)
        except BaseException as err:  # reported after the join: the run then fails
            failed.append(err)

    watcher = threading.Thread(target=watch)
    if mode == "device":
        watcher.start()
        resident = bundle.train.decode()
    else:
        data = StreamData(bundle.train, bundle.spec, "cpu", workers=int(mode == "workers"))
        for epoch in range(2):  # the first starts the worker and warms up
            if epoch == 1:
                watcher.start()
            for _ in data.train_batches(64, make_generator(epoch, "cpu")):
                pass
    done[0] = True
    watcher.join()
    if failed:
        raise RuntimeError("a measurement failed") from failed[0]
    print(json.dumps({"peak": peak[0], "samples": samples[0]}))
    """
)


@pytest.mark.slow
def test_resident_memory_of_streaming_does_not_grow_with_the_number_of_images(
    tmp_path: Path,
) -> None:
    """Streaming an epoch of 8,000 small JPEGs at img_size 64 takes no more than a few MB
    beyond an epoch of 1,000: the trial process reading in itself (its anonymous and shared
    memory), and a worker process (the pages only it maps); decoding the same folders (what
    the device placement holds) grows by about 16 KB an image. Every run must measure: a
    run whose sampling fails (or samples nothing) fails the test. Skipped only where Linux's
    /proc/PID/smaps_rollup or /proc/PID/task/TID/children (the measure) does not exist."""
    proc = Path("/proc/self")
    if (
        not (proc / "smaps_rollup").is_file()
        or not (proc / "task" / str(os.getpid()) / "children").is_file()
    ):
        pytest.skip(
            "no /proc/PID/smaps_rollup (Linux 4.14+) or /proc/PID/task/TID/children "
            "(CONFIG_PROC_CHILDREN) on this system: resident memory cannot be measured"
        )
    rng = np.random.default_rng(0)
    for n in (1000, 8000):
        for sub, count in (("train", n), ("val", 4)):
            for i in range(count):
                folder = tmp_path / str(n) / sub / f"c{i % 4}"
                folder.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=80)
    peak: dict[tuple[int, str], int] = {}
    modes = ("in-process", "workers", "device")
    for n in (1000, 8000):
        for mode in modes:
            # A run's peak now and then lands 20-30 MB above the others (the allocator, not
            # the data: seen on a busy 2-core machine in both directions), so the streaming
            # modes take the least of three runs, the peak a quiet run would show.
            runs = []
            for _ in range(1 if mode == "device" else 3):
                out = subprocess.run(
                    [sys.executable, "-c", RSS_SCRIPT, str(tmp_path / str(n)), mode],
                    capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                assert out.returncode == 0, (n, mode, out.stderr[-3000:])
                run = json.loads(out.stdout.strip().splitlines()[-1])
                # a real measure: several samples and a peak of at least a MB (a process's
                # own anonymous memory, or a worker's private pages, are tens of MB)
                assert run["samples"] >= 3 and run["peak"] >= 2**20, (n, mode, run)
                runs.append(run["peak"])
            peak[n, mode] = min(runs)
    grown = {mode: (peak[8000, mode] - peak[1000, mode]) / 2**20 for mode in modes}
    print(f"peak MB 1k -> 8k images: {grown}")
    assert grown["device"] > 60, grown  # the measure sees 7,000 more decoded images (~110 MB)
    assert grown["in-process"] < 12, grown  # only the file list and the order grow
    assert grown["workers"] < 12, grown


def test_sweep_input_options_reach_every_trial_with_absolute_paths(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tune_main.py --data-dir --img-size --data-placement --train-subset --data-workers`
    land in the base config of every trial, the folder made absolute (trials run in Ray's
    own directories); a missing folder or weights file is refused before anything runs."""
    from rsst_tune.tune import SweepOptions, resolve_plan

    monkeypatch.chdir(folder.parent)
    opts = SweepOptions(
        space="vit_head_mlp", preset="smoke", dataset="imagefolder", data_dir=folder.name,
        img_size=16, data_placement="stream", train_subset=0.5, data_workers=1,
    )  # fmt: skip
    base = resolve_plan(opts).base_config
    assert base["data_dir"] == str(folder.resolve())
    assert (base["img_size"], base["data_placement"], base["train_subset"]) == (16, "stream", 0.5)
    assert base["data_workers"] == 1
    for bad, match in (
        ({"data_dir": "missing"}, r"data_dir missing is not a folder"),
        ({"pretrained_file": "none.pt"}, r"pretrained_file none.pt is not a file"),
        ({"data_placement": "disk"}, r"unknown data_placement 'disk'; choose one of"),
        ({"img_size": 0}, r"img_size must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            resolve_plan(dataclasses.replace(opts, **bad))


@pytest.mark.parametrize("augment", [False, True])
def test_stream_shards_read_their_slice_of_each_batch_with_one_processs_crops(
    folder: Path, augment: bool
) -> None:
    """Several workers: each shard reads its slice of every global batch; together they are
    one process's batch (random-resized crops included, bit for bit: the uniforms are drawn
    for the whole batch), in its order; evaluation parts cover the split once, in order; the
    scoring view of a shard is the whole split, read in the trial's process."""
    bundle = load_dataset("imagefolder", data_dir=folder, img_size=16, lazy=True)
    assert bundle.spec.crop == "resized"
    whole = StreamData(bundle.train, bundle.spec, "cpu", workers=0)  # type: ignore[arg-type]
    shards = [whole.shard(r, 3) for r in range(3)]
    assert [(s.rank, s.world) for s in shards] == [(0, 3), (1, 3), (2, 3)]
    assert len(whole) == 36 and whole.num_train_batches(15) == 3  # 36 = 2 x 15 + 6
    ref = batches(whole.train_batches(15, make_generator(5, "cpu"), augment=augment))
    parts = [
        batches(s.train_batches(15, make_generator(5, "cpu"), augment=augment)) for s in shards
    ]
    assert [len(p) for p in parts] == [3, 3, 3]
    for step, (x, y) in enumerate(ref):
        assert torch.equal(torch.cat([p[step][1] for p in parts]), y)
        assert torch.equal(torch.cat([p[step][0] for p in parts]), x)
        assert [len(p[step][1]) for p in parts] == [s.local_share(15, step)[0] for s in shards]
    covered = [(x, y) for s in shards for x, y in s.eval_batches(6)]
    served = batches(whole.eval_batches(100))[0]
    assert torch.equal(torch.cat([y for _, y in covered]), served[1])
    assert torch.equal(torch.cat([x for x, _ in covered]), served[0])
    scoring = shards[1].unsharded()
    assert scoring.world == 1 and scoring.workers == 0 and shards[1].unsharded() is scoring
    assert whole.unsharded() is whole


def test_a_stream_shard_whose_slice_is_unreadable_trains_on_its_last_slice_again(
    tmp_path: Path,
) -> None:
    """Every worker of a DDP trial must take every step: a shard that could read no image of
    its slice serves its previous slice again (and says so in a one-line ConfigError when it
    has served none yet); a whole process skips such a batch."""
    root = make_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    bundle = load_dataset("imagefolder", data_dir=root, img_size=16, lazy=True)
    train = bundle.train
    assert isinstance(train, FileSplit) and len(train) == 8
    order = torch.randperm(8, generator=make_generator(0, "cpu")).tolist()
    # worker 1 of 2, batch 4: its slice of batch 1 is order[6:8]; break those two files
    for i in order[6:8]:
        train.files[i].write_bytes(b"not an image")
    shard = StreamData(train, bundle.spec, "cpu", workers=0).shard(1, 2)
    got = batches(shard.train_batches(4, make_generator(0, "cpu"), augment=False))
    assert len(got) == 2  # both steps taken
    assert torch.equal(got[1][0], got[0][0]) and torch.equal(got[1][1], got[0][1])
    assert shard.skipped == 2
    whole = StreamData(train, bundle.spec, "cpu", workers=0)
    assert len(batches(whole.train_batches(4, make_generator(0, "cpu"), augment=False))) == 2
    # the first slice unreadable: nothing to serve instead
    for i in order[2:4]:
        train.files[i].write_bytes(b"not an image")
    shard = StreamData(train, bundle.spec, "cpu", workers=0).shard(1, 2)
    with pytest.raises(ConfigError, match=r"^worker 1 of 2: too few images of its slice of a "):
        batches(shard.train_batches(4, make_generator(0, "cpu"), augment=False))
