"""``wds``: WebDataset tar shards (``KEY.jpg``/``KEY.png`` + ``KEY.cls``), registered on import.

``--dataset wds --data_dir 'shards/train-{000..099}.tar'``: the training shards are a pattern
(brace ranges and ``*`` globs expanded; several patterns joined by ``::``) or a folder, which
means ``FOLDER/*train*.tar``. Every brace-expanded name must exist; a pattern matching no file
is a ``ConfigError`` naming it (a sweep checks it before it starts and stores it absolute,
``absolute_pattern``). Each sample is an image member (``jpg``, ``jpeg``, ``png``,
``webp``, ``ppm``, ``bmp``; any mode, read as RGB) and a ``cls`` member (a decimal integer)
with the same key, WebDataset's convention (the key is the member name up to its first dot).

Splits (``docs/data.md``, "WebDataset shards"): the validation and test shards are siblings of
the training pattern, its file name with ``train`` replaced by ``val`` / ``test`` and each brace
group by ``*`` (``shards/train-{000..099}.tar``: ``shards/val-*.tar``, ``shards/test-*.tar``).
With ``val`` and ``test`` shards they are the three splits; with one of them it is the test
split and validation is carved from the training shards with a fixed seed (``val_size``, 10 %
by default), as ``imagefolder`` does without ``test/``; with neither, validation and test are
both carved from the training shards (10 % each). Classes: ``classes.txt`` (one name a line)
or ``classes.json`` (a list of names, or names to indices) beside the first training shard,
else the largest ``cls`` integer plus one.

At set-up every shard's tar headers are read once (``tarfile``: a header per member, seeking
past the data; the ``cls`` members are read), giving per sample its shard, the offset and size
of its image and its label (a ``ShardSplit``, a ``FileSplit`` whose ``files`` are
``SHARD.tar/MEMBER``). With ``data_placement`` ``device`` (``auto`` when the decoded splits
fit) every image is decoded once, as ``imagefolder`` does (``decode_image``: short side to
``img_size / 0.875``, central square). Streamed (``ShardData``), DataLoader workers read whole
shards front to back:

- **training**: one seed per epoch from the trial's generator orders the shards (a
  permutation), splits them by node (``rank::world_size``: ``torch.distributed`` or Ray
  Train's rank and world size when there is one, else one node) and by worker
  (``worker::workers``), and seeds each worker's generator, which shuffles its samples through
  a buffer of ``SHUFFLE_BUFFER`` and draws each image's random-resized crop and flip
  (``decode_crop``, ``rrc_box``: torchvision's ``RandomResizedCrop`` of the whole image, as
  streamed image folders). The workers' batches are merged in a fixed order (the DataLoader's
  round robin) and cut to ``batch_size`` again, so an epoch has exactly the batches of
  ``num_train_batches``. Same generator state, shards and number of workers: the same batches
  (a resumed state reads them again); another number of workers reads the same samples in
  another order;
- **evaluation** (and training without augmentation): the shards in order, each image's
  stored square centre-cropped (``decode_image``), bit for bit the decoded placement's pixels;
- **the workers of one DDP trial** (``shard(rank, world)``): worker r reads the shards
  ``r::world`` of the epoch's order, ``batch_size / world`` images a step, and every worker
  serves exactly ``len // batch_size`` steps (reading its shards again, in a new shuffle,
  when they run out first), so that no worker waits for another in an all-reduce; each
  evaluates the shards ``r::world`` of its split.

What comes from the ``webdataset`` package (the ``wds`` extra, ``pip install
'rsst-tune[wds]'``): ``webdataset.shardlists.expand_urls`` (brace expansion, ``::`` lists and
``WDS_`` variables, as every WebDataset tool reads a shard pattern) and
``webdataset.tariterators.base_plus_ext`` (how a member name splits into key and
extension). Its ``WebDataset`` pipeline is not used: its order comes from Python's ``random``
seeded per process and worker, not from the trial's torch generator, and it cannot leave out
held-out samples or read one image out of order (channel statistics, the decoded placement)
without reading whole shards; so the shards are indexed with ``tarfile`` and read by offset.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rsst_tune.data.batches import BatchTransforms, check_rank
from rsst_tune.data.decode import (
    EVAL_CROP,
    RRC_DRAWS,
    decode_crop,
    decode_image,
    describe_error,
    stored_size,
)
from rsst_tune.data.filelist import FileList
from rsst_tune.data.folders import IMAGEFOLDER_SIZE, chunked_channel_stats, stats_sample
from rsst_tune.data.registry import register_dataset
from rsst_tune.data.types import (
    SPLIT_SEED,
    DataBundle,
    DataSpec,
    FileSplit,
    Split,
    split_off,
    without_unreadable,
)
from rsst_tune.errors import ConfigError

__all__ = [
    "IMAGE_MEMBERS",
    "SHUFFLE_BUFFER",
    "ShardData",
    "ShardSplit",
    "absolute_pattern",
    "find_shards",
    "node_split",
    "read_shards",
    "sibling_pattern",
    "wds",
]

logger = logging.getLogger("rsst_tune.data")

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
"""Member extensions read as a sample's image (lower case; the first one a key has wins)."""
LABEL_MEMBER = "cls"
SHUFFLE_BUFFER = 1000
# DataLoader workers when --data_workers is left out: a constant, not the machine's cores,
# because the order of a streamed epoch depends on the number of workers (set it to the
# cores a trial has; each value gives its own, reproducible order)
DEFAULT_SHARD_WORKERS = 4
"""Samples each streaming worker shuffles through (encoded: about 110 KB each for ImageNet)."""
PREFETCH = 4  # chunks each worker reads ahead
READ_CHUNK = 64  # images one thread decodes at a time for the decoded placement
INSTALL = "pip install 'rsst-tune[wds]'"
_GLOB = re.compile(r"[*?\[]")
_PATTERN = re.compile(r"[{*?\[]|\$\{")  # where a name's pattern part starts


