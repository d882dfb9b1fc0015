"""Image folders read from disk batch by batch, for data that does not fit in memory.

``StreamData(split, spec, device, workers=W)`` serves a ``FileSplit`` (images still on disk)
through the same interface as ``DeviceData``: ``train_batches(batch_size, generator,
augment)`` and ``eval_batches(batch_size)``. ``W`` DataLoader worker processes (persistent
between epochs) read and decode whole batches with PIL into uint8 tensors; normalisation
runs on the device, batched.

- Training with random-resized crops (image folders): each worker crops the whole image it
  decodes, by torchvision's ``RandomResizedCrop`` rules (``rrc_box``), resizes the crop to
  ``img_size`` (PIL bilinear) and flips it; a JPEG is decoded at 1/2, 1/4 or 1/8 scale when
  the crop still covers ``img_size`` at that scale. (Resident data crop the stored central
  square instead, on the device: the two placements do not give the same training pixels.)
- Evaluation, and training without augmentation: the stored square of ``decode_image``,
  centre-cropped on the device, bit for bit the resident batches (tested).
- On CUDA the workers only read the bytes of JPEGs, which are decoded on the GPU in one
  batched call (nvjpeg); the batch's crops (the ``rrc_box`` of each image, from the same
  uniforms as the workers', or the stored square's ``square_box``), resizes and flips then
  run there in a few batched calls for the whole batch (``rsst_tune.data.gpu_crops.
  crop_resize``: the crop regions gathered into one padded tensor per size group, resized
  by two matmuls with PIL's bilinear weights), with no kernel and no host sync per image.
  Other formats, and JPEGs the GPU decoder refuses (CMYK), are decoded with PIL (in the
  workers, or here for a refused JPEG). The GPU decoder rounds differently from PIL, and
  PIL decodes large JPEGs at reduced DCT scale before cropping, so the pixels differ
  slightly from a CPU run; the resize itself is PIL's within 1 grey level.

Order and crops come from the trial's generator: the permutation is drawn from it, then one
seed per epoch for a CPU generator that draws each batch's crops as the batch is asked for.
So a resumed state sees the same batches, and the host syncs twice an epoch, not per batch.

Memory: the epoch's order (8 bytes an image) and the file list (a ``FileList``: a folder
index and a fixed-width bytes name per image, about 22 bytes for ImageNet's names; numpy
arrays, handed to the workers whole) grow with the folder; the workers hold their prefetched
batches (``PREFETCH`` each), never the split.

``choose_placement(cfg_placement, bundle, device)`` resolves ``data_placement="auto"``:
``device`` when the decoded splits take at most ``AUTO_FRACTION`` of the device's memory (and
of the host's), else ``stream``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rsst_tune.config import PLACEMENTS
from rsst_tune.data.batches import BatchTransforms, check_rank, share_bounds
from rsst_tune.data.decode import (
    RRC_DRAWS,
    decode_crop,
    decode_image,
    describe_error,
    rrc_box,
    square_box,
)
from rsst_tune.data.gpu_crops import Box, crop_resize
from rsst_tune.data.types import DataBundle, DataSpec, FileSplit
from rsst_tune.errors import ConfigError
from rsst_tune.machine import available_cores, default_workers, host_memory

__all__ = [
    "AUTO_FRACTION",
    "PLACEMENTS",
    "StreamData",
    "choose_placement",
    "default_workers",
    "device_memory",
]

# its name before it moved into rsst_tune.data: log lines read as they did
log = logging.getLogger("rsst_tune.streaming")

AUTO_FRACTION = 0.25
"""``auto`` keeps the decoded splits on the device when they take at most this fraction of its
memory (and of the host's): the rest is for the model, activations and other trials."""
PREFETCH = 4  # batches each worker reads ahead
JPEG_SUFFIXES = (".jpg", ".jpeg")


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device`` (the host's physical memory for cpu and mps)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return host_memory()


def choose_placement(placement: str, bundle: DataBundle, device: torch.device) -> str:
    """``device`` or ``stream`` for a trial's ``data_placement`` and (lazy) bundle.

    A bundle already in memory is always served from the device; ``stream`` for such a
    dataset is a ``ConfigError`` (only datasets read from files stream)."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"data_placement must be one of {PLACEMENTS}, got {placement!r}")
    if not bundle.lazy:
        if placement == "stream":
            raise ConfigError(
                f"data_placement 'stream' needs a dataset read from files (imagefolder, or a "
                f"loader that takes `lazy`); {bundle.spec.name} is held in memory: use 'device' "
                "or 'auto'"
            )
        return "device"
    if placement != "auto":
        return placement
    need = sum(
        s.decoded_bytes for s in (bundle.train, bundle.val, bundle.test) if isinstance(s, FileSplit)
    )
    limits = [device_memory(device)] + ([host_memory()] if device.type == "cuda" else [])
    budget = AUTO_FRACTION * min(m for m in limits if m > 0) if any(limits) else 0.0
    chosen = "device" if need <= budget else "stream"
    log.info(
        "data placement auto: %s (decoded splits %.2f GB; %.0f%% of %s memory is %.2f GB)",
        chosen,
        need / 1e9,
        AUTO_FRACTION * 100,
        device.type,
        budget / 1e9,
    )
    return chosen


Item = tuple[int, tuple[float, ...] | None]
"""What the reader asks a worker for: an index in the split, and for an augmented training
image the ``RRC_DRAWS`` uniforms of its random-resized crop (None: the stored square)."""


@dataclass(frozen=True)
class _Batch:
    """What a worker hands over: decoded images, encoded JPEGs to decode on the device, the
    labels, and the files it could not read."""

    x: Tensor  # uint8 [k, 3, s, s], the decoded images in batch order
    decoded: list[int]  # positions in the batch of the rows of x
    encoded: list[Tensor]  # raw JPEG bytes (uint8 1-D), for the device's decoder
    encoded_at: list[int]  # their positions in the batch
    y: Tensor  # int64 [n]: every label of the batch, in order
    failed: list[tuple[int, str]]  # (position in the batch, reason)
    items: list[Item]  # what was asked for

    def pin_memory(self) -> _Batch:
        """The batch with its decoded images in page-locked memory (the loader's pin_memory)."""
        return dataclasses.replace(self, x=self.x.pin_memory())


class _Files(Dataset[_Batch]):
    """A ``FileSplit`` for a DataLoader whose items are whole batches (``__getitems__``)."""

    def __init__(self, split: FileSplit, encode_jpegs: bool, flip: bool) -> None:
        # the split's FileList: a few numpy arrays, not a tuple of objects (a worker reading a
        # Python object touches its reference count, which copies the page it lives on into
        # the worker, copy-on-write, so a tuple of paths would be copied into every worker)
        self.files = split.files
        self.labels = split.y
        self.side, self.img_size = split.side, split.img_size
        self.encode_jpegs = encode_jpegs  # hand JPEG bytes over instead of decoding them
        self.flip = flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> _Batch:  # pragma: no cover - the loader batches
        return self.__getitems__([(index, None)])

    def __getitems__(self, items: Sequence[Item]) -> _Batch:
        images: list[Tensor] = []
        decoded: list[int] = []
        encoded: list[Tensor] = []
        encoded_at: list[int] = []
        failed: list[tuple[int, str]] = []
        for pos, (i, draws) in enumerate(items):
            path = self.files[i]
            try:
                if self.encode_jpegs and path.suffix.lower() in JPEG_SUFFIXES:
                    encoded.append(_read_bytes(path))
                    encoded_at.append(pos)
                elif draws is None:
                    images.append(decode_image(path, self.side, self.img_size))
                    decoded.append(pos)
                else:
                    images.append(decode_crop(path, self.img_size, draws, self.flip))
                    decoded.append(pos)
            except Exception as err:  # unreadable: skipped in this batch, counted by the reader
                failed.append((pos, describe_error(err)))
        size = self.img_size if items and items[0][1] is not None else self.side
        x = _stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
        y = self.labels[[i for i, _ in items]]
        return _Batch(x, decoded, encoded, encoded_at, y, failed, list(items))


def _stack(images: list[Tensor]) -> Tensor:
    """[3, H, W] views of HWC images as one [N, 3, H, W] batch in channels-last memory (one
    contiguous copy: stacking the channel-first views costs many times more)."""
    hwc = np.stack([image.permute(1, 2, 0).numpy() for image in images])
    return torch.from_numpy(hwc).permute(0, 3, 1, 2)


def _read_bytes(path: Path) -> Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


class _Epoch:
    """The loader's batch sampler: the batches of the epoch being read, made one at a time
    (so memory stays that of the order, 8 bytes an image): the images of ``order`` (None:
    ``offset``, ``offset + 1``, ... in order) in batches, each training image with the
    uniforms of its crop from ``crops`` (a CPU generator seeded from the trial's generator
    once per epoch). With ``world`` > 1 each batch is the global one and this worker reads
    its slice ``rank`` of it (the uniforms are drawn for the whole batch, so every image gets
    the crop it gets in one process)."""

    def __init__(self) -> None:
        self.set(None, 0, 1, 0, None)

    def set(
        self,
        order: Tensor | None,
        n: int,
        batch_size: int,
        count: int,
        crops: torch.Generator | None,
        *,
        offset: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        """What the next iteration reads."""
        self.order, self.n, self.batch_size = order, n, batch_size
        self.count, self.crops = count, crops
        self.offset, self.rank, self.world = offset, rank, world

    def __iter__(self) -> Iterator[list[Item]]:
        for b in range(self.count):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.n)
            rows = (
                list(range(self.offset + start, self.offset + stop))
                if self.order is None
                else self.order[start:stop].tolist()
            )
            lo, hi = share_bounds(len(rows), self.rank, self.world)
            if self.crops is None:
                yield [(i, None) for i in rows[lo:hi]]
            else:
                draws = torch.rand(len(rows), RRC_DRAWS, generator=self.crops).tolist()
                yield [(i, tuple(d)) for i, d in zip(rows[lo:hi], draws[lo:hi], strict=True)]

    def __len__(self) -> int:
        return self.count


def _same(batch: Any) -> Any:  # the loader's collate_fn: a worker's item is a whole batch
    return batch


class StreamData(BatchTransforms):
    """A ``FileSplit`` read from disk batch by batch (see the module doc).

    ``shard(rank, world)`` serves one of several data-parallel workers: each reads only its
    slice of each global training batch (the same order and crops on every worker) and its
    contiguous part of an evaluation split."""

    drops_unreadable = True

    def __init__(
        self,
        split: FileSplit,
        spec: DataSpec,
        device: torch.device | str,
        *,
        channels_last: bool = False,
        workers: int | None = None,
        decode_on_device: bool | None = None,
    ) -> None:
        """``workers``: DataLoader worker processes (None: ``default_workers()``; 0: read in
        this process). ``decode_on_device``: decode JPEGs with torchvision on the device
        (default: on CUDA, where that is nvjpeg)."""
        super().__init__(spec, device, channels_last=channels_last)
        self.split = split
        self._asked_workers = workers
        self.workers = default_workers() if workers is None else workers
        if decode_on_device is None:
            decode_on_device = self.device.type == "cuda"
        self.decode_on_device = decode_on_device
        self._files = _Files(split, encode_jpegs=decode_on_device, flip=spec.flip)
        self._skipped: dict[int, str] = {}  # index in the split -> reason, over all epochs
        self._reported = 0
        self._epoch = _Epoch()
        self._loader: DataLoader[_Batch] | None = None
        self._whole: StreamData | None = None  # a shard's unsharded sibling (scoring)
        self._last: tuple[Tensor, Tensor] | None = None  # the last training batch served

    def close(self) -> None:
        """Let go of the DataLoader and its persistent worker processes (they stop when it
        is freed); the next read starts new ones."""
        self._loader = None

    def shard(self, rank: int, world: int) -> StreamData:
        """The same split served to worker ``rank`` of ``world`` (a new reader: its own
        DataLoader workers; left to the default, a share of this machine's cores)."""
        check_rank(rank, world)
        workers = self._asked_workers
        if workers is None:
            workers = max(0, min(self.workers, available_cores() // world - 1))
        view = self._reader(workers)
        view.rank, view.world = rank, world
        return view

    def unsharded(self) -> StreamData:
        """The whole split (this object when it is not a shard): for a shard, a reader of its
        own that decodes in this process (it serves the few scoring batches of a prune)."""
        if self.world == 1:
            return self
        if self._whole is None:
            self._whole = self._reader(0)
        return self._whole

    def _reader(self, workers: int) -> StreamData:
        """Another reader of the same split, with `workers` DataLoader processes."""
        return StreamData(
            self.split, self.spec, self.device, channels_last=self.channels_last,
            workers=workers, decode_on_device=self.decode_on_device,
        )  # fmt: skip

    def __len__(self) -> int:
        """Number of images (unreadable ones included: they are found while reading)."""
        return len(self.split)

    def __repr__(self) -> str:
        """Short description."""
        return f"StreamData({self.split!r}, workers={self.workers}, device={self.device})"

    @property
    def skipped(self) -> int:
        """Unreadable images found so far."""
        return len(self._skipped)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (normalised images, labels), read from disk. The order comes
        from ``generator`` as for ``DeviceData``; so do the crops: with random-resized crops
        (``spec.crop == "resized"``) each worker crops the whole image it decodes
        (torchvision's ``RandomResizedCrop``, uniforms from a generator seeded from
        ``generator`` once per epoch); otherwise the stored squares are augmented on the
        device as resident data are."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.check_generator(generator)
        n = len(self)
        order = torch.randperm(n, generator=generator, device=self.device).cpu()
        crops = augment and self.spec.crop == "resized"
        crop_gen = None
        if crops:
            seed = torch.randint(0, 2**62, (1,), generator=generator, device=self.device)
            crop_gen = torch.Generator().manual_seed(int(seed.item()))
        aug = self.rank_generator(generator) if augment and not crops else generator
        count = self.num_train_batches(batch_size)
        self._epoch.set(order, n, batch_size, count, crop_gen, rank=self.rank, world=self.world)
        for step, (xb, yb) in enumerate(self._read(keep_empty=self.world > 1)):
            if self.world > 1:  # every worker takes every step (DDP), whatever it could read
                xb, yb = self._in_step(xb, yb, min(2, self.local_share(batch_size, step)[0]))
            elif len(yb) < 2 and batch_size > 1:  # all but one unreadable: BatchNorm needs 2
                continue
            yield (self.to_model_input(xb) if crops else self.serve_train(xb, aug, augment)), yb

    def _in_step(self, xb: Tensor, yb: Tensor, least: int) -> tuple[Tensor, Tensor]:
        """A worker's slice of a training batch; when fewer than `least` of its images could
        be read (BatchNorm needs 2), the last slice it served again (the workers of a DDP
        trial must all take each step)."""
        if len(yb) >= least:
            self._last = (xb, yb)
            return xb, yb
        if self._last is None:
            raise ConfigError(
                f"worker {self.rank} of {self.world}: too few images of its slice of a "
                f"training batch of {self.split.root}/{self.split.part} could be read, and it "
                "has served none before to train on instead (see the warnings above)"
            )
        return self._last

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, normalised, centre-cropped, read from disk."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        lo, hi = self.eval_bounds()
        count = math.ceil((hi - lo) / batch_size)
        self._epoch.set(None, hi - lo, batch_size, count, None, offset=lo)
        for xb, yb in self._read():
            yield self.serve_eval(xb), yb

    # ------------------------------------------------------------------ reading
    def _read(self, *, keep_empty: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """uint8 batches on the device (unreadable images dropped) of the epoch set; a batch
        left with no image is skipped, or yielded empty with ``keep_empty``."""
        if self._loader is None:
            # one loader for the life of the data: its workers persist between epochs
            self._loader = DataLoader(
                self._files,
                batch_sampler=self._epoch,
                num_workers=self.workers,
                collate_fn=_same,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=PREFETCH if self.workers > 0 else None,
                persistent_workers=self.workers > 0,
            )
        for batch in self._loader:
            for pos, reason in batch.failed:
                self._skipped.setdefault(batch.items[pos][0], reason)
            xb, keep = self._assemble(batch)
            if not keep:
                if keep_empty:
                    yield xb[:0], batch.y[:0].to(self.device)
                continue
            yb = batch.y[keep] if len(keep) < len(batch.items) else batch.y
            yield xb, yb.to(self.device, non_blocking=True)
        self._report_skipped()

    def _assemble(self, batch: _Batch) -> tuple[Tensor, list[int]]:
        """The batch's images on the device in batch order, and the positions they hold."""
        if not batch.encoded:
            return batch.x.to(self.device, non_blocking=True), batch.decoded
        on_device, at = self._decode_jpegs(batch)
        if batch.decoded:
            from_workers = batch.x.to(self.device, non_blocking=True)
            on_device = from_workers if on_device is None else torch.cat([from_workers, on_device])
            at = batch.decoded + at
        if on_device is None:
            return batch.x.to(self.device), []
        keep = sorted(at)
        if at != keep:  # PNGs from the workers among device-decoded JPEGs: back in batch order
            rank = torch.tensor(sorted(range(len(at)), key=at.__getitem__))
            on_device = on_device.index_select(0, rank.to(self.device, non_blocking=True))
        return on_device, keep

    def _decode_jpegs(self, batch: _Batch) -> tuple[Tensor | None, list[int]]:
        """The batch's JPEGs as one uint8 batch on the device, and their positions in the
        batch: decoded in one call (nvjpeg on CUDA), then every crop and resize in a few
        batched calls (``crop_resize``: the stored square, or the random-resized crop of
        ``rrc_box`` mirrored as ``decode_crop`` mirrors). A JPEG the call cannot decode (a
        CMYK JPEG fails the whole call) is decoded with PIL here, and one PIL cannot read
        either is skipped. None when no image is left."""
        with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec, not installed
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

        try:
            images: list[Tensor | None] = list(
                decode_jpeg(batch.encoded, mode=ImageReadMode.RGB, device=self.device)
            )
        except RuntimeError:
            images = [None] * len(batch.encoded)
        split = self.split
        decoded: list[Tensor] = []
        boxes: list[Box] = []
        flips: list[bool] = []
        decoded_at: list[int] = []
        fallback: list[Tensor] = []
        fallback_at: list[int] = []
        for pos, image in zip(batch.encoded_at, images, strict=True):
            index, draws = batch.items[pos]
            if image is not None:  # only its box here: the pixels stay on the device
                h, w = int(image.shape[-2]), int(image.shape[-1])
                decoded.append(image)
                decoded_at.append(pos)
                if draws is None:
                    boxes.append(square_box(w, h, split.side, split.img_size))
                    flips.append(False)
                else:
                    boxes.append(rrc_box(w, h, draws))
                    flips.append(self.spec.flip and draws[22] < 0.5)
                continue
            path = split.files[index]
            try:
                fallback.append(
                    decode_image(path, split.side, split.img_size)
                    if draws is None
                    else decode_crop(path, split.img_size, draws, self.spec.flip)
                )
                fallback_at.append(pos)
            except Exception as err:
                self._skipped.setdefault(index, describe_error(err))
        size = split.img_size if batch.items[0][1] is not None else split.side
        parts = [crop_resize(decoded, boxes, size, flips)] if decoded else []
        if fallback:
            parts.append(_stack(fallback).to(self.device, non_blocking=True))
        if not parts:
            return None, []
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), decoded_at + fallback_at

    def _report_skipped(self) -> None:
        """One warning when an epoch found images no earlier epoch had reported."""
        if len(self._skipped) <= self._reported:
            return
        first = min(self._skipped)
        n = len(self._skipped)
        log.warning(
            "skipped %d unreadable image%s in %s/%s (streamed): first: %s (%s)",
            n,
            "s" if n > 1 else "",
            self.split.root.name,
            self.split.part,
            self.split.files[first],
            self._skipped[first],
        )
        self._reported = n
