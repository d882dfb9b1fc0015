"""What one pruning state reports (docs/methods.md §6): one frozen record, one `to_dict`.

`PruneLoop.states()` yields `StateResult`s; the Ray trainable reports `to_dict()`, and the
experiment loader, the report, the run table, the objectives, Ray's CSV/TensorBoard files
and W&B all read the same fields. Every state carries every key (None where a field does not
apply: `acc_before_structure` outside RSST states, `filters` on a ViT, ...), so CSV rows stay
aligned across states and resumes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.units import REPORT_NAMES, UNIT_KINDS, unit_kind

# The fields of the units alive per kind (heads, neurons, filters): `rsst_tune.units`.
UNIT_FIELDS = REPORT_NAMES
# Fields measured with a clock: they differ between two otherwise identical runs.
TIMING_FIELDS = ("wall_time_s", "images_per_s", "gpu_busy", "mfu")


@dataclass(frozen=True)
class PruneStats:
    """What the prune that produced a ticket did (the dense ticket: nothing)."""

    rate: float = 0.0  # effective fraction of M's weights U removed (rounding may differ)
    density_U: float = 1.0  # kept fraction of the prunable weights in U
    density_R: float | None = None  # same for R (structured methods only)
    head_ratio_effective: float | None = None  # fraction of alive heads removed
    mlp_ratio_effective: float | None = None
    filter_ratio_effective: float | None = None

    @classmethod
    def dense(cls, structured: bool, kinds: list[str]) -> PruneStats:
        if not structured:
            return cls()
        return cls(density_R=1.0, **{unit_kind(k).effective: 0.0 for k in kinds})


@dataclass(frozen=True)
class StateResult:
    """One pruning state of one trial: a real pruned model with its accuracy and cost."""

    state: int
    method: str
    val_acc: float  # top-1 of the ticket as evaluated (step 3)
    test_acc: float
    # fraction of zero weights among all prunable layers of §1, whatever the target
    sparsity: float
    density_total: float  # non-zero parameters / dense parameters, whole model
    params: int  # of the physically pruned model (analytic)
    macs: int
    params_frac: float
    macs_frac: float
    # the prune that produced this ticket (state 0: none)
    rate: float
    density_U: float
    density_R: float | None
    head_ratio_effective: float | None
    mlp_ratio_effective: float | None
    filter_ratio_effective: float | None
    # units alive per kind (None for kinds the model does not have)
    heads: int | None
    neurons: int | None
    filters: int | None
    heads_per_layer: tuple[int, ...] | None
    neurons_per_layer: tuple[int, ...] | None
    filters_per_layer: tuple[int, ...] | None
    # RSST states (s >= 1): test accuracy before step 2 imposed R, ‖T‖ and λ at the end
    acc_before_structure: float | None
    t_norm: float | None
    lambda_reached: float | None
    train_loss: float
    epochs_trained: int  # 0 when state 0 came from the shared dense cache
    wall_time_s: float
    # images evaluated for val_acc / test_acc (the report's 95 % intervals need them); None
    # in results recorded before they were recorded
    val_size: int | None = None
    test_size: int | None = None
    # where and how the state ran (`device.describe_device` / `describe_numerics`): the report
    # says which trials ran where; None in results recorded before they were recorded
    device: str | None = None
    numerics: str | None = None
    # the ticket's forward time predicted by the sweep's latency table (ms, at the table's
    # batch, device and dtype; `rsst_tune.latency_model`); None without a table
    latency_ms: float | None = None
    # how well the state's training used the device (`rsst_tune.utilisation`): images trained
    # per training second; on CUDA the share of that time the GPU spent inside training steps;
    # model FLOPs utilisation against the GPU's peak for the dtype (a known GPU only). None
    # where they do not apply (CPU: gpu_busy and mfu; a state 0 from the shared dense cache:
    # all three), and in results recorded before they were recorded
    images_per_s: float | None = None
    gpu_busy: float | None = None
    mfu: float | None = None
    # data-parallel workers the state trained and evaluated on (`rsst-tune run --workers N`;
    # docs/engine.md "Several workers"): 1 for one process; None in results recorded before
    # it was recorded
    world_size: int | None = None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: every key, per-layer tuples as lists."""
        out = dataclasses.asdict(self)
        for key in (k.per_layer for k in UNIT_KINDS):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateResult:
        """Read a result back (keys beyond the schema are ignored, e.g. Ray's; optional keys
        an older rsst-tune did not write, such as `val_size`, read as None)."""
        values: dict[str, Any] = {}
        missing = []
        for f in fields(cls):
            value = data.get(f.name)
            if value is None and "None" not in str(f.type):
                missing.append(f.name)
                continue
            if isinstance(value, list):
                value = tuple(int(v) for v in value)
            values[f.name] = value
        if missing:
            raise ConfigError(f"state result lacks {', '.join(missing)}")
        return cls(**values)

    def metric(self, key: str) -> float | None:
        """A field as a finite float, or None (missing, None, NaN, not a number)."""
        value = getattr(self, key, None)
        if value is None or isinstance(value, bool | tuple | str):
            return None
        x = float(value)
        return x if math.isfinite(x) else None