def _webdataset() -> ModuleType:
    """The ``webdataset`` package, or a ``ConfigError`` that says how to install it."""
    try:
        for name in ("webdataset.shardlists", "webdataset.tariterators"):
            importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(
            f"dataset wds needs the webdataset package ({describe_error(err)}): {INSTALL}"
        ) from err
    return importlib.import_module("webdataset")


# ----------------------------------------------------------------------------- shard names


def _is_url(name: str) -> bool:
    return name.startswith("pipe:") or "://" in name


def find_shards(pattern: str) -> list[Path]:
    """The shard files of ``pattern`` (a folder: ``FOLDER/*train*.tar``), in pattern order
    (globs sorted), each once. A ``ConfigError`` when nothing matches, naming the pattern, or
    when a brace-expanded name is missing."""
    pattern = _train_pattern(pattern)
    wds_mod = _webdataset()
    names: list[str] = wds_mod.shardlists.expand_urls(pattern)
    found: list[Path] = []
    missing: list[str] = []
    for name in names:
        if _is_url(name):
            raise ConfigError(
                f"wds reads shards from files (a local or shared path), not {name!r} of {pattern}"
            )
        path = Path(name).expanduser()
        if _GLOB.search(name):
            found.extend(Path(p) for p in sorted(glob.glob(str(path))) if Path(p).is_file())
        elif path.is_file():
            found.append(path)
        else:
            missing.append(name)
    if not found:
        raise ConfigError(f"no shard matches {pattern} (expected tar files such as train-000.tar)")
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(names)} shards named by {pattern} are missing: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    return list(dict.fromkeys(found))


def absolute_pattern(pattern: str) -> str:
    """``pattern`` made absolute ``::`` item by item, its braces, globs and ``${VAR}`` kept:
    the folders before an item's first brace, glob or variable resolved from the current
    directory (``~`` expanded), the rest as written (``shards/train-{000..099}.tar``:
    ``/CWD/shards/train-{000..099}.tar``); an item that starts with one stays as it is when
    every name it expands to is absolute, else is taken from the current directory. A folder
    or a file is resolved like any path; URLs are left to ``find_shards`` to refuse. What a
    sweep stores, so that its trials read the same shards from any directory."""
    items = []
    for item in pattern.split("::"):
        item = os.path.expanduser(item)
        at = _PATTERN.search(item)
        if not item or _is_url(item):
            items.append(item)
        elif at is None:
            items.append(str(Path(item).resolve()))
        elif (cut := item.rfind("/", 0, at.start())) >= 0:
            items.append(os.path.join(Path(item[:cut] or "/").resolve(), item[cut + 1 :]))
        elif all(os.path.isabs(n) for n in _webdataset().shardlists.expand_urls(item)):
            items.append(item)
        else:
            items.append(os.path.join(Path.cwd(), item))
    return "::".join(items)


