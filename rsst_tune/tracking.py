"""Weights & Biases tracking of one trial (`rsst-tune run --wandb offline|online`).

One W&B run per trial: its config is the `TrialConfig`, its name the run directory's, and it
logs one row per pruning state (the numeric `StateResult` fields, step = the state's index).
Its files stay in the run directory (`OUT/wandb/`; an offline run is uploaded later with
`wandb sync OUT/wandb/offline-run-*`). The run finishes with exit code 0 when the trial
completes, 1 when it fails and 130 when it is interrupted (W&B shows the last two as failed).

    from rsst_tune.tracking import WandbTracker

    with WandbTracker(cfg, "runs/demo", mode="offline", tags=("baseline",)) as tracker:
        rsst_tune.run_trial(cfg, "runs/demo", on_state=tracker.log_state)

The API key is read by wandb itself from WANDB_API_KEY; nothing here prints or logs it.
Sweeps log through Ray's W&B callback instead (`rsst_tune.tune.run.wandb_callback`), with the
same mode names (`WANDB_MODES`) and messages.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.results import StateResult
from rsst_tune.tune.plan import WANDB_MODES

DEFAULT_PROJECT = "rsst-tune"  # when neither --wandb-project nor WANDB_PROJECT names one
KEY_VARIABLE = "WANDB_API_KEY"
MAX_PROJECT_CHARS = 128  # W&B's limits on a project name and on a tag
MAX_TAG_CHARS = 64
PROJECT_FORBIDDEN = "/\\#?%:"


def parse_tags(text: str) -> tuple[str, ...]:
    """`a,b,c` -> ("a", "b", "c"): spaces around each tag and empty tags dropped."""
    return tuple(tag.strip() for tag in text.split(",") if tag.strip())


@dataclass(frozen=True)
class WandbOptions:
    """How a trial is tracked: `mode` off (default), offline or online; `project` (None:
    WANDB_PROJECT, else "rsst-tune"), `entity` (None: WANDB_ENTITY, else the key's default
    entity) and `tags`."""

    mode: str = "off"
    project: str | None = None
    entity: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def resolved_project(self) -> str:
        return self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT

    def resolved_entity(self) -> str | None:
        return self.entity or os.environ.get("WANDB_ENTITY") or None

    def check(self) -> None:
        """Everything a W&B run needs, checked before the trial starts: a ConfigError (one
        line) for an unknown mode, a missing wandb package, `online` without WANDB_API_KEY,
        and a project name or tag W&B would refuse."""
        if self.mode not in WANDB_MODES:
            raise unknown_choice("--wandb mode", self.mode, WANDB_MODES)
        if not self.enabled:
            return
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                f"--wandb {self.mode} needs the wandb package, which is not installed here: "
                "pip install 'rsst-tune[wandb]'"
            )
        if self.mode == "online" and not os.environ.get(KEY_VARIABLE):
            raise ConfigError(f"--wandb online needs {KEY_VARIABLE} in the environment")
        project = self.resolved_project()
        bad = sorted({c for c in PROJECT_FORBIDDEN if c in project})
        if len(project) > MAX_PROJECT_CHARS or bad:
            raise ConfigError(
                f"W&B project {project!r} must have at most {MAX_PROJECT_CHARS} characters and "
                f"none of {' '.join(PROJECT_FORBIDDEN)}"
                + (f" (it has {' '.join(bad)})" if bad else "")
            )
        for tag in self.tags:  # the sweep's message (`rsst_tune.tune.plan`)
            if not 1 <= len(tag) <= MAX_TAG_CHARS:
                raise ConfigError(
                    f"--wandb-tags: each tag is 1 to {MAX_TAG_CHARS} characters, got {tag!r}"
                )


def state_row(result: StateResult) -> dict[str, int | float]:
    """The numeric fields of a state's result (None, text and per-layer lists left out)."""
    return {
        key: value
        for key, value in result.to_dict().items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def run_name(out_dir: str | Path) -> str:
    """The W&B run's name: the run directory's (`runs/demo` -> `demo`)."""
    path = Path(out_dir)
    return path.name or path.resolve().name or "rsst-tune"


class WandbTracker:
    """One W&B run for one trial; `log_state` logs a state's row, `finish` ends the run.

    `mode` "off" makes every method a no-op. As a context manager, the run finishes with exit
    code 0, or 1 (an exception) or 130 (Ctrl+C), so W&B marks a failed trial as failed.
    Everything is checked first (`WandbOptions.check`); then `wandb.init` starts the run,
    its files under `out_dir/wandb/`.
    """

    def __init__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path,
        *,
        mode: str = "offline",
        project: str | None = None,
        entity: str | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        options = WandbOptions(mode, project, entity, tuple(tags))
        options.check()
        self.options = options
        self.run: Any = None
        if not options.enabled:
            return
        import wandb

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode=options.mode,  # type: ignore[arg-type]
            project=options.resolved_project(),
            entity=options.resolved_entity(),
            tags=list(options.tags) or None,
            config=cfg.to_dict(),
            name=run_name(out),
            dir=str(out),
            reinit="create_new",  # a run of its own, whatever else this process tracks
        )

    @classmethod
    def from_options(
        cls, options: WandbOptions, cfg: TrialConfig, out_dir: str | Path
    ) -> WandbTracker:
        return cls(
            cfg,
            out_dir,
            mode=options.mode,
            project=options.project,
            entity=options.entity,
            tags=options.tags,
        )

    def log_state(self, result: StateResult) -> None:
        """One row: the state's numeric results, at step = the state's index."""
        if self.run is not None:
            self.run.log(state_row(result), step=result.state, commit=True)  # not left pending

    def finish(self, exit_code: int = 0) -> None:
        """End the run (again: nothing); a non-zero `exit_code` marks it failed."""
        run, self.run = self.run, None
        if run is not None:
            run.finish(exit_code=exit_code)
            # wait for W&B's writer process to flush the run's file (as the sweep's callback
            # does): a loaded machine otherwise returns before the last rows are on disk
            import wandb

            teardown = getattr(wandb, "teardown", None)
            if callable(teardown):
                teardown()

    def __enter__(self) -> WandbTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish(0)
        else:
            self.finish(130 if issubclass(exc_type, KeyboardInterrupt) else 1)
