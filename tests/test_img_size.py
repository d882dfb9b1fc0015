"""`img_size`: every model at any size it can take, the data resized to it, and a one-line
error naming the valid sizes for a size it cannot take (raised at setup, before training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle, DeviceData, load_dataset, make_generator, make_synthetic
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop
from rsst_tune.models import default_img_size, register_model, unregister_model
from rsst_tune.trial_setup import build_setup

FAST = dict(device="cpu", amp=False, epochs=1, warmup_epochs=0.0, batch_size=64, augment=False)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


@pytest.fixture(scope="module")
def rgb() -> DataBundle:
    """Small CIFAR-shaped data (3x32x32, 10 classes)."""
    return make_synthetic(sizes=(128, 32, 32))


def test_timm_model_defaults_to_its_pretrained_input_size_and_stats(rgb: DataBundle) -> None:
    """A timm model without img_size takes its pretrained config's size, mean and std."""
    assert default_img_size("timm:test_vit") == 160
    assert default_img_size("timm:deit_tiny_patch16_224") == 224
    setup = build_setup(TrialConfig(model="timm:test_vit", dataset="synthetic", **FAST), rgb)
    assert setup.spec.img_size == 160
    assert setup.spec.mean == (0.5, 0.5, 0.5) and setup.spec.std == (0.5, 0.5, 0.5)
    x, y = next(setup.train_data.train_batches(8, make_generator(0, "cpu"), augment=True))
    assert x.shape == (8, 3, 160, 160) and y.shape == (8,)
    with torch.no_grad():
        assert setup.model.eval()(x).shape == (8, 10)


def test_deit_on_digits_runs_at_224_instead_of_crashing(digits: DataBundle) -> None:
    """The 8x8 grey digits are resized to DeiT's 224; the dataset's one-channel stats stay."""
    cfg = TrialConfig(model="timm:deit_tiny_patch16_224", dataset="digits", **FAST)
    setup = build_setup(cfg, digits)
    assert setup.spec.img_size == 224 and setup.spec.in_chans == 1
    assert setup.spec.mean == digits.spec.mean
    x, _ = next(setup.val_data.eval_batches(2))
    assert x.shape == (2, 1, 224, 224)


def test_builtin_models_keep_the_dataset_size(rgb: DataBundle, digits: DataBundle) -> None:
    """vit_tiny stays at CIFAR's 32 with the dataset's statistics; vit_digits at 8."""
    setup = build_setup(TrialConfig(model="vit_tiny", dataset="synthetic", **FAST), rgb)
    assert setup.spec == rgb.spec
    assert setup.model.patch_embed.grid_size == (8, 8)
    setup = build_setup(TrialConfig(model="vit_digits", dataset="digits", **FAST), digits)
    assert setup.spec == digits.spec


def test_img_size_resizes_the_data_and_runs_a_trial(digits_small: DataBundle, tmp_path) -> None:
    """vit_digits at 16: batches are 16x16, the grid 8x8, and a two-state trial finishes
    with the size in its checkpoint's spec (what export builds from) and 4x the patches."""
    base = dict(model="vit_digits", dataset="digits", pruning_times=2, score_batches=1, **FAST)
    cfg = TrialConfig(img_size=16, **base)
    loop = PruneLoop(cfg, tmp_path / "run", data=digits_small)
    results = list(loop.states())
    assert loop.setup.model.patch_embed.grid_size == (8, 8)
    x, _ = next(loop.setup.val_data.eval_batches(4))
    assert x.shape == (4, 1, 16, 16)
    assert [r.state for r in results] == [0, 1]
    saved = torch.load(tmp_path / "run" / "state_01.pt", weights_only=True)
    assert saved["spec"]["img_size"] == 16
    native = build_setup(TrialConfig(**base), digits_small)
    assert loop.setup.cost.dense.macs > 3 * native.cost.dense.macs


