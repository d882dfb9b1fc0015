"""`imagefolder` at the images' own resolution: ImageNet layout, any PIL mode read as RGB,
random-resized crops and flips for training and the ImageNet centre crop for evaluation on
the device; class mismatches, empty classes and no images are one line, an unreadable image
is skipped and counted once."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsst_tune.config import TrialConfig
from rsst_tune.data import DataSpec, DeviceData, Split, load_dataset, make_generator, stored_size
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop

MODES = ("RGB", "L", "CMYK", "P")


def write_image(path: Path, mode: str, height: int, width: int, rng: np.random.Generator) -> None:
    """A random RGB image of the given size saved in ``mode`` (CMYK only as JPEG)."""
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def make_folder(root: Path, counts: dict[str, int], classes: tuple[str, ...] = ("cat", "dog")):
    """``root/SPLIT/CLASS/i.(jpg|png)``: mixed modes, sizes and formats, seeded."""
    rng = np.random.default_rng(0)
    for sub, n in counts.items():
        for cls in classes:
            (root / sub / cls).mkdir(parents=True)
            for i in range(n):
                mode = MODES[i % len(MODES)]
                ext = "jpg" if mode == "CMYK" or (mode != "P" and i % 2) else "png"
                height, width = (int(v) for v in rng.integers(12, 60, 2))
                write_image(root / sub / cls / f"{i}.{ext}", mode, height, width, rng)
    return root


def test_a_trial_trains_and_evaluates_on_a_mixed_folder(tmp_path: Path) -> None:
    """JPEG and PNG in RGB, grey, CMYK and palette modes at many sizes: a two-state trial
    with random-resized crops runs, at the asked size, from the folder on disk."""
    make_folder(tmp_path / "data", {"train": 8, "val": 3})
    cfg = TrialConfig(
        model="vit_digits", dataset="imagefolder", data_dir=str(tmp_path / "data"), img_size=16,
        val_size=4, device="cpu", amp=False, epochs=1, warmup_epochs=0.0, batch_size=6,
        augment=True, pruning_times=2, score_batches=1,
    )  # fmt: skip
    loop = PruneLoop(cfg, tmp_path / "run")
    results = list(loop.states())
    setup = loop.setup
    assert setup.spec.crop == "resized" and setup.spec.img_size == 16
    assert setup.train_data.x.shape[1:] == (3, 18, 18)  # 16 / 0.875
    assert (len(setup.train_data), len(setup.val_data), len(setup.test_data)) == (12, 4, 6)
    x, _ = next(setup.train_data.train_batches(6, make_generator(0, "cpu")))
    assert x.shape == (6, 3, 16, 16) and torch.isfinite(x).all()
    assert [r.state for r in results] == [0, 1]
    assert all(0.0 <= r.test_acc <= 1.0 for r in results)
    saved = torch.load(tmp_path / "run" / "state_01.pt", weights_only=True)
    assert saved["spec"]["crop"] == "resized" and saved["spec"]["eval_crop"] == 0.875


def test_eval_is_torchvisions_resize_and_centre_crop(tmp_path: Path) -> None:
    """Evaluation batches are exactly Resize(img_size / 0.875) + CenterCrop(img_size) of
    torchvision on PIL images, for every mode and aspect, and do not change between calls."""
    from torchvision import transforms

    root = make_folder(tmp_path, {"train": 4, "val": 4})
    bundle = load_dataset("imagefolder", data_dir=root, val_size=2, img_size=28)
    data = DeviceData(bundle.test, bundle.spec, "cpu")  # test is val/ here, in file order
    reference = transforms.Compose(
        [transforms.Resize(32), transforms.CenterCrop(28), transforms.PILToTensor()]
    )
    files = sorted((root / "val").rglob("*.*"))
    expected = torch.stack([reference(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(data.eval_view(data.x), expected)
    first = torch.cat([x for x, _ in data.eval_batches(3)])
    again = torch.cat([x for x, _ in data.eval_batches(5)])
    assert first.shape == (8, 3, 28, 28) and torch.equal(first, again)
    mean = torch.tensor(bundle.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.spec.std).view(1, 3, 1, 1)
    assert torch.allclose(first * std + mean, expected.float() / 255, atol=1e-5)


def test_eval_centre_crop_of_a_known_image(tmp_path: Path) -> None:
    """A 32x48 (HxW) image whose red is 4 x column and green 4 x row: served at 28 its short
    side is already 28 / 0.875 = 32, so evaluation sees exactly rows 2..29, columns 10..37."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(48), indexing="ij")
    pixels = np.stack([cols * 4, rows * 4, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    for sub in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / sub / cls).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / sub / cls / "coords.png")
    bundle = load_dataset("imagefolder", data_dir=tmp_path, img_size=28)
    data = DeviceData(bundle.test, bundle.spec, "cpu")
    view = data.eval_view(data.x)
    assert view.shape == (2, 3, 28, 28)
    red = (4 * (torch.arange(28) + 10)).to(torch.uint8)
    green = (4 * (torch.arange(28) + 2)).to(torch.uint8)
    assert torch.equal(view[:, 0], red.expand(2, 28, 28))
    assert torch.equal(view[:, 1], green[:, None].expand(2, 28, 28))
    assert (view[:, 2] == 7).all()


