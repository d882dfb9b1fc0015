"""The CUDA paths: a trial on the GPU, bf16 autocast, channels_last CNNs, latency on CUDA.

Every test here is marked `cuda` and skipped without a CUDA device; `make gpu-check`
(benchmarks/gpu_check.py) runs them on a GPU machine (`pytest -m cuda`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle, make_generator, make_synthetic
from rsst_tune.device import amp_dtype, autocast
from rsst_tune.pruning.masks import MaskEnforcer
from rsst_tune.train import evaluate, train_state

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FAST = dict(device="cuda", epochs=1, warmup_epochs=0.0, batch_size=64, score_batches=1)


@pytest.fixture(scope="module")
def rgb() -> DataBundle:
    """CIFAR-shaped synthetic data (3x32x32, 10 classes), small."""
    return make_synthetic(sizes=(512, 128, 128))


def test_a_trial_runs_on_cuda_and_resumes(tmp_path: Path, digits_small: DataBundle) -> None:
    """Two states of vit_digits on the GPU (at img_size 16: the resize runs on the device);
    checkpoints load on the CPU; a resume of the finished run adds nothing."""
    from rsst_tune.loop import PruneLoop
    from rsst_tune.run import run_trial

    cfg = dict(
        model="vit_digits", dataset="digits", pruning_times=2, img_size=16, amp=True, **FAST
    )  # amp given: no numerics probe (test_auto_numerics_probes_once_per_key)
    results = run_trial(cfg, tmp_path / "run", data=digits_small)
    assert [r.state for r in results] == [0, 1]
    assert all(0.0 <= r.val_acc <= 1.0 and math.isfinite(r.train_loss) for r in results)
    assert results[1].macs_frac < 1.0
    name = torch.cuda.get_device_name(0)
    bf16 = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp32"
    assert {(r.device, r.numerics) for r in results} == {(f"cuda ({name})", bf16)}
    state = torch.load(tmp_path / "run" / "state_01.pt", map_location="cpu", weights_only=True)
    assert state["spec"]["img_size"] == 16
    loop = PruneLoop.resume(tmp_path / "run", data=digits_small)
    assert loop.setup.device.type == "cuda" and loop.next_state == 2


def test_bf16_autocast_trains_with_fp32_weights(rgb: DataBundle) -> None:
    """vit_tiny in bf16 autocast learns the synthetic classes and keeps its weights in fp32.
    In 6 epochs the mean loss falls from about ln 10 = 2.30 (chance on 10 classes) to well
    below it, and validation accuracy rises well above chance (0.1). The same run in fp32
    on a CPU, with 1 or 2 threads (the run is that sensitive): loss 2.34 -> 1.30 / 1.63,
    val 88 % / 36 %; the bounds leave room for such spread."""
    from rsst_tune.trial_setup import build_setup

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = TrialConfig(model="vit_tiny", dataset="synthetic", amp=True, **{**FAST, "epochs": 6})
    setup = build_setup(cfg, rgb)
    assert setup.amp == torch.bfloat16 == amp_dtype(setup.device, True)
    x, _ = next(setup.val_data.eval_batches(8))
    with autocast(setup.device, setup.amp):
        assert setup.forward(x).dtype == torch.bfloat16
    epoch_losses: list[float] = []
    stats = train_state(
        setup.model,
        setup.forward,
        setup.train_data,
        setup.cfg,
        generator=make_generator(0, setup.device),
        enforcer=MaskEnforcer(setup.model, {}),
        pull=None,
        amp=setup.amp,
        on_epoch=lambda _done, loss: epoch_losses.append(loss),
    )
    assert len(epoch_losses) == 6 and all(math.isfinite(v) for v in epoch_losses), epoch_losses
    assert stats.train_loss == epoch_losses[-1]
    # learning, not noise: the last epoch's loss is clearly below the first's and below chance
    assert epoch_losses[-1] < min(1.9, epoch_losses[0] - 0.4), epoch_losses
    assert all(p.dtype == torch.float32 for p in setup.model.parameters())
    acc = evaluate(setup.model, setup.forward, setup.val_data, 256, setup.amp)
    assert acc >= 0.2, acc  # twice chance: 26 of 128 images (chance: 13, sd 3.4)


def test_cnn_runs_channels_last_and_matches_contiguous(rgb: DataBundle) -> None:
    """resnet20 on CUDA: weights and batches in channels_last; the same outputs as the
    model in the default layout."""
    from rsst_tune.trial_setup import build_setup

    setup = build_setup(TrialConfig(model="resnet20", dataset="synthetic", amp=False, **FAST), rgb)
    convs = [m for m in setup.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x, _ = next(setup.val_data.eval_batches(16))
    assert x.is_contiguous(memory_format=torch.channels_last)
    setup.model.eval()
    # cuDNN's default TF32 convolutions round differently per algorithm, and the two layouts
    # pick different algorithms (H100: up to 5e-3 apart); the layouts are compared in true fp32
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out = setup.model(x)
        plain = setup.model.to(memory_format=torch.contiguous_format)(x.contiguous())
    torch.testing.assert_close(out, plain, rtol=1e-3, atol=1e-3)
    # a setup on the CPU keeps the default layout
    cpu = build_setup(
        TrialConfig(model="resnet20", dataset="synthetic", amp=False, **{**FAST, "device": "cpu"}),
        rgb,
    )
    assert not next(cpu.val_data.eval_batches(4))[0].is_contiguous(
        memory_format=torch.channels_last
    )


def test_export_measures_latency_on_cuda(tmp_path: Path, rgb: DataBundle) -> None:
    """A pruned vit_tiny ticket exported on CUDA: it matches the masked model, and dense and
    pruned are timed on the GPU at each batch size."""
    from rsst_tune.export import export_checkpoint
    from rsst_tune.pruning.exported import load_exported
    from rsst_tune.run import run_trial

    cfg = dict(
        model="vit_tiny", dataset="synthetic", method="refill", head_ratio=0.34,
        mlp_ratio=0.5, pruning_times=2, amp=True, **FAST,
    )  # fmt: skip
    run_trial(cfg, tmp_path / "run", data=rgb)
    report = export_checkpoint(
        tmp_path / "run" / "state_01.pt",
        tmp_path / "export",
        device="cuda",
        batch_sizes=(1, 64),
        repeats=3,
    )
    assert report.max_abs_diff <= report.atol
    assert report.macs_pruned < report.macs_dense
    on_gpu = [t for t in report.latency if t.device.startswith("cuda")]
    assert sorted(t.batch for t in on_gpu) == [1, 64]
    assert all(t.dense_ms > 0 and t.pruned_ms > 0 for t in on_gpu)
    model = load_exported(tmp_path / "export" / "model.pt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_streamed_image_folder_decodes_on_the_gpu_and_trains(tmp_path: Path) -> None:
    """JPEG and PNG (RGB, grey, CMYK) streamed to the GPU: JPEGs decoded there by nvjpeg,
    the rest (and CMYK, which nvjpeg refuses) by PIL; evaluation batches close to the
    resident ones; a two-state trial with data_placement stream runs on the GPU."""
    import numpy as np
    from PIL import Image

    from rsst_tune.data import DeviceData, load_dataset
    from rsst_tune.data.streaming import StreamData
    from rsst_tune.loop import PruneLoop

    rng = np.random.default_rng(0)
    for sub, n in (("train", 24), ("val", 6)):
        for cls in ("a", "b"):
            (tmp_path / sub / cls).mkdir(parents=True)
            for i in range(n):
                mode, ext = (("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("RGB", "png"))[i % 4]
                pixels = rng.integers(0, 256, (int(rng.integers(40, 90)), 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(tmp_path / sub / cls / f"{i}.{ext}")
    bundle = load_dataset("imagefolder", data_dir=tmp_path, img_size=32, lazy=True)
    streamed = StreamData(bundle.train, bundle.spec, "cuda", workers=1)  # type: ignore[arg-type]
    assert streamed.decode_on_device
    resident = DeviceData(bundle.train.decode(), bundle.spec, "cuda")  # type: ignore[union-attr]
    for (xa, ya), (xb, yb) in zip(
        resident.eval_batches(16), streamed.eval_batches(16), strict=True
    ):
        assert xb.device.type == "cuda" and torch.equal(ya, yb)
        assert (xa - xb).abs().mean() < 0.15
    served = sum(len(y) for _, y in streamed.train_batches(16, make_generator(0, "cuda")))
    assert served == len(streamed) and streamed.skipped == 0
    cfg = TrialConfig(
        model="vit_digits", dataset="imagefolder", data_dir=str(tmp_path), img_size=32,
        pruning_times=2, data_placement="stream", data_workers=1, augment=True, amp=True, **FAST,
    )  # fmt: skip
    loop = PruneLoop(cfg, tmp_path / "run")
    assert [r.state for r in loop.states()] == [0, 1] and loop.setup.placement == "stream"


def test_cuda_graphs_train_like_eager_and_keep_the_masks(rgb: DataBundle) -> None:
    """`compile_mode="reduce-overhead"`: three fp32 steps from the same weights on the same
    batches give the eager losses (inductor's fused kernels round differently: 1e-3), the
    optimizer is fused on CUDA, and the masked weights stay zero through the graph replays."""
    from rsst_tune.train import build_optimizer, train_step
    from rsst_tune.trial_setup import build_setup

    fields = dict(model="vit_tiny", dataset="synthetic", amp=False, **FAST)
    eager = build_setup(TrialConfig(**fields), rgb)
    graphed = build_setup(TrialConfig(**fields, compile=True, compile_mode="reduce-overhead"), rgb)
    assert graphed.forward is not graphed.model
    graphed.model.load_state_dict(eager.model.state_dict())
    name = "blocks.0.mlp.fc1.weight"
    mask = torch.ones_like(dict(eager.model.named_parameters())[name])
    mask[::2] = 0.0  # every other neuron of block 0's MLP
    batches = [b for _, b in zip(range(3), eager.train_data.train_batches(
        64, make_generator(0, eager.device), augment=False))]  # fmt: skip
    losses = []
    for setup in (eager, graphed):
        opt = build_optimizer(setup.model, setup.cfg)
        assert opt.defaults["fused"] is True
        enforcer = MaskEnforcer(setup.model, {name: mask})
        enforcer.apply()
        loss_fn = torch.nn.CrossEntropyLoss()
        run = [
            float(train_step(setup.forward, x, y, opt=opt, loss_fn=loss_fn, enforcer=enforcer,
                             pull=None, lam_value=0.0, amp=None))
            for x, y in batches
        ]  # fmt: skip
        losses.append(run)
        weight = dict(setup.model.named_parameters())[name]
        assert bool((weight[::2] == 0).all()) and bool((weight[1::2] != 0).any())
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    acc = evaluate(graphed.model, graphed.forward, graphed.val_data, 100, None)  # new shapes
    assert 0.0 <= acc <= 1.0


def test_a_pruned_distilled_trial_runs_with_cuda_graphs(
    tmp_path: Path, digits_small: DataBundle
) -> None:
    """RSST states distilled from the dense teacher, the student compiled with CUDA graphs:
    every state is reported and the ticket holds its mask."""
    from rsst_tune.run import run_trial

    cfg = dict(
        model="vit_digits", dataset="digits", pruning_times=3, img_size=16, distill_alpha=0.5,
        compile=True, compile_mode="reduce-overhead", **FAST,
    )  # fmt: skip
    results = run_trial(cfg, tmp_path / "run", data=digits_small)
    assert [r.state for r in results] == [0, 1, 2]
    assert all(math.isfinite(r.train_loss) for r in results)
    assert results[2].macs_frac < results[1].macs_frac < 1.0
    assert all(r.numerics and r.numerics.endswith(", compiled (reduce-overhead)") for r in results)
    state = torch.load(tmp_path / "run" / "state_02.pt", map_location="cpu", weights_only=True)
    for key, m in state["M"].items():
        assert bool((state["ticket"][key][m == 0] == 0).all()), key


def test_every_trained_state_records_gpu_busy_and_mfu(
    tmp_path: Path, digits_small: DataBundle
) -> None:
    """On CUDA each trained state records images/s, the share of its training time the GPU
    spent inside steps (in (0, 1]) and, on a GPU of the peak table, MFU in (0, 1)."""
    from rsst_tune.run import run_trial
    from rsst_tune.utilisation import match_gpu

    cfg = dict(
        model="vit_digits", dataset="digits", method="refill", head_ratio=0.25,
        pruning_times=2, img_size=16, amp=True, **{**FAST, "epochs": 2},
    )  # fmt: skip
    results = run_trial(cfg, tmp_path / "run", data=digits_small)
    known = match_gpu(torch.cuda.get_device_name(0)) is not None
    for r in results:
        assert r.images_per_s is not None and r.images_per_s > 0
        assert r.gpu_busy is not None and 0.0 < r.gpu_busy <= 1.0
        if known:
            assert r.mfu is not None and 0.0 < r.mfu < 1.0
        else:
            assert r.mfu is None


def test_auto_numerics_probes_once_per_key(tmp_path: Path, rgb: DataBundle) -> None:
    """amp/compile auto (the default) on CUDA: the probe times fp32, bf16 and bf16 with CUDA
    graphs, trains with the fastest finite one, writes numerics.json, and a second trial
    with the same key reads it instead of probing; the result's numerics names the choice."""
    import json

    from rsst_tune import numerics
    from rsst_tune.trial_setup import build_setup

    cfg = TrialConfig(model="vit_tiny", dataset="synthetic", **FAST)
    assert cfg.numerics_auto
    cache = numerics.NumericsCache(tmp_path)
    t0 = time.perf_counter()
    first = build_setup(cfg, rgb, numerics_cache=cache)
    probed_s = time.perf_counter() - t0
    decision = first.decision
    assert decision is not None and decision.choice in numerics.CANDIDATES
    assert set(decision.probes) == set(numerics.CANDIDATES)
    assert decision.probes[numerics.FP32].finite and decision.probes[numerics.FP32].images_per_s > 0
    assert decision.choice == numerics.choose(decision.probes)
    assert first.numerics.startswith(f"auto: {decision.choice} (probe fp32 ")
    assert (first.compile_mode is not None) == (decision.choice == numerics.BF16_GRAPHS)
    saved = json.loads((tmp_path / numerics.CACHE_FILE).read_text())
    assert len(saved["entries"]) == 1
    t0 = time.perf_counter()
    second = build_setup(cfg, rgb, numerics_cache=numerics.NumericsCache(tmp_path))
    assert second.decision == decision and second.numerics == first.numerics
    assert time.perf_counter() - t0 < probed_s  # read, not probed again
    print(f"probe took {probed_s:.1f}s: {first.numerics}")


def test_gpus_per_trial_auto_probes_the_trial_and_suggests_a_share() -> None:
    from rsst_tune.tune.gpu_share import MAX_PACK, probe_share

    probe = probe_share(
        {"model": "vit_tiny", "dataset": "synthetic", "batch_size": 128, "epochs": 1}
    )
    assert 0 < probe.peak_bytes < probe.total_bytes
    assert 0.0 < probe.busy <= 1.0 and probe.images_per_s > 0
    assert probe.share in {1 / k for k in range(1, MAX_PACK + 1)}
    assert torch.cuda.get_device_name(0) in probe.describe()
