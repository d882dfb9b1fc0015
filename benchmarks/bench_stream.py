"""Streaming an image folder: rsst-tune's StreamData against torchvision's ImageFolder.

Both read the same folder of JPEGs (about 400x350, written by this script with a fixed seed)
with the same number of DataLoader workers, and hand out training batches of 64 normalised
float images at 224x224 with random-resized crops and flips:

- torchvision: ``ImageFolder`` + ``DataLoader`` with PIL transforms
  (``RandomResizedCrop(224)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``);
- ours: ``rsst_tune.data.streaming.StreamData.train_batches`` (workers decode whole batches
  with PIL at the stored size 256, JPEGs at reduced scale where that allows; the crops, flips
  and normalisation run batched on the device).

Workers persist between epochs in both. It prints images/s of the best of ``--repeats``
epochs each (the first includes the workers' start-up) and the ratio. Goal on CPU: >= 1.5x;
on a GPU (nvjpeg decode): >= 5x.

Then (or alone, with ``--mode crops``) the step after the device decode of a streamed
batch: ``BATCH`` JPEGs of that folder decoded in one call on the device (torchvision's
``decode_jpeg``: nvjpeg on CUDA), and their random-resized crops (``rrc_box``) and flips to
224 timed both ways on the same decoded images and boxes, side by side: ``crop_resize`` (a
few batched calls: what ``StreamData`` runs) and ``crop_resize_each`` (crop +
``F.interpolate`` + flip per image, what it ran before), with their mean difference in grey
levels.

    python benchmarks/bench_stream.py                # 2,000 images, both parts
    python benchmarks/bench_stream.py --tiny         # 200 images, for CI
    python benchmarks/bench_stream.py --mode crops   # the crop comparison only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rsst_tune.data import RRC_DRAWS, load_dataset, make_generator, rrc_box
from rsst_tune.data.gpu_crops import crop_resize, crop_resize_each
from rsst_tune.data.streaming import StreamData, default_workers
from rsst_tune.device import resolve_device

IMG_SIZE = 224
BATCH = 64
CLASSES = 10


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    """``root/train/cNN/i.jpg`` (and a small ``val/``): smooth random photos-like images of
    about 400x350 (sizes vary by +-10 %), JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub, count in (("train", n), ("val", CLASSES)):
        for i in range(count):
            folder = root / sub / f"c{i % CLASSES:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers((360, 315), (441, 386)))
            coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            noise = rng.integers(-12, 13, (h, w, 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def torchvision_loader(
    root: Path, workers: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, int]]:
    """torchvision's ImageFolder + DataLoader with PIL transforms; workers persist between
    epochs, as ours do."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(IMG_SIZE),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=False,
        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0,
    )  # fmt: skip


def torchvision_epoch(loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]]) -> float:
    """Images/s of one epoch of torchvision's loader."""
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def ours_epoch(data: StreamData, device: torch.device) -> float:
    """Images/s of one epoch of StreamData.train_batches (augmented), synchronised at the end."""
    start, seen = time.perf_counter(), 0
    last = None
    for x, _ in data.train_batches(BATCH, make_generator(0, device), augment=True):
        seen += len(x)
        last = x
    if last is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def decoded_batch(root: Path, device: torch.device) -> list[torch.Tensor]:
    """The first ``BATCH`` training JPEGs of ``root`` decoded in one call on ``device``, as
    ``StreamData`` decodes a batch (nvjpeg on CUDA)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    paths = sorted((root / "train").rglob("*.jpg"))[:BATCH]
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def time_crops(images: list[torch.Tensor], repeats: int) -> tuple[float, float, float]:
    """Images/s of ``crop_resize`` (batched) and ``crop_resize_each`` (per image), best of
    ``repeats`` after one warm-up call each, on the same images, boxes and flips (seeded), and
    their mean absolute difference in grey levels."""
    device = images[0].device
    gen = torch.Generator().manual_seed(0)
    draws = torch.rand(len(images), RRC_DRAWS, generator=gen).tolist()
    boxes = [
        rrc_box(int(im.shape[-1]), int(im.shape[-2]), u)
        for im, u in zip(images, draws, strict=True)
    ]
    flips = [u[22] < 0.5 for u in draws]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def best(fn: Callable[..., torch.Tensor]) -> tuple[float, torch.Tensor]:
        out = fn(images, boxes, IMG_SIZE, flips)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn(images, boxes, IMG_SIZE, flips)
            sync()
            times.append(time.perf_counter() - start)
        return len(images) / min(times), out

    batched, a = best(crop_resize)
    each, b = best(crop_resize_each)
    return batched, each, float((a.float() - b.float()).abs().mean())


def main() -> None:
    """Write the folder, time both pipelines, print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="200 images, one repeat (CI)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core but one")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--mode",
        choices=("all", "loaders", "crops"),
        default="all",
        help="loaders: the two pipelines; crops: batched vs per-image crops of one decoded "
        "batch; all: both (default)",
    )
    args = parser.parse_args()
    n, repeats = (200, 1) if args.tiny else (args.images, args.repeats)
    if args.mode == "crops":
        n = min(n, BATCH)  # one batch is all it reads
    workers = default_workers() if args.workers is None else args.workers
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_folder(root, n)
        print(f"{n} JPEGs of about 400x350 written in {time.perf_counter() - t0:.1f} s")
        if args.mode != "crops":
            loaders(root, device, workers, repeats)
        if args.mode != "loaders":
            images = decoded_batch(root, device)
            crop_repeats = 3 if args.tiny else 10
            batched, each, gap = time_crops(images, crop_repeats)
            print(
                f"crops after the device decode: {len(images)} JPEGs of about 400x350 to "
                f"{IMG_SIZE}x{IMG_SIZE}, on {device}, best of {crop_repeats}:"
            )
            print(f"  batched crop_resize:        {batched:9,.0f} images/s")
            print(f"  per-image crop_resize_each: {each:9,.0f} images/s")
            print(f"  ratio batched / per-image: {batched / each:.2f}x "
                  f"(mean difference {gap:.2f} grey levels)")  # fmt: skip


def loaders(root: Path, device: torch.device, workers: int, repeats: int) -> None:
    """Time torchvision's loader and StreamData on the folder ``root``; print the ratio."""
    bundle = load_dataset(
        "imagefolder", data_dir=root, img_size=IMG_SIZE, val_size=CLASSES, lazy=True
    )
    spec = bundle.spec
    data = StreamData(bundle.train, spec, device, workers=workers)  # type: ignore[arg-type]
    train_images = len(bundle.train)
    print(
        f"device {device}, {workers} DataLoader workers each, batch {BATCH}, "
        f"{train_images} training images, {torch.get_num_threads()} torch threads"
    )
    loader = torchvision_loader(root, workers, spec.mean, spec.std)
    theirs = max(torchvision_epoch(loader) for _ in range(repeats))
    ours = max(ours_epoch(data, device) for _ in range(repeats))
    print(f"torchvision ImageFolder + DataLoader (PIL transforms): {theirs:9,.0f} images/s")
    print(f"rsst-tune StreamData.train_batches:                   {ours:9,.0f} images/s")
    goal = 5.0 if device.type == "cuda" else 1.5
    ratio = ours / theirs
    print(f"ratio ours / torchvision: {ratio:.2f}x (goal on {device.type}: >= {goal:g}x: "
          f"{'met' if ratio >= goal else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
