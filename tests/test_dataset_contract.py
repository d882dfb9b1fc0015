"""The contract of every registered dataset, one case per name in ``list_datasets()``: a
dataset registered later is covered as soon as it is registered. One that needs files gets a
local copy in ``CASES`` (an unknown name is loaded from an empty folder, and fails there if
it cannot load offline). Real files, no mocks: CIFAR-10/100 in their own pickle format, a
folder of PNGs, scikit-learn's bundled digits.

For each dataset:

- every split is uint8 [N, spec.in_chans, side, side] with int64 labels in
  [0, spec.num_classes), and batches reach the model as float32 [B, in_chans, img_size,
  img_size]; a loader that takes ``img_size`` serves the size asked;
- the split sizes are the asked ones (``val_size``; an image folder with ``test/`` keeps
  ``val/`` whole, as it promises);
- where a loader carves splits from a source (CIFAR's training files, the digits, an image
  folder's ``train/``), they partition it: disjoint, nothing lost; the test split is its own
  source (CIFAR's test file, ``val/`` or ``test/``);
- loading twice gives identical tensors in the same order; a loader that takes ``lazy``
  gives the same file lists twice and, decoded, exactly the eager bundle.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsst_tune.data import (
    DATASETS,
    DataBundle,
    DeviceData,
    FileSplit,
    Split,
    list_datasets,
    load_dataset,
    make_generator,
    stored_size,
    takes_img_size,
    takes_keyword,
)
from rsst_tune.errors import ConfigError

SPLITS = ("train", "val", "test")
IMG_SIZE = 24  # asked of loaders that take img_size (stored at stored_size(24) = 27)

Parts = list[tuple[tuple[str, ...], Counter[bytes]]]
"""What a loader carves its splits from: (split names, the examples of their source)."""


def example(data: bytes, label: int) -> bytes:
    """One example as a key: its pixels (or its encoded path) and its label."""
    return data + label.to_bytes(8, "little", signed=True)


def examples(split: Split | FileSplit) -> Counter[bytes]:
    """The examples of a split: pixels and label in memory, encoded path and label on disk."""
    labels = split.y.tolist()
    if isinstance(split, FileSplit):
        return Counter(example(split.files.encoded(i), y) for i, y in enumerate(labels))
    return Counter(example(x.numpy().tobytes(), y) for x, y in zip(split.x, labels, strict=True))


# ----------------------------------------------------------------------------- local copies


def write_cifar(root: Path, *, hundred: bool) -> Parts:
    """Tiny CIFAR-10 (5 x 8 training images, 8 test) or CIFAR-100 (30 and 8) in their own
    on-disk format (pickled dicts of [N, 3072] uint8 rows, R, G, B planes)."""
    rng = np.random.default_rng(100 if hundred else 10)
    if hundred:
        folder, key, num_classes = root / "cifar-100-python", "fine_labels", 100
        sizes = {"train": 30, "test": 8}
        meta = ("meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    else:
        folder, key, num_classes = root / "cifar-10-batches-py", "labels", 10
        sizes = {**{f"data_batch_{i}": 8 for i in range(1, 6)}, "test_batch": 8}
        meta = ("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    folder.mkdir(parents=True)
    train, test = Counter[bytes](), Counter[bytes]()
    for name, n in sizes.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f, protocol=2)
        source = test if name.startswith("test") else train
        source.update(example(row.tobytes(), y) for row, y in zip(data, labels, strict=True))
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    return [(("train", "val"), train), (("test",), test)]


def digits_source(root: Path) -> Parts:
    """Nothing to write: the digits ship with scikit-learn; all 1,797 are split three ways."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float64).mul(255.0 / 16.0).round()
    pixels = x.to(torch.uint8).numpy()
    full = Counter(
        example(image.tobytes(), int(y)) for image, y in zip(pixels, raw.target, strict=True)
    )
    return [(SPLITS, full)]


def write_image_folder(root: Path, per_class: dict[str, int]) -> dict[str, Counter[bytes]]:
    """``root/SUB/CLASS/i.png`` for three classes, RGB and grey PNGs of random sizes; the
    files of each folder with their labels (the class's index in sorted order)."""
    rng = np.random.default_rng(0)
    found = {sub: Counter[bytes]() for sub in per_class}
    for sub, n in per_class.items():
        for label, cls in enumerate(("ant", "bee", "cat")):
            (root / sub / cls).mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(16, 48, 2))
                image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                path = root / sub / cls / f"{i}.png"
                (image.convert("L") if i % 2 else image).save(path)
                found[sub][example(os.fsencode(path), label)] += 1
    return found


def folder_carved(root: Path) -> Parts:
    """train/ and val/ only: validation is carved from train/, val/ is the test split."""
    found = write_image_folder(root, {"train": 4, "val": 2})
    return [(("train", "val"), found["train"]), (("test",), found["val"])]


