"""Training-batch throughput: our on-device augmentation vs torchvision's DataLoader.

Both sides read the same synthetic 3x32x32 uint8 images and yield normalised float batches
of the same size with CIFAR's standard augmentation (random crop with 4 pixels of padding,
random horizontal flip):

- ours: `rsst_tune.data.DeviceData.train_batches(augment=True)` (batched tensor ops);
- torchvision: a `Dataset` returning PIL images (as `torchvision.datasets.CIFAR10` does)
  with `RandomCrop(32, 4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`, read by
  a `DataLoader` with 2 workers.

Epochs alternate (ours, DataLoader, ours, ...) so that load drift on a shared machine hits
both alike; the first batch of each epoch is not timed (it holds the DataLoader's worker
start-up). The medians of images per second and their ratio are printed.
Goal: ours ≥ 10× the DataLoader on CPU.

    python benchmarks/bench_data.py            # 20,000 images, batch 256
    python benchmarks/bench_data.py --tiny     # seconds, for CI (no timing asserted)

On a machine whose cores are busy with other work, torch's intra-op threads stall each other
(10x slower small ops were seen on the shared 2-core CI machine): pass `--threads 1` there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rsst_tune.data import CIFAR10_MEAN, CIFAR10_STD, DataSpec, DeviceData, Split, make_generator
from rsst_tune.device import resolve_device

GOAL = 10.0


class _PILDataset(Dataset[Any]):
    """uint8 HWC images served as PIL images, like torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def epoch_rate(batches: Iterable[tuple[Tensor, Tensor]], sync: Callable[[], None]) -> float:
    """Images per second over one epoch, its first batch untimed (worker start-up)."""
    it = iter(batches)
    next(it)
    sync()
    seen, t0 = 0, time.perf_counter()
    for x, _ in it:
        seen += x.shape[0]
    sync()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long CI setting")
    parser.add_argument("--device", default="cpu", help="cpu (the goal's setting), cuda, auto")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, batch, rounds = (1_024, 128, 1) if args.tiny else (args.images, args.batch, args.rounds)
    device = resolve_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{n:,} images, batch {batch}"
    )

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    spec = DataSpec("bench", 10, 3, 32, CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, flip=True)

    data = DeviceData(Split(x, y), spec, device)
    dgen = make_generator(0, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    ds = _PILDataset(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), tf)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=False,
    )
    ours_rates: list[float] = []
    theirs_rates: list[float] = []
    for _ in range(rounds):  # alternate epochs so that load drift hits both alike
        ours_rates.append(epoch_rate(data.train_batches(batch, dgen, augment=True), sync))
        theirs_rates.append(epoch_rate(loader, lambda: None))
    ours, theirs = statistics.median(ours_rates), statistics.median(theirs_rates)

    print(f"ours (DeviceData.train_batches, augment): {ours:12,.0f} images/s")
    print(f"torchvision DataLoader ({args.workers} workers):    {theirs:12,.0f} images/s")
    print(f"ratio {ours / theirs:.1f}x (goal >= {GOAL:g}x on CPU)")


if __name__ == "__main__":
    main()
