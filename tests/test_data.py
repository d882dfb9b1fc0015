"""Tests for the datasets and the on-device batching (real data, no mocks)."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rsst_tune.data import (
    CIFAR10_MEAN,
    DataBundle,
    DataSpec,
    DeviceData,
    FileList,
    FileSplit,
    Split,
    list_datasets,
    load_dataset,
    make_generator,
    register_dataset,
    unregister_dataset,
)
from rsst_tune.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """The digits bundle, loaded once."""
    return load_dataset("digits", data_dir="unused")


def rows(split: Split) -> Counter[bytes]:
    """Multiset of (image, label) rows of a split."""
    return Counter(
        x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(split.x, split.y, strict=True)
    )


def coordinate_images(n: int, size: int) -> Split:
    """Images whose pixel (h, w) holds 1 + h * size + w, so a crop/flip can be read back."""
    grid = 1 + torch.arange(size * size, dtype=torch.uint8).view(1, 1, size, size)
    return Split(grid.expand(n, 1, size, size).contiguous(), torch.arange(n, dtype=torch.int64))


def identity_spec(size: int, padding: int, flip: bool) -> DataSpec:
    """A 1-channel spec whose normalisation is x / 255 exactly."""
    return DataSpec("coords", 10, 1, size, (0.0,), (1.0,), crop_padding=padding, flip=flip)


def recover(xb: torch.Tensor) -> torch.Tensor:
    """Undo the identity normalisation: back to integer pixel values."""
    return (xb * 255).round().long()


# ----------------------------------------------------------------------------- registry


def test_registry_lists_datasets() -> None:
    """All built-in datasets are registered; unknown names list the choices."""
    assert {"cifar10", "cifar100", "digits", "imagefolder", "synthetic"} <= set(list_datasets())
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", data_dir=".")
    assert "mnist" in str(info.value)
    for name in ["cifar10", "cifar100", "digits", "imagefolder", "synthetic"]:
        assert name in str(info.value)


def test_user_dataset() -> None:
    """A dataset registered with @register_dataset is loadable by name."""

    @register_dataset("test_user_tiny")
    def tiny(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
        split = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
        return DataBundle(
            DataSpec("test_user_tiny", 2, 1, 2, (0.5,), (0.5,), 0, False), split, split, split
        )

    try:
        assert "test_user_tiny" in list_datasets()
        assert load_dataset("test_user_tiny", data_dir=".").spec.num_classes == 2
    finally:
        unregister_dataset("test_user_tiny")
    assert "test_user_tiny" not in list_datasets()


def test_split_validates_dtypes() -> None:
    """Split insists on uint8 images and int64 labels."""
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ----------------------------------------------------------------------------- digits


def test_digits_splits(digits: DataBundle) -> None:
    """1,077 / 360 / 360, a partition of the 1,797 images, identical across calls."""
    from sklearn.datasets import load_digits

    assert (len(digits.train), len(digits.val), len(digits.test)) == (1077, 360, 360)
    spec = digits.spec
    assert (spec.num_classes, spec.in_chans, spec.img_size, spec.crop_padding, spec.flip) == (
        10,
        1,
        8,
        1,
        False,
    )
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == torch.uint8
    assert int(digits.train.x.max()) == 255
    assert set(digits.train.y.tolist()) == set(range(10))

    raw = load_digits()
    full = Split(
        torch.as_tensor(raw.images * 255 / 16).round().to(torch.uint8).unsqueeze(1),
        torch.as_tensor(raw.target, dtype=torch.int64),
    )
    assert rows(digits.train) + rows(digits.val) + rows(digits.test) == rows(full)

    again = load_dataset("digits", data_dir="elsewhere")
    for a, b in [(digits.train, again.train), (digits.val, again.val), (digits.test, again.test)]:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.spec == digits.spec


def test_digits_val_size(digits: DataBundle) -> None:
    """val_size moves images between train and val; test is unchanged."""
    small = load_dataset("digits", data_dir=".", val_size=100)
    assert (len(small.train), len(small.val), len(small.test)) == (1337, 100, 360)
    assert torch.equal(small.test.x, digits.test.x)
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset("digits", data_dir=".", val_size=0)
    with pytest.raises(ConfigError, match="validation size"):
        load_dataset("digits", data_dir=".", val_size=5000)


def test_digits_mean_std_from_train(digits: DataBundle) -> None:
    """Eval batches are deterministic and normalised with train statistics (mean 0, std 1)."""
    data = DeviceData(digits.train, digits.spec, "cpu")
    first = torch.cat([x for x, _ in data.eval_batches(100)])
    second = torch.cat([x for x, _ in data.eval_batches(333)])
    assert torch.equal(first, second)
    assert first.dtype == torch.float32 and first.shape == (1077, 1, 8, 8)
    assert abs(first.mean().item()) < 1e-4
    assert abs(first.std().item() - 1) < 1e-3
    labels = torch.cat([y for _, y in data.eval_batches(100)])
    assert torch.equal(labels, digits.train.y)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_fixed_and_learnable() -> None:
    """The synthetic data is fixed across calls and its classes are separable."""
    a = load_dataset("synthetic", data_dir=".")
    b = load_dataset("synthetic", data_dir=".")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape[1:] == (3, 32, 32) and a.spec.num_classes == 10
    x = a.train.x.float().flatten(1)
    means = torch.stack([x[a.train.y == k].mean(0) for k in range(10)])
    pred = torch.cdist(a.test.x.float().flatten(1), means).argmin(1)
    assert (pred == a.test.y).float().mean() > 0.5


# ----------------------------------------------------------------------------- CIFAR


def write_cifar10(root: Path, per_batch: int = 10) -> None:
    """Write tiny CIFAR-10 files in CIFAR's own on-disk format (pickled dicts)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        entry = {
            "batch_label": f"batch {i}",
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)


