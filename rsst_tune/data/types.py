"""What a dataset loader returns, and the splits' fixed-seed helpers.

A ``DataBundle`` holds a ``DataSpec`` (what a model and the augmentation need to know) and
three splits: ``Split`` (uint8 images and int64 labels in memory) or ``FileSplit`` (images
still on disk, a ``FileList`` with labels; ``read_files`` decodes one into a ``Split``).

Splits never depend on the trial seed: ``split_off`` and ``seeded_subset`` draw from
``SPLIT_SEED`` (plus a fixed offset per use), whatever the trial.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
from torch import Tensor

from rsst_tune.data.decode import decode_image, describe_error
from rsst_tune.data.filelist import FileList
from rsst_tune.errors import ConfigError

if TYPE_CHECKING:  # typing.Self is 3.11+
    from typing_extensions import Self

__all__ = [
    "CROPS",
    "SPLIT_SEED",
    "AnySplit",
    "DataBundle",
    "DataSpec",
    "FileSplit",
    "Split",
    "Subsettable",
    "channel_stats",
    "read_files",
    "seeded_subset",
    "split_off",
]

# the package's logger, as before the split into modules (log lines name rsst_tune.data)
logger = logging.getLogger("rsst_tune.data")

SPLIT_SEED = 0
"""Seed of every train/val(/test) split: fixed, independent of the trial seed."""

CROPS = ("pad", "resized")


@dataclass(frozen=True)
class DataSpec:
    """What a model and the augmentation need to know about a dataset."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    augment_default: bool = True  # whether trials augment unless the config says otherwise
    # "pad": random crop after zero padding by crop_padding (CIFAR); "resized": a
    # random-resized crop (scale 0.08..1, aspect 3/4..4/3) to img_size (ImageNet)
    crop: str = "pad"
    eval_crop: float = 1.0  # fraction of the stored side centre-cropped for evaluation

    def __post_init__(self) -> None:
        """Check that mean/std have one entry per channel and the sizes are sane."""
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"dataset {self.name!r}: mean/std need {self.in_chans} entries each")
        if min(self.std) <= 0:
            raise ConfigError(f"dataset {self.name!r}: std must be positive, got {self.std}")
        if self.crop_padding < 0 or self.num_classes < 1 or self.img_size < 1:
            raise ConfigError(f"dataset {self.name!r}: invalid spec {self}")
        if self.crop not in CROPS or not 0.0 < self.eval_crop <= 1.0:
            raise ConfigError(
                f"dataset {self.name!r}: crop must be one of {CROPS} and eval_crop in (0, 1], "
                f"got {self.crop!r} and {self.eval_crop!r}"
            )


@dataclass(frozen=True)
class Split:
    """Images ``x`` (uint8 [N, C, H, W]) and labels ``y`` (int64 [N])."""

    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)

    def __post_init__(self) -> None:
        """Check dtypes and shapes."""
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be uint8 [N,C,H,W], got {self.x.dtype} {self.x.shape}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"Split.y must be int64 [N={self.x.shape[0]}], got {self.y.dtype} {self.y.shape}"
            )

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        """Short description: size and image shape."""
        return f"Split(n={len(self)}, shape={tuple(self.x.shape[1:])})"

    def subset(self, index: Tensor) -> Split:
        """The examples at ``index`` (a new Split, tensors copied)."""
        return Split(self.x[index].contiguous(), self.y[index].contiguous())


@dataclass(frozen=True)
class FileSplit:
    """Images still on disk: ``files`` (a compact ``FileList``) with labels ``y`` (int64
    [N]), read at ``side`` (the stored size, ``stored_size(img_size)``) when decoded.
    ``decode()`` reads them into a ``Split``; ``StreamData`` (``rsst_tune.data.streaming``)
    reads them batch by batch instead. ``root`` and ``part`` name the split in messages."""

    files: FileList = field(repr=False)  # any other sequence of paths is made a FileList
    y: Tensor = field(repr=False)
    side: int
    img_size: int
    root: Path  # the folder the files come from (`.../train`), for messages
    part: str = ""  # " (validation part)" for the part of a folder split off as validation

    def __post_init__(self) -> None:
        """Make ``files`` a ``FileList``; check that there is one label per file."""
        if not isinstance(self.files, FileList):  # a loader's own tuple or list of paths
            object.__setattr__(self, "files", FileList.from_paths(self.files))
        if self.y.dtype != torch.int64 or self.y.shape != (len(self.files),):
            raise ValueError(f"FileSplit.y must be int64 [N={len(self.files)}], got {self.y.shape}")

    def __len__(self) -> int:
        """Number of images."""
        return len(self.files)

    def __repr__(self) -> str:
        """Short description: size, folder and stored size."""
        return f"FileSplit(n={len(self)}, {self.root.name}/{self.part}, side={self.side})"

    @property
    def decoded_bytes(self) -> int:
        """Bytes the split takes decoded as a ``Split`` (uint8, 3 x side x side per image)."""
        return len(self) * 3 * self.side * self.side

    def subset(self, index: Tensor) -> FileSplit:
        """The images at ``index`` (a new FileSplit)."""
        return dataclasses.replace(self, files=self.files.take(index), y=self.y[index].contiguous())

    def decode(self) -> Split:
        """Every image decoded (threads); unreadable ones skipped and counted in one warning;
        a ``ConfigError`` when none is readable."""
        return read_files(self)[0]