@pytest.mark.parametrize(
    ("model", "size", "words"),
    [
        ("timm:deit_tiny_patch16_224", 8, ["multiples of its patch size 16", "16", "224"]),
        ("timm:test_vit", 40, ["multiples of its patch size 16", "32 or 48", "160"]),
        ("vit_tiny", 30, ["divisible by its patch size 4", "28 or 32"]),
    ],
)
def test_a_size_off_the_patch_grid_is_one_line(
    digits: DataBundle, model: str, size: int, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        build_setup(TrialConfig(model=model, dataset="digits", img_size=size, **FAST), digits)
    text = str(err.value)
    assert "\n" not in text and str(size) in text
    for word in words:
        assert word in text, (word, text)


def test_a_size_below_the_kernel_names_the_smallest_valid_size(digits: DataBundle) -> None:
    """A CNN whose 5x5 kernel (no padding) meets a 4x4 image: the error names 5 and up."""

    @register_model("test_k5_net")
    def k5(
        *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
    ) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_chans, 8, 5),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    try:
        with pytest.raises(ConfigError, match=r"img_size 4 is too small .*5 and larger") as err:
            build_setup(TrialConfig(model="test_k5_net", img_size=4, **FAST), digits)
        assert "\n" not in str(err.value)
        setup = build_setup(TrialConfig(model="test_k5_net", img_size=5, **FAST), digits)
        assert setup.spec.img_size == 5
    finally:
        unregister_model("test_k5_net")


def test_img_size_is_a_checked_dense_field() -> None:
    from rsst_tune.dense_cache import dense_key

    assert "img_size" in TrialConfig.fields_in("dense")
    with pytest.raises(ConfigError, match=r"img_size must be an integer in \[1, 4096\]"):
        TrialConfig(img_size=0)
    with pytest.raises(ConfigError, match="img_size"):
        TrialConfig.from_dict({"img_size": 2.5})
    assert TrialConfig.from_dict({"img_size": 16.0}).img_size == 16
    assert dense_key(TrialConfig(img_size=16)) != dense_key(TrialConfig())


def test_the_cli_takes_both_spellings() -> None:
    from rsst_tune.cli import build_parser, config_from_args

    parser = build_parser()
    for flag in ("--img_size", "--img-size"):
        args = parser.parse_args(["run", flag, "24", "--model", "vit_tiny"])
        assert config_from_args(args).img_size == 24


# ----------------------------------------------------------------------------- data side


def test_device_data_resizes_each_batch_and_keeps_the_stored_size(rgb: DataBundle) -> None:
    """Stored at 32, served at 64 (up) or 16 (down, antialiased); the resident tensor keeps
    its size; channels_last batches when asked."""
    up = DeviceData(rgb.val, rgb.spec.__class__(**{**rgb.spec.__dict__, "img_size": 64}), "cpu")
    assert up.x.shape[-2:] == (32, 32)
    x, _ = next(up.eval_batches(4))
    assert x.shape == (4, 3, 64, 64)
    plain = DeviceData(rgb.val, rgb.spec, "cpu")
    x32, _ = next(plain.eval_batches(4))
    # bilinear upsampling keeps the mean of each image to within a little
    assert torch.allclose(x.mean(dim=(2, 3)), x32.mean(dim=(2, 3)), atol=0.05)
    down = DeviceData(
        rgb.val, rgb.spec.__class__(**{**rgb.spec.__dict__, "img_size": 16}), "cpu",
        channels_last=True,
    )  # fmt: skip
    xd, _ = next(down.train_batches(4, make_generator(0, "cpu"), augment=True))
    assert xd.shape == (4, 3, 16, 16)
    assert xd.is_contiguous(memory_format=torch.channels_last)


def test_imagefolder_reads_at_the_asked_size(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in [("train", 4), ("val", 2)]:
        for cls in ["cat", "dog"]:
            (tmp_path / sub / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (50, 60), dtype=np.uint8)  # greyscale
                Image.fromarray(pixels).save(tmp_path / sub / cls / f"{i}.png")
    bundle = load_dataset("imagefolder", data_dir=tmp_path, val_size=2, img_size=48)
    assert bundle.train.x.shape[1:] == (3, 55, 55)  # 48 / 0.875: the eval centre crop is 48
    assert bundle.spec.img_size == 48 and bundle.spec.crop == "resized"
    assert load_dataset("imagefolder", data_dir=tmp_path, val_size=2).spec.img_size == 32
    # a loader without img_size keeps its own size; DeviceData resizes its batches
    assert load_dataset("digits", data_dir=".", img_size=48).spec.img_size == 8
