"""Named search spaces: one module per space, and the module name is the space name.

Adding a space is adding a file `search_spaces/<name>.py` that defines
``SPACE = rsst_tune.tune.space.SearchSpace(...)``; modules whose name starts with ``_`` are
helpers. Spaces are found with `pkgutil` and registered in `SPACES` (the same `Registry` type
as models, datasets, criteria, methods and schedules). A space defined elsewhere (a notebook,
a plugin) is added with ``register_space("my_space", SearchSpace(...))``, or named where it
is defined: ``get_space("path/to/space.py")`` (its ``SPACE``), ``get_space("space.py:OTHER")``
or ``get_space("package.module:SPACE")`` load it (`rsst_tune.plugins`) and register it under
that name with the file's absolute path (what a sweep's plan stores).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from rsst_tune.errors import ConfigError
from rsst_tune.plugins import is_object_spec, load_object, resolved_object_spec
from rsst_tune.registry import Registry
from rsst_tune.tune.space import SearchSpace

__all__ = ["SPACES", "get_space", "list_spaces", "register_space"]

SPACES: Registry[SearchSpace] = Registry(
    "search space",
    origin=lambda s: s.define,
    extra_choices=("FILE.py[:NAME]", "package.module:NAME"),
)


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
    """The space registered as `name`, or defined in a file or module (`FILE.py[:NAME]`,
    `package.module:NAME`); an unknown name lists the others."""
    if isinstance(name, str) and name not in SPACES and is_object_spec(name):
        spec = resolved_object_spec(name)
        if spec not in SPACES:
            space = load_object(spec)
            if not isinstance(space, SearchSpace):
                raise ConfigError(f"--space {name}: must be a SearchSpace, got {type(space)}")
            register_space(spec, space)
        return SPACES.get(spec)
    return SPACES.get(name)


_discover()