def test_cifar10_from_files(tmp_path: Path) -> None:
    """CIFAR-10 loads through torchvision from files in CIFAR's format; val carved from train."""
    write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", data_dir=tmp_path, val_size=10)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 10)
    assert bundle.train.x.shape[1:] == (3, 32, 32) and bundle.train.x.dtype == torch.uint8
    assert bundle.spec.mean == CIFAR10_MEAN and bundle.spec.crop_padding == 4 and bundle.spec.flip

    # Pixels are CIFAR's row-major R, G, B planes: image 0 of test_batch, channel 1, pixel (2, 3).
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert int(bundle.test.x[0, 1, 2, 3]) == int(raw["data"][0][1024 + 2 * 32 + 3])
    assert bundle.test.y.tolist() == raw["labels"]

    train_rows = rows(bundle.train) + rows(bundle.val)
    all_train = Counter[bytes]()
    for i in range(1, 6):
        with open(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        x = torch.as_tensor(batch["data"]).view(-1, 3, 32, 32)
        all_train += rows(Split(x, torch.as_tensor(batch["labels"], dtype=torch.int64)))
    assert train_rows == all_train

    again = load_dataset("cifar10", data_dir=tmp_path, val_size=10)
    assert torch.equal(again.val.x, bundle.val.x)


def test_cifar100_from_files(tmp_path: Path) -> None:
    """CIFAR-100 loads from its own format (``train``/``test``/``meta``, fine labels)."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in [("train", 30), ("test", 8)]:
        entry = {
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f, protocol=2)
    bundle = load_dataset("cifar100", data_dir=tmp_path, val_size=5)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (25, 5, 8)
    assert bundle.spec.num_classes == 100 and bundle.spec.name == "cifar100"


def test_cifar_missing_names_path_and_digits(tmp_path: Path) -> None:
    """Absent CIFAR files (no download) raise a ConfigError naming the path and `digits`."""
    for name in ["cifar10", "cifar100"]:
        with pytest.raises(ConfigError) as info:
            load_dataset(name, data_dir=tmp_path / "nowhere")
        message = str(info.value)
        assert str(tmp_path / "nowhere") in message
        assert "digits" in message and "--download" in message


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder(tmp_path: Path) -> None:
    """An image folder is kept at 32 / 0.875 = 37 px and served at 32 (the default size);
    without test/, val/ is the test split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in [("train", 6), ("val", 2)]:
        for cls in ["cat", "dog"]:
            (tmp_path / sub / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / sub / cls / f"{i}.png")
    bundle = load_dataset("imagefolder", data_dir=tmp_path, val_size=2)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 2, 4)
    assert bundle.train.x.shape[1:] == (3, 37, 37)
    assert bundle.spec.num_classes == 2 and bundle.spec.img_size == 32
    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        load_dataset("imagefolder", data_dir=tmp_path / "missing")


