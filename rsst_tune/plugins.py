"""The user's own code in a sweep: `--import MODULE` and `--space FILE.py | package.module:SPACE`.

    specs = resolve_imports(["my_criteria", "plugins/my_model.py"])  # checked, imported here
    load_imports(specs)          # in each Ray worker, before its trial builds anything
    obj = load_object("pkg.spaces:SPACE")                           # a space from anywhere

An import names a module on the Python path (`PYTHONPATH`, an installed package, or the
directory the command was started in) or a `.py` file. `resolve_imports` imports each one in
this process, so a bad name is a one-line `ConfigError` before anything runs, and returns
them in a form every process of the sweep can import again: a file as its absolute path, a
module found only in the working directory as `MODULE@DIR`. Ray workers do not share the
driver's `sys.path`; on a cluster the file (or module) must be at the same path on every node,
like `--data-dir`.

Importing the same spec twice is a no-op (a Ray worker runs many trials in one process): a
file is imported under its stem as module name, once. Registrations (criteria, models,
datasets, methods, schedules, spaces) happen when the module is imported, as in the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from rsst_tune.errors import ConfigError

__all__ = ["is_object_spec", "load_imports", "load_object", "resolve_imports"]

MODULE_AT = "@"  # MODULE@DIR: import MODULE with DIR on sys.path


def is_object_spec(text: str) -> bool:
    """True for `FILE.py`, `FILE.py:NAME` or `package.module:NAME` (not a registered name)."""
    return isinstance(text, str) and (text.endswith(".py") or ":" in text)


def resolve_imports(specs: Iterable[str], *, cwd: Path | None = None) -> tuple[str, ...]:
    """Import each spec here and return it as every process can import it again."""
    out: list[str] = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"--import needs a module name or a .py file, got {spec!r}")
        resolved = _resolve_one(spec.strip(), cwd or Path.cwd())
        _import(resolved)
        if resolved not in out:
            out.append(resolved)
    return tuple(out)


def load_imports(specs: Iterable[str]) -> None:
    """Import each resolved spec (from `resolve_imports`) in this process; idempotent."""
    for spec in specs:
        _import(spec)


def load_object(spec: str, default_name: str = "SPACE") -> Any:
    """The object `NAME` of `FILE.py:NAME`, `FILE.py` (NAME = `default_name`) or
    `package.module:NAME`; the module is imported as `--import` would."""
    if spec.endswith(".py"):
        module_spec, name = spec, default_name
    else:
        module_spec, _, name = spec.rpartition(":")
        name = name or default_name
    module = _import(_resolve_one(module_spec, Path.cwd()))
    try:
        return getattr(module, name)
    except AttributeError:
        public = sorted(n for n in vars(module) if n.isupper())
        raise ConfigError(
            f"{module_spec} defines no {name}"
            + (f"; it defines: {', '.join(public)}" if public else "")
        ) from None


def resolved_object_spec(spec: str) -> str:
    """`spec` with its module part as `resolve_imports` returns it (an absolute file path)."""
    if spec.endswith(".py"):
        return _resolve_one(spec, Path.cwd())
    module_spec, _, name = spec.rpartition(":")
    return f"{_resolve_one(module_spec, Path.cwd())}:{name}"


# ---------------------------------------------------------------------- internals
def _resolve_one(spec: str, cwd: Path) -> str:
    if MODULE_AT in spec and not spec.endswith(".py"):  # MODULE@DIR: resolved already
        return spec
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = (cwd / Path(spec).expanduser()).resolve()
        if not path.is_file():
            raise ConfigError(f"--import {spec}: no such file ({path})")
        if path.suffix != ".py":
            raise ConfigError(f"--import {spec}: a file to import must end in .py")
        return str(path)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise ConfigError(
            f"--import {spec}: not a module name (a.b.c) nor a .py file; e.g. --import "
            "my_criteria or --import plugins/my_criteria.py"
        )
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        found = None
    except Exception as exc:  # a parent package that fails to import
        raise ConfigError(f"--import {spec} failed: {_where(exc)}") from None
    if found is not None:
        return spec
    top = spec.split(".")[0]
    if (cwd / f"{top}.py").is_file() or (cwd / top / "__init__.py").is_file():
        return f"{spec}{MODULE_AT}{cwd.resolve()}"
    raise ConfigError(
        f"--import {spec}: no module of that name on the Python path (PYTHONPATH, installed "
        f"packages) nor in {cwd}; give a .py file or add its directory to PYTHONPATH"
    )


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py"):
        return _import_file(Path(spec))
    name, at, directory = spec.partition(MODULE_AT)
    if at and directory not in sys.path:
        sys.path.append(directory)
    try:
        return importlib.import_module(name)
    except ConfigError as exc:
        raise ConfigError(f"--import {name}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"--import {name} failed: {_where(exc)}") from None


def _import_file(path: Path) -> ModuleType:
    name = path.stem
    if not name.isidentifier():
        raise ConfigError(f"--import {path}: the file's name must be a Python identifier")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise ConfigError(
            f"--import {path}: a module named {name!r} is already imported (from "
            f"{getattr(loaded, '__file__', 'a built-in')}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--import {path}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError as exc:
        del sys.modules[name]
        raise ConfigError(f"--import {path}: {exc}") from None
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"--import {path} failed: {_where(exc)}") from None
    return module


def _where(exc: BaseException) -> str:
    """`Type: message (file:line)` of the innermost frame: one line for a broken plugin."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"