def folder_with_test(root: Path) -> Parts:
    """train/, val/ and test/: the three folders are the three splits."""
    found = write_image_folder(root, {"train": 3, "val": 2, "test": 1})
    return [((sub,), found[sub]) for sub in SPLITS]


def write_shards(root: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Counter[bytes]]:
    """WebDataset shards ``root/SUB-00k.tar`` (``KEY.png`` + ``KEY.cls``, random RGB PNGs of
    random sizes), ``sizes[SUB]`` = (shards, samples per shard); each one's samples (the
    member as ``SHARD.tar/KEY.png``, and the label)."""
    import io
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    rng = np.random.default_rng(1)
    found = {sub: Counter[bytes]() for sub in sizes}
    key = 0
    for sub, (shards, per_shard) in sizes.items():
        for s in range(shards):
            shard = root / f"{sub}-{s:03d}.tar"
            with tarfile.open(shard, "w") as tar:
                for _ in range(per_shard):
                    h, w = (int(v) for v in rng.integers(16, 48, 2))
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                        buf, format="PNG"
                    )
                    label = key % 3
                    add(tar, f"{key:05d}.png", buf.getvalue())
                    add(tar, f"{key:05d}.cls", str(label).encode())
                    found[sub][example(os.fsencode(shard / f"{key:05d}.png"), label)] += 1
                    key += 1
    return found


def shards_carved(root: Path) -> Parts:
    """train and val shards: validation is carved from the training shards, val is test."""
    found = write_shards(root, {"train": (2, 6), "val": (1, 4)})
    return [(("train", "val"), found["train"]), (("test",), found["val"])]


def shards_three(root: Path) -> Parts:
    """train, val and test shards: the three splits."""
    found = write_shards(root, {"train": (2, 5), "val": (1, 4), "test": (1, 3)})
    return [((sub,), found[sub]) for sub in SPLITS]


@dataclass(frozen=True)
class Case:
    """How one dataset loads offline here, and what it promises."""

    id: str
    write: Callable[[Path], Parts]  # writes the local copy under a folder; its sources
    val_size: int  # asked
    sizes: tuple[int, int, int] | None  # (train, val, test) expected; None: only val is known
    side: int | None  # the stored image side expected; None: unknown


CASES: dict[str, tuple[Case, ...]] = {
    "cifar10": (Case("cifar10", lambda d: write_cifar(d, hundred=False), 10, (30, 10, 8), 32),),
    "cifar100": (Case("cifar100", lambda d: write_cifar(d, hundred=True), 5, (25, 5, 8), 32),),
    "digits": (Case("digits", digits_source, 100, (1337, 100, 360), 8),),
    "synthetic": (Case("synthetic", lambda d: [], 50, (2000, 50, 500), 32),),
    "imagefolder": (
        Case("imagefolder-carved", folder_carved, 3, (9, 3, 6), stored_size(IMG_SIZE)),
        # with test/, val_size is ignored (a warning): val/ is the validation split
        Case("imagefolder-test-folder", folder_with_test, 3, (9, 6, 3), stored_size(IMG_SIZE)),
    ),
    # WebDataset shards: data_dir is a folder of train-*.tar (and val-, test-) shards
    "wds": (
        Case("wds-carved", shards_carved, 3, (9, 3, 4), stored_size(IMG_SIZE)),
        Case("wds-three-sets", shards_three, 3, (10, 4, 3), stored_size(IMG_SIZE)),
    ),
}


def cases() -> list[tuple[str, Case]]:
    """Every registered dataset with its cases (an unknown one: an empty folder, val 2)."""
    return [
        (name, case)
        for name in list_datasets()
        for case in CASES.get(name, (Case(name, lambda d: [], 2, None, None),))
    ]


# ----------------------------------------------------------------------------- the loads


@dataclass(frozen=True)
class Loaded:
    """One case's loads: twice eagerly, and twice lazily where the loader takes ``lazy``."""

    name: str
    case: Case
    parts: Parts
    bundle: DataBundle
    again: DataBundle
    lazy: DataBundle | None
    lazy_again: DataBundle | None


def load(name: str, case: Case, data_dir: Path, *, lazy: bool = False) -> DataBundle:
    """``load_dataset`` as a trial calls it (asking ``IMG_SIZE``); a dataset that cannot load
    offline from its local copy fails with what to do."""
    try:
        return load_dataset(
            name, data_dir=data_dir, val_size=case.val_size, img_size=IMG_SIZE, lazy=lazy
        )
    except ConfigError as err:
        pytest.fail(
            f"dataset {name!r} does not load offline from {data_dir} ({err}); give it a local "
            "copy in tests/test_dataset_contract.py CASES"
        )


@pytest.fixture(scope="module", params=cases(), ids=lambda p: p[1].id)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """A dataset loaded from its local copy (written once per case)."""
    name, case = request.param
    data_dir = tmp_path_factory.mktemp(case.id)
    parts = case.write(data_dir)
    streams = takes_keyword(DATASETS.get(name), "lazy")
    return Loaded(
        name,
        case,
        parts,
        load(name, case, data_dir),
        load(name, case, data_dir),
        load(name, case, data_dir, lazy=True) if streams else None,
        load(name, case, data_dir, lazy=True) if streams else None,
    )


