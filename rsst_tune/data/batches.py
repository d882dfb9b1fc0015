"""Batches on the device: augmentation, evaluation crops and normalisation, batched.

Models receive normalised float input from ``DeviceData``, which keeps a split on the device
and yields augmented batches with batched tensor ops only (random crop through an ``unfold``
window view, flips via ``torch.where``; for ``DataSpec.crop == "resized"``, random-resized
crops and flips through one ``affine_grid`` / ``grid_sample`` per batch, and a centre crop of
``eval_crop`` for evaluation). A split stored at another size than ``spec.img_size`` (CIFAR's
32x32 for a model at 224) stays at its own size on the device and each batch is resized
there, after augmentation (bilinear; antialiased when shrinking), so memory does not grow with
the image size. ``BatchTransforms`` is what ``DeviceData`` and ``StreamData``
(``rsst_tune.data.streaming``) share.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from rsst_tune.data.decode import RRC_RATIO, RRC_SCALE, stored_size
from rsst_tune.data.types import DataSpec, Split
from rsst_tune.errors import ConfigError

__all__ = ["BatchTransforms", "DeviceData", "make_generator"]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (for ``train_batches``)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of worker ``rank``'s part of ``n`` items split over ``world`` workers,
    as ``Tensor.tensor_split`` splits them: the first ``n % world`` workers one item more."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_rank(rank: int, world: int) -> None:
    """A ``ValueError`` unless 0 <= ``rank`` < ``world``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")


class BatchTransforms:
    """What happens to a uint8 batch on the device, whichever way it got there
    (``DeviceData``: resident; ``rsst_tune.data.streaming.StreamData``: read from disk):
    augmentation, the evaluation crop, normalisation, the resize to ``spec.img_size``.

    A subclass holds the examples: it gives ``__len__`` and the two iterators.

    ``rank`` and ``world``: the data-parallel shard this process serves (several workers,
    docs/engine.md "Several workers"); 0 and 1, the whole split, unless ``DeviceData.shard``
    made a shard view. ``__len__`` is the whole split's size either way."""

    rank: int = 0
    world: int = 1
    drops_unreadable: bool = False
    """True when images found unreadable while reading are left out (streamed data): an
    evaluation may then count fewer than ``len(self)`` images."""

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
        cannot train on one sample); every other partial batch is kept. Split over ``world``
        workers (``batch_size`` the global batch), a last partial batch is kept when every
        worker gets at least two of its images."""
        return len(self) // batch_size + (1 if len(self) % batch_size >= 2 * self.world else 0)

    def unsharded(self) -> BatchTransforms:
        """The whole split (this object when it is not a shard view)."""
        return self

    def local_share(self, batch_size: int, step: int) -> tuple[int, int]:
        """(images of this worker, images of all workers) in training batch ``step`` (0-based,
        within the epoch) of the global ``batch_size``."""
        total = min(batch_size, len(self) - step * batch_size)
        lo, hi = share_bounds(total, self.rank, self.world)
        return hi - lo, total

    def eval_bounds(self) -> tuple[int, int]:
        """[start, stop) of the examples this worker evaluates (the whole split: 0, len)."""
        return share_bounds(len(self), self.rank, self.world)

    def rank_generator(
        self, generator: torch.Generator, seed: int | None = None
    ) -> torch.Generator:
        """Where this worker draws its per-image augmentation: ``generator`` in one process;
        with several workers a generator of its own, seeded from ``seed`` (one draw from
        ``generator`` when None) and the rank, so that ``generator`` stays in step on every
        worker whatever its share of a batch."""
        if self.world == 1:
            return generator
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device))
        return make_generator(seed + self.rank, self.device)

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

    def shard(self, rank: int, world: int) -> DeviceData:
        """A view (the same device tensors) serving worker ``rank`` of ``world``: training
        batches are its slice of each global batch, evaluation its contiguous part of the
        split (docs/engine.md "Several workers")."""
        check_rank(rank, world)
        view = copy.copy(self)
        view.rank, view.world = rank, world
        return view

    def unsharded(self) -> DeviceData:
        """The whole split (this object when it is not a shard view)."""
        return self if self.world == 1 else self.shard(0, 1)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (normalised images, labels); randomness from ``generator``.

        A shard view (``world`` > 1) draws the same permutation on every worker and serves
        its slice of each global batch of ``batch_size``; its augmentation draws from a
        generator of its own, seeded per epoch from ``generator`` and the rank, so that
        ``generator`` stays in step on every worker (without augmentation nothing more is
        drawn: the batches are exactly one process's, split)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.check_generator(generator)
        perm = torch.randperm(len(self), generator=generator, device=self.device)
        aug = self.rank_generator(generator) if augment else generator
        for start in range(0, self.num_train_batches(batch_size) * batch_size, batch_size):
            idx = perm[start : start + batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            yield self.serve_train(self.x[idx], aug, augment), self.y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, normalised, without augmentation (centre-cropped to
        ``spec.eval_crop``); a shard view: its contiguous part of the split."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        lo, hi = self.eval_bounds()
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield self.serve_eval(self.x[start:stop]), self.y[start:stop]
