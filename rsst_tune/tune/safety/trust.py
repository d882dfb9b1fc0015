"""Signed pickles: `--resume` unpickles only what this user's rsst-tune wrote.

Resuming a sweep hands its directory to Ray, which unpickles `tuner.pkl`, its experiment state
(`experiment_state-*.json`: JSON whose values Ray's decoder may unpickle),
`searcher-state-*.pkl`, `search_gen_state-*.json` (a pickle), `callback-states-*.pkl`, and at
the end the `error.pkl` of each errored trial. Unpickling runs whatever code the file names,
so a crafted directory would run code in the resuming process.

Every such file rsst-tune lets Ray write is signed: an HMAC-SHA256 of its path in the
directory and its bytes, under a per-user key (`key_path()`: `$RSST_TUNE_RESUME_KEY`, else
`$XDG_CONFIG_HOME/rsst-tune/resume.key`, else `~/.config/rsst-tune/resume.key`; 32 random
bytes, created with mode 0600 on first use, refused when others can read it). The MACs live
in `signatures.json` in the experiment directory (a list per file: its latest few versions,
so a crash between a write and its signature, or Ray's syncer copying a version late, never
leaves the file unsigned):

* `sign_all` before Ray runs (`tuner.pkl`) and when the sweep's driver ends (finished,
  interrupted, or stopped by an error);
* `StateSigner`, a Ray callback, each time Ray saves its experiment state: Ray writes it in
  the driver's staging directory (every second) and its syncer then copies it, byte for byte,
  into the experiment directory; the staged version is signed under the name it gets there;
* `sign_copies` each time the driver copies Ray's experiment state to `.ray_state_backup/`
  (every 2 s, `experiment.backup_ray_state`): the copy and the file it was copied from get
  the same MAC.

`check_resume` runs before Ray starts: `tuner.pkl` and every file Ray would unpickle must
verify. Should the driver have been killed between Ray's save and its signature (a few
milliseconds), the last signed copy in `.ray_state_backup/` (at most about 2 s older) is
restored instead, as after a full disk, and the unsigned files are set aside as
`<name>.unsigned`. An unsigned `trial_*/error.pkl` is set aside too (Ray then reads the
trial's `error.txt`). Anything else unsigned is refused in one line (exit 2) unless
`--trust-pickles` is given. With URI storage (`s3://...`) Ray's files are not checked: the
bucket's access rights are the trust boundary.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from rsst_tune import fileio
from rsst_tune.errors import ConfigError
from rsst_tune.experiment.layout import RAY_STATE_BACKUP, SIGNATURES_FILE
from rsst_tune.experiment.reader import file_intact

log = logging.getLogger(__name__)

KEY_ENV = "RSST_TUNE_RESUME_KEY"
UNSIGNED_SUFFIX = ".unsigned"
TRUST_FLAG = "--trust-pickles"
_KEY_BYTES = 32
_KEEP = 4  # MACs kept per file: the latest versions (Ray's syncer may copy one a bit late)
# Ray's files that it unpickles on a resume, at the top of the experiment directory.
RAY_STATE_PATTERNS = (
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "search_gen_state-*.json",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
)
TUNER_FILE = "tuner.pkl"


def key_path() -> Path:
    """Where this user's resume key lives (see the module doc)."""
    override = os.environ.get(KEY_ENV)
    if override:
        return Path(override).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "rsst-tune" / "resume.key"


def load_key(*, create: bool) -> bytes | None:
    """This user's key (created, mode 0600, when `create` and missing); None when there is
    none. Raises ConfigError when the key file is readable by others or not this user's.

    Read (and its owner and mode checked) on every call: a few dozen microseconds, next to
    the files each signature reads and the signatures file it rewrites."""
    path = key_path()
    if not path.is_file():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile by another sweep: read it
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(_KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            log.info("created the resume key %s (mode 0600)", path)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the resume key {path} must belong to you and be readable by you only "
            f"(chmod 600 {path})"
        )
    key = path.read_bytes()
    if len(key) < _KEY_BYTES:
        raise ConfigError(f"the resume key {path} is too short; delete it to get a new one")
    return key


