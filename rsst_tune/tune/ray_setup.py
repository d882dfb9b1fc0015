"""Ray for a sweep: a quiet local cluster on 127.0.0.1, or a check that `--address` answers.

prepare_ray_env(address)    # before `import ray`: the environment a quiet Ray needs
started = init_ray(address) # True when this call started (or joined) Ray: shut it down
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from rsst_tune.errors import ConfigError


def prepare_ray_env(address: str | None) -> None:
    """Environment for a quiet local Ray; must run before `import ray` to take full effect."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the console prints one line
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # A local cluster on the loopback address: Ray uses 127.0.0.1 as the node IP. Forced
        # (not setdefault): an inherited "1" would bind an unauthenticated cluster to the LAN.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def init_ray(address: str | None) -> bool:
    """Connect to `address` or start a local cluster; True when this call started Ray.

    A Ray already initialised in this process (`ray.init` called by the caller, e.g. tests
    sharing one cluster) is used as it is, and False is returned.
    """
    prepare_ray_env(address)
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
        return True
    check_address(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    return True


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (a TCP connect with a timeout) instead of letting ray.init retry for minutes."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: nothing answers ({exc.strerror or exc}); is the cluster up?"
        ) from None