def _train_pattern(pattern: str) -> str:
    """``pattern``, or for a folder ``FOLDER/*train*.tar``."""
    path = Path(pattern).expanduser()
    return str(path / "*train*.tar") if path.is_dir() else pattern


def sibling_pattern(pattern: str, part: str) -> str | None:
    """The ``part`` (``val``, ``test``) shards beside the training pattern: each ``::`` item's
    file name with its last ``train`` replaced by ``part`` and each brace group by ``*``
    (``shards/train-{000..099}.tar``: ``shards/val-*.tar``); None when no name holds
    ``train``."""
    items = []
    for item in _train_pattern(pattern).split("::"):
        folder, name = item.rpartition("/")[0], item.rpartition("/")[2]
        if "train" not in name:
            return None
        at = name.rfind("train")
        name = re.sub(r"\{[^}]*\}", "*", name[:at] + part + name[at + len("train") :])
        items.append(f"{folder}/{name}" if folder else name)
    return "::".join(items)


def _check_disjoint(pattern: str, parts: Mapping[str, list[Path]]) -> None:
    """A shard in two splits (a sibling pattern that also matches training shards, e.g.
    ``{train,extra}-*.tar`` or ``trainval-*.tar``) would put training images into validation
    or test: a one-line ConfigError naming it."""
    seen: dict[Path, str] = {}
    for part, shards in parts.items():
        for shard in shards:
            key = shard.resolve()
            if key in seen:
                raise ConfigError(
                    f"shard {shard} of {pattern} would be in both {seen[key]} and {part}: "
                    "name the training shards so that replacing 'train' by 'val'/'test' in "
                    "their names matches only other files (e.g. train-{000..099}.tar beside "
                    "val-*.tar)"
                )
            seen[key] = part


def _siblings(pattern: str, part: str) -> list[Path]:
    """The shards of ``sibling_pattern(pattern, part)`` (none when nothing matches)."""
    sibling = sibling_pattern(pattern, part)
    if sibling is None:
        return []
    try:
        return find_shards(sibling)
    except ConfigError:
        return []


# ----------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class _Index:
    """One shard's samples, in tar order: image member names, offsets, sizes, labels."""

    names: list[bytes]
    offsets: list[int]
    sizes: list[int]
    labels: list[int]
    unpaired: int  # images without a label and labels without an image


def _scan(path: Path) -> _Index:
    """Read the tar headers of one shard (and its ``cls`` members)."""
    base_plus_ext: Callable[[str], tuple[str | None, str | None]] = (
        _webdataset().tariterators.base_plus_ext
    )
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    members = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                members += 1
                key, ext = base_plus_ext(member.name)
                if key is None or ext is None:
                    continue
                ext = ext.lower()
                if ext in IMAGE_MEMBERS:
                    images.setdefault(key, (member.name, member.offset_data, member.size))
                elif ext == LABEL_MEMBER:
                    handle = tar.extractfile(member)
                    text = handle.read() if handle is not None else b""
                    try:
                        labels[key] = int(text.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError):
                        raise ConfigError(
                            f"shard {path}: {member.name} is not an integer class ({text[:20]!r})"
                        ) from None
    except (tarfile.TarError, OSError) as err:
        raise ConfigError(f"cannot read shard {path}: {describe_error(err)}") from err
    keys = [k for k in images if k in labels]
    if not keys:
        raise ConfigError(
            f"shard {path} has no image/label pair ({members} files; a sample is KEY.jpg or "
            f"KEY.png with KEY.cls)"
        )
    bad = [labels[k] for k in keys if labels[k] < 0]
    if bad:
        raise ConfigError(f"shard {path}: class {bad[0]} is negative")
    return _Index(
        [images[k][0].encode() for k in keys],
        [images[k][1] for k in keys],
        [images[k][2] for k in keys],
        [labels[k] for k in keys],
        len(images) + len(labels) - 2 * len(keys),
    )