def _mac(key: bytes, rel: str, data: bytes) -> str:
    return hmac.new(key, rel.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _rel(exp_dir: Path, path: Path) -> str:
    return path.relative_to(exp_dir).as_posix()


def pickled_files(exp_dir: str | Path) -> list[Path]:
    """The files of `exp_dir` that Ray unpickles on a resume: `tuner.pkl`, its state files
    (every session's), any other `*.pkl` at the top, the copies in `.ray_state_backup/`
    (restored by a resume), and each trial's `error.pkl`."""
    root = Path(exp_dir)
    found: set[Path] = set()
    if (root / TUNER_FILE).is_file():
        found.add(root / TUNER_FILE)
    for pattern in (*RAY_STATE_PATTERNS, "*.pkl"):
        found.update(p for p in root.glob(pattern) if p.is_file())
    if (root / RAY_STATE_BACKUP).is_dir():
        found.update(
            p
            for p in (root / RAY_STATE_BACKUP).iterdir()
            if p.is_file() and not p.name.startswith(".")
        )
    found.update(p for p in root.glob("trial_*/error.pkl") if p.is_file())
    return sorted(found)


def _read_signatures(exp_dir: Path) -> dict[str, list[str]]:
    path = exp_dir / SIGNATURES_FILE
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        return {
            str(k): [str(m) for m in v]
            for k, v in files.items()
            if isinstance(v, list) and all(isinstance(m, str) for m in v)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_signatures(exp_dir: Path, files: Mapping[str, list[str]]) -> None:
    body = {"version": 1, "hmac": "sha256", "files": dict(sorted(files.items()))}
    fileio.write_text(exp_dir / SIGNATURES_FILE, json.dumps(body, indent=1) + "\n")


def _add(signed: dict[str, list[str]], rel: str, mac: str, *, keep_old: bool) -> None:
    old = [m for m in signed.get(rel, []) if m != mac] if keep_old else []
    signed[rel] = [mac, *old][:_KEEP]


def sign_all(exp_dir: str | Path) -> int:
    """Sign every file Ray would unpickle on a resume (the driver is done with them: Ray has
    stopped). Returns how many were signed; a storage error is logged, not raised."""
    root = Path(exp_dir)
    try:
        key = load_key(create=True)
        assert key is not None
        signed = _read_signatures(root)
        files = pickled_files(root)
        for path in files:
            rel = _rel(root, path)
            _add(signed, rel, _mac(key, rel, path.read_bytes()), keep_old=False)
        _write_signatures(root, signed)
    except (OSError, ConfigError) as exc:
        log.info("could not sign Ray's files in %s: %s", root, exc)
        return 0
    return len(files)


def sign_copies(exp_dir: str | Path, copies: Iterable[tuple[Path, Path, Path]]) -> None:
    """Before the copies of Ray's state replace `.ray_state_backup/`: sign each copy's bytes
    under both its backup name and the name of the file it was copied from.

    `copies`: (temporary copy, backup path it becomes, live path it was copied from).
    Raises OSError when the signatures cannot be written (the backup is then left as it
    was, still matching its previous signatures)."""
    root = Path(exp_dir)
    key = load_key(create=True)
    assert key is not None
    signed = _read_signatures(root)
    for tmp, backup, live in copies:
        data = tmp.read_bytes()
        for target in (backup, live):
            rel = _rel(root, target)
            _add(signed, rel, _mac(key, rel, data), keep_old=True)
    _write_signatures(root, signed)


def sign_staged(exp_dir: str | Path, staging: str | Path, seen: dict[str, tuple[int, int]]) -> int:
    """Sign the versions of Ray's state files (and trials' `error.pkl`) in Ray's staging
    directory `staging` that `seen` (path -> (mtime_ns, size), updated) has not seen, under
    the names they get in `exp_dir`. Returns how many were signed."""

    root, stage = Path(exp_dir), Path(staging)
    found = [p for pattern in RAY_STATE_PATTERNS for p in stage.glob(pattern)]
    found += list(stage.glob("trial_*/error.pkl"))
    fresh: list[tuple[Path, tuple[int, int]]] = []
    for path in found:
        try:
            info = path.stat()
        except OSError:
            continue
        mark = (info.st_mtime_ns, info.st_size)
        if seen.get(str(path)) != mark and file_intact(path):
            fresh.append((path, mark))
    if not fresh:
        return 0
    key = load_key(create=True)
    assert key is not None
    signed = _read_signatures(root)
    for path, _ in fresh:
        rel = path.relative_to(stage).as_posix()
        _add(signed, rel, _mac(key, rel, path.read_bytes()), keep_old=True)
    _write_signatures(root, signed)
    seen.update((str(path), mark) for path, mark in fresh)
    return len(fresh)


class StateSigner(Callback):
    """Signs Ray's experiment state each time Ray saves it (`sign_staged`): Ray saves it in the
    step before `on_step_end`, into the driver's staging directory, which its syncer copies
    into the experiment directory. Local storage only; no state of its own is saved."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}  # tuner.pkl holds the callback, not what it saw

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._seen = {}

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        import pyarrow.fs

        storage = getattr(trials[0], "storage", None) if trials else None
        if storage is None or not isinstance(
            storage.storage_filesystem, pyarrow.fs.LocalFileSystem
        ):
            return
        try:
            sign_staged(
                storage.experiment_fs_path, storage.experiment_driver_staging_path, self._seen
            )
        except (OSError, ConfigError) as exc:  # a full disk: check_resume falls back
            log.debug("could not sign Ray's experiment state: %s", exc)


def _verified(key: bytes, root: Path, path: Path, signed: Mapping[str, list[str]]) -> bool:
    rel = _rel(root, path)
    macs = signed.get(rel)
    if not macs:
        return False
    try:
        mac = _mac(key, rel, path.read_bytes())
    except OSError:
        return False
    return any(hmac.compare_digest(mac, m) for m in macs)


def check_resume(exp_dir: str | Path, *, trust: bool = False) -> list[str]:
    """Before `--resume` lets Ray unpickle anything: every file it would unpickle must carry
    this user's signature (see the module doc for the fallbacks). Returns what was done (at
    most one line); raises ConfigError (one line) naming the first file that does not verify.
    `trust=True` (`--trust-pickles`) checks nothing."""
    root = Path(exp_dir)
    if trust:
        log.warning("%s: Ray's pickles resumed without a signature check (%s)", root, TRUST_FLAG)
        return []
    key = load_key(create=False)
    signed = _read_signatures(root) if key is not None else {}
    files = pickled_files(root)
    bad = [p for p in files if key is None or not _verified(key, root, p, signed)]
    if not bad:
        return []
    notes: list[str] = []
    backups = [p for p in files if p.parent == root / RAY_STATE_BACKUP]
    live_state = [p for p in bad if p.parent == root and p.name != TUNER_FILE]
    if live_state and backups and not any(p in bad for p in backups) and key is not None:
        for path in live_state:
            path.rename(path.with_name(path.name + UNSIGNED_SUFFIX))
        for copy in backups:
            shutil.copyfile(copy, root / copy.name)
        notes.append(
            f"Ray's experiment state in {root} was written after its last signature (the "
            "driver was killed?): resuming from its last signed copy "
            f"({RAY_STATE_BACKUP}/, at most about 2 s older; the unsigned files are kept as "
            f"*{UNSIGNED_SUFFIX})"
        )
        bad = [p for p in bad if p not in live_state]
    errors = [p for p in bad if p.name == "error.pkl" and p.parent.name.startswith("trial_")]
    for path in errors:
        path.rename(path.with_name(path.name + UNSIGNED_SUFFIX))
    if errors:
        names = ", ".join(_rel(root, p) for p in errors[:3]) + (", ..." if len(errors) > 3 else "")
        what = f"set aside {len(errors)} unsigned error.pkl ({names}; Ray reads error.txt instead)"
        notes = [f"{notes[0]}; {what}"] if notes else [what]
    bad = [p for p in bad if p not in errors]
    if bad:
        why = (
            f"there is no resume key ({key_path()})"
            if key is None
            else f"no valid signature in {SIGNATURES_FILE}"
        )
        raise ConfigError(
            f"{bad[0]} was not written by your rsst-tune ({why}); resuming would unpickle it, "
            f"which can run any code it holds: resume only directories you trust, with "
            f"{TRUST_FLAG}"
        )
    return notes