AnySplit = Split | FileSplit


@dataclass(frozen=True)
class DataBundle:
    """A dataset's spec and its three splits: decoded (``Split``), or, from a loader asked
    for ``lazy`` splits, still on disk (``FileSplit``)."""

    spec: DataSpec
    train: AnySplit
    val: AnySplit
    test: AnySplit

    @property
    def lazy(self) -> bool:
        """Whether the splits are still on disk (``FileSplit``)."""
        return isinstance(self.train, FileSplit)

    def decoded(self) -> DataBundle:
        """The bundle with every ``FileSplit`` decoded into a ``Split``."""
        return DataBundle(self.spec, *(_decoded(s) for s in (self.train, self.val, self.test)))


def _decoded(split: AnySplit) -> Split:
    return split.decode() if isinstance(split, FileSplit) else split


def read_files(split: FileSplit, *, warn: bool = True) -> tuple[Split, Tensor]:
    """Decode ``split`` (threads: PIL releases the GIL) into one uint8 [N, 3, side, side]
    tensor; unreadable images are skipped and counted in one warning (a debug message when
    not ``warn``). Returns the split and the positions (in ``split.files``) of the images it
    holds."""
    files, side, n = split.files, split.side, len(split)
    x = torch.empty(n, 3, side, side, dtype=torch.uint8)
    errors: list[str | None] = [None] * n

    def work(i: int) -> None:
        try:
            x[i] = decode_image(files[i], side, split.img_size)
        except Exception as err:  # corrupt, truncated, not an image: skipped, counted
            errors[i] = describe_error(err)

    workers = max(1, min(8, torch.get_num_threads(), n))
    where = f"{split.root.name}/{split.part}"
    logger.info("imagefolder: decoding %d images of %s at %dx%d", n, where, side, side)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(n)):
            pass
    return without_unreadable(
        x, split.y, errors, files.__getitem__, where, f"{split.root}/{split.part}", warn=warn
    )


def without_unreadable(
    x: Tensor,
    y: Tensor,
    errors: Sequence[str | None],
    name: Callable[[int], object],
    where: str,
    where_full: str,
    *,
    warn: bool = True,
) -> tuple[Split, Tensor]:
    """The decoded images whose `errors` entry is None, and their positions; the others are
    counted in one warning (a debug message when not `warn`) naming the first (`name(i)`).
    None readable is a one-line ConfigError naming `where_full`."""
    n = len(errors)
    bad = [i for i in range(n) if errors[i] is not None]
    kept = torch.arange(n)
    if bad:
        first = f"{name(bad[0])} ({errors[bad[0]]})"
        if len(bad) == n:
            raise ConfigError(f"no readable images in {where_full}: all {n} failed; first: {first}")
        logger.log(
            logging.WARNING if warn else logging.DEBUG,
            "skipped %d unreadable image%s in %s: first: %s",
            len(bad),
            "s" if len(bad) > 1 else "",
            where,
            first,
        )
        keep = torch.ones(n, dtype=torch.bool)
        keep[bad] = False
        x, y, kept = x[keep], y[keep], kept[keep]
    return Split(x, y), kept


class Subsettable(Protocol):
    """A split that can be cut: ``Split`` or ``FileSplit``."""

    def __len__(self) -> int: ...

    def subset(self, index: Tensor) -> Self:
        """The examples at ``index``."""
        ...


SplitT = TypeVar("SplitT", bound=Subsettable)


def split_off(
    split: SplitT, n: int, *, seed: int = SPLIT_SEED, what: str = "validation"
) -> tuple[SplitT, SplitT]:
    """Randomly split off ``n`` examples with a fixed seed: returns (rest, the n examples)."""
    if not 0 < n < len(split):
        raise ConfigError(f"{what} size must be between 1 and {len(split) - 1}, got {n}")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[n:].sort().values), split.subset(perm[:n].sort().values)


def seeded_subset(split: SplitT, fraction: float, *, seed: int = SPLIT_SEED + 2) -> SplitT:
    """``ceil(fraction * N)`` examples of ``split`` chosen with a fixed seed (independent of
    the trial seed, so every trial of a sweep trains on the same subset), in their order."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"train_subset must be in (0, 1], got {fraction!r}")
    if fraction == 1.0:
        return split
    n = max(1, math.ceil(fraction * len(split)))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:n].sort().values)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``x`` [N, C, H, W] on the 0..1 scale."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255.0
    std = flat.std(dim=1).clamp_min(1e-6)
    return tuple(flat.mean(dim=1).tolist()), tuple(std.tolist())