def _index_shards(shards: Sequence[Path]) -> list[_Index]:
    """Every shard's index (threads: the headers are small reads, many on a network)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(shards)))) as pool:
        return list(pool.map(_scan, shards))


def _rows_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    return np.uint16 if n <= 2**16 else np.uint32


def _no_rows() -> Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class ShardSplit(FileSplit):
    """Samples in tar shards: a ``FileSplit`` whose ``files`` are ``SHARD.tar/MEMBER`` (the
    folders of its ``FileList`` are the shards), with each image's shard (an index into
    ``files.dirs``), byte offset and size. ``decode()`` reads them into a ``Split``;
    ``streamed(...)`` serves them shard by shard (``ShardData``)."""

    shard: Tensor = field(default_factory=_no_rows, repr=False)  # int64 [N]
    offset: Tensor = field(default_factory=_no_rows, repr=False)  # int64 [N]
    size: Tensor = field(default_factory=_no_rows, repr=False)  # int64 [N]

    def __post_init__(self) -> None:
        """Check that there is one shard, offset and size per sample."""
        super().__post_init__()
        for name in ("shard", "offset", "size"):
            if getattr(self, name).shape != (len(self.files),):
                raise ValueError(f"ShardSplit.{name} needs one entry per sample")

    def __repr__(self) -> str:
        """Short description: size, pattern, shards and stored size."""
        return (
            f"ShardSplit(n={len(self)}, {self.root.name}{self.part}, "
            f"shards={len(self.files.dirs)}, side={self.side})"
        )

    def subset(self, index: Tensor) -> ShardSplit:
        """The samples at ``index`` (a new ShardSplit)."""
        return dataclasses.replace(
            self,
            files=self.files.take(index),
            y=self.y[index].contiguous(),
            shard=self.shard[index].contiguous(),
            offset=self.offset[index].contiguous(),
            size=self.size[index].contiguous(),
        )

    def decode(self) -> Split:
        """Every image decoded (threads); unreadable ones skipped and counted in one warning;
        a ``ConfigError`` when none is readable."""
        return read_shards(self)[0]

    def streamed(
        self,
        spec: DataSpec,
        device: torch.device | str,
        *,
        channels_last: bool = False,
        workers: int | None = None,
    ) -> ShardData:
        """The split served from its shards (``ShardData``), for ``data_placement`` stream."""
        return ShardData(self, spec, device, channels_last=channels_last, workers=workers)


def _make_split(
    shards: Sequence[Path], indices: Sequence[_Index], side: int, img_size: int, root: str
) -> ShardSplit:
    """One ``ShardSplit`` of the samples of ``shards`` (their ``indices``), in shard order."""
    counts = [len(ix.names) for ix in indices]
    names = [name for ix in indices for name in ix.names]
    dir_of = np.repeat(np.arange(len(shards)), counts).astype(_rows_dtype(len(shards)))
    files = FileList(tuple(shards), dir_of, np.array(names, dtype="S"))

    def flat(pick: Callable[[_Index], list[int]]) -> Tensor:
        return torch.tensor([v for ix in indices for v in pick(ix)], dtype=torch.int64)

    return ShardSplit(
        files,
        flat(lambda ix: ix.labels),
        side,
        img_size,
        Path(root),
        shard=torch.repeat_interleave(torch.arange(len(shards)), torch.tensor(counts)),
        offset=flat(lambda ix: ix.offsets),
        size=flat(lambda ix: ix.sizes),
    )


# ----------------------------------------------------------------------------- reading


def _member(handle: BinaryIO, offset: int, size: int) -> BinaryIO:
    """One member's bytes, as a file PIL opens (``decode_image`` / ``decode_crop``)."""
    handle.seek(offset)
    return io.BytesIO(handle.read(size))


def _as_path(image: BinaryIO) -> Path:
    # decode_image and decode_crop hand their argument to PIL's Image.open, which takes a
    # file object as well as a path; their annotation names only Path
    return cast(Path, image)


def _by_shard(split: ShardSplit, rows: np.ndarray[Any, Any]) -> list[tuple[int, list[int]]]:
    """``rows`` of ``split`` grouped by shard (shards in index order), each group in offset
    order: reading a group is one pass front to back through its shard."""
    shard = split.shard.numpy()[rows]
    offset = split.offset.numpy()[rows]
    order = np.lexsort((offset, shard))
    rows, shard = rows[order], shard[order]
    cuts = np.flatnonzero(np.diff(shard)) + 1
    return [
        (int(part[0]), group.tolist())
        for part, group in zip(np.split(shard, cuts), np.split(rows, cuts), strict=True)
        if len(group)
    ]


