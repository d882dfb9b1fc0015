"""Datasets held in memory as uint8 tensors, and batched augmentation on the device.

``load_dataset(name, data_dir=..., val_size=..., download=...)`` returns a ``DataBundle``
(train / val / test ``Split`` s and a ``DataSpec``). Registered datasets:

* ``cifar10``, ``cifar100``: torchvision's CIFAR files under ``data_dir`` (downloaded only
  with ``download=True``); validation carved from the train set with a fixed seed
  (45,000 / 5,000 by default); the official test set is the test split.
* ``digits``: scikit-learn's bundled 8x8 digits (offline), scaled to 0..255; a fixed-seed
  60/20/20 split (1,077 / 360 / 360).
* ``synthetic``: class-dependent patterns plus noise, 10 classes, 3x32x32, offline.
* ``imagefolder``: ImageNet-layout trees ``data_dir/train/CLASS/...`` and
  ``data_dir/val/CLASS/...`` (and optionally ``data_dir/test/``) of JPEG/PNG (any mode, read
  as RGB) at their own resolution. Each image is decoded once, short side resized to
  ``img_size / 0.875`` (256 for 224; JPEGs decoded at reduced scale where that stays above
  it), and its central square is kept; training batches take a random-resized crop of it
  (scale 0.08..1, aspect 3/4..4/3) to ``img_size`` and flips, on the device; evaluation
  takes the centre ``img_size`` crop (the ImageNet convention: resize to img_size / 0.875,
  centre crop). With a ``test/`` folder the three folders are the three splits. Without
  one, ``val/`` is held out as the test split and the validation split is carved from
  ``train/`` with a fixed seed (10 % by default), so model selection never sees the test
  images. Class folders that differ between splits, an empty class folder and a split with
  no images are a ``ConfigError``; an unreadable image is skipped and counted (one warning
  per split).

Splits never depend on the trial seed. Models receive normalised float input from
``DeviceData``, which keeps a split on the device and yields augmented batches with batched
tensor ops only (random crop through an ``unfold`` window view, flips via ``torch.where``;
for ``DataSpec.crop == "resized"``, random-resized crops and flips through one
``affine_grid`` / ``grid_sample`` per batch, and a centre crop of ``eval_crop`` for
evaluation).
A split stored at another size than ``spec.img_size`` (CIFAR's 32x32 for a model at 224) stays
at its own size on the device and each batch is resized there, after augmentation (bilinear;
antialiased when shrinking), so memory does not grow with the image size.

A loader may take ``img_size`` (a keyword-only argument, like ``imagefolder``'s): then
``load_dataset(..., img_size=N)`` asks it to read its images at that size.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Protocol,
    Self,
    SupportsIndex,
    TypeVar,
    overload,
)

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rsst_tune.errors import ConfigError
from rsst_tune.registry import Registry

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "EVAL_CROP",
    "SPLIT_SEED",
    "DataBundle",
    "DataSpec",
    "DatasetLoader",
    "DeviceData",
    "FileList",
    "FileSplit",
    "Split",
    "channel_stats",
    "list_datasets",
    "load_dataset",
    "make_generator",
    "make_synthetic",
    "register_dataset",
    "split_off",
    "stored_size",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
"""Seed of every train/val(/test) split: fixed, independent of the trial seed."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CROPS = ("pad", "resized")
EVAL_CROP = 0.875
"""The ImageNet evaluation convention: resize to img_size / 0.875, centre crop img_size."""
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


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


ITER_CHUNK = 65536  # files a FileList decodes at a time while iterating


def _index_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned integer type that numbers ``n`` things (0 .. n - 1)."""
    for kind in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(kind).max + 1:
            return kind
    return np.uint64


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` read-only (a read-only view when it is writeable, so its owner keeps it)."""
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


