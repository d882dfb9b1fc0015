"""Whether a run may resume from its last state checkpoint (docs/methods.md §5).

`PruneLoop.resume(out_dir)` asks two questions, each answered by a one-line `ConfigError`
before anything is written:

    point = resume_point(out_dir, cfg)      # the checkpoint is the run's own, and cfg agrees
    ...                                     # the trial is built from point.cfg
    check_fits(point.saved, theta0, setup, out_dir, point.path)   # it fits the built trial

`resume_point` reads the latest `state_XX.pt` and checks that its config is valid, that the
file holds the state its name says, that it agrees with the run's `config.json` and with the
config given on every field a resumed run may not change (`RESUMABLE_CHANGES`), and that
`pruning_times` keeps the states already done. `check_fits` checks the checkpoint against the
trial built from that config: the model's weights and θ0, the masks and units of its
structure, the dataset, the distillation teacher and the state count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from rsst_tune import checkpoint as ckpt
from rsst_tune.config import EXECUTION, NUMERICS, TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.trial_setup import TrialSetup

# Fields a resumed run may change (they do not change what the checkpoint means), and
# `pruning_times`: a resumed run may stop earlier or go on longer (never below the states it
# has done); a finished run resumed with more states prunes its last ticket and continues
# exactly as a run started with the larger `pruning_times`.
RESUMABLE_CHANGES = frozenset(
    (*TrialConfig.fields_in(NUMERICS), *TrialConfig.fields_in(EXECUTION), "pruning_times")
)


@dataclass(frozen=True)
class ResumePoint:
    """Where a run resumes: its latest checkpoint, the config it was written with, and the
    config the resumed run uses (the one given, else the written one)."""

    path: Path
    saved: ckpt.TrialCheckpoint
    written: TrialConfig
    cfg: TrialConfig

    @property
    def extends(self) -> bool:
        """A finished run resumed with more states: its last ticket still has to be pruned."""
        return self.saved.next_state == self.written.pruning_times < self.cfg.pruning_times


def resume_point(out_dir: Path, cfg: TrialConfig | None) -> ResumePoint:
    """The run in `out_dir`'s latest checkpoint, checked to be the run's own and to agree
    with `cfg` (None: resume with the config it was written with)."""
    path = ckpt.latest_state_file(out_dir)
    if path is None:
        raise ConfigError(f"nothing to resume: no state_XX.pt checkpoint in {out_dir}")
    saved = ckpt.TrialCheckpoint.load(path)
    try:
        written = TrialConfig.from_dict(saved.config)
    except ConfigError as exc:
        raise ConfigError(f"checkpoint {path} holds an invalid config: {exc}") from None
    if saved.state != ckpt.state_of(path):
        raise ConfigError(
            f"checkpoint {path} holds state {saved.state}, not the state its name says; "
            "it was renamed or copied from elsewhere"
        )
    recorded = out_dir / "config.json"
    if recorded.is_file():
        check_same_run(path, written, TrialConfig.from_json_file(recorded), str(recorded))
    if cfg is None:
        cfg = written
    else:
        check_same_run(path, written, cfg, "the config given")
    if cfg.pruning_times < saved.next_state:
        raise ConfigError(
            f"pruning_times must be at least {saved.next_state}, the states the run in "
            f"{out_dir} has done, got {cfg.pruning_times}"
        )
    return ResumePoint(path, saved, written, cfg)


def check_same_run(path: Path, written: TrialConfig, other: TrialConfig, source: str) -> None:
    """A ConfigError naming each field (besides the resumable ones) where two configs differ."""
    mine, theirs = written.to_dict(), other.to_dict()
    first = ("model", "dataset", "method", "target")  # what the run is, named first
    diff = sorted(
        (k for k, v in theirs.items() if k not in RESUMABLE_CHANGES and mine[k] != v),
        key=lambda k: (first.index(k) if k in first else len(first), k),
    )
    if not diff:
        return
    shown = "; ".join(
        f"{k} {mine[k]!r} in the checkpoint, {theirs[k]!r} in {source}" for k in diff[:3]
    )
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    raise ConfigError(
        f"checkpoint {path} was written with a different config ({', '.join(diff)}): "
        f"{shown}{more}; resume with the same config or start a new --out"
    )


def check_fits(
    saved: ckpt.TrialCheckpoint,
    theta0: dict[str, Tensor],
    setup: TrialSetup,
    out_dir: Path | None,
    path: Path | None,
) -> None:
    """That a checkpoint fits the trial built by `setup`: its model, units and data (nothing
    is changed)."""
    cfg, model, structure = setup.cfg, setup.model, setup.structure
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in theta0.items()} != expected:
        raise ConfigError(f"{ckpt.THETA0_FILE} in {out_dir} does not belong to {cfg.model}")
    for name in ("model", "ticket"):
        weights = getattr(saved, name)
        if (
            not isinstance(weights, dict)
            or {k: tuple(v.shape) for k, v in weights.items()} != expected
        ):
            raise ConfigError(f"{where} holds weights of another model than {cfg.model}")
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    maskable = set(structure.maskable_names)
    masks = {"M": saved.M, "U": saved.U, "R": saved.R, "T": saved.T}
    for name, m in masks.items():
        if m is None:
            continue
        if (
            not isinstance(m, dict)
            or not set(m) <= maskable
            or (name == "M" and set(m) != maskable)
            or any(tuple(t.shape) != params[n] for n, t in m.items())
        ):
            raise ConfigError(
                f"{where}: its mask {name} does not fit the prunable units of "
                f"{cfg.model} (target {cfg.target!r})"
            )
    units = {g.name: g.num_units for g in structure.groups}
    alive = saved.alive if isinstance(saved.alive, dict) else {}
    if {k: int(v.numel()) for k, v in alive.items()} != units:
        raise ConfigError(f"{where}: its units do not match {cfg.model} (target {cfg.target!r})")
    spec = dataclasses.asdict(setup.spec)
    if _plain(saved.spec) != _plain(spec):
        raise ConfigError(
            f"{where} was written for other data ({saved.spec.get('name')!r}) than "
            f"dataset {spec['name']!r}"
        )
    if cfg.distill_alpha > 0 and not isinstance(saved.teacher, dict):
        raise ConfigError(
            f"{where} holds no teacher (the dense state 0) for distill_alpha {cfg.distill_alpha}"
        )
    n = saved.next_state
    if not 1 <= n <= cfg.pruning_times or len(saved.results) != n:
        raise ConfigError(
            f"{where} is inconsistent: next state {n} with {len(saved.results)} results "
            f"for pruning_times={cfg.pruning_times}"
        )


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a DataSpec as data compares equal after a round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
