"""Named search spaces: one module per space, and the module name is the space name.

Adding a space is adding a file `search_spaces/<name>.py` that defines
``SPACE = rsst_tune.tune.space.SearchSpace(...)``; modules whose name starts with ``_`` are
helpers. Spaces are found with `pkgutil` and registered in `SPACES` (the same `Registry` type
as models, datasets, criteria, methods and schedules). A space defined elsewhere (a notebook,
a plugin) is added with ``register_space("my_space", SearchSpace(...))``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from rsst_tune.errors import ConfigError
from rsst_tune.registry import Registry
from rsst_tune.tune.space import SearchSpace

__all__ = ["SPACES", "get_space", "list_spaces", "register_space"]

SPACES: Registry[SearchSpace] = Registry("search space", origin=lambda s: s.define)


def register_space(name: str, space: SearchSpace, *, override: bool = False) -> SearchSpace:
    """Register `space` under `name` (its `name` field is set to it)."""
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"search space {name!r} must be a SearchSpace, got {type(space)}")
    return SPACES.add(name, dataclasses.replace(space, name=name), override=override)


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in SPACES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        space = getattr(module, "SPACE", None)
        if not isinstance(space, SearchSpace):
            raise ConfigError(
                f"search space module {module.__name__} defines no SPACE = SearchSpace(...)"
            )
        register_space(info.name, space)


def list_spaces() -> list[str]:
    """The names of the available spaces, sorted."""
    return SPACES.names()


def get_space(name: str) -> SearchSpace:
    """The space registered as `name`; an unknown name lists the others."""
    return SPACES.get(name)


_discover()