class FileList(Sequence[Path]):
    """An immutable sequence of file paths (a ``FileSplit``'s files), stored compactly: the
    folders once (``dirs``, a tuple of ``Path``), and per file the index of its folder
    (``uint8``/``uint16``/``uint32``, the smallest that numbers the folders) and its
    ``os.fsencode``-d name in one fixed-width numpy bytes array (``S`` dtype). ImageNet's
    1.28 M training files take about 28 MB this way, where a tuple of ``Path`` s takes about
    400 MB; the arrays pickle as two buffers, and a process reading them touches no per-file
    Python object (so DataLoader workers that fork do not copy the list page by page).

    ``files[i]`` is the ``Path`` (``dirs[k] / name``, as built); ``encoded(i)`` its
    ``os.fsencode``; ``take(index)`` (positions: a tensor, an array or a list of ints) and
    slices are new ``FileList`` s sharing ``dirs``; ``==`` compares the paths, in order.
    ``from_paths(paths)`` builds one from any paths, ``concat(lists)`` joins several."""

    __slots__ = ("_dir_of", "_dirs", "_names", "_prefixes")

    def __init__(
        self,
        dirs: Sequence[Path],
        dir_of: np.ndarray[Any, Any],
        names: np.ndarray[Any, Any],
    ) -> None:
        """``dirs``: the folders; ``dir_of``: per file the index in ``dirs`` of its folder
        (unsigned integers); ``names``: per file its encoded name (bytes, ``S`` dtype)."""
        dir_of, names = np.asarray(dir_of), np.asarray(names)
        if dir_of.ndim != 1 or names.ndim != 1 or len(dir_of) != len(names):
            raise ValueError(
                f"FileList needs one folder index and one name per file, got {dir_of.shape} "
                f"and {names.shape}"
            )
        if names.dtype.kind != "S" or dir_of.dtype.kind != "u":
            raise ValueError(
                f"FileList needs unsigned folder indices and bytes names, got {dir_of.dtype} "
                f"and {names.dtype}"
            )
        self._dirs = tuple(Path(d) for d in dirs)
        if len(dir_of) and int(dir_of.max()) >= len(self._dirs):
            raise ValueError(f"FileList: a folder index is not below {len(self._dirs)}")
        self._dir_of, self._names = _frozen(dir_of), _frozen(names)
        # what a name is appended to for its encoded path: b"/data/train/cat/" ("." gives b"")
        self._prefixes = tuple(os.fsencode(d / "x")[:-1] for d in self._dirs)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> FileList:
        """The paths, in order, as a ``FileList`` (folders in order of first appearance)."""
        where: dict[str, int] = {}  # a folder as str(path.parent) ("" for "."), its index
        dir_of: list[int] = []
        names: list[bytes] = []
        for item in paths:
            # the normalised path split at its last separator: (parent, name) as Path has them
            folder, name = os.path.split(str(item if isinstance(item, Path) else Path(item)))
            dir_of.append(where.setdefault(folder, len(where)))
            names.append(os.fsencode(name))
        return cls(
            tuple(Path(folder) for folder in where),
            np.array(dir_of, dtype=_index_dtype(len(where))),
            np.array(names, dtype="S") if names else np.empty(0, dtype="S1"),
        )

    @classmethod
    def concat(cls, lists: Sequence[FileList]) -> FileList:
        """The files of ``lists``, one after the other, in one ``FileList``."""
        if len(lists) == 1:
            return lists[0]
        where: dict[Path, int] = {}
        for part in lists:
            for d in part.dirs:
                where.setdefault(d, len(where))
        kind = _index_dtype(len(where))
        dir_of = [
            np.array([where[d] for d in part.dirs], dtype=kind)[part._dir_of]
            if part.dirs
            else np.empty(0, dtype=kind)
            for part in lists
        ]
        names = [part._names for part in lists]
        return cls(
            tuple(where),
            np.concatenate(dir_of) if dir_of else np.empty(0, dtype=kind),
            np.concatenate(names) if names else np.empty(0, dtype="S1"),
        )

    @property
    def dirs(self) -> tuple[Path, ...]:
        """The folders the files are in (possibly more: a subset keeps its parent's)."""
        return self._dirs

    @property
    def nbytes(self) -> int:
        """Bytes of the per-file arrays (the folders, held once, not counted)."""
        return int(self._dir_of.nbytes + self._names.nbytes)

    def __len__(self) -> int:
        """Number of files."""
        return len(self._names)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> FileList: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Path | FileList:
        """The ``Path`` of file ``index`` (an ``IndexError`` out of range), or a slice's
        ``FileList``."""
        if isinstance(index, slice):
            return self._with(self._dir_of[index].copy(), self._names[index].copy())
        i = operator.index(index)
        name: bytes = self._names[i]
        return self._dirs[int(self._dir_of[i])] / os.fsdecode(name)

    def encoded(self, index: SupportsIndex) -> bytes:
        """``os.fsencode(self[index])``, without making the ``Path``."""
        i = operator.index(index)
        return self._prefixes[int(self._dir_of[i])] + bytes(self._names[i])

    def __iter__(self) -> Iterator[Path]:
        """The paths in order (decoded a chunk at a time)."""
        dirs = self._dirs
        return (dirs[k] / os.fsdecode(name) for k, name in self._rows())

    def take(self, index: Tensor | np.ndarray[Any, Any] | Sequence[int]) -> FileList:
        """The files at positions ``index`` (integers; negative ones count from the end), in
        that order, as a new ``FileList`` that shares the folders."""
        rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index)
        if rows.size == 0:
            rows = rows.astype(np.intp)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(
                f"FileList.take needs 1-D integer positions, got {rows.dtype} {rows.shape}"
            )
        return self._with(self._dir_of[rows], self._names[rows])

    def __eq__(self, other: object) -> bool:
        """Whether ``other`` is a ``FileList`` of the same paths in the same order."""
        if not isinstance(other, FileList):
            return NotImplemented
        if self is other:
            return True
        if len(self) != len(other):
            return False
        if self._dirs == other._dirs:
            return bool(
                np.array_equal(self._dir_of, other._dir_of)
                and np.array_equal(self._names, other._names)
            )
        return all(a == b for a, b in zip(self._encoded_iter(), other._encoded_iter()))

    def __hash__(self) -> int:
        """A hash of the length and the first and last paths (equal lists hash alike)."""
        ends = (self.encoded(0), self.encoded(-1)) if len(self) else ()
        return hash((len(self), *ends))

    def __repr__(self) -> str:
        """Short description: size, folders, first file."""
        first = f", first={self[0]}" if len(self) else ""
        return f"FileList(n={len(self)}, dirs={len(self._dirs)}{first})"

    def __reduce__(self) -> tuple[type[FileList], tuple[object, ...]]:
        """Pickled as its folders and its two arrays (one buffer each)."""
        return FileList, (self._dirs, self._dir_of, self._names)

    def _with(self, dir_of: np.ndarray[Any, Any], names: np.ndarray[Any, Any]) -> FileList:
        """A FileList of these rows that shares this one's folders."""
        out = FileList.__new__(FileList)
        out._dirs, out._prefixes = self._dirs, self._prefixes
        out._dir_of, out._names = _frozen(dir_of), _frozen(names)
        return out

    def _encoded_iter(self) -> Iterator[bytes]:
        prefixes = self._prefixes
        return (prefixes[k] + name for k, name in self._rows())

    def _rows(self) -> Iterator[tuple[int, bytes]]:
        """(folder index, encoded name) of every file in order, a chunk at a time."""
        for start in range(0, len(self), ITER_CHUNK):
            stop = start + ITER_CHUNK
            yield from zip(self._dir_of[start:stop].tolist(), self._names[start:stop].tolist())


