"""Datasets held in memory as uint8 tensors, and batched augmentation on the device.

``load_dataset(name, data_dir=..., val_size=..., download=...)`` returns a ``DataBundle``
(train / val / test ``Split`` s and a ``DataSpec``). Registered datasets:

* ``cifar10``, ``cifar100``: torchvision's CIFAR files under ``data_dir`` (downloaded only
  with ``download=True``); validation carved from the train set with a fixed seed
  (45,000 / 5,000 by default); the official test set is the test split.
* ``digits``: scikit-learn's bundled 8x8 digits (offline), scaled to 0..255; a fixed-seed
  60/20/20 split (1,077 / 360 / 360).
* ``synthetic``: class-dependent patterns plus noise, 10 classes, 3x32x32, offline.
* ``imagefolder``: torchvision ``ImageFolder`` trees ``data_dir/train`` and ``data_dir/val``
  (and optionally ``data_dir/test``), read as RGB resized to the trial's image size (32x32
  unless ``img_size`` is given). With a ``test/`` folder the
  three folders are the three splits. Without one, ``val/`` is held out as the test split
  and the validation split is carved from ``train/`` with a fixed seed (10 % by default),
  so model selection never sees the test images.

Splits never depend on the trial seed. Models receive normalised float input from
``DeviceData``, which keeps a split on the device and yields augmented batches with batched
tensor ops only (random crop through an ``unfold`` window view, flips via ``torch.where``).
A split stored at another size than ``spec.img_size`` (CIFAR's 32x32 for a model at 224) stays
at its own size on the device and each batch is resized there, after augmentation (bilinear;
antialiased when shrinking), so memory does not grow with the image size.

A loader may take ``img_size`` (a keyword-only argument, like ``imagefolder``'s): then
``load_dataset(..., img_size=N)`` asks it to read its images at that size.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rsst_tune.errors import ConfigError
from rsst_tune.registry import Registry

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "SPLIT_SEED",
    "DataBundle",
    "DataSpec",
    "DatasetLoader",
    "DeviceData",
    "Split",
    "channel_stats",
    "list_datasets",
    "load_dataset",
    "make_generator",
    "make_synthetic",
    "register_dataset",
    "split_off",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
"""Seed of every train/val(/test) split: fixed, independent of the trial seed."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


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

    def __post_init__(self) -> None:
        """Check that mean/std have one entry per channel and the sizes are sane."""
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"dataset {self.name!r}: mean/std need {self.in_chans} entries each")
        if min(self.std) <= 0:
            raise ConfigError(f"dataset {self.name!r}: std must be positive, got {self.std}")
        if self.crop_padding < 0 or self.num_classes < 1 or self.img_size < 1:
            raise ConfigError(f"dataset {self.name!r}: invalid spec {self}")


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
class DataBundle:
    """A dataset's spec and its three splits."""

    spec: DataSpec
    train: Split
    val: Split
    test: Split


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


def takes_img_size(loader: Callable[..., object]) -> bool:
    """Whether a dataset loader reads its images at an asked size (an ``img_size`` keyword)."""
    try:
        return "img_size" in inspect.signature(loader).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def load_dataset(
    name: str,
    *,
    data_dir: str | Path,
    val_size: int | None = None,
    download: bool = False,
    img_size: int | None = None,
) -> DataBundle:
    """Load a registered dataset; ``val_size`` overrides its default validation size.

    ``img_size``: loaders that take it read their images at that size (``imagefolder``);
    the others keep their own size (``DeviceData`` resizes their batches)."""
    loader = DATASETS.get(name)
    if val_size is not None and (isinstance(val_size, bool) or val_size < 1):
        raise ConfigError(f"val_size must be a positive integer, got {val_size!r}")
    if img_size is not None and (isinstance(img_size, bool) or img_size < 1):
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    kwargs: dict[str, object] = {}
    if img_size is not None and takes_img_size(loader):
        kwargs["img_size"] = img_size
    bundle = loader(
        data_dir=Path(data_dir).expanduser(), val_size=val_size, download=download, **kwargs
    )
    logger.info(
        "dataset %s: train %d, val %d, test %d",
        name,
        len(bundle.train),
        len(bundle.val),
        len(bundle.test),
    )
    return bundle


# ----------------------------------------------------------------------------- helpers


