"""Named search spaces: one module per space, and the module name is the space name.

Adding a space is adding a file `search_spaces/<name>.py` that defines
``SPACE = rsst_tune.tune.space.SearchSpace(...)``; modules whose name starts with ``_`` are
helpers. Spaces are found with `pkgutil`, so nothing else needs to change.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.tune.space import SearchSpace

__all__ = ["get_space", "list_spaces"]


def list_spaces() -> list[str]:
    """The names of the available spaces, sorted."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    )


def get_space(name: str) -> SearchSpace:
    """The space declared by `search_spaces/<name>.py`; an unknown name lists the others."""
    names = list_spaces()
    if name not in names:
        raise unknown_choice("search space", name, names)
    module = importlib.import_module(f"{__name__}.{name}")
    space = getattr(module, "SPACE", None)
    if not isinstance(space, SearchSpace):
        raise ConfigError(
            f"search space module {module.__name__} defines no SPACE = SearchSpace(...)"
        )
    return dataclasses.replace(space, name=name)
