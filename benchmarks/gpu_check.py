"""`make gpu-check`: the CUDA paths, exercised and measured on one GPU, in one table.

    python benchmarks/gpu_check.py            # parts 1-7: 194-307 s on one H100 (docs/data.md);
                                              # parts 8-12 not yet run on a GPU
    python benchmarks/gpu_check.py --json gpu_check.json

Without a CUDA device it prints "gpu-check: no CUDA device; nothing measured" and exits 0 at
once, so a CPU machine never reports a pass. On a GPU it runs, in order, each part with its
own limit, and prints one row per measurement (a part that fails is a FAIL row; the others
still run; the exit status is 1 when any part failed):

1. **CUDA tests**: `pytest -m cuda tests/` (a trial on the GPU and its resume, bf16 autocast,
   channels_last CNNs, export latency on CUDA; tests/test_gpu.py).
2. **Training throughput**: images/s of one vit_tiny epoch on CIFAR-shaped synthetic data
   (20,480 images, batch 256, the batched crop and flip on the device) in fp32 and bf16
   autocast, eager and with CUDA graphs (`compile=True, compile_mode="reduce-overhead"`),
   through the trial's own setup (`build_setup`) and hot path (`train_state`); each the faster
   of two epochs after a warm-up epoch (which also pays the compile), with the ratios to fp32.
3. **Fractional GPUs**: a sweep of 4 trials at 0.25 GPU each, all at once, run to completion
   (`tune_main.py --space vit_head_mlp --preset smoke --num-samples 4 --gpus-per-trial 0.25
   --scheduler fifo --confirm 0 --device cuda`, in a temporary storage directory).
4. **Exported latency**: a refill ticket of vit_tiny (32 px) and of timm's DeiT-tiny (at its
   224 px, the data resized on the device) exported with `rsst-tune export`'s code on CUDA:
   dense and pruned milliseconds per forward at batch 1, 64 and 256, the speed-up beside the
   MAC ratio.
5. **Streaming decode**: images/s of a training epoch read from a folder of JPEGs of about
   400x350 (`rsst_tune.streaming.StreamData`, img_size 224, batch 64): decoded on the GPU
   (nvjpeg) and decoded by PIL in the workers, beside torchvision's ImageFolder + DataLoader
   with the same workers (`benchmarks/bench_stream.py`; goal on a GPU: >= 5x torchvision).
6. **Headroom**: how busy the GPU is during a 32 px vit_tiny epoch in fp32 and bf16 (the sum
   of its kernels' device time over the epoch's wall time, torch.profiler), and timm's
   DeiT-tiny trained at its 224 px (2,048 images, batch 128) in fp32, bf16 and bf16 with CUDA
   graphs.
7. **Latency model**: DeiT-tiny at 224 px, batch 1 and 256: the latency table
   (`rsst_tune.latency_model`) against 12 random tickets exported and timed whole on the GPU
   (Spearman, median error), and the measured speed-up per MAC ratio with round_to 1 and 64
   (`benchmarks/bench_latency.py`'s `measure`; goal at batch 256 with round_to 64: >= 0.85).
8. **timm step**: DeiT-S at 224 px in bf16, batch 128: the trial's training step (its crop
   and flip on the device, masks, AdamW) against timm's own model in a bare loop (torch's
   fused AdamW, the same batch already on the GPU). Goal: >= 0.9x.
9. **Packing**: 4 trial processes training vit_tiny at 32 px on the GPU at once (what
   `--gpus-per-trial 0.25` runs) against one alone: their images/s together. Goal: >= 3x.
10. **Utilisation**: state 0 of a trial of vit_tiny/32 and of DeiT-S/224 under the default
   numerics (`amp`/`compile` auto: the probe's choice and its fp32, bf16 and bf16 + CUDA
   graphs rates), with the images/s, GPU busy and MFU every state records. Goal: vit_tiny
   busy >= 80 %.
11. **Crops**: one batch of decoded JPEGs cropped, resized and flipped to 224 px in batched
   calls (`rsst_tune.data.gpu_crops`, StreamData's CUDA path) against one image at a time.
12. **Workers**: a 2-state vit_tiny/32 trial on one NCCL Ray Train worker (the path of
   `--workers N`, DDP included) against the same trial in one process, bf16 eager and with
   the DDP module compiled with CUDA graphs: time and val_acc per state. One GPU cannot show
   scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "gpu-check: no CUDA device; nothing measured"
DEVICE = "cuda"
DRY_RUN = False  # --cpu-dry-run: the code paths on the CPU at toy sizes, for development
LIMITS_S = {"tests": 240, "sweep": 300, "pack": 240}


@dataclass
class Table:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: bool = False

    def add(self, part: str, item: str, value: str, ok: bool = True) -> None:
        self.rows.append((part, item, value, "ok" if ok else "FAIL"))
        self.failed |= not ok
        print(f"  {part}: {item}: {value}{'' if ok else '  FAIL'}", flush=True)

    def render(self) -> str:
        head = ("part", "measurement", "value", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in [head, *self.rows]]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def run_part(table: Table, part: str, fn: Callable[[Table], None]) -> None:
    """Run one part; an exception is a FAIL row with its first line, and the next part runs."""
    t0 = time.perf_counter()
    print(f"== {part}", flush=True)
    try:
        fn(table)
    except Exception as err:  # a failing part must not hide the others
        first = (str(err).strip().splitlines() or [""])[0][:160]
        table.add(part, "error", f"{type(err).__name__}: {first}", ok=False)
    table.add(part, "wall time", f"{time.perf_counter() - t0:.0f} s")


# ----------------------------------------------------------------------------- 1. tests
def cuda_tests(table: Table) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMITS_S["tests"]
    )
    out = proc.stdout + proc.stderr
    counts = dict(
        (word, int(n))
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", out)
    )
    summary = ", ".join(f"{n} {w}" for w, n in counts.items() if w != "deselected") or "none"
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    table.add("cuda tests", "pytest -m cuda tests/", summary, ok)
    if not ok:
        print(out[-4000:], flush=True)


# ----------------------------------------------------------------------------- 2. throughput
# (label, amp, compile_mode or None): eager and CUDA graphs (`--set compile=true --set
# compile_mode=reduce-overhead`), each in fp32 and bf16 autocast
VARIANTS = (
    ("fp32", False, None),
    ("bf16 autocast", True, None),
    ("fp32 + CUDA graphs", False, "reduce-overhead"),
    ("bf16 + CUDA graphs", True, "reduce-overhead"),
)


def throughput(table: Table) -> None:
    from rsst_tune.data import make_synthetic

    images, batch = (512, 64) if DRY_RUN else (20_480, 256)
    bundle = make_synthetic(sizes=(images, 512, 512))
    measure_variants(table, "throughput", "vit_tiny 32 px", "vit_tiny", bundle, batch)


def measure_variants(
    table: Table,
    part: str,
    label: str,
    model: str,
    bundle: Any,
    batch: int,
    variants: tuple[tuple[str, bool, str | None], ...] = VARIANTS,
) -> None:
    """Training images/s of `model` in each of VARIANTS through the trial's own setup
    (`build_setup`) and hot path (`train_state`): after a warm-up epoch (autotuning, and the
    compile and graph capture), the faster of two timed epochs, with the ratio to fp32."""
    from rsst_tune.config import TrialConfig
    from rsst_tune.trial_setup import build_setup

    rates: dict[str, float] = {}
    for variant, amp, mode in variants:
        cfg = TrialConfig(
            model=model, dataset="synthetic", device=DEVICE, epochs=1, batch_size=batch,
            warmup_epochs=0.0, augment=True, amp=amp, compile=mode is not None,
            compile_mode=mode or "default",
        )  # fmt: skip
        setup = build_setup(cfg, bundle)
        if amp and setup.amp is None:
            table.add(part, f"{label}, {variant}", "no bf16 on this device", ok=DRY_RUN)
            continue
        if mode is not None and setup.forward is setup.model:
            table.add(part, f"{label}, {variant}", "torch.compile: CUDA only", ok=DRY_RUN)
            continue
        warm = timed_epoch(setup)
        rate = len(bundle.train) / min(timed_epoch(setup), timed_epoch(setup))
        rates[variant] = rate
        ratio = f" ({rate / rates['fp32']:.2f}x fp32)" if variant != "fp32" else ""
        first = f"; first epoch {warm:.1f} s (the compile)" if mode is not None else ""
        table.add(part, f"{label}, {variant}", f"{rate:,.0f} img/s{ratio}{first}")


def timed_epoch(setup: Any) -> float:
    """Seconds of one training epoch of a `TrialSetup` through `train_state`, synchronised."""
    import torch

    from rsst_tune.data import make_generator
    from rsst_tune.pruning.masks import MaskEnforcer
    from rsst_tune.train import train_state

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_state(
        setup.model, setup.forward, setup.train_data, setup.cfg,
        generator=make_generator(0, setup.device),
        enforcer=MaskEnforcer(setup.model, {}), pull=None, amp=setup.amp,
        progress_every_s=None,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- 6. headroom
def headroom(table: Table) -> None:
    from rsst_tune.config import TrialConfig
    from rsst_tune.data import make_synthetic
    from rsst_tune.trial_setup import build_setup

    images = 512 if DRY_RUN else 20_480
    bundle = make_synthetic(sizes=(images, 256, 256))
    if DEVICE == "cuda":
        from torch.profiler import ProfilerActivity, profile

        for variant, amp in (("fp32", False), ("bf16", True)):
            cfg = TrialConfig(
                model="vit_tiny", dataset="synthetic", device=DEVICE, epochs=1,
                batch_size=256, warmup_epochs=0.0, augment=True, amp=amp,
            )  # fmt: skip
            setup = build_setup(cfg, bundle)
            timed_epoch(setup)  # warm-up
            wall = timed_epoch(setup)
            with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
                timed_epoch(setup)
            busy_s = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
            table.add(
                "headroom",
                f"vit_tiny 32 px {variant} eager: GPU busy",
                f"{busy_s / wall:.0%} of the epoch ({busy_s:.2f} s of kernels in {wall:.2f} s)",
            )
    else:
        table.add("headroom", "GPU busy", "CUDA only", ok=DRY_RUN)
    big = make_synthetic(sizes=(32 if DRY_RUN else 2048, 32, 32))
    model = "timm:deit_tiny_patch16_224"
    measure_variants(
        table, "headroom", "DeiT-tiny 224 px", model, big, 16 if DRY_RUN else 128,
        variants=(VARIANTS[0], VARIANTS[1], VARIANTS[3]),  # one compile: bf16 + CUDA graphs
    )  # fmt: skip


# ----------------------------------------------------------------------------- 3. sweep
def fractional_sweep(table: Table) -> None:
    from rsst_tune.experiment.reader import load_experiment

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as storage:
        cmd = [
            sys.executable, "tune_main.py", "--space", "vit_head_mlp", "--preset", "smoke",
            "--num-samples", "4", "--max-concurrent", "4",
            "--gpus-per-trial", "0" if DRY_RUN else "0.25",
            "--scheduler", "fifo", "--confirm", "0", "--device", DEVICE,
            "--storage", storage, "--name", "gpu-check", "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMITS_S["sweep"]
        )
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            print((proc.stdout + proc.stderr)[-4000:], flush=True)
            table.add("sweep", "tune_main.py exit status", str(proc.returncode), ok=False)
            return
        experiment = load_experiment(Path(storage) / "gpu-check")
        trials = experiment.trials
        states = {t.config.get("pruning_times") for t in trials}
        done = [
            t
            for t in trials
            if t.status == "complete" and len(t.states) == t.config["pruning_times"]
        ]
        devices = sorted({str(t.config.get("device")) for t in trials})
        ok = len(trials) == 4 and len(done) == 4
        table.add(
            "sweep",
            "4 trials at 0.25 GPU (smoke, fifo)",
            f"{len(done)}/{len(trials)} complete with all {states} states, device {devices}, "
            f"{took:.0f} s",
            ok,
        )


# ----------------------------------------------------------------------------- 7. latency
def latency_model(table: Table) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_latency

    if DRY_RUN:
        cases, tickets, points, repeats, round_to = [("vit_tiny", 32, 1)], 3, 4, 2, 8
    else:
        deit = "timm:deit_tiny_patch16_224"
        cases = [(deit, 224, 1), (deit, 224, 256)]
        tickets, points, repeats, round_to = 12, 12, 5, 64
    for name, size, batch in cases:
        row = bench_latency.measure(
            name, batch, tickets, 0, points, repeats, device=DEVICE, img_size=size,
            round_to=round_to, passes=1 if DRY_RUN else 2,
        )  # fmt: skip
        label = f"{name.removeprefix('timm:')} {size}px b{batch}"
        table.add(
            "latency",
            f"{label}: table vs {tickets} tickets timed whole",
            f"spearman {row.spearman:.2f}, median error {100 * row.rel_err:.1f} % "
            f"(table built in {row.build_s:.0f} s); budgets met "
            f"{bench_latency.met_text(row.budgets)} (margin {100 * row.margin:.1f} %)",
        )
        table.add(
            "latency",
            f"{label}: speed-up per MAC ratio, round_to 1 / {round_to}",
            f"{row.per_mac_r1:.2f} / {row.per_mac_r8:.2f} (MAC ratio {row.mac_ratio_r1:.2f}x / "
            f"{row.mac_ratio_r8:.2f}x)",
        )


# ----------------------------------------------------------------------------- 4. export
def export_latency(table: Table) -> None:
    import torch

    from rsst_tune.checkpoint import TrialCheckpoint
    from rsst_tune.data import make_synthetic
    from rsst_tune.export import export_checkpoint
    from rsst_tune.latency import compare_latency
    from rsst_tune.models import create_model
    from rsst_tune.pruning.exported import load_exported
    from rsst_tune.run import run_trial

    device = torch.device(DEVICE)
    scale = 16 if DRY_RUN else 1
    cases: list[tuple[str, dict[str, Any], Any]] = [
        (
            "vit_tiny 32px",
            {"model": "vit_tiny", "epochs": 2},
            make_synthetic(sizes=(4096 // scale, 512 // scale, 512 // scale)),
        ),
        (
            "deit_tiny 224px",
            {"model": "timm:deit_tiny_patch16_224", "epochs": 1},
            make_synthetic(sizes=(1024 // scale, 256 // scale, 256 // scale)),
        ),
    ]
    batches = (1, 8) if DRY_RUN else (1, 64, 256)
    for label, extra, data in cases:
        with tempfile.TemporaryDirectory(prefix="gpu-check-export-") as tmp:
            cfg = {
                "dataset": "synthetic", "method": "refill", "head_ratio": 0.34,
                "mlp_ratio": 0.5, "pruning_times": 3, "device": DEVICE, "amp": True,
                "batch_size": 128, "warmup_epochs": 0.0, **extra,
            }  # fmt: skip
            run_trial(cfg, Path(tmp) / "run", data=data)
            ticket = Path(tmp) / "run" / "state_02.pt"
            # the export and its equivalence check; timed below on CUDA only (the CPU
            # timings of export_checkpoint would take minutes at batch 256 for DeiT)
            report = export_checkpoint(ticket, Path(tmp) / "export", device=DEVICE, measure=False)
            spec = TrialCheckpoint.load(ticket).spec
            pruned = load_exported(Path(tmp) / "export" / "model.pt", map_location=device)
        shape = (spec["in_chans"], spec["img_size"], spec["img_size"])
        dense = create_model(
            str(extra["model"]), num_classes=spec["num_classes"], in_chans=shape[0],
            img_size=shape[1],
        ).to(device)  # fmt: skip
        table.add(
            "export",
            f"{label}: equivalence, MACs",
            f"max diff {report.max_abs_diff:.1e}, pruned {report.macs_fraction:.0%} of dense "
            f"MACs (MAC ratio {report.mac_ratio:.2f}x)",
            report.max_abs_diff <= report.atol,
        )
        repeats = 3 if DRY_RUN else 11
        for lat in compare_latency(dense, pruned, shape, device, batches, repeats=repeats):
            table.add(
                "export",
                f"{label}, batch {lat.batch}",
                f"dense {lat.dense_ms:.3f} ms, pruned {lat.pruned_ms:.3f} ms: "
                f"{lat.speedup:.2f}x (MAC ratio {report.mac_ratio:.2f}x)",
            )


# ----------------------------------------------------------------------------- 5. streaming
def streaming(table: Table) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_stream import (
        BATCH,
        IMG_SIZE,
        ours_epoch,
        torchvision_epoch,
        torchvision_loader,
        write_folder,
    )

    from rsst_tune.data import FileSplit, load_dataset
    from rsst_tune.data.streaming import StreamData, default_workers

    n = 64 if DRY_RUN else 2000
    workers = default_workers()
    device = torch.device(DEVICE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, n)
        bundle = load_dataset(
            "imagefolder", data_dir=root, img_size=IMG_SIZE, val_size=10, lazy=True
        )
        loader = torchvision_loader(root, workers, bundle.spec.mean, bundle.spec.std)
        theirs = max(torchvision_epoch(loader) for _ in range(2))
        table.add(
            "streaming", f"torchvision ImageFolder, {workers} workers", f"{theirs:,.0f} img/s"
        )
        rates = {}
        assert isinstance(bundle.train, FileSplit)  # lazy=True: the images stay on disk
        for label, on_device in (("PIL in the workers", False), ("decoded on the device", True)):
            data = StreamData(
                bundle.train,
                bundle.spec,
                device,
                workers=workers,
                decode_on_device=on_device,
            )
            rates[label] = max(ours_epoch(data, device) for _ in range(2))
            table.add(
                "streaming",
                f"StreamData, {label}, batch {BATCH}",
                f"{rates[label]:,.0f} img/s ({rates[label] / theirs:.2f}x torchvision)",
                ok=DRY_RUN or not on_device or rates[label] >= theirs,
            )


# ----------------------------------------------------------------------------- 8. timm step
def timm_step(table: Table) -> None:
    """DeiT-S at 224 px in bf16: the trial's training step (`build_setup` + `train_state`: the
    on-device crop and flip, the masks kept, the trial's AdamW) against timm's own model
    trained by a bare loop (torch AdamW, bf16 autocast, the same batch on the same GPU, the
    input already on the device). Goal (issue): >= 0.9x timm's rate."""
    import torch
    from torch import nn

    from rsst_tune.config import TrialConfig
    from rsst_tune.data import make_synthetic
    from rsst_tune.models import create_model
    from rsst_tune.trial_setup import build_setup

    name = "timm:deit_tiny_patch16_224" if DRY_RUN else "timm:deit_small_patch16_224"
    batch, images, size = (8, 16, 64) if DRY_RUN else (128, 4096, 224)
    cfg = TrialConfig(
        model=name, dataset="synthetic", device=DEVICE, epochs=1, batch_size=batch,
        warmup_epochs=0.0, augment=True, amp=True, compile=False, img_size=size,
    )  # fmt: skip
    setup = build_setup(cfg, make_synthetic(sizes=(images, 32, 32)))
    timed_epoch(setup)  # warm-up: kernels chosen
    ours = images / min(timed_epoch(setup), timed_epoch(setup))

    device = torch.device(DEVICE)
    model = create_model(name, num_classes=10, img_size=size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda" or None)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def epoch() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(images // batch):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    epoch()
    theirs = (images // batch) * batch / min(epoch(), epoch())
    table.add(
        "timm step",
        f"{name.removeprefix('timm:')} {size}px bf16, batch {batch}: trial vs timm's own",
        f"{ours:,.0f} vs {theirs:,.0f} img/s ({ours / theirs:.2f}x; goal >= 0.9x)",
        ok=DRY_RUN or ours >= 0.5 * theirs,  # FAIL only far below: the goal is read, not forced
    )


# ----------------------------------------------------------------------------- 9. packing
PACK = 4


def packing(table: Table) -> None:
    """4 trial processes sharing the GPU (what `--gpus-per-trial 0.25` runs) against one alone:
    each process trains vit_tiny at 32 px through the trial's setup and hot path in bf16
    eager; after its warm-up it waits for the others, then times the same
    epochs. Combined images/s of the 4 (their sum) against the one's. Goal (issue): >= 3x."""
    alone = _packed_rates(1)
    four = _packed_rates(PACK)
    total = sum(four)
    table.add("packing", "vit_tiny 32 px, 1 trial alone", f"{alone[0]:,.0f} img/s")
    table.add(
        "packing",
        f"vit_tiny 32 px, {PACK} trials at once",
        f"{total:,.0f} img/s in all ({total / alone[0]:.2f}x one alone; goal >= 3x; each "
        + ", ".join(f"{r:,.0f}" for r in four)
        + ")",
    )


def _packed_rates(n: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="gpu-check-pack-") as tmp:
        flags = ["--cpu-dry-run"] if DRY_RUN else []
        script = str(Path(__file__).resolve())
        procs = [
            subprocess.Popen(
                [sys.executable, script, "--pack-worker", tmp, str(i), *flags],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        deadline = time.monotonic() + LIMITS_S["pack"]
        while len(list(Path(tmp).glob("ready-*"))) < n:
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                errors = "".join((p.communicate()[1] or "")[-800:] for p in procs)
                raise RuntimeError(f"packing workers did not get ready: {errors}")
            time.sleep(0.05)
        (Path(tmp) / "go").touch()
        rates = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=LIMITS_S["pack"])
                if p.returncode != 0:
                    raise RuntimeError(f"packing worker failed: {err[-800:]}")
                rates.append(float(json.loads(out.strip().splitlines()[-1])["img_per_s"]))
        finally:
            for p in procs:  # none may keep the GPU past its part
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return rates


def pack_worker(folder: str, index: str) -> None:
    """One packed trial (`_packed_rates`): warm up, say ready, wait for go, time 2 epochs."""
    from rsst_tune.config import TrialConfig
    from rsst_tune.data import make_synthetic
    from rsst_tune.trial_setup import build_setup

    images, batch = (64, 32) if DRY_RUN else (20_480, 256)
    # fixed numerics (bf16 eager): each process probing amp/compile auto on its own could
    # compare one trial's choice with another's
    cfg = TrialConfig(
        model="vit_tiny", dataset="synthetic", device=DEVICE, epochs=1, batch_size=batch,
        warmup_epochs=0.0, augment=True, amp=True, compile=False,
    )  # fmt: skip
    setup = build_setup(cfg, make_synthetic(sizes=(images, 64, 64)))
    timed_epoch(setup)
    (Path(folder) / f"ready-{index}").touch()
    while not (Path(folder) / "go").exists():
        time.sleep(0.01)
    seconds = timed_epoch(setup) + timed_epoch(setup)
    print(json.dumps({"img_per_s": 2 * images / seconds}), flush=True)


# ----------------------------------------------------------------------------- 10. utilisation
def utilisation(table: Table) -> None:
    """A trial's state 0 under the default numerics (amp/compile auto: its probe's choice and
    the probe's rates of fp32, bf16 and bf16 with CUDA graphs) for vit_tiny at 32 px and
    DeiT-S at 224 px: the state's images/s, GPU busy and MFU as every state records them.
    Goal (issue): vit_tiny 32 px busy >= 80 % under auto."""
    from rsst_tune.data import make_synthetic
    from rsst_tune.run import run_trial

    cases = [
        ("vit_tiny 32 px", "vit_tiny", None, 256, 512 if DRY_RUN else 20_480),
        ("DeiT-S 224 px", "timm:deit_small_patch16_224", 64 if DRY_RUN else None, 128,
         32 if DRY_RUN else 4096),
    ]  # fmt: skip
    for label, model, size, batch, images in cases:
        with tempfile.TemporaryDirectory(prefix="gpu-check-util-") as tmp:
            cfg = {
                "model": model, "dataset": "synthetic", "device": DEVICE, "epochs": 1,
                "pruning_times": 1, "batch_size": 16 if DRY_RUN else batch,
                "warmup_epochs": 0.0, "img_size": size,
            }  # fmt: skip
            results = run_trial(cfg, Path(tmp) / "run", data=make_synthetic(
                sizes=(images, 64, 64)))  # fmt: skip
        state = results[0]
        busy = "n/a" if state.gpu_busy is None else f"{state.gpu_busy:.0%}"
        mfu = "n/a" if state.mfu is None else f"{state.mfu:.1%}"
        rate = f"{state.images_per_s:,.0f}" if state.images_per_s else "n/a"
        table.add(
            "utilisation",
            f"{label}, state 0 under the default numerics",
            f"{rate} img/s, GPU busy {busy}, MFU {mfu}; {state.numerics}",
        )


# ----------------------------------------------------------------------------- 11. crops
def gpu_crops(table: Table) -> None:
    """One batch of decoded 224 px crops: the batched crop, resize and flip (`gpu_crops.
    crop_resize`, what StreamData runs after nvjpeg) against the per-image calls it replaced,
    on the same images, boxes and flips on the device."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_stream import decoded_batch, time_crops, write_folder

    with tempfile.TemporaryDirectory(prefix="gpu-check-crops-") as tmp:
        write_folder(Path(tmp), 128)
        images = decoded_batch(Path(tmp), torch.device(DEVICE))
    batched, each, diff = time_crops(images, 2 if DRY_RUN else 10)
    table.add(
        "crops",
        f"batch of {len(images)}: batched vs per image",
        f"{batched:,.0f} vs {each:,.0f} img/s ({batched / each:.2f}x; mean diff {diff:.2f} "
        "grey levels)",
    )


# ----------------------------------------------------------------------------- 12. workers
def nccl_worker(table: Table) -> None:
    """The trial on one Ray Train worker (`rsst_tune.run.run_workers(..., 1)`: NCCL, DDP,
    rank 0's broadcasts and reductions, the handoff to the driver) against the same trial in
    one process, vit_tiny at 32 px, 2 states: each state's time and val_acc. One GPU shows
    the cost of the machinery, not scaling (that needs several GPUs)."""
    from rsst_tune.config import TrialConfig
    from rsst_tune.data import make_synthetic
    from rsst_tune.run import run_trial, run_workers

    data = make_synthetic(sizes=(512 if DRY_RUN else 20_480, 256, 256))
    base = TrialConfig(
        model="vit_tiny", dataset="synthetic", device=DEVICE, epochs=1, pruning_times=2,
        batch_size=16 if DRY_RUN else 256, warmup_epochs=0.0, amp=not DRY_RUN, compile=False,
        head_ratio=0.25, mlp_ratio=0.25, threads=1 if DRY_RUN else 0,
    )  # fmt: skip
    # eager, then the DDP module compiled with CUDA graphs (asked for: auto never compiles DDP)
    graphs = base.replace(compile=True, compile_mode="reduce-overhead")
    for label, cfg in (("eager", base), ("CUDA graphs", graphs)):
        with tempfile.TemporaryDirectory(prefix="gpu-check-workers-") as tmp:
            worker = run_workers(cfg, Path(tmp) / "w1", 1, data=data)
            alone = run_trial(cfg, Path(tmp) / "p1", data=data)
        for a, b in zip(worker, alone, strict=True):
            table.add(
                "workers",
                f"vit_tiny 32 px {label} state {a.state}: 1 worker ({a.device}) vs 1 process",
                f"{a.wall_time_s:.1f} vs {b.wall_time_s:.1f} s "
                f"({a.wall_time_s / b.wall_time_s:.2f}x); val_acc {a.val_acc:.3f} vs "
                f"{b.val_acc:.3f}; {a.numerics}",
                ok=a.world_size == 1 and (DRY_RUN or "nccl" in a.device),
            )


PARTS: tuple[tuple[str, Callable[[Table], None]], ...] = (
    ("tests", cuda_tests),
    ("throughput", throughput),
    ("sweep", fractional_sweep),
    ("export", export_latency),
    ("streaming", streaming),
    ("headroom", headroom),
    ("latency", latency_model),
    ("timm step", timm_step),
    ("packing", packing),
    ("utilisation", utilisation),
    ("crops", gpu_crops),
    ("workers", nccl_worker),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", help="also write the table to this JSON file")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=tuple(name for name, _ in PARTS),
        help="leave a part out (repeatable)",
    )
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run the parts on the CPU at toy sizes to check the script itself (measures "
        "nothing about a GPU; never a gpu-check pass)",
    )
    parser.add_argument("--pack-worker", nargs=2, metavar=("DIR", "I"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    global DEVICE, DRY_RUN
    if args.cpu_dry_run:
        DEVICE, DRY_RUN = "cpu", True
    if args.pack_worker:
        sys.path.insert(0, str(REPO))
        pack_worker(*args.pack_worker)
        return 0
    if args.cpu_dry_run:
        name = "CPU (dry run: nothing measured on a GPU)"
        print("gpu-check --cpu-dry-run: the code paths on the CPU; nothing measured on a GPU")
    elif not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    else:
        props = torch.cuda.get_device_properties(0)
        name = props.name
        print(
            f"gpu-check on {name} ({props.total_memory / 2**30:.0f} GiB), torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}, "
            f"bf16 {torch.cuda.is_bf16_supported()}",
            flush=True,
        )
    sys.path.insert(0, str(REPO))  # tune_main's search_spaces, when run from elsewhere
    table = Table()
    t0 = time.perf_counter()
    for part, fn in PARTS:
        if part not in args.skip:
            run_part(table, part, fn)
    print()
    print(table.render())
    status = "FAILED" if table.failed else "passed"
    print(f"\ngpu-check {status} in {time.perf_counter() - t0:.0f} s on {name}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": name, "failed": table.failed, "rows": table.rows}, indent=2)
        )
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
