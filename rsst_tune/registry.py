"""One registry type for every named, user-extensible thing (timm's `register_model` idea).

Models, datasets, criteria, methods, λ schedules and search spaces each have one
`Registry`; they all behave the same way:

    CRITERIA = Registry[Criterion]("criterion")

    @CRITERIA.register("taylor2", "t2")          # a name and optional aliases
    def taylor2(model, groups, inputs): ...

    CRITERIA.get("t2")        # the object; an unknown name is a one-line ConfigError
                              # "unknown criterion 'x'; choose one of: ..."
    "taylor2" in CRITERIA     # names and aliases
    CRITERIA.names()          # canonical names, sorted

Registering a taken name (or alias) raises `ConfigError` unless `override=True`; registering
the same definition again (a module reloaded in a notebook) replaces it quietly. Lookups are
read-only, so a Ray worker running many trials never changes a registry by running them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from rsst_tune.errors import ConfigError, unknown_choice

T = TypeVar("T")
E = TypeVar("E")


def _origin(obj: object) -> tuple[object, object] | None:
    """(module, qualname) of a definition, or None for objects without one."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module is None or qualname is None:
        return None
    return module, qualname


class Registry(Generic[T]):
    """Names (and aliases) to objects of one kind."""

    def __init__(
        self,
        kind: str,
        *,
        origin: Callable[[T], object] | None = None,
        extra_choices: tuple[str, ...] = (),
    ) -> None:
        """`kind` names the thing in errors; `origin` maps an entry to the definition that
        identifies it (default: the entry itself); `extra_choices` are listed in errors
        beside the registered names (e.g. `timm:<any timm model>`)."""
        self.kind = kind
        self._origin = origin or (lambda obj: obj)
        self._extra_choices = extra_choices
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: str, *aliases: str, override: bool = False) -> Callable[[E], E]:
        """Decorator: register the decorated object under `name` and `aliases`."""

        def decorator(obj: E) -> E:
            self.add(name, obj, *aliases, override=override)  # type: ignore[arg-type]
            return obj

        return decorator

    def add(self, name: str, obj: T, *aliases: str, override: bool = False) -> T:
        """Register `obj` under `name` (and `aliases`); returns it."""
        for key in (name, *aliases):
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"invalid {self.kind} name {key!r}: must be a non-empty string")
        if not override:
            for key in (name, *aliases):
                owner = self._aliases.get(key)
                if owner is None:
                    continue
                new = self._definition(obj)
                if new is None or self._definition(self._entries[owner]) != new:
                    raise ConfigError(
                        f"{self.kind} name {key!r} is already registered (to {owner!r}); "
                        "pass override=True to replace it"
                    )
        for key in (name, *aliases):
            old = self._aliases.get(key)
            if old is not None and old != name and key == old:
                self.unregister(old)  # `name` takes over another entry's canonical name
        self._entries[name] = obj
        for key in (name, *aliases):
            self._aliases[key] = name
        return obj

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (for plugins and tests)."""
        canonical = self.canonical(name)
        del self._entries[canonical]
        for key in [k for k, v in self._aliases.items() if v == canonical]:
            del self._aliases[key]

    def _definition(self, obj: T) -> tuple[object, object] | None:
        try:
            return _origin(self._origin(obj))
        except AttributeError:  # not the kind of object this registry holds
            return None

    # ------------------------------------------------------------------ lookup
    def canonical(self, name: str) -> str:
        """The registered name behind `name` (an alias resolves to its entry)."""
        try:
            return self._aliases[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def get(self, name: str) -> T:
        """The entry named `name` (or an alias of it)."""
        return self._entries[self.canonical(name)]

    def unknown(self, name: object, what: str | None = None) -> ConfigError:
        """The one-line error for an unknown name, listing every choice."""
        return unknown_choice(what or self.kind, name, [*self.names(), *self._extra_choices])

    def names(self) -> list[str]:
        """The canonical names, sorted (aliases excluded)."""
        return sorted(self._entries)

    def aliases(self, name: str) -> list[str]:
        """The aliases of an entry (its canonical name excluded)."""
        canonical = self.canonical(name)
        return sorted(k for k, v in self._aliases.items() if v == canonical and k != canonical)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
