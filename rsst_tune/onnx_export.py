"""The physically pruned model as ONNX, checked and timed in onnxruntime (docs/methods.md §7).

    check = write_onnx(pruned, batch[:2], "export/model.onnx", check=batch)   # OnnxCheck
    lats = onnx_latency("dense.onnx", "export/model.onnx", (1, 8, 8), (1, 64))

`write_onnx` exports a model (CPU, float32, eval mode) with `torch.onnx.export(dynamo=True)`
at opset `OPSET`, the batch axis dynamic (input `input`, output `logits`), writes the file
atomically, loads it in an onnxruntime CPU session and compares its outputs with PyTorch's on
`check`, a batch of another size than the export's example (so the dynamic axis is exercised).
A difference above `atol` (1e-4, as the slicing check) removes the file and raises
`OnnxMismatch`; an exporter failure raises `OnnxError`. `onnx_latency` times two ONNX files
side by side with `rsst_tune.latency.compare_forwards` (median and IQR, alternating runs).

Why dynamo=True: it is torch's supported exporter (the TorchScript one is deprecated and traces
Python values such as timm's shape asserts into constants, with TracerWarnings); it costs
about 2-3 s per small model on one CPU thread (the TorchScript exporter: 0.1-0.3 s), and its
optimiser matters (constant folding makes onnxruntime 4x faster on resnet20). Sessions use
the CPUExecutionProvider with as many intra-op threads as torch (`torch.get_num_threads()`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rsst_tune import fileio
from rsst_tune.export_record import Latency
from rsst_tune.export_record import OnnxCheck as OnnxCheck
from rsst_tune.latency import compare_forwards
from rsst_tune.pruning.slicing import ATOL, ExportError, device_of

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

__all__ = [
    "ONNX_FILE",
    "OPSET",
    "OnnxCheck",
    "OnnxError",
    "OnnxMismatch",
    "OrtForward",
    "export_onnx",
    "onnx_latency",
    "onnx_params",
    "ort_session",
    "write_onnx",
]

ONNX_FILE = "model.onnx"
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxError(ExportError):
    """The model could not be exported to ONNX or run in onnxruntime."""


class OnnxMismatch(OnnxError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""

    def __init__(self, message: str, check: OnnxCheck) -> None:
        super().__init__(message)
        self.check = check


def export_onnx(model: nn.Module, example: Tensor, path: str | Path, *, opset: int = OPSET) -> int:
    """Write `model` (on CPU, float32) as ONNX at `path`, atomically, in eval mode and with a
    dynamic batch axis; returns the weights stored (initializer elements).

    `example` must have a batch of at least 2 (the exporter specialises a batch of 1).
    """
    if example.shape[0] < 2:
        raise ValueError(f"export_onnx needs an example batch of >= 2, got {example.shape[0]}")
    modes = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # the exporter's own deprecation and tracing chatter
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                optimize=True,
                verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True with f=None returns one
                raise OnnxError("torch.onnx.export returned no program")
            proto = program.model_proto
    except OnnxError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        raise OnnxError(f"torch.onnx.export failed: {type(exc).__name__}: {first}") from exc
    finally:
        model.train(modes)
    data = proto.SerializeToString()
    fileio.atomic_write(path, lambda fh: fh.write(data))
    return _initializer_elements(proto)


def _initializer_elements(proto: Any) -> int:
    return sum(math.prod(int(d) for d in init.dims) for init in proto.graph.initializer)


def onnx_params(path: str | Path) -> int:
    """Weights stored in an ONNX file (elements of its initializers)."""
    import onnx

    return _initializer_elements(onnx.load(str(path), load_external_data=False))


def ort_session(path: str | Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session with `threads` intra-op threads (default: torch's count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(f"onnxruntime cannot load {path}: {first}") from exc


class OrtForward:
    """An onnxruntime session called like a model: a CPU float32 batch in, logits out."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input: arr})[:1]
        return torch.from_numpy(out)


def write_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | Path,
    *,
    check: Tensor | None = None,
    atol: float = ATOL,
    opset: int = OPSET,
) -> OnnxCheck:
    """Export `model` to `path` (`export_onnx`) and check onnxruntime against PyTorch.

    `check` (default: `example` repeated to one more row) is run through both; its batch size
    should differ from `example`'s. Above `atol` (or NaN) the file is removed and
    `OnnxMismatch` raised (its `check` holds the numbers); export failures are `OnnxError`.
    """
    path = Path(path)
    if device_of(model).type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    example = example.to("cpu", torch.float32)
    if check is None:
        check = torch.cat([example, example[:1]])
    check = check.to("cpu", torch.float32)
    t0 = time.perf_counter()
    params = export_onnx(model, example, path, opset=opset)
    seconds = time.perf_counter() - t0
    try:
        got = OrtForward(ort_session(path))(check)
    except OnnxError:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(f"onnxruntime fails on {path}: {first}") from exc
    modes = model.training
    model.eval()
    try:
        with torch.inference_mode():
            want = model(check).float()
    finally:
        model.train(modes)
    diff = (got - want).abs().max().item() if got.shape == want.shape else math.nan
    result = OnnxCheck(
        file=str(path),
        opset=opset,
        export_batch=int(example.shape[0]),
        check_batch=int(check.shape[0]),
        max_abs_diff=float(diff),
        atol=atol,
        params=params,
        export_s=seconds,
    )
    if not result.ok:
        path.unlink(missing_ok=True)
        what = (
            f"max abs difference {diff:.3g} > {atol:g}"
            if got.shape == want.shape
            else f"output shape {tuple(got.shape)} != {tuple(want.shape)}"
        )
        raise OnnxMismatch(
            f"onnxruntime's outputs differ from PyTorch's ({what} on a batch of "
            f"{result.check_batch}); {path.name} was not kept",
            result,
        )
    log.debug("onnx %s: max abs difference %.3g, %.2fs", path, diff, seconds)
    return result


def onnx_latency(
    dense: str | Path,
    pruned: str | Path,
    sample_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    repeats: int = 11,
    warmup: int = 3,
    min_run_s: float = 0.02,
    threads: int | None = None,
) -> list[Latency]:
    """onnxruntime CPU latency of two ONNX files (dense and pruned) at each batch size."""
    return compare_forwards(
        OrtForward(ort_session(dense, threads)),
        OrtForward(ort_session(pruned, threads)),
        sample_shape,
        torch.device("cpu"),
        batch_sizes,
        repeats=repeats,
        warmup=warmup,
        min_run_s=min_run_s,
    )