# ----------------------------------------------------------------------------- FileList

ODD_NAMES = ("é.png", "日本 語.JPEG", os.fsdecode(b"\xff\xfe.jpg"), "a-c.png", "..")


def file_paths(root: Path) -> list[Path]:
    """Paths in several folders, non-ASCII and undecodable names (surrogate-escaped) among
    them, plus a relative one, a bare name and the root folder."""
    paths = [root / cls / f"{cls}_{i}.JPEG" for cls in ("n01", "n02", "n03") for i in range(4)]
    paths += [root / "n02" / "deep" / name for name in ODD_NAMES]
    return [*paths, Path("rel/x.png"), Path("bare.png"), Path("/")]


def test_a_file_list_indexes_iterates_and_encodes_as_the_paths(tmp_path: Path) -> None:
    paths = file_paths(tmp_path)
    files = FileList.from_paths(paths)
    assert len(files) == len(paths) and list(files) == paths
    assert [files[i] for i in range(len(paths))] == paths
    assert all(isinstance(f, Path) for f in files)
    assert files[-1] == paths[-1] and files[np.int64(3)] == paths[3]
    with pytest.raises(IndexError):
        files[len(paths)]
    for i, path in enumerate(paths):
        assert files.encoded(i) == os.fsencode(path), path
    odd = [files[i] for i in range(len(paths)) if files[i].name in ODD_NAMES]
    assert [p.name for p in odd] == list(ODD_NAMES)  # non-ASCII and undecodable round-trip
    assert os.fsencode(odd[2].name) == b"\xff\xfe.jpg"
    assert files[2:5] == FileList.from_paths(paths[2:5]) and len(files[::-1]) == len(paths)
    assert FileList.from_paths(str(p) for p in paths) == files  # strings as well as Paths
    assert len(FileList.from_paths([])) == 0 and list(FileList.from_paths([])) == []
    assert files.nbytes < 30 * len(paths)  # one byte of folder index + fixed-width names
    assert "FileList(n=" in repr(files)