@dataclass(frozen=True)
class FileSplit:
    """Images still on disk: ``files`` (a compact ``FileList``) with labels ``y`` (int64
    [N]), read at ``side`` (the stored size, ``stored_size(img_size)``) when decoded.
    ``decode()`` reads them into a ``Split``; ``StreamData`` (``rsst_tune.streaming``) reads
    them batch by batch instead. ``root`` and ``part`` name the split in messages."""

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


class DatasetLoader(Protocol):
    """A registered dataset: builds the bundle from a folder."""

    def __call__(self, *, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
        """Load the dataset."""
        ...


L = TypeVar("L", bound=DatasetLoader)

DATASETS: Registry[DatasetLoader] = Registry("dataset")


def register_dataset(name: str, *aliases: str, override: bool = False) -> Callable[[L], L]:
    """Decorator that registers a dataset loader under ``name`` (and ``aliases``)."""
    return DATASETS.register(name, *aliases, override=override)


def unregister_dataset(name: str) -> None:
    """Remove a dataset from the registry (for plugins and tests)."""
    DATASETS.unregister(name)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()


def takes_keyword(loader: Callable[..., object], name: str) -> bool:
    """Whether a dataset loader takes the keyword argument ``name`` (``img_size``, ``lazy``)."""
    try:
        return name in inspect.signature(loader).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def takes_img_size(loader: Callable[..., object]) -> bool:
    """Whether a dataset loader reads its images at an asked size (an ``img_size`` keyword)."""
    return takes_keyword(loader, "img_size")


def can_stream(name: str) -> bool:
    """Whether the registered dataset ``name`` can leave its images on disk (its loader takes
    ``lazy``), so that a trial may stream it (``data_placement="stream"``)."""
    return takes_keyword(DATASETS.get(name), "lazy")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path,
    val_size: int | None = None,
    download: bool = False,
    img_size: int | None = None,
    lazy: bool = False,
) -> DataBundle:
    """Load a registered dataset; ``val_size`` overrides its default validation size.

    ``img_size``: loaders that take it read their images at that size (``imagefolder``);
    the others keep their own size (``DeviceData`` resizes their batches).
    ``lazy``: loaders that take it leave the images on disk (``FileSplit`` s, for streaming
    or for decoding after a subset is chosen); the others load as usual."""
    loader = DATASETS.get(name)
    if val_size is not None and (isinstance(val_size, bool) or val_size < 1):
        raise ConfigError(f"val_size must be a positive integer, got {val_size!r}")
    if img_size is not None and (isinstance(img_size, bool) or img_size < 1):
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    kwargs: dict[str, object] = {}
    if img_size is not None and takes_img_size(loader):
        kwargs["img_size"] = img_size
    if lazy and takes_keyword(loader, "lazy"):
        kwargs["lazy"] = True
    bundle = loader(
        data_dir=Path(data_dir).expanduser(), val_size=val_size, download=download, **kwargs
    )
    logger.info(
        "dataset %s: train %d, val %d, test %d%s",
        name,
        len(bundle.train),
        len(bundle.val),
        len(bundle.test),
        " (on disk)" if bundle.lazy else "",
    )
    return bundle


