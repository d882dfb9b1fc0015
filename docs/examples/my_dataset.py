"""docs/examples/my_dataset.py: a dataset of your own, read from files (docs/extending.md).

"stripes": 3 classes of 3x12x12 images (horizontal stripes, vertical stripes, a
checkerboard) in two files under the trial's `data_dir`:

    DATA_DIR/stripes/train.npz   x: uint8 [300, 3, 12, 12], y: int64 [300]
    DATA_DIR/stripes/test.npz    x: uint8 [90, 3, 12, 12],  y: int64 [90]

`write_stripes(data_dir)` makes them; the loader calls it only when the files are missing
and `download` is true, as a real dataset would download its files then.

    import my_dataset                        # registers "stripes"
    rsst_tune.run_trial(dataset="stripes", data_dir="data", download=True, ...)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsst_tune.data import DataBundle, DataSpec, Split, channel_stats, register_dataset, split_off
from rsst_tune.errors import ConfigError

CLASSES = ("horizontal", "vertical", "checkerboard")
SIZE = 12
FILES = {"train": 300, "test": 90}  # images per file
VAL_SIZE = 60  # carved from train.npz unless the config's val_size says otherwise


def write_stripes(data_dir: Path, seed: int = 0) -> Path:
    """Write DATA_DIR/stripes/{train,test}.npz: a stripe pattern per class at a random
    phase and width, in a random colour, plus noise. Returns the folder."""
    folder = data_dir / "stripes"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    for split, n in FILES.items():
        y = rng.integers(0, len(CLASSES), n)
        x = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
        for i, label in enumerate(y):
            width, phase = int(rng.integers(1, 4)), int(rng.integers(0, 6))
            across, down = (rows + phase) // width % 2, (cols + phase) // width % 2
            pattern = (across, down, (across + down) % 2)[int(label)]
            colour = rng.uniform(0.4, 1.0, size=(3, 1, 1))
            image = pattern * colour + rng.normal(0.0, 0.15, size=(3, SIZE, SIZE))
            x[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=y.astype(np.int64))
    return folder


def _read(path: Path) -> Split:
    with np.load(path) as f:  # arrays only: np.load refuses pickles by default
        return Split(torch.from_numpy(f["x"]), torch.from_numpy(f["y"]))


@register_dataset("stripes")
def stripes(*, data_dir: Path, val_size: int | None, download: bool) -> DataBundle:
    """Train and validation from train.npz (validation: a fixed-seed draw), test.npz as test."""
    folder = data_dir / "stripes"
    missing = [name for name in FILES if not (folder / f"{name}.npz").is_file()]
    if missing and not download:
        # a ConfigError is one line on the command line (exit status 2), before any training
        raise ConfigError(f"stripes not found under {folder}; pass --download to write it")
    if missing:
        write_stripes(data_dir)
    train, test = _read(folder / "train.npz"), _read(folder / "test.npz")
    # split_off draws with a fixed seed: every trial and every sweep sees the same split
    train, val = split_off(train, VAL_SIZE if val_size is None else val_size)
    mean, std = channel_stats(train.x)  # per channel on the 0..1 scale: the trial normalises
    spec = DataSpec(
        name="stripes",
        num_classes=len(CLASSES),
        in_chans=3,
        img_size=SIZE,  # the size the images are stored at; a trial may ask for another
        mean=mean,
        std=std,
        crop_padding=1,  # augmentation: a random crop after padding by 1 pixel...
        flip=True,  # ...and horizontal flips (they keep every class what it is)
        augment_default=False,  # but only when the config says augment=true
    )
    return DataBundle(spec, train, val, test)
