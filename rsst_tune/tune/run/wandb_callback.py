"""Ray's W&B logger without the API key in Ray's runtime_env.

Ray's `WandbLoggerCallback` starts its logging actors with
`runtime_env={"env_vars": {"WANDB_API_KEY": ...}}`; Ray then writes that runtime_env, key
included, to its session logs (`runtime_env_agent.log`, world-readable). `KeylessWandbCallback`
starts them with no runtime_env: the actors run on the driver's node and take the environment
of its raylet. With a local cluster (the default) that raylet is started by the sweep, from
the driver's environment, so `--wandb online` finds `WANDB_API_KEY` there; with `--address`
the cluster's raylet must have been started with it. `--wandb offline` needs no key: the
runner removes it from the environment before Ray starts (`runner._wandb_env`).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node


class _FlushingLoggingActor(_WandbLoggingActor):
    """Ray's W&B logging actor, which also waits for W&B's service to write and close the
    run's files (`wandb.teardown`) before its `run` returns: Ray kills the actor as soon as
    `run` returns, and an offline run file whose service was killed first can be left
    without its records."""

    def run(self) -> None:
        super().run()  # type: ignore[no-untyped-call]
        teardown = getattr(self._wandb, "teardown", None)
        if callable(teardown):
            teardown()


class KeylessWandbCallback(WandbLoggerCallback):
    """`WandbLoggerCallback` whose logging actors get no `env_vars` (see the module doc) and
    wait for W&B's service to flush each run (`_FlushingLoggingActor`)."""

    _logger_actor_cls = _FlushingLoggingActor

    def _start_logging_actor(
        self, trial: Any, exclude_results: list[str], **wandb_init_kwargs: Any
    ) -> None:
        if not self._remote_logger_class:
            on_this_node: dict[str, Any] = dict(_force_on_current_node())  # type: ignore[arg-type]
            remote: Any = ray.remote(
                num_cpus=0, max_restarts=-1, max_task_retries=-1, **on_this_node
            )(self._logger_actor_cls)
            self._remote_logger_class = remote
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)
