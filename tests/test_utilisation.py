"""Per-state utilisation (`rsst_tune.utilisation`): images/s everywhere, GPU busy and MFU on
CUDA. Here on the CPU: a real tiny trial, the MFU arithmetic and the GPU-name table."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from rsst_tune.data import DataBundle
from rsst_tune.results import TIMING_FIELDS, StateResult
from rsst_tune.utilisation import (
    PEAKS,
    BusyRecorder,
    fmt_utilisation,
    match_gpu,
    mfu,
    peak_flops,
    train_flops_per_image,
)


def test_a_cpu_trial_records_images_per_s_and_no_gpu_fields(
    make_cfg, digits_small: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trained state's images/s is its images trained over its training seconds; on the
    CPU GPU busy and MFU are None; the fields survive to_dict/from_dict."""
    from rsst_tune import train
    from rsst_tune.loop import PruneLoop

    recorded: list[BusyRecorder] = []
    real = train.BusyRecorder

    class Keep(real):  # the real recorder, kept so the test can read its counts
        def __init__(self, device: torch.device) -> None:
            super().__init__(device)
            recorded.append(self)

    monkeypatch.setattr(train, "BusyRecorder", Keep)
    cfg = make_cfg(model="vit_digits", method="refill", pruning_times=2, head_ratio=0.25)
    results = PruneLoop(cfg, data=digits_small).run()
    assert len(recorded) == 2
    train_images = len(digits_small.train)
    for r, rec in zip(results, recorded, strict=True):
        assert r.images_per_s is not None and r.images_per_s > 0
        assert rec.images == cfg.epochs * train_images  # every training image, once per epoch
        assert 0 < rec.seconds < r.wall_time_s  # training only: not evaluation or pruning
        assert r.images_per_s == pytest.approx(rec.images / rec.seconds, rel=1e-9)
        assert r.gpu_busy is None and r.mfu is None
        again = StateResult.from_dict(r.to_dict())
        assert again == r and again.images_per_s == r.images_per_s


def test_results_without_the_fields_still_load(tiny_runs) -> None:
    """A result written before utilisation was recorded (no keys) reads as None."""
    _, _, results = tiny_runs[0]
    old = {k: v for k, v in results[0].to_dict().items() if k not in TIMING_FIELDS[1:]}
    loaded = StateResult.from_dict(old)
    assert (loaded.images_per_s, loaded.gpu_busy, loaded.mfu) == (None, None, None)
    assert {"images_per_s", "gpu_busy", "mfu"} <= set(StateResult.keys())
    assert all(f.default is None for f in dataclasses.fields(StateResult) if f.name == "mfu")


def test_a_state_0_from_the_dense_cache_has_no_utilisation(
    make_cfg, digits_small: DataBundle, tmp_path
) -> None:
    """The trial that trained the shared state 0 reports its rate; one that loaded it none."""
    from rsst_tune.dense_cache import DenseCache
    from rsst_tune.loop import PruneLoop

    cfg = make_cfg(model="vit_digits", method="refill", pruning_times=1, head_ratio=0.25)
    cache = DenseCache(tmp_path / "dense")
    first = PruneLoop(cfg, data=digits_small, dense_cache=cache).run()[0]
    second = PruneLoop(cfg, data=digits_small, dense_cache=cache).run()[0]
    assert first.epochs_trained == 1 and first.images_per_s is not None
    assert second.epochs_trained == 0 and second.images_per_s is None


def test_mfu_arithmetic_with_a_known_peak() -> None:
    # 1 MMAC forward: 6 MFLOP per trained image; 1000 images in 2 s on a 3 GFLOP/s device
    flops = train_flops_per_image(1_000_000)
    assert flops == 6e6
    assert mfu(flops, 1000, 2.0, 3e9) == pytest.approx(1.0)
    assert mfu(flops, 500, 2.0, 3e9) == pytest.approx(0.5)
    # a distillation teacher adds one forward: (3 + 1) x 2 FLOPs per MAC
    assert train_flops_per_image(1_000_000, teacher_macs=1_000_000) == 8e6
    assert mfu(flops, 1000, 2.0, None) is None  # unknown GPU
    assert mfu(flops, 0, 2.0, 3e9) is None and mfu(flops, 10, 0.0, 3e9) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA L40", None),  # not in the table: not taken for an L4
        ("NVIDIA GeForce GTX 1080", None),
        ("AMD Instinct MI300X", None),
    ],
)
def test_gpu_names_match_the_peak_table(name: str, expected: str | None) -> None:
    peak = match_gpu(name)
    assert (peak.name if peak else None) == expected