# ----------------------------------------------------------------------------- helpers


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


def _nchw_uint8(data: object) -> Tensor:
    """A uint8 [N, H, W, C] array (as torchvision's CIFAR holds it) as a [N, C, H, W] tensor."""
    return torch.as_tensor(data, dtype=torch.uint8).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- CIFAR


def _cifar(*, data_dir: Path, val_size: int | None, download: bool, hundred: bool) -> DataBundle:
    """Load CIFAR-10/100 through torchvision and carve validation from the train set."""
    from torchvision import datasets

    base = datasets.CIFAR100 if hundred else datasets.CIFAR10
    title = "CIFAR-100" if hundred else "CIFAR-10"

    # torchvision checks the MD5 of every extracted file; trust files that are present
    # (the downloaded archive is still verified) so that copies in CIFAR's own format load.
    class _Present(base):  # type: ignore[valid-type,misc]
        train_list: ClassVar[list[list[str | None]]] = [[n, None] for n, _ in base.train_list]
        test_list: ClassVar[list[list[str | None]]] = [[n, None] for n, _ in base.test_list]
        meta: ClassVar[dict[str, str | None]] = {**base.meta, "md5": None}

    folder = data_dir / base.base_folder
    names = [n for n, _ in [*base.train_list, *base.test_list]] + [base.meta["filename"]]
    missing = [n for n in names if not (folder / n).is_file()]
    hint = "or use the offline dataset `digits`"
    if missing and not download:
        raise ConfigError(
            f"{title} not found under {folder}; pass --download on a machine that is online, {hint}"
        )
    try:
        train = _Present(root=str(data_dir), train=True, download=download)
        test = _Present(root=str(data_dir), train=False, download=False)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if missing:
            raise ConfigError(
                f"{title} not found under {folder} and the download failed ({first}); "
                f"pass --download on a machine that is online, {hint}"
            ) from err
        raise ConfigError(f"{title} under {folder} could not be read ({first}); {hint}") from err

    num_classes = 100 if hundred else 10
    splits = []
    for ds in (train, test):
        x = _nchw_uint8(ds.data)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        bad_labels = len(y) > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes)
        if x.shape[1:] != (3, 32, 32) or len(y) != len(x) or bad_labels:
            raise ConfigError(f"{title} files under {folder} are corrupt (shape {tuple(x.shape)})")
        splits.append(Split(x, y))
    train_split, val_split = split_off(splits[0], 5000 if val_size is None else val_size)
    spec = DataSpec(
        name="cifar100" if hundred else "cifar10",
        num_classes=num_classes,
        in_chans=3,
        img_size=32,
        mean=CIFAR100_MEAN if hundred else CIFAR10_MEAN,
        std=CIFAR100_STD if hundred else CIFAR10_STD,
        crop_padding=4,
        flip=True,
    )
    return DataBundle(spec, train_split, val_split, splits[1])


