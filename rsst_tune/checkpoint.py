"""The trial checkpoint format (docs/methods.md §5): one module owns it.

A run directory holds `theta0.pt` (θ0, written once, never changed) and one `state_XX.pt`
per finished state. A state file is a versioned `TrialCheckpoint`: plain data and tensors
only, so it loads with `torch.load(weights_only=True)`; written atomically.

    TrialCheckpoint.load(path)            # a one-line ConfigError for a missing, corrupt,
                                          # incomplete or other-version file
    ckpt.save(run_dir)                    # -> run_dir/state_XX.pt
    latest_state_file(run_dir)            # the newest state_XX.pt, or None
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rsst_tune import fileio
from rsst_tune.errors import ConfigError
from rsst_tune.limits import MAX_STATE

VERSION = 2
THETA0_FILE = "theta0.pt"
STATE_GLOB = "state_[0-9][0-9].pt"
_STATE_RE = re.compile(r"state_(\d\d)\.pt")

Weights = dict[str, Tensor]


def state_file(state: int) -> str:
    """The file name of state `state`'s checkpoint (two digits, so names sort by state)."""
    if not 0 <= state <= MAX_STATE:
        raise ValueError(f"state must be in [0, {MAX_STATE}] for a checkpoint name, got {state}")
    return f"state_{state:02d}.pt"


def state_files(run_dir: str | Path) -> list[Path]:
    """Every state checkpoint in `run_dir`, oldest first."""
    return sorted(Path(run_dir).glob(STATE_GLOB))


def latest_state_file(run_dir: str | Path) -> Path | None:
    files = state_files(run_dir)
    return files[-1] if files else None


def state_of(path: str | Path) -> int | None:
    """The state index in a checkpoint file name (None when it is not one)."""
    m = _STATE_RE.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TrialCheckpoint:
    """Everything a state checkpoint holds; `next_state` is where a resumed run continues."""

    config: dict[str, Any]  # the resolved TrialConfig, as data
    next_state: int
    model: Weights  # the weights the next state starts from (rewound, masked)
    ticket: Weights  # the ticket this state evaluated (what `rsst-tune export` exports)
    spec: dict[str, Any]  # the dataset's DataSpec, as data
    theta_r: Weights | None
    M: dict[str, Tensor]
    U: dict[str, Tensor] | None
    R: dict[str, Tensor] | None
    T: dict[str, Tensor]
    alive: dict[str, Tensor]  # unit group -> bool [num_units]
    prune_stats: dict[str, Any]  # PruneStats of the next ticket, as data
    results: list[dict[str, Any]]  # StateResult.to_dict() of every state so far
    rng: dict[str, Tensor]  # {"torch": torch.get_rng_state()}
    warned: list[str] = field(default_factory=list)
    optimizer_step: int = 0  # the optimizer and LR schedule restart each state
    theta0: str = THETA0_FILE  # θ0 never changes: a pointer to its file
    # distillation (distill_alpha > 0): the trained dense state 0, the teacher of states >= 1;
    # in every state file, so the latest one alone resumes a run (a sweep keeps only it)
    teacher: Weights | None = None

    @property
    def state(self) -> int:
        """The state this checkpoint finished."""
        return self.next_state - 1

    def save(self, run_dir: str | Path) -> Path:
        """Write `run_dir/state_XX.pt` atomically."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["version"] = VERSION
        return fileio.torch_save(data, Path(run_dir) / state_file(self.state))

    @classmethod
    def load(cls, path: str | Path) -> TrialCheckpoint:
        data = load_file(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not an rsst-tune state checkpoint")
        version = data.get("version")
        if version != VERSION:
            raise ConfigError(
                f"checkpoint {path} has format version {version!r}; this rsst-tune reads "
                f"version {VERSION} (re-run the trial, or use the rsst-tune that wrote it)"
            )
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING]
        required = [n for n in required if n != "warned"]
        missing = [n for n in required if n not in data]
        if missing or not isinstance(data.get("config"), dict):
            raise ConfigError(f"checkpoint {path} is incomplete (missing: {', '.join(missing)})")
        return cls(**{k: v for k, v in data.items() if k in names})


def load_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` on CPU; a missing or corrupt file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {path} is corrupt or not an rsst-tune checkpoint: {first}"
        ) from None


def save_theta0(theta0: Weights, run_dir: str | Path) -> Path:
    return fileio.torch_save(theta0, Path(run_dir) / THETA0_FILE)


def load_theta0(run_dir: str | Path) -> Weights:
    data = load_file(Path(run_dir) / THETA0_FILE)
    if not isinstance(data, dict):
        raise ConfigError(f"{Path(run_dir) / THETA0_FILE} is not a state dict")
    return data