def test_the_peak_follows_the_dtype() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    assert peak_flops(h100, torch.bfloat16) == pytest.approx(989e12)
    assert peak_flops(h100, torch.float16) == pytest.approx(989e12)
    assert peak_flops(h100, None) == pytest.approx(67e12)  # fp32, TF32 off (torch's default)
    assert peak_flops(h100, None, tf32=True) == pytest.approx(495e12)
    assert peak_flops("Tesla V100-SXM2-16GB", torch.bfloat16) is None  # emulated: no peak
    assert peak_flops("Tesla V100-SXM2-16GB", None, tf32=True) == pytest.approx(15.7e12)
    assert peak_flops("a GPU nobody knows", torch.bfloat16) is None
    assert all(p.bf16 is None or p.bf16 > p.fp32 for p in PEAKS)


def test_the_recorder_on_the_cpu_counts_images_and_seconds_only() -> None:
    rec = BusyRecorder(torch.device("cpu"))
    for _ in range(2):
        rec.epoch_start()
        for _ in range(3):
            rec.step_start()
            rec.step_end(8)
        rec.epoch_end()
    used = rec.result()
    assert used.images == 48 and used.seconds > 0 and used.gpu_busy is None
    assert used.images_per_s == pytest.approx(48 / used.seconds)


def test_formatting_shows_the_known_parts() -> None:
    assert fmt_utilisation(1234.4, 0.871, 0.1234) == "1,234 img/s, GPU busy 87%, MFU 12.3%"
    assert fmt_utilisation(50.0, None, None) == "50 img/s"
    assert fmt_utilisation(None, None, None) == ""


def test_importing_utilisation_loads_no_torch() -> None:
    """The report and the sweep's console format with it: it must stay light."""
    code = "import sys, rsst_tune.utilisation; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_the_report_and_the_console_show_utilisation(tiny_runs, tmp_path) -> None:
    """The console's state line and the report's throughput line read the fields; states
    without them (older results, a state 0 from the dense cache) are left out."""
    from rsst_tune.experiment.experiment import Experiment
    from rsst_tune.experiment.records import Objective, TrialRecord
    from rsst_tune.report import write_report
    from rsst_tune.report.sections import throughput
    from rsst_tune.tune.console import _fmt_use

    cfg, _, results = tiny_runs[0]
    row = results[0].to_dict()
    assert _fmt_use(row).startswith("; ") and "img/s" in _fmt_use(row)
    assert _fmt_use({**row, "images_per_s": None}) == ""
    gpu = [
        dataclasses.replace(
            r,
            device="cuda (NVIDIA H100 80GB HBM3)",
            numerics="bf16 autocast",
            images_per_s=rate,
            gpu_busy=0.5,
            mfu=0.25,
        )
        for r, rate in zip(results, (1000.0, 3000.0), strict=True)
    ]
    old = dataclasses.replace(results[0], images_per_s=None)
    trials = (
        TrialRecord("t0", "complete", cfg.to_dict(), {}, tuple(gpu)),
        TrialRecord("t1", "complete", cfg.to_dict(), {}, (old,)),
    )
    objectives = (Objective("val_acc", "max"), Objective("macs_frac", "min"))
    exp = Experiment(name="u", path=str(tmp_path), space="vit_head_mlp", objectives=objectives,
                     trials=trials, command="tune_main.py")  # fmt: skip
    (line,) = throughput(exp)
    assert (line.states, line.images_per_s, line.gpu_busy, line.mfu) == (2, 2000.0, 0.5, 0.25)
    md = write_report(exp, tmp_path / "report").read_text()
    assert (
        "cuda (NVIDIA H100 80GB HBM3), bf16 autocast: 2,000 img/s, GPU busy 50%, MFU 25.0% "
        "(2 states)."
    ) in md
