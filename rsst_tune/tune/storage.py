"""Where a sweep writes: its storage must be writable, and a new sweep must not overwrite one.

    check_storage(plan, resume=False)   # a one-line ConfigError, before anything is written

Local storage is probed by writing (and removing) a small file; URI storage (`s3://...`,
`gs://...`) through pyarrow's filesystem, the same way Ray will write to it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from rsst_tune.errors import ConfigError
from rsst_tune.tune.plan import PLAN_FILE, SweepPlan


def check_storage(plan: SweepPlan, *, resume: bool) -> None:
    """The storage must be writable; a new sweep must not overwrite an old one."""
    if plan.is_uri:
        check_uri_writable(plan.storage)
    else:
        check_writable(Path(plan.storage))
    local = Path(plan.local_dir)
    check_writable(local.parent)
    if not resume and (local / PLAN_FILE).exists():
        raise ConfigError(
            f"{plan.local_dir} already holds a sweep; continue it with --resume "
            f"{plan.local_dir} or pick another --name"
        )


def check_writable(path: Path) -> None:
    """Create `path` if needed and write a probe file in it; a ConfigError when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rsst_write_probe_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to storage path {path}: {exc.strerror or exc}") from None


def check_uri_writable(uri: str) -> None:
    """The same probe through pyarrow's filesystem for a URI storage."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.rsst_write_probe_{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # pyarrow raises many types (ArrowInvalid, OSError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot write to storage {uri}: {first}") from None
