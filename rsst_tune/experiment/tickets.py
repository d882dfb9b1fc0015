"""A *ticket*: one pruning state of one trial, a candidate pruned model with its own accuracy
and cost. A trial of S states offers S tickets; `collect_tickets` lists every one of a sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rsst_tune.errors import ConfigError
from rsst_tune.experiment.objectives import finite_state
from rsst_tune.experiment.records import TrialRecord
from rsst_tune.results import StateResult
from rsst_tune.stats import accuracy_interval

SELECT_METRIC = "val_acc"  # what tickets are chosen by; test_acc is reported, never chosen by
SPLIT_SIZE = {"val_acc": "val_size", "test_acc": "test_size"}  # accuracy -> images evaluated


class HasTrials(Protocol):
    """Anything holding a sweep's trial records (an `Experiment`)."""

    @property
    def trials(self) -> Sequence[TrialRecord]: ...


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None (missing, NaN, inf, text)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True, eq=False)
class Ticket:
    """One pruning state of one trial: a candidate pruned model."""

    trial_id: str
    state: int
    status: str
    result: StateResult | None  # None: a placeholder for a trial without states
    config: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    order: int = 0  # position among all tickets: the last, deterministic tie-break
    checkpoint: str | None = None  # the trial's checkpoint directory for this state, if kept

    def metric(self, key: str) -> float | None:
        return self.result.metric(key) if self.result is not None else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The state's result as plain data."""
        return self.result.to_dict() if self.result is not None else {}

    @property
    def val_acc(self) -> float | None:
        return self.metric("val_acc")

    @property
    def test_acc(self) -> float | None:
        return self.metric("test_acc")

    @property
    def macs_frac(self) -> float | None:
        return self.metric("macs_frac")

    @property
    def params_frac(self) -> float | None:
        return self.metric("params_frac")

    @property
    def label(self) -> str:
        return f"{self.trial_id}/s{self.state}"

    def state_file(self) -> Path:
        """The state checkpoint (`state_XX.pt`) of this ticket in its trial's saved checkpoint;
        a ConfigError when the sweep did not keep it."""
        from rsst_tune.checkpoint import state_file

        if self.checkpoint is None:
            raise ConfigError(f"ticket {self.label}: the sweep kept no checkpoint of this state")
        path = Path(self.checkpoint) / state_file(self.state)
        if not path.is_file():
            raise ConfigError(f"ticket {self.label}: {path} is missing")
        return path

    def load_model(self, *, device: str = "cpu") -> Any:
        """The ticket as a physically smaller `torch.nn.Module` (pruned units sliced out), in
        eval mode on `device`."""
        from rsst_tune.export import load_pruned_model  # torch: only when a model is asked for

        return load_pruned_model(self.state_file(), device=device)

    def export(
        self,
        out_dir: str | Path,
        *,
        onnx: bool = False,
        measure: bool = True,
        device: str = "auto",
        overwrite: bool = False,
    ) -> Any:
        """`rsst-tune export` of this ticket: `out_dir`/model.pt (and model.onnx with `onnx`)
        and export.json; returns the `ExportReport`."""
        from rsst_tune.export import export_checkpoint

        return export_checkpoint(
            self.state_file(),
            out_dir,
            onnx=onnx,
            measure=measure,
            device=device,
            overwrite=overwrite,
        )

    def split_size(self, metric: str = SELECT_METRIC) -> int | None:
        """The number of images `metric` (val_acc or test_acc) was measured on, when recorded."""
        key = SPLIT_SIZE.get(metric)
        n = getattr(self.result, key, None) if key is not None else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def interval(self, metric: str = SELECT_METRIC) -> tuple[float, float] | None:
        """The 95 % Wilson interval of an accuracy (val_acc or test_acc), or None when the
        accuracy or its split size is missing."""
        return accuracy_interval(self.metric(metric), self.split_size(metric))

    @property
    def selectable(self) -> bool:
        """Whether the ticket may be chosen: its accuracies and training loss are finite (a
        diverged state never is)."""
        return self.result is not None and finite_state(self.result)


def collect_tickets(experiment: HasTrials) -> list[Ticket]:
    """Every (trial, state) of the experiment, in trial then state order."""
    out: list[Ticket] = []
    for trial in experiment.trials:
        for result in trial.states:
            out.append(
                Ticket(
                    trial_id=str(trial.trial_id),
                    state=result.state,
                    status=str(trial.status),
                    result=result,
                    config=trial.config if isinstance(trial.config, Mapping) else {},
                    params=trial.params if isinstance(trial.params, Mapping) else {},
                    order=len(out),
                    checkpoint=trial.state_checkpoints.get(result.state),
                )
            )
    return out
