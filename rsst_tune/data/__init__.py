"""Datasets: loaded as uint8 tensors (or left on disk), served as batches on the device.

``load_dataset(name, data_dir=..., val_size=..., download=...)`` returns a ``DataBundle``.
Every public name below can be imported from ``rsst_tune.data``; each module holds one job:

* ``types``: ``DataSpec``, ``Split`` (in memory), ``FileSplit`` (on disk; ``read_files``
  decodes it), ``DataBundle``; ``SPLIT_SEED`` and the fixed-seed ``split_off`` /
  ``seeded_subset``; ``channel_stats``.
* ``filelist``: ``FileList``, a ``FileSplit``'s compact list of paths.
* ``decode``: one image file to a uint8 tensor (``decode_image``, ``decode_crop``) and the
  crop geometry (``stored_size``, ``rrc_box``, ``EVAL_CROP``, ``RRC_*``).
* ``registry``: ``register_dataset``, ``unregister_dataset``, ``list_datasets``,
  ``load_dataset``.
* ``builtin``: ``cifar10``, ``cifar100``, ``digits``, ``synthetic`` (``make_synthetic``).
* ``folders``: ``imagefolder``, ImageNet-layout folders at their own resolution.
* ``shards``: ``wds``, WebDataset tar shards (``ShardSplit``, streamed by ``ShardData``;
  the ``webdataset`` package, the ``wds`` extra, is imported when the dataset is loaded).
* ``batches``: ``DeviceData`` (a split resident on the device), ``BatchTransforms``
  (augmentation and normalisation, batched), ``make_generator``.
* ``streaming``: ``StreamData`` (image folders read from disk batch by batch) and
  ``choose_placement``; imported on its own (``rsst_tune.data.streaming``), not here.

Importing the package registers the built-in datasets.
"""

from __future__ import annotations

from rsst_tune.data.batches import BatchTransforms, DeviceData, make_generator
from rsst_tune.data.builtin import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar10,
    cifar100,
    digits,
    make_synthetic,
    synthetic,
)
from rsst_tune.data.decode import (
    EVAL_CROP,
    RRC_DRAWS,
    RRC_RATIO,
    RRC_SCALE,
    as_rgb,
    decode_crop,
    decode_image,
    describe_error,
    resized_shape,
    rrc_box,
    square_offset,
    stored_size,
)
from rsst_tune.data.filelist import ITER_CHUNK, FileList
from rsst_tune.data.folders import (
    IMAGE_EXTENSIONS,
    IMAGEFOLDER_SIZE,
    STATS_CHUNK,
    STATS_SAMPLE,
    imagefolder,
    stats_sample,
)
from rsst_tune.data.registry import (
    DATASETS,
    DatasetLoader,
    list_datasets,
    load_dataset,
    register_dataset,
    takes_img_size,
    takes_keyword,
    unregister_dataset,
)
from rsst_tune.data.shards import SHUFFLE_BUFFER, ShardData, ShardSplit, read_shards, wds
from rsst_tune.data.types import (
    CROPS,
    SPLIT_SEED,
    AnySplit,
    DataBundle,
    DataSpec,
    FileSplit,
    Split,
    Subsettable,
    channel_stats,
    read_files,
    seeded_subset,
    split_off,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CROPS",
    "DATASETS",
    "EVAL_CROP",
    "IMAGEFOLDER_SIZE",
    "IMAGE_EXTENSIONS",
    "ITER_CHUNK",
    "RRC_DRAWS",
    "RRC_RATIO",
    "RRC_SCALE",
    "SHUFFLE_BUFFER",
    "SPLIT_SEED",
    "STATS_CHUNK",
    "STATS_SAMPLE",
    "AnySplit",
    "BatchTransforms",
    "DataBundle",
    "DataSpec",
    "DatasetLoader",
    "DeviceData",
    "FileList",
    "FileSplit",
    "ShardData",
    "ShardSplit",
    "Split",
    "Subsettable",
    "as_rgb",
    "channel_stats",
    "cifar10",
    "cifar100",
    "decode_crop",
    "decode_image",
    "describe_error",
    "digits",
    "imagefolder",
    "list_datasets",
    "load_dataset",
    "make_generator",
    "make_synthetic",
    "read_files",
    "read_shards",
    "register_dataset",
    "resized_shape",
    "rrc_box",
    "seeded_subset",
    "split_off",
    "square_offset",
    "stats_sample",
    "stored_size",
    "synthetic",
    "takes_img_size",
    "takes_keyword",
    "unregister_dataset",
    "wds",
]