@register_dataset("cifar10")
def cifar10(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
    """CIFAR-10: 45k/5k/10k by default, crop padding 4, flips."""
    return _cifar(data_dir=data_dir, val_size=val_size, download=download, hundred=False)


@register_dataset("cifar100")
def cifar100(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
    """CIFAR-100: 45k/5k/10k by default, crop padding 4, flips."""
    return _cifar(data_dir=data_dir, val_size=val_size, download=download, hundred=True)


# ----------------------------------------------------------------------------- digits


@register_dataset("digits")
def digits(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
    """scikit-learn's bundled 8x8 digits: 1,077 / 360 / 360, ±1-pixel shifts, no flips.

    ``data_dir`` and ``download`` are ignored (the data ships with scikit-learn).
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float64).mul(255.0 / 16.0).round()
    x = x.to(torch.uint8).unsqueeze(1).contiguous()
    full = Split(x, torch.as_tensor(raw.target, dtype=torch.int64))
    n_test = math.ceil(0.2 * len(full))
    rest, test = split_off(full, n_test, what="test")
    train, val = split_off(rest, n_test if val_size is None else val_size, seed=SPLIT_SEED + 1)
    mean, std = channel_stats(train.x)
    # Short digits budgets train better unaugmented (about 96% test in 40 epochs; with ±1-pixel
    # shifts it takes about 100): `augment=True` in a trial config turns the shifts on.
    spec = DataSpec(
        "digits", 10, 1, 8, mean, std, crop_padding=1, flip=False, augment_default=False
    )
    return DataBundle(spec, train, val, test)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int = 32,
    sizes: tuple[int, int, int] = (2000, 500, 500),
    noise: float = 0.35,
    seed: int = SPLIT_SEED,
    name: str = "synthetic",
) -> DataBundle:
    """A learnable synthetic dataset: one smooth random pattern per class, plus noise.

    Each image is its class's pattern, shifted by up to 2 pixels, times a random contrast,
    plus Gaussian noise; everything comes from ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=gen)
    patterns = F.interpolate(
        coarse, size=(img_size, img_size), mode="bilinear", align_corners=False
    )
    patterns = F.pad((patterns - 0.5) * 2.0, (2, 2, 2, 2), mode="circular")  # about [-1, 1]
    windows = patterns.unfold(2, img_size, 1).unfold(3, img_size, 1)  # [K, C, 5, 5, H, W]
    splits = []
    for i, n in enumerate(sizes):  # one generator per split: sizes never change other splits
        g = torch.Generator().manual_seed(seed + 1 + i)
        y = torch.randint(0, num_classes, (n,), generator=g)
        dy, dx = torch.randint(0, 5, (2, n), generator=g)
        img = windows[y, :, dy, dx] * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
        img = img + noise * torch.randn(img.shape, generator=g)
        x = ((img * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        splits.append(Split(x.contiguous(), y))
    mean, std = channel_stats(splits[0].x)
    spec = DataSpec(name, num_classes, in_chans, img_size, mean, std, crop_padding=2, flip=True)
    return DataBundle(spec, *splits)


@register_dataset("synthetic")
def synthetic(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
    """Synthetic 10-class 3x32x32 data (2,000 / 500 / 500), offline; for smoke tests."""
    return make_synthetic(sizes=(2000, 500 if val_size is None else val_size, 500))


# ----------------------------------------------------------------------------- imagefolder

IMAGEFOLDER_SIZE = 32
"""The served size of an image folder when neither the config nor the model names one."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STATS_CHUNK = 256  # images per chunk of the channel statistics (bounded float64 memory)
STATS_SAMPLE = 2048  # training images the channel statistics are taken over, at most


def stored_size(img_size: int, eval_crop: float = EVAL_CROP) -> int:
    """The side an image folder keeps its images at for ``img_size``: img_size / eval_crop
    (256 for 224), so that evaluation's centre crop of ``img_size`` needs no resize."""
    return max(img_size, round(img_size / eval_crop))


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


def decode_image(path: Path, side: int, img_size: int) -> Tensor:
    """One image as uint8 [3, side, side]: RGB, short side resized to ``side`` (PIL bilinear,
    as torchvision's ``Resize``), the long side cropped so that a later centre crop of
    ``img_size`` is exactly torchvision's ``CenterCrop(img_size)`` of the resized image."""
    from PIL import Image

    with Image.open(path) as raw:
        new_w, new_h = resized_shape(*raw.size, side)
        raw.draft("RGB", (new_w, new_h))  # JPEG: decode at 1/2, 1/4, 1/8 scale if still >= size
        image = as_rgb(raw)
    if image.size != (new_w, new_h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = square_offset(new_w, side, img_size), square_offset(new_h, side, img_size)
    image = image.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def as_rgb(raw: PILImage) -> PILImage:
    """An opened PIL image as 8-bit RGB: 16-bit grey scaled by 1/257 (not clipped), every
    other mode converted by PIL."""
    from PIL import Image

    if raw.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.clip(np.asarray(raw, dtype=np.float64) / 257.0, 0, 255).round()
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    return raw.convert("RGB")


RRC_DRAWS = 23
"""Uniform numbers one random-resized crop takes: 10 scales, 10 aspect ratios, top, left,
flip."""


def rrc_box(w: int, h: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """(left, top, width, height) of torchvision's ``RandomResizedCrop`` of a w x h image
    from ``RRC_DRAWS`` uniform numbers in [0, 1): ten tries of a scale in 0.08..1 of the area
    and a log-uniform aspect ratio in 3/4..4/3; if none fits, the centre crop with the ratio
    clamped (torchvision's fallback)."""
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for t in range(10):
        area = (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[t]) * w * h
        ratio = math.exp(lo + (hi - lo) * u[10 + t])
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u[20] * (h - ch + 1)), int(u[21] * (w - cw + 1))
            return left, top, cw, ch
    if w / h < RRC_RATIO[0]:
        cw, ch = w, round(w / RRC_RATIO[0])
    elif w / h > RRC_RATIO[1]:
        cw, ch = round(h * RRC_RATIO[1]), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def decode_crop(path: Path, img_size: int, u: Sequence[float], flip: bool) -> Tensor:
    """One training image as uint8 [3, img_size, img_size]: torchvision's random-resized crop
    of the whole image (``rrc_box`` of the uniforms ``u``), resized bilinearly by PIL, and
    mirrored when ``flip`` and ``u[22] < 0.5``. A JPEG is decoded at 1/2, 1/4 or 1/8 scale
    when the crop still covers at least ``img_size`` pixels each way at that scale."""
    from PIL import Image

    with Image.open(path) as raw:
        w, h = raw.size
        left, top, cw, ch = rrc_box(w, h, u)
        raw.draft("RGB", (math.ceil(w * img_size / cw), math.ceil(h * img_size / ch)))
        sx, sy = raw.size[0] / w, raw.size[1] / h  # the scale the decoder chose
        image = as_rgb(raw)
    right, bottom = min((left + cw) * sx, image.size[0]), min((top + ch) * sy, image.size[1])
    box = (left * sx, top * sy, right, bottom)
    out = image.resize((img_size, img_size), Image.Resampling.BILINEAR, box=box)
    if flip and u[22] < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def resized_shape(w: int, h: int, side: int) -> tuple[int, int]:
    """(width, height) of a w x h image whose short side is resized to ``side``."""
    if w <= h:
        return side, max(side, int(side * h / w))
    return max(side, int(side * w / h)), side


def square_offset(length: int, side: int, img_size: int) -> int:
    """Where the ``side`` square starts along a resized side of ``length``: the centre crop of
    ``img_size`` (torchvision's rounding) minus the one from ``side``."""
    wanted = round((length - img_size) / 2.0) - round((side - img_size) / 2.0)
    return min(max(wanted, 0), length - side)


def describe_error(err: BaseException) -> str:
    """``Type: first line`` of an exception (160 characters at most), for skip messages."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


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
    bad = [i for i in range(n) if errors[i] is not None]
    kept = torch.arange(n)
    y = split.y
    if bad:
        first = f"{files[bad[0]]} ({errors[bad[0]]})"
        if len(bad) == n:
            raise ConfigError(
                f"no readable images in {split.root}/{split.part}: all {n} failed; first: {first}"
            )
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


def stats_sample(n: int, *, seed: int = SPLIT_SEED + 3) -> Tensor:
    """The training images (positions, sorted) the channel statistics are taken over: all
    of them up to ``STATS_SAMPLE``, else that many chosen with a fixed seed."""
    if n <= STATS_SAMPLE:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:STATS_SAMPLE].sort().values


def _chunked_channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
        mean, std = _chunked_channel_stats(read_files(train.subset(sample), warn=False)[0].x)
        splits: tuple[AnySplit, ...] = (train, val, test)
    else:
        train_x, kept = read_files(train)
        rows = torch.isin(kept, sample).nonzero().flatten()
        mean, std = _chunked_channel_stats(train_x.x[rows] if len(rows) else train_x.x)
        splits = (train_x, val.decode(), test.decode())
    spec = DataSpec(
        "imagefolder", len(classes), 3, size, mean, std, crop_padding=0, flip=True,
        crop="resized", eval_crop=EVAL_CROP,
    )  # fmt: skip
    return DataBundle(spec, *splits)


# ----------------------------------------------------------------------------- device data


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (for ``train_batches``)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


class BatchTransforms:
    """What happens to a uint8 batch on the device, whichever way it got there (``DeviceData``:
    resident; ``rsst_tune.streaming.StreamData``: read from disk): augmentation, the
    evaluation crop, normalisation, the resize to ``spec.img_size``.

    A subclass holds the examples: it gives ``__len__`` and the two iterators."""

    def __init__(
        self, spec: DataSpec, device: torch.device | str, *, channels_last: bool = False
    ) -> None:
        """Keep mean/std on ``device`` as [1, C, 1, 1].

        ``channels_last``: batches come out in channels-last memory format (CNNs on CUDA)."""
        self.spec = spec
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(
            1, -1, 1, 1
        )
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        """Number of examples."""
        raise NotImplementedError

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (normalised images, labels); randomness from ``generator``."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, normalised, without augmentation."""
        raise NotImplementedError

    def check_generator(self, generator: torch.Generator) -> None:
        """A ``ValueError`` when ``generator`` lives on another device type than the data."""
        if generator.device.type != self.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {self.device}; "
                "use make_generator(seed, device)"
            )

    def serve_train(self, xb: Tensor, generator: torch.Generator, augment: bool) -> Tensor:
        """A training batch of uint8 images as the model takes it: augmented (random-resized
        crops for ``spec.crop == "resized"``, else padded random crops and flips) when
        ``augment``, else the evaluation view."""
        if augment and self.spec.crop == "resized":
            return self.random_resized_crop(xb, generator)
        xb = self.augment(xb, generator) if augment else self.eval_view(xb)
        return self.to_model_input(xb)

    def serve_eval(self, xb: Tensor) -> Tensor:
        """An evaluation batch of uint8 images as the model takes it."""
        return self.to_model_input(self.eval_view(xb))

    def num_train_batches(self, batch_size: int) -> int:
        """Training batches per epoch: a last batch of a single image is dropped (BatchNorm
        cannot train on one sample); every other partial batch is kept."""
        return len(self) // batch_size + (1 if len(self) % batch_size > 1 else 0)

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch, the last partial one included."""
        return math.ceil(len(self) / batch_size)

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 images to float32, scaled to 0..1 and normalised with the spec's mean/std;
        channels-last memory when ``channels_last``, else contiguous (one conversion, whatever
        the layout of ``x``)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(torch.float32, memory_format=fmt).div_(255.0).sub_(self.mean).div_(self.std)

    def to_model_input(self, x: Tensor) -> Tensor:
        """uint8 images as the model takes them: normalised, at ``spec.img_size`` (bilinear
        resize on the device when the stored size differs; antialiased when shrinking), in
        channels-last memory format if asked."""
        out = self.normalise(x)
        size = self.spec.img_size
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if hw != (size, size):
            shrink = min(hw) > size
            out = F.interpolate(
                out, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def eval_view(self, x: Tensor) -> Tensor:
        """The centre ``spec.eval_crop`` of uint8 images (all of them when it is 1)."""
        if self.spec.eval_crop >= 1.0:
            return x
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * self.spec.eval_crop)), max(1, round(w * self.spec.eval_crop))
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        return x[..., top : top + ch, left : left + cw]

    def random_resized_crop(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 images to normalised float at ``spec.img_size``: per image a random crop of
        scale 0.08..1 of the area and aspect 3/4..4/3 (torchvision's ``RandomResizedCrop``:
        10 tries, else the whole image), resized bilinearly and, if ``spec.flip``, mirrored
        at random; one ``affine_grid`` + ``grid_sample`` for the batch."""
        n, c, h, w = x.shape
        size, dev = self.spec.img_size, self.device
        target = stored_size(size)
        if min(h, w) > 3 * target // 2:  # far larger than served: shrink first (antialiased)
            r = target / min(h, w)
            x = F.interpolate(
                self.normalise(x), size=(round(h * r), round(w * r)), mode="bilinear",
                align_corners=False, antialias=True,
            )  # fmt: skip
            h, w = x.shape[-2:]
        else:
            x = self.normalise(x)
        tries = 10
        lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
        scale = RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * torch.rand(
            n, tries, generator=generator, device=dev
        )
        ratio = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=generator, device=dev))
        area = scale * float(h * w)
        cw_all, ch_all = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        fits = (cw_all >= 1) & (cw_all <= w) & (ch_all >= 1) & (ch_all <= h)
        first = fits.int().argmax(dim=1, keepdim=True)
        found = fits.any(dim=1)
        cw = torch.where(found, cw_all.gather(1, first).squeeze(1), float(w))
        ch = torch.where(found, ch_all.gather(1, first).squeeze(1), float(h))
        top = (torch.rand(n, generator=generator, device=dev) * (h - ch + 1)).floor()
        left = (torch.rand(n, generator=generator, device=dev) * (w - cw + 1)).floor()
        sx = cw / w
        if self.spec.flip:
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
            sx = torch.where(flip, -sx, sx)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + cw) / w - 1
        theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
        grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random crop (padding ``spec.crop_padding``) and, if ``spec.flip``, random h-flips."""
        n, _, h, w = x.shape
        pad = self.spec.crop_padding
        if pad > 0:
            padded = F.pad(x, (pad, pad, pad, pad))
            # [N, C, 2p+1, 2p+1, H, W]: every crop position as a view, no copy.
            windows = padded.unfold(2, h, 1).unfold(3, w, 1)
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=self.device)
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=self.device)
            x = windows[torch.arange(n, device=self.device), :, dy, dx]
        if self.spec.flip:
            flip = torch.rand(n, generator=generator, device=self.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x


class DeviceData(BatchTransforms):
    """One split resident on a device, batched with tensor ops only (no DataLoader).

    Batches come out at ``spec.img_size``: a split stored at another size is resized on the
    device, one batch at a time, after augmentation."""

    def __init__(
        self,
        split: Split,
        spec: DataSpec,
        device: torch.device | str,
        *,
        channels_last: bool = False,
    ) -> None:
        """Copy ``split`` (still uint8) to ``device``; keep mean/std there as [1, C, 1, 1].

        ``channels_last``: batches come out in channels-last memory format (CNNs on CUDA)."""
        super().__init__(spec, device, channels_last=channels_last)
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    @property
    def stored_size(self) -> tuple[int, int]:
        """(height, width) of the images as held on the device."""
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (normalised images, labels); randomness from ``generator``."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.check_generator(generator)
        perm = torch.randperm(len(self), generator=generator, device=self.device)
        for start in range(0, self.num_train_batches(batch_size) * batch_size, batch_size):
            idx = perm[start : start + batch_size]
            yield self.serve_train(self.x[idx], generator, augment), self.y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, normalised, without augmentation (centre-cropped to
        ``spec.eval_crop``)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.serve_eval(self.x[start:stop]), self.y[start:stop]