def ramp_split(n: int, side: int) -> Split:
    """Images whose value grows left to right: x = 4 * column."""
    row = (torch.arange(side) * 4).to(torch.uint8)
    return Split(row.expand(n, 3, side, side).contiguous(), torch.zeros(n, dtype=torch.int64))


def test_random_resized_crop_is_seeded_sized_and_flips_about_half() -> None:
    """Training batches are img_size, follow the generator, keep each row monotonic (a crop
    and resize of a ramp), mirror about half the images, and vary in scale."""
    spec = DataSpec(
        "ramp", 1, 3, 16, (0.0,) * 3, (1.0,) * 3, crop_padding=0, flip=True, crop="resized",
        eval_crop=0.875,
    )  # fmt: skip
    data = DeviceData(ramp_split(400, stored_size(16)), spec, "cpu")

    def epoch(seed: int) -> torch.Tensor:
        return torch.cat([x for x, _ in data.train_batches(100, make_generator(seed, "cpu"))])

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert a.shape == (400, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    step = a[:, 0, 0, 1:] - a[:, 0, 0, :-1]
    rising, falling = (step >= -1e-5).all(dim=1), (step <= 1e-5).all(dim=1)
    assert bool((rising | falling).all())
    assert 120 < int((falling & ~rising).sum()) < 280  # mirrored
    spans = (a[:, 0, 0, -1] - a[:, 0, 0, 0]).abs()
    assert float(spans.min()) < 0.35 * float(spans.max())  # small and large crops
    assert float(a.min()) >= 0.0 and float(a.max()) <= 4 * 17 / 255 + 1e-5
    unaugmented = next(data.train_batches(4, make_generator(0, "cpu"), augment=False))[0]
    assert unaugmented.shape == (4, 3, 16, 16)  # the eval centre crop


def test_classes_that_differ_between_splits_are_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 1}, classes=("cat", "dog", "emu"))
    make_folder(tmp_path, {"val": 1}, classes=("cat", "dog", "fox"))
    with pytest.raises(ConfigError) as info:
        load_dataset("imagefolder", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "only in train/: emu" in message and "only in val/: fox" in message


def test_an_empty_class_folder_and_no_images_are_one_line(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "a", {"train": 2, "val": 1})
    (root / "train" / "eel").mkdir()
    (root / "val" / "eel").mkdir()
    (root / "val" / "eel" / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match=r"empty class folder in .*train/: eel") as info:
        load_dataset("imagefolder", data_dir=root)
    assert "\n" not in str(info.value)
    bare = tmp_path / "b"
    for sub in ("train", "val"):
        (bare / sub / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no images in .*train/"):
        load_dataset("imagefolder", data_dir=bare)


def test_an_unreadable_image_is_skipped_and_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path, {"train": 4, "val": 2, "test": 2})  # test/: nothing carved
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    good = root / "train" / "dog" / "0.png"
    (root / "train" / "dog" / "truncated.png").write_bytes(good.read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="rsst_tune.data"):
        bundle = load_dataset("imagefolder", data_dir=root, img_size=16)
    assert len(bundle.train) == 8
    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 1
    assert skipped[0].startswith("skipped 2 unreadable images in train/: first: ")
    assert "broken.jpg" in skipped[0]
    shutil.rmtree(root / "test")
    (root / "train" / "cat" / "broken.jpg").unlink()
    (root / "train" / "dog" / "truncated.png").unlink()
    for f in (root / "val" / "cat").iterdir():
        f.write_bytes(b"garbage")
    for f in (root / "val" / "dog").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"no readable images in .*val/: all 4 failed"):
        load_dataset("imagefolder", data_dir=root, img_size=16)


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    """A 16-bit PNG (mode I;16) is scaled by 1/257, not clipped at 255."""
    pixels = np.full((32, 32), 257 * 100, dtype=np.uint16)
    for sub in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / sub / cls).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / sub / cls / "deep.png")
    assert Image.open(tmp_path / "val" / "a" / "deep.png").mode.startswith("I")
    bundle = load_dataset("imagefolder", data_dir=tmp_path, img_size=28)
    assert (bundle.test.x == 100).all()
