"""``imagefolder``: ImageNet-layout image folders, registered on import.

Trees ``data_dir/train/CLASS/...`` and ``data_dir/val/CLASS/...`` (and optionally
``data_dir/test/``) of JPEG/PNG (any mode, read as RGB) at their own resolution. Each image is
decoded once, short side resized to ``img_size / 0.875`` (256 for 224; JPEGs decoded at
reduced scale where that stays above it), and its central square is kept; training batches
take a random-resized crop of it (scale 0.08..1, aspect 3/4..4/3) to ``img_size`` and flips,
on the device; evaluation takes the centre ``img_size`` crop (the ImageNet convention: resize
to img_size / 0.875, centre crop). With a ``test/`` folder the three folders are the three
splits. Without one, ``val/`` is held out as the test split and the validation split is carved
from ``train/`` with a fixed seed (10 % by default), so model selection never sees the test
images. Class folders that differ between splits, an empty class folder and a split with no
images are a ``ConfigError``; an unreadable image is skipped and counted (one warning per
split). With ``lazy=True`` the splits stay on disk (``FileSplit`` s) for streaming.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from rsst_tune.data.decode import EVAL_CROP, stored_size
from rsst_tune.data.filelist import FileList
from rsst_tune.data.registry import register_dataset
from rsst_tune.data.types import (
    SPLIT_SEED,
    AnySplit,
    DataBundle,
    DataSpec,
    FileSplit,
    read_files,
    split_off,
)
from rsst_tune.errors import ConfigError

__all__ = [
    "IMAGEFOLDER_SIZE",
    "IMAGE_EXTENSIONS",
    "STATS_CHUNK",
    "STATS_SAMPLE",
    "chunked_channel_stats",
    "imagefolder",
    "stats_sample",
]

# the package's logger, as before the split into modules (log lines name rsst_tune.data)
logger = logging.getLogger("rsst_tune.data")

IMAGEFOLDER_SIZE = 32
"""The served size of an image folder when neither the config nor the model names one."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STATS_CHUNK = 256  # images per chunk of the channel statistics (bounded float64 memory)
STATS_SAMPLE = 2048  # training images the channel statistics are taken over, at most


def _image_files(folder: Path) -> FileList:
    """The image files under ``folder`` (recursively, following links, hidden ones skipped),
    sorted by path. (Their ``Path`` s live only while one class folder is listed.)"""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / f
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return FileList.from_paths(sorted(found))


def _scan_folder(root: Path) -> tuple[list[str], FileList, Tensor]:
    """(sorted class names, the files, their class indices (int64)) of ``root/CLASS/...``,
    class by class; a ``ConfigError`` when there are no class folders, no images at all, or
    an empty class folder."""
    kinds = ", ".join(IMAGE_EXTENSIONS)
    try:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name[:1] != ".")
    except OSError as err:
        raise ConfigError(f"cannot read image folder {root}: {err.strerror or err}") from err
    if not classes:
        raise ConfigError(f"no images in {root}/: expected one folder per class, {root}/CLASS/*")
    per_class = [_image_files(root / c) for c in classes]
    if not any(per_class):
        raise ConfigError(
            f"no images in {root}/ ({len(classes)} class folders; looked for {kinds})"
        )
    empty = [c for c, files in zip(classes, per_class, strict=True) if not files]
    if empty:
        raise ConfigError(
            f"empty class folder{'s' if len(empty) > 1 else ''} in {root}/: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} (no {kinds} files)"
        )
    counts = torch.tensor([len(files) for files in per_class], dtype=torch.int64)
    labels = torch.repeat_interleave(torch.arange(len(classes), dtype=torch.int64), counts)
    return classes, FileList.concat(per_class), labels


def _check_classes(root: Path, classes: list[str], train_classes: list[str]) -> None:
    """A one-line ``ConfigError`` naming the classes one split has and train/ lacks (and back)."""
    if classes == train_classes:
        return
    extra = sorted(set(classes) - set(train_classes))
    missing = sorted(set(train_classes) - set(classes))

    def names(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = [f"only in train/: {names(missing)}"] if missing else []
    parts += [f"only in {root.name}/: {names(extra)}"] if extra else []
    raise ConfigError(
        f"class folders of {root}/ differ from those of train/: {'; '.join(parts)}; every split "
        "needs the same class folders"
    )


def stats_sample(n: int, *, seed: int = SPLIT_SEED + 3) -> Tensor:
    """The training images (positions, sorted) the channel statistics are taken over: all
    of them up to ``STATS_SAMPLE``, else that many chosen with a fixed seed."""
    if n <= STATS_SAMPLE:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:STATS_SAMPLE].sort().values


def chunked_channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``channel_stats`` in chunks of images, so float64 memory stays bounded."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), STATS_CHUNK):
        chunk = x[start : start + STATS_CHUNK].transpose(0, 1).reshape(x.shape[1], -1).double()
        chunk /= 255.0
        total += chunk.sum(dim=1)
        squares += chunk.square().sum(dim=1)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares - count * mean.square()) / max(count - 1, 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().clamp_min(1e-6).tolist())


@register_dataset("imagefolder")
def imagefolder(
    *,
    data_dir: Path,
    val_size: int | None,
    download: bool,
    img_size: int | None = None,
    lazy: bool = False,
) -> DataBundle:
    """``data_dir/{train,val[,test]}/CLASS/*.jpg|png`` at their own resolution, decoded once
    at ``stored_size(img_size)`` (img_size defaults to 32); see the module doc.

    ``lazy``: the splits stay on disk (``FileSplit``); only the images of the channel
    statistics (at most ``STATS_SAMPLE``) are decoded. Splits are drawn from the file lists,
    so a lazy bundle decoded later holds exactly the images of an eager one."""
    size = IMAGEFOLDER_SIZE if img_size is None else img_size
    side = stored_size(size)
    for sub in ("train", "val"):
        if not (data_dir / sub).is_dir():
            raise ConfigError(
                f"image folder dataset needs {data_dir / sub}/ with one folder per class"
            )
    subs = ["train", "val"] + (["test"] if (data_dir / "test").is_dir() else [])
    scanned = {sub: _scan_folder(data_dir / sub) for sub in subs}  # every check before decoding
    classes = scanned["train"][0]
    for sub in subs[1:]:
        _check_classes(data_dir / sub, scanned[sub][0], classes)
    files = {
        sub: FileSplit(scanned[sub][1], scanned[sub][2], side, size, data_dir / sub) for sub in subs
    }
    train, val = files["train"], files["val"]
    if "test" in files:
        test = files["test"]
        if val_size is not None:
            logger.warning("imagefolder with test/: val_size ignored, val/ is the validation split")
    else:
        test = val
        n_val = val_size if val_size is not None else max(1, len(train) // 10)
        train, val = split_off(train, n_val)
        val = dataclasses.replace(val, part=" (validation part)")
    sample = stats_sample(len(train))
    if lazy:
        # whoever reads the split later reports its unreadable images
        mean, std = chunked_channel_stats(read_files(train.subset(sample), warn=False)[0].x)
        splits: tuple[AnySplit, ...] = (train, val, test)
    else:
        train_x, kept = read_files(train)
        rows = torch.isin(kept, sample).nonzero().flatten()
        mean, std = chunked_channel_stats(train_x.x[rows] if len(rows) else train_x.x)
        splits = (train_x, val.decode(), test.decode())
    spec = DataSpec(
        "imagefolder", len(classes), 3, size, mean, std, crop_padding=0, flip=True,
        crop="resized", eval_crop=EVAL_CROP,
    )  # fmt: skip
    return DataBundle(spec, *splits)