def test_a_file_list_takes_rows_compares_as_a_bool_and_pickles_compactly(
    tmp_path: Path,
) -> None:
    paths = file_paths(tmp_path)
    files = FileList.from_paths(paths)
    rows = [5, 0, -1, 5]
    for index in (rows, np.array(rows), torch.tensor(rows)):
        taken = files.take(index)
        assert list(taken) == [paths[i] for i in rows]
        assert taken.dirs is files.dirs  # the folders are shared, not copied
    assert len(files.take([])) == 0 and len(files.take(torch.tensor([], dtype=torch.long))) == 0
    with pytest.raises(TypeError, match="integer positions"):
        files.take(torch.tensor([True, False]))
    with pytest.raises(IndexError):
        files.take([len(paths)])

    same = FileList.from_paths(paths)
    assert (files == same) is True and (files != same) is False
    assert hash(files) == hash(same)
    assert (files == files.take(range(len(paths) - 1))) is False
    assert (files == files.take([1, 0, *range(2, len(paths))])) is False
    assert (files == tuple(paths)) is False  # only a FileList equals a FileList
    # another folder table (a subset keeps its parent's folders), the same paths: equal
    sub = files.take([0, 12, 13])
    rebuilt = FileList.from_paths([paths[0], paths[12], paths[13]])
    assert sub.dirs != rebuilt.dirs and (sub == rebuilt) is True and hash(sub) == hash(rebuilt)

    back = pickle.loads(pickle.dumps(files))
    assert (back == files) is True and list(back) == paths
    assert all(back.encoded(i) == files.encoded(i) for i in range(len(paths)))
    many = FileList.from_paths(tmp_path / f"n{i % 10:08d}" / f"n{i:08d}.JPEG" for i in range(20000))
    assert len(pickle.dumps(many)) < 24 * len(many)  # two buffers, no object per file
    with pytest.raises(ValueError, match="read-only"):
        many._names[0] = b"x"  # immutable: the arrays are read-only


def test_a_file_split_keeps_a_file_list_and_subsets_it(tmp_path: Path) -> None:
    paths = file_paths(tmp_path)[:12]
    y = torch.arange(12) % 3
    split = FileSplit(tuple(paths), y, 16, 16, tmp_path)  # type: ignore[arg-type]
    # a loader's own tuple of paths is made a FileList
    assert isinstance(split.files, FileList) and list(split.files) == paths
    part = split.subset(torch.tensor([11, 2, 3]))
    assert list(part.files) == [paths[11], paths[2], paths[3]]
    assert torch.equal(part.y, y[[11, 2, 3]]) and (part.side, part.root) == (16, tmp_path)
    with pytest.raises(ValueError, match=r"FileSplit\.y must be int64 \[N=12\]"):
        FileSplit(split.files, y[:5], 16, 16, tmp_path)


# ----------------------------------------------------------------------------- DeviceData


def test_train_batches_cover_epoch_and_keep_last(digits: DataBundle) -> None:
    """One epoch visits every example once; the last partial batch is kept."""
    data = DeviceData(digits.train, digits.spec, "cpu")
    assert len(data) == 1077 and data.num_batches(100) == 11
    batches = list(data.train_batches(100, make_generator(0, "cpu")))
    assert len(batches) == 11 and batches[-1][0].shape == (77, 1, 8, 8)
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(digits.train.y.tolist())
    assert not torch.equal(labels, digits.train.y)  # shuffled


def test_augmentation_follows_generator(digits: DataBundle) -> None:
    """Same seed, same batches; another seed, other batches."""
    data = DeviceData(digits.train, digits.spec, "cpu")

    def epoch(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in data.train_batches(256, make_generator(seed, "cpu"))]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def crop_shift(out: torch.Tensor, size: int) -> tuple[int, int, bool]:
    """The (dy, dx, mirrored) that maps a coordinate image to its augmented copy ``out``.

    Every non-zero output pixel value v = 1 + h * size + w names its source (h, w).
    """
    h_out, w_out = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    keep = out > 0
    src = out[keep] - 1
    h_src, w_src = src // size, src % size
    dys = (h_src - h_out[keep]).unique()
    straight = (w_src - w_out[keep]).unique()
    mirror = (w_src + w_out[keep]).unique()
    assert len(dys) == 1, "rows must move together"
    if len(straight) == 1:
        return int(dys[0]), int(straight[0]), False
    assert len(mirror) == 1, "columns must be shifted or mirrored as a whole"
    return int(dys[0]), int(mirror[0]) - (size - 1), True