def read_shards(split: ShardSplit, *, warn: bool = True) -> tuple[Split, Tensor]:
    """Decode ``split`` (threads) into one uint8 [N, 3, side, side] tensor, each image by
    ``decode_image``; unreadable ones are skipped and counted in one warning (a debug message
    when not ``warn``). Returns the split and the positions of the images it holds."""
    n, side = len(split), split.side
    x = torch.empty(n, 3, side, side, dtype=torch.uint8)
    errors: list[str | None] = [None] * n
    tasks = [
        (s, rows[start : start + READ_CHUNK])
        for s, rows in _by_shard(split, np.arange(n))
        for start in range(0, len(rows), READ_CHUNK)
    ]

    def work(task: tuple[int, list[int]]) -> None:
        s, rows = task
        try:
            handle = open(split.files.dirs[s], "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            for i in rows:
                errors[i] = describe_error(err)
            return
        with handle:
            for i in rows:
                try:
                    image = _member(handle, int(split.offset[i]), int(split.size[i]))
                    x[i] = decode_image(_as_path(image), side, split.img_size)
                except Exception as err:  # corrupt, truncated, not an image: skipped, counted
                    errors[i] = describe_error(err)

    where = f"{split.root.name}{split.part}"
    logger.info("wds: decoding %d images of %s at %dx%d", n, where, side, side)
    with ThreadPoolExecutor(max_workers=max(1, min(8, torch.get_num_threads(), n))) as pool:
        for _ in pool.map(work, tasks):
            pass
    return without_unreadable(x, split.y, errors, split.files.__getitem__, where, where, warn=warn)


# ----------------------------------------------------------------------------- the dataset


def _classes(folder: Path) -> int | None:
    """The number of classes named by ``classes.txt`` or ``classes.json`` in ``folder``."""
    txt, js = folder / "classes.txt", folder / "classes.json"
    try:
        if txt.is_file():
            return len([line for line in txt.read_text().splitlines() if line.strip()])
        if js.is_file():
            names = json.loads(js.read_text())
            if isinstance(names, dict):
                return max(int(v) for v in names.values()) + 1 if names else 0
            if isinstance(names, list):
                return len(names)
            raise ConfigError(f"{js} must hold a list of class names or names to indices")
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read the classes beside the shards: {err}") from err
    return None


@register_dataset("wds", "webdataset")
def wds(
    *,
    data_dir: Path,
    val_size: int | None,
    download: bool,
    img_size: int | None = None,
    lazy: bool = False,
) -> DataBundle:
    """WebDataset tar shards: ``data_dir`` is the training pattern (or a folder); see the
    module doc for the validation and test shards, the classes and the reading.

    ``lazy``: the splits stay in their shards (``ShardSplit``); only the images of the channel
    statistics (at most ``STATS_SAMPLE``) are decoded. A lazy bundle decoded later holds
    exactly the images of an eager one."""
    pattern = str(data_dir)
    size = IMAGEFOLDER_SIZE if img_size is None else img_size
    side = stored_size(size)
    if download:
        logger.info("wds: download ignored (shards are read where they are)")
    train_shards = find_shards(pattern)
    parts = {"train": train_shards}
    parts.update({p: found for p in ("val", "test") if (found := _siblings(pattern, p))})
    _check_disjoint(pattern, parts)
    indices = {p: _index_shards(shards) for p, shards in parts.items()}
    unpaired = sum(ix.unpaired for part in indices.values() for ix in part)
    if unpaired:
        logger.warning("wds: %d members without their image or cls skipped", unpaired)
    named = _classes(train_shards[0].parent)
    top = max(max(ix.labels) for part in indices.values() for ix in part)
    if named is not None and top >= named:
        raise ConfigError(
            f"class {top} in the shards of {pattern}, but the classes file beside them names "
            f"{named} (classes 0..{named - 1})"
        )
    num_classes = named if named is not None else top + 1
    patterns = {"train": _train_pattern(pattern)}
    patterns.update({p: sibling_pattern(pattern, p) or p for p in parts if p != "train"})
    splits = {
        p: _make_split(parts[p], indices[p], side, size, patterns[p].split("::")[0]) for p in parts
    }
    train = splits["train"]
    n_val = val_size if val_size is not None else max(1, len(train) // 10)
    if "val" in splits and "test" in splits:
        val, test = splits["val"], splits["test"]
        if val_size is not None:
            logger.warning("wds with val and test shards: val_size ignored")
    else:
        if "val" in splits or "test" in splits:
            test = splits["test"] if "test" in splits else splits["val"]
        else:
            train, test = split_off(
                train, max(1, len(train) // 10), seed=SPLIT_SEED + 5, what="test"
            )
            test = dataclasses.replace(test, part=" (test part)")
        train, val = split_off(train, n_val)
        val = dataclasses.replace(val, part=" (validation part)")
    sample = stats_sample(len(train))
    if lazy:
        mean, std = chunked_channel_stats(read_shards(train.subset(sample), warn=False)[0].x)
        out: tuple[Split | ShardSplit, ...] = (train, val, test)
    else:
        train_x, kept = read_shards(train)
        rows = torch.isin(kept, sample).nonzero().flatten()
        mean, std = chunked_channel_stats(train_x.x[rows] if len(rows) else train_x.x)
        out = (train_x, val.decode(), test.decode())
    spec = DataSpec(
        "wds", num_classes, 3, size, mean, std, crop_padding=0, flip=True, crop="resized",
        eval_crop=EVAL_CROP,
    )  # fmt: skip
    return DataBundle(spec, *out)


# ----------------------------------------------------------------------------- streaming


def node_split(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size) of this node: the ones given, else ``torch.distributed``'s when it is
    initialised (as in a Ray Train worker), else (0, 1)."""
    if rank is not None or world_size is not None:
        world = 1 if world_size is None else world_size
        r = 0 if rank is None else rank
        if not 0 <= r < world:
            raise ConfigError(f"rank must be in [0, world_size={world}), got {r}")
        return r, world
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


@dataclass(frozen=True)
class _Chunk:
    """What a worker hands over: up to a batch of decoded images with their labels, and the
    samples it could not read (position in the split, reason)."""

    x: Tensor
    y: Tensor
    failed: list[tuple[int, str]]

    def pin_memory(self) -> _Chunk:
        """The chunk in page-locked memory (the loader's pin_memory)."""
        return dataclasses.replace(self, x=self.x.pin_memory(), y=self.y.pin_memory())


def _worker_seed(seed: int, worker: int) -> int:
    """A worker's generator seed from the epoch's seed (distinct per worker)."""
    return (seed * 6364136223846793005 + 1442695040888963407 * (worker + 1)) % 2**63


class _Pass(IterableDataset[_Chunk]):
    """One pass over some shards of a ``ShardSplit``: each worker reads its shards
    (``shards[worker::workers]``) front to back, shuffles through a buffer when ``seed`` is
    given, decodes (a random-resized crop when ``crop``, else the stored square) and yields
    chunks of ``chunk`` images."""

    def __init__(
        self,
        split: ShardSplit,
        groups: dict[int, list[int]],
        shards: list[int],
        *,
        seed: int | None,
        chunk: int,
        crop: bool,
        flip: bool,
        buffer: int,
    ) -> None:
        self.split, self.groups, self.shards = split, groups, shards
        self.seed, self.chunk, self.crop, self.flip, self.buffer = seed, chunk, crop, flip, buffer

    def __iter__(self) -> Iterator[_Chunk]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        gen = None
        samples: Iterator[tuple[int, BinaryIO | str]] = self._samples(self.shards[worker::workers])
        if self.seed is not None:
            gen = torch.Generator().manual_seed(_worker_seed(self.seed, worker))
            samples = _shuffled(samples, self.buffer, gen)
        split = self.split
        images: list[Tensor] = []
        labels: list[int] = []
        failed: list[tuple[int, str]] = []
        for i, data in samples:
            draws = torch.rand(RRC_DRAWS, generator=gen).tolist() if self.crop else None
            try:
                if isinstance(data, str):
                    raise OSError(data)
                if draws is None:
                    image = decode_image(_as_path(data), split.side, split.img_size)
                else:
                    image = decode_crop(_as_path(data), split.img_size, draws, self.flip)
            except Exception as err:  # unreadable: left out, counted by the reader
                failed.append((i, describe_error(err)))
                continue
            images.append(image)
            labels.append(int(split.y[i]))
            if len(images) == self.chunk:
                yield _Chunk(torch.stack(images), torch.tensor(labels), failed)
                images, labels, failed = [], [], []
        if images or failed:
            size = split.img_size if self.crop else split.side
            x = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
            yield _Chunk(x, torch.tensor(labels, dtype=torch.int64), failed)

    def _samples(self, shards: Iterable[int]) -> Iterator[tuple[int, BinaryIO | str]]:
        """(position in the split, the image's bytes) of these shards, each front to back; a
        shard that cannot be opened gives its reason for each of its samples."""
        split = self.split
        for s in shards:
            rows = self.groups[s]
            try:
                handle = open(split.files.dirs[s], "rb")  # noqa: SIM115 - closed below
            except OSError as err:
                yield from ((i, describe_error(err)) for i in rows)
                continue
            with handle:
                for i in rows:
                    yield i, _member(handle, int(split.offset[i]), int(split.size[i]))


def _shuffled(
    items: Iterator[tuple[int, BinaryIO | str]], size: int, gen: torch.Generator
) -> Iterator[tuple[int, BinaryIO | str]]:
    """``items`` through a shuffle buffer of ``size`` (WebDataset's ``shuffle``): once full,
    each new item replaces one drawn at random, which is yielded; the rest at the end in a
    random order."""
    buf: list[tuple[int, BinaryIO | str]] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = int(torch.randint(size, (1,), generator=gen))
        yield buf[k]
        buf[k] = item
    for k in torch.randperm(len(buf), generator=gen).tolist():
        yield buf[k]


def _same(chunk: Any) -> Any:  # the loader's collate_fn: a worker's item is a whole chunk
    return chunk


class ShardData(BatchTransforms):
    """A ``ShardSplit`` read shard by shard by DataLoader workers (see the module doc)."""

    drops_unreadable = True

    def __init__(
        self,
        split: ShardSplit,
        spec: DataSpec,
        device: torch.device | str,
        *,
        channels_last: bool = False,
        workers: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        """``workers``: DataLoader worker processes, started for each pass (None: as
        ``StreamData``'s default; 0: read in this process). ``rank``/``world_size``: this
        node's share of the training shards (``node_split``)."""
        super().__init__(spec, device, channels_last=channels_last)
        if workers is None:  # the same on every machine: a resume anywhere reads the same
            workers = DEFAULT_SHARD_WORKERS
        if workers < 0 or shuffle_buffer < 1:
            raise ConfigError(
                f"workers must be >= 0 and shuffle_buffer >= 1, got {workers}, {shuffle_buffer}"
            )
        self.split, self.workers, self.buffer = split, workers, shuffle_buffer
        self.rank, self.world_size = node_split(rank, world_size)
        self._groups = dict(_by_shard(split, np.arange(len(split))))
        self._shards = sorted(self._groups)
        self._skipped: dict[int, str] = {}
        self._reported = 0
        self._whole: ShardData | None = None  # a worker's unsharded sibling (scoring)

    def __len__(self) -> int:
        """Number of samples of the split (all nodes)."""
        return len(self.split)

    def __repr__(self) -> str:
        """Short description."""
        return (
            f"ShardData({self.split!r}, workers={self.workers}, "
            f"node {self.rank} of {self.world_size}, device={self.device})"
        )

    @property
    def skipped(self) -> int:
        """Unreadable images found so far."""
        return len(self._skipped)

    def shard(self, rank: int, world: int) -> ShardData:
        """The split served to data-parallel worker ``rank`` of ``world`` (one trial under
        DDP; see the module doc): a reader of its own, with the same DataLoader workers."""
        check_rank(rank, world)
        view = self._reader(self.workers, rank, world)
        view.world = world
        return view

    def unsharded(self) -> ShardData:
        """The whole split (this object when it is not a worker's shard): for a shard, a
        reader of its own that reads in this process (the few scoring batches of a prune)."""
        if self.world == 1:
            return self
        if self._whole is None:
            self._whole = self._reader(0, 0, 1)
        return self._whole

    def _reader(self, workers: int, rank: int, world_size: int) -> ShardData:
        """Another reader of the same split: `workers` DataLoader processes, reading the
        shards of `rank` of `world_size`."""
        return ShardData(
            self.split, self.spec, self.device, channels_last=self.channels_last,
            workers=workers, rank=rank, world_size=world_size, shuffle_buffer=self.buffer,
        )  # fmt: skip

    def num_train_batches(self, batch_size: int) -> int:
        """Training batches per epoch on this node: exact on one node; with several, for an
        even share of the samples (each node reads whole shards). A worker's shard (DDP):
        the full global batches of the split, the same count on every worker."""
        if self.world > 1:
            return len(self) // batch_size
        n = math.ceil(len(self) / self.world_size)
        return n // batch_size + (1 if n % batch_size > 1 else 0)

    def epoch_shards(self, generator: torch.Generator) -> tuple[int, list[int]]:
        """The epoch's seed (one draw from ``generator``) and this node's shards in the
        epoch's order."""
        self.check_generator(generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device).item())
        order = torch.randperm(len(self._shards), generator=torch.Generator().manual_seed(seed))
        shards = [self._shards[k] for k in order.tolist()]
        return seed, shards[self.rank :: self.world_size]

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of this node's shards as (normalised images, labels); order and
        crops from ``generator`` (see the module doc)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        seed, shards = self.epoch_shards(generator)
        crops = augment and self.spec.crop == "resized"
        if self.world > 1:
            batches = self._worker_batches(seed, shards, batch_size, crops)
        else:
            one = _Pass(
                self.split, self._groups, shards, seed=seed, chunk=batch_size, crop=crops,
                flip=self.spec.flip, buffer=self.buffer,
            )  # fmt: skip
            batches = self._read(one, batch_size, last=2 if batch_size > 1 else 1)
        aug = self.rank_generator(generator, seed) if augment and not crops else generator
        for xb, yb in batches:
            yield (self.to_model_input(xb) if crops else self.serve_train(xb, aug, augment)), yb

    def _worker_batches(
        self, seed: int, shards: list[int], batch_size: int, crops: bool
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """A DDP worker's epoch: exactly ``num_train_batches(batch_size)`` full batches of
        its share of the global batch, from its shards; a worker whose shards run out first
        (shards differ in size) reads them again, in a new shuffle, until the count."""
        if len(self._shards) < self.world:
            raise ConfigError(
                f"{self.world} workers need at least {self.world} training shards (one each "
                f"at least), got {len(self._shards)} in {self.split.root}{self.split.part}"
            )
        local = batch_size // self.world
        count = self.num_train_batches(batch_size)
        served, again = 0, 0
        while served < count:
            one = _Pass(
                self.split, self._groups, shards, seed=_worker_seed(seed, 1000 + again),
                chunk=local, crop=crops, flip=self.spec.flip, buffer=self.buffer,
            )  # fmt: skip
            before = served
            for batch in self._read(one, local, last=local):
                yield batch
                served += 1
                if served == count:
                    break
            if served == before:
                raise ConfigError(
                    f"worker {self.rank} of {self.world}: no image of its shards of "
                    f"{self.split.root}{self.split.part} could be read (see the warnings above)"
                )
            again += 1

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every sample (all nodes), normalised, centre-cropped: the shards in order (in the
        split's order with one worker; with several, their chunks in turn)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        shards = self._shards if self.world == 1 else self._shards[self.rank :: self.world]
        one = _Pass(
            self.split, self._groups, shards, seed=None, chunk=batch_size, crop=False,
            flip=False, buffer=1,
        )  # fmt: skip
        for xb, yb in self._read(one, batch_size, last=1):
            yield self.serve_eval(xb), yb

    def _read(self, one: _Pass, batch_size: int, *, last: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The pass's chunks as batches of ``batch_size`` on the device, in a fixed order: a
        full chunk as it comes, partial ones (a worker's last) joined; a final batch of fewer
        than ``last`` images is dropped."""
        workers = min(self.workers, len(one.shards))
        loader: DataLoader[_Chunk] = DataLoader(
            one,
            batch_size=None,
            num_workers=workers,
            collate_fn=_same,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=PREFETCH if workers > 0 else None,
        )
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        held = 0
        for chunk in loader:
            for i, reason in chunk.failed:
                self._skipped.setdefault(i, reason)
            if len(chunk.y) == batch_size:
                yield self._to_device(chunk.x, chunk.y)
                continue
            xs.append(chunk.x)
            ys.append(chunk.y)
            held += len(chunk.y)
            if held >= batch_size:
                x, y = torch.cat(xs), torch.cat(ys)
                while len(y) >= batch_size:
                    yield self._to_device(x[:batch_size], y[:batch_size])
                    x, y = x[batch_size:], y[batch_size:]
                xs, ys, held = [x], [y], len(y)
        if held >= last:
            yield self._to_device(torch.cat(xs), torch.cat(ys))
        self._report_skipped()

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _report_skipped(self) -> None:
        """One warning when a pass found images no earlier pass had reported."""
        if len(self._skipped) <= self._reported:
            return
        first = min(self._skipped)
        n = len(self._skipped)
        logger.warning(
            "skipped %d unreadable image%s in %s%s (streamed): first: %s (%s)",
            n,
            "s" if n > 1 else "",
            self.split.root.name,
            self.split.part,
            self.split.files[first],
            self._skipped[first],
        )
        self._reported = n