def split_of(bundle: DataBundle, part: str) -> Split:
    """A split of an eager bundle (a ``Split``: an eager load decodes everything)."""
    split = getattr(bundle, part)
    assert isinstance(split, Split), f"{part}: an eager load returned {split!r}"
    return split


# ----------------------------------------------------------------------------- the contract


def test_every_dataset_with_a_local_copy_is_registered() -> None:
    """A case here whose dataset is gone (renamed) would test nothing: each is registered."""
    assert set(CASES) <= set(list_datasets())


def test_splits_match_the_spec(loaded: Loaded) -> None:
    """uint8 [N, in_chans, side, side] images, int64 labels in [0, num_classes); the asked
    img_size where the loader takes it."""
    spec = loaded.bundle.spec
    if takes_img_size(DATASETS.get(loaded.name)):
        assert spec.img_size == IMG_SIZE
    for part in SPLITS:
        split = split_of(loaded.bundle, part)
        assert split.x.dtype == torch.uint8 and split.x.dim() == 4, part
        n, chans, h, w = split.x.shape
        assert chans == spec.in_chans, f"{part}: {chans} channels, the spec says {spec.in_chans}"
        assert h == w and (loaded.case.side is None or h == loaded.case.side), (part, h, w)
        assert split.y.dtype == torch.int64 and split.y.shape == (n,), part
        if n:
            low, high = int(split.y.min()), int(split.y.max())
            assert low >= 0 and high < spec.num_classes, (part, low, high, spec.num_classes)


def test_batches_reach_the_model_at_the_spec_size(loaded: Loaded) -> None:
    """Training (augmented) and evaluation batches: float32 [B, in_chans, img_size, img_size]
    with their labels."""
    spec = loaded.bundle.spec
    data = DeviceData(split_of(loaded.bundle, "train"), spec, "cpu")
    want = (spec.in_chans, spec.img_size, spec.img_size)
    xb, yb = next(data.train_batches(4, make_generator(0, "cpu"), augment=True))
    assert xb.dtype == torch.float32 and xb.shape == (len(yb), *want)
    xb, yb = next(data.eval_batches(4))
    assert xb.dtype == torch.float32 and xb.shape == (len(yb), *want)
    assert torch.equal(yb, data.y[: len(yb)])


def test_split_sizes_are_the_asked_ones(loaded: Loaded) -> None:
    """val_size examples in the validation split; the case's (train, val, test) sizes."""
    bundle, case = loaded.bundle, loaded.case
    sizes = tuple(len(getattr(bundle, part)) for part in SPLITS)
    if case.sizes is None:
        assert sizes[1] == case.val_size
    else:
        assert sizes == case.sizes
    if loaded.lazy is not None:
        assert tuple(len(getattr(loaded.lazy, part)) for part in SPLITS) == sizes


def test_splits_partition_their_source(loaded: Loaded) -> None:
    """The splits carved from one source are disjoint and together are all of it (an
    example: pixels and label; for a lazy loader, the file and label)."""
    bundle = loaded.lazy or loaded.bundle
    for parts, source in loaded.parts:
        found = [examples(getattr(bundle, part)) for part in parts]
        if max(source.values()) == 1:  # no example twice in the source: no two splits share one
            for i, a in enumerate(found):
                for part, b in zip(parts[i + 1 :], found[i + 1 :], strict=True):
                    assert not a & b, f"{parts[i]} and {part} share {sum((a & b).values())}"
        total = sum(found, Counter[bytes]())
        extra, lost = sum((total - source).values()), sum((source - total).values())
        assert (extra, lost) == (0, 0), f"{parts}: {extra} not from the source, {lost} lost"


def test_loading_twice_gives_the_same_splits_in_the_same_order(loaded: Loaded) -> None:
    """Two loads: equal specs, identical tensors; two lazy loads: equal file lists and
    labels, and decoded, the eager load's tensors."""
    assert loaded.again.spec == loaded.bundle.spec
    for part in SPLITS:
        a, b = split_of(loaded.bundle, part), split_of(loaded.again, part)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), part
    if loaded.lazy is None or loaded.lazy_again is None:
        return
    assert loaded.lazy.lazy and loaded.lazy.spec == loaded.bundle.spec
    decoded = loaded.lazy.decoded()
    for part in SPLITS:
        a, b = getattr(loaded.lazy, part), getattr(loaded.lazy_again, part)
        assert isinstance(a, FileSplit) and isinstance(b, FileSplit), part
        assert a.files == b.files and torch.equal(a.y, b.y), part
        eager, late = split_of(loaded.bundle, part), split_of(decoded, part)
        assert torch.equal(eager.x, late.x) and torch.equal(eager.y, late.y), part
