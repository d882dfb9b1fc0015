"""Errors that reach the user as one line (the CLI prints them and exits with status 2)."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: an unknown name, a value out of range, a corrupt checkpoint.

    The message is one line and, for unknown names, lists the valid choices.
    """


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The error for an unknown registry name, naming every valid choice."""
    listed = ", ".join(sorted(choices))
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {listed}")