@pytest.mark.parametrize(("padding", "flip"), [(1, False), (3, True)])
def test_crop_shift_at_most_padding(padding: int, flip: bool) -> None:
    """A crop shifts each image as a whole by at most the padding; flips only when asked."""
    size = 8
    data = DeviceData(coordinate_images(400, size), identity_spec(size, padding, flip), "cpu")
    shifts, mirrored = set(), 0
    for xb, yb in data.train_batches(128, make_generator(0, "cpu")):
        assert len(yb) == len(xb)
        pixels = recover(xb)
        assert int(pixels.min()) >= 0
        for img in pixels[:, 0]:
            dy, dx, m = crop_shift(img, size)
            assert abs(dy) <= padding and abs(dx) <= padding
            shifts.add((dy, dx))
            mirrored += m
            # pixels that fall outside the source image are zero padding
            assert int((img > 0).sum()) == (size - abs(dy)) * (size - abs(dx))
    assert len(shifts) == (2 * padding + 1) ** 2  # every offset is used
    if flip:
        assert 100 < mirrored < 300
    else:
        assert mirrored == 0


def test_digits_never_flipped(digits: DataBundle) -> None:
    """The digits spec shifts by at most one pixel and never mirrors."""
    data = DeviceData(coordinate_images(300, 8), identity_spec(8, 1, digits.spec.flip), "cpu")
    assert digits.spec.flip is False and digits.spec.crop_padding == 1
    for xb, _ in data.train_batches(300, make_generator(3, "cpu")):
        for img in recover(xb)[:, 0]:
            dy, dx, mirrored = crop_shift(img, 8)
            assert not mirrored and abs(dy) <= 1 and abs(dx) <= 1


def test_no_augment_is_permutation_of_eval(digits: DataBundle) -> None:
    """With augment=False, train batches are the eval images, shuffled."""
    data = DeviceData(digits.val, digits.spec, "cpu")
    plain = torch.cat([x for x, _ in data.eval_batches(1000)])
    shuffled = torch.cat(
        [x for x, _ in data.train_batches(64, make_generator(0, "cpu"), augment=False)]
    )
    assert torch.equal(plain.flatten(1).sort(0).values, shuffled.flatten(1).sort(0).values)


def test_generator_on_device() -> None:
    """make_generator returns a seeded generator on the requested device."""
    g = make_generator(5, "cpu")
    assert g.device.type == "cpu"
    assert torch.equal(
        torch.rand(3, generator=g), torch.rand(3, generator=make_generator(5, "cpu"))
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_must_match_device(digits: DataBundle) -> None:
    """A generator on another device type is refused with a clear message."""
    data = DeviceData(digits.val, digits.spec, "cpu")
    with pytest.raises(ValueError, match="make_generator"):
        next(data.train_batches(8, make_generator(0, "cuda")))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_batches_on_cuda(digits: DataBundle) -> None:
    """On a GPU the batches stay on the device and match the seed's determinism."""
    data = DeviceData(digits.train, digits.spec, "cuda")
    a = [x for x, _ in data.train_batches(256, make_generator(0, "cuda"))]
    b = [x for x, _ in data.train_batches(256, make_generator(0, "cuda"))]
    assert all(u.is_cuda and torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_a_last_training_batch_of_one_image_is_dropped_for_batchnorm() -> None:
    import torch

    from rsst_tune.data import DataSpec, DeviceData, Split, make_generator

    spec = DataSpec("t", 2, 1, 4, (0.5,), (0.5,), crop_padding=0, flip=False)
    split = Split(torch.zeros(9, 1, 4, 4, dtype=torch.uint8), torch.zeros(9, dtype=torch.long))
    data = DeviceData(split, spec, "cpu")
    sizes = [len(y) for _, y in data.train_batches(4, make_generator(0, "cpu"))]
    assert sizes == [4, 4] and data.num_train_batches(4) == 2
    sizes = [len(y) for _, y in data.train_batches(3, make_generator(0, "cpu"))]
    assert sizes == [3, 3, 3]
    assert [len(y) for _, y in data.eval_batches(4)] == [4, 4, 1]  # evaluation keeps every image
