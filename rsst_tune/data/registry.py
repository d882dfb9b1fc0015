"""The dataset registry, and ``load_dataset``.

``load_dataset(name, data_dir=..., val_size=..., download=...)`` returns a ``DataBundle``
(train / val / test splits and a ``DataSpec``) from the loader registered under ``name``
with ``@register_dataset``. A loader may take ``img_size`` (a keyword-only argument, like
``imagefolder``'s): then ``load_dataset(..., img_size=N)`` asks it to read its images at that
size; one that takes ``lazy`` may leave its images on disk (``FileSplit`` s).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from rsst_tune.data.types import DataBundle
from rsst_tune.errors import ConfigError
from rsst_tune.registry import Registry

__all__ = [
    "DATASETS",
    "DatasetLoader",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "takes_img_size",
    "takes_keyword",
    "unregister_dataset",
]

# the package's logger, as before the split into modules (log lines name rsst_tune.data)
logger = logging.getLogger("rsst_tune.data")


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