def split_off(
    split: Split, n: int, *, seed: int = SPLIT_SEED, what: str = "validation"
) -> tuple[Split, Split]:
    """Randomly split off ``n`` examples with a fixed seed: returns (rest, the n examples)."""
    if not 0 < n < len(split):
        raise ConfigError(f"{what} size must be between 1 and {len(split) - 1}, got {n}")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[n:].sort().values), split.subset(perm[:n].sort().values)


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


def _read_folder(
    root: Path, classes: list[str] | None, size: int = IMAGEFOLDER_SIZE
) -> tuple[Split, list[str]]:
    """Read an ImageFolder tree into memory, resized to ``size`` x ``size`` RGB."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"cannot read image folder {root}: {str(err).splitlines()[0]}") from err
    if classes is not None and ds.classes != classes:
        raise ConfigError(
            f"class folders of {root} differ from those of train/: {ds.classes} vs {classes}"
        )
    images = [ds[i][0] for i in range(len(ds))]  # one-off decode at load time, not per batch
    x = torch.stack(images) if images else torch.zeros(0, 3, size, size)
    return Split(x.to(torch.uint8), torch.as_tensor(ds.targets, dtype=torch.int64)), ds.classes


@register_dataset("imagefolder")
def imagefolder(
    *, data_dir: Path, val_size: int | None, download: bool, img_size: int | None = None
) -> DataBundle:
    """``data_dir/{train,val[,test]}/CLASS/*.jpg`` resized to ``img_size`` (default 32) RGB,
    decoded into memory once (see module doc)."""
    size = IMAGEFOLDER_SIZE if img_size is None else img_size
    for sub in ("train", "val"):
        if not (data_dir / sub).is_dir():
            raise ConfigError(
                f"image folder dataset needs {data_dir / sub}/ with one folder per class"
            )
    train, classes = _read_folder(data_dir / "train", None, size)
    val, _ = _read_folder(data_dir / "val", classes, size)
    if (data_dir / "test").is_dir():
        test, _ = _read_folder(data_dir / "test", classes, size)
        if val_size is not None:
            logger.warning("imagefolder with test/: val_size ignored, val/ is the validation split")
    else:
        test = val
        n_val = val_size if val_size is not None else max(1, len(train) // 10)
        train, val = split_off(train, n_val)
    mean, std = channel_stats(train.x)
    pad = max(1, round(4 * size / IMAGEFOLDER_SIZE))  # CIFAR's 4 px at 32, scaled
    spec = DataSpec("imagefolder", len(classes), 3, size, mean, std, crop_padding=pad, flip=True)
    return DataBundle(spec, train, val, test)


# ----------------------------------------------------------------------------- device data


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (for ``train_batches``)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


class DeviceData:
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
        self.spec = spec
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(
            1, -1, 1, 1
        )
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def num_train_batches(self, batch_size: int) -> int:
        """Training batches per epoch: a last batch of a single image is dropped (BatchNorm
        cannot train on one sample); every other partial batch is kept."""
        return len(self) // batch_size + (1 if len(self) % batch_size > 1 else 0)

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch, the last partial one included."""
        return math.ceil(len(self) / batch_size)

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 images to float32, scaled to 0..1 and normalised with the spec's mean/std."""
        return x.float().div_(255.0).sub_(self.mean).div_(self.std)

    @property
    def stored_size(self) -> tuple[int, int]:
        """(height, width) of the images as held on the device."""
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def to_model_input(self, x: Tensor) -> Tensor:
        """uint8 images as the model takes them: normalised, at ``spec.img_size`` (bilinear
        resize on the device when the stored size differs; antialiased when shrinking), in
        channels-last memory format if asked."""
        out = self.normalise(x)
        size = self.spec.img_size
        if self.stored_size != (size, size):
            shrink = min(self.stored_size) > size
            out = F.interpolate(
                out, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
            )
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

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (normalised images, labels); randomness from ``generator``."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if generator.device.type != self.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {self.device}; "
                "use make_generator(seed, device)"
            )
        perm = torch.randperm(len(self), generator=generator, device=self.device)
        for start in range(0, self.num_train_batches(batch_size) * batch_size, batch_size):
            idx = perm[start : start + batch_size]
            xb = self.x[idx]
            if augment:
                xb = self.augment(xb, generator)
            yield self.to_model_input(xb), self.y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, normalised, without augmentation."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.to_model_input(self.x[start:stop]), self.y[start:stop]
