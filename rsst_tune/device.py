"""Device choice and what the device supports (AMP, compile). Never hard-codes `.cuda()`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from rsst_tune.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but CUDA is not available; use --device auto"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available; use --device auto")
    return torch.device(name)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 autocast where the device runs it natively (CUDA with bf16); else None (fp32)."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def describe_device(device: torch.device) -> str:
    """Where a trial ran, for its results: `cuda (NVIDIA H100 80GB HBM3)`, `mps`, `cpu`."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def describe_numerics(amp: torch.dtype | None, compile_mode: str | None) -> str:
    """How a trial's forward ran, for its results: `fp32`, `bf16 autocast`, with
    `, compiled (MODE)` when torch.compile was used."""
    short = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    text = "fp32" if amp is None else f"{short.get(amp, str(amp))} autocast"
    return text if compile_mode is None else f"{text}, compiled ({compile_mode})"


def can_compile(device: torch.device) -> bool:
    return device.type == "cuda"


# torch.compile modes that replay CUDA graphs on a GPU (max-autotune does too, by default)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_forward(model: nn.Module, mode: str) -> Callable[[Tensor], Tensor]:
    """`torch.compile(model, mode=mode)`. In a mode with CUDA graphs (`CUDA_GRAPH_MODES`) every call
    first marks a new step (`torch.compiler.cudagraph_mark_step_begin`), so the graphs may
    reuse the memory of the previous call's outputs: the loop reads each forward's output
    (loss and backward, or the predicted classes) before its next forward, and the
    distillation teacher is a separate, uncompiled module."""
    compiled = torch.compile(model, mode=mode)
    if mode not in CUDA_GRAPH_MODES:
        return compiled

    def forward(x: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        out: Tensor = compiled(x)
        return out

    return forward
