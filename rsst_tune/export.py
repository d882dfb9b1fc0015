"""`rsst-tune export`'s logic: a checkpoint in, an exported model and its `ExportReport` out.

    report = export_checkpoint("runs/demo/state_02.pt", "runs/demo/export")
    print(report.table())

`export_checkpoint` slices the checkpoint's evaluated ticket (`rsst_tune.pruning.slicing`),
checks the outputs, counts params and MACs, times dense against pruned (`rsst_tune.latency`,
unless `measure=False`), and writes DIR/model.pt (`rsst_tune.pruning.exported`) and
DIR/export.json (`report.to_dict()`); with `onnx=True` also DIR/model.onnx, checked and
timed in onnxruntime (`rsst_tune.onnx_export`). It prints nothing; the CLI prints `report.table()`.
`ExportReport.from_dict(json.loads(...))` reads a recorded export.json back unchanged, so a
report can show the numbers measured once instead of timing the model again. `ExportReport`
and `read_report` live in `rsst_tune.export_record` (plain data, no torch) and are importable
from here as before.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.config import DEVICES, TrialConfig
from rsst_tune.data import DataSpec
from rsst_tune.device import resolve_device
from rsst_tune.errors import ConfigError, describe_exception, unknown_choice
from rsst_tune.export_record import REPORT_FORMAT as REPORT_FORMAT
from rsst_tune.export_record import REPORT_VERSION as REPORT_VERSION
from rsst_tune.export_record import ExportReport as ExportReport
from rsst_tune.export_record import Latency
from rsst_tune.export_record import fmt_ms as fmt_ms
from rsst_tune.export_record import read_report as read_report
from rsst_tune.latency import compare_latency
from rsst_tune.onnx_export import (
    ONNX_FILE,
    OnnxError,
    OnnxMismatch,
    export_onnx,
    onnx_latency,
    write_onnx,
)
from rsst_tune.pruning.cost import CostModel, count_params
from rsst_tune.pruning.exported import save_exported
from rsst_tune.pruning.slicing import ATOL, export_model
from rsst_tune.pruning.structure import find_structure

if TYPE_CHECKING:
    from rsst_tune.config import TrialConfig
    from rsst_tune.data import DataSpec

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILE",
    "REPORT_FILE",
    "ExportReport",
    "export_checkpoint",
    "read_report",
]

MODEL_FILE = "model.pt"
REPORT_FILE = "export.json"
CHECK_BATCH = 64  # inputs of the equivalence check


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    measure: bool = True,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 11,
    warmup: int = 3,
    overwrite: bool = False,
    onnx: bool = False,
) -> ExportReport:
    """Export a state checkpoint's ticket to `out_dir`/model.pt and record `out_dir`/export.json.

    The ticket is sliced on CPU, checked against the masked model (raises `ExportError` above
    1e-4) and moved to `device`. With `measure`, dense and pruned are timed on CPU at each
    batch size, and on `device` too when it is not the CPU. A bad checkpoint, a device that
    is not there, an `out_dir` that is a file or not writable, or one that already holds an
    export (unless `overwrite`) is a one-line ConfigError, raised before anything is written.

    With `onnx`, the pruned model is also written as `out_dir`/model.onnx (`write_onnx`:
    dynamic batch axis, onnxruntime's outputs checked against PyTorch's on the 64-input check
    batch) and, with `measure`, dense and pruned ONNX are timed in onnxruntime on CPU (the
    dense ONNX only in a temporary directory). An ONNX failure does not raise: the report's
    `onnx_error` says why, no model.onnx is kept, and the rest of the export stands.
    """

    out = Path(out_dir)
    check_out_dir(out, overwrite=overwrite)
    _check_device_name(device)
    if repeats < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(
            f"export needs repeats >= 1, warmup >= 0 and batch sizes >= 1, got repeats={repeats}, "
            f"warmup={warmup}, batch_sizes={list(batch_sizes)}"
        )
    cfg, spec, model = _load_ticket(checkpoint)
    dev = resolve_device(device)
    sample = (spec.in_chans, spec.img_size, spec.img_size)
    batch = torch.randn(CHECK_BATCH, *sample, generator=torch.Generator().manual_seed(0))
    structure = find_structure(model, target="both", prune_stem=True, example_input=batch[:2])
    result = export_model(model, structure, dev, example=batch)
    cost = CostModel(model, structure, batch[:1])
    pruned_cost = cost.cost(result.kept_counts)
    latency: list[Latency] = []
    if measure:
        cpu = torch.device("cpu")
        pairs = [(model, result.model if dev.type == "cpu" else _copy_to(result.model, cpu), cpu)]
        if dev.type != "cpu":
            pairs.append((_copy_to(model, dev), result.model, dev))
        for dense, pruned, where in pairs:
            latency += compare_latency(
                dense, pruned, sample, where, batch_sizes, repeats=repeats, warmup=warmup
            )

    model_path = out / MODEL_FILE
    check_out_dir(out, overwrite=overwrite)  # again: another export may have finished meanwhile
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    (out / ONNX_FILE).unlink(missing_ok=True)  # an earlier export's (only with `overwrite`)
    save_exported(
        result,
        model_path,
        model_name=cfg.model,
        num_classes=spec.num_classes,
        in_chans=spec.in_chans,
        img_size=spec.img_size,
        meta={
            "checkpoint": str(checkpoint),
            "config": cfg.to_dict(),
            "input": {"shape": list(sample), "mean": list(spec.mean), "std": list(spec.std)},
        },
    )
    report = ExportReport(
        model=cfg.model,
        checkpoint=str(checkpoint),
        file=str(model_path),
        params_dense=count_params(model),
        params_pruned=count_params(result.model),
        params_analytic=pruned_cost.params,
        macs_dense=cost.dense.macs,
        macs_pruned=pruned_cost.macs,
        layers=tuple(result.layers),
        num_heads=dict(result.num_heads),
        max_abs_diff=float(result.max_abs_diff or 0.0),  # set: `example` was given
        atol=ATOL,
        latency=tuple(latency),
        input_shape=sample,
        input_mean=tuple(float(v) for v in spec.mean),
        input_std=tuple(float(v) for v in spec.std),
    )
    if onnx:
        pruned_cpu = (
            result.model if dev.type == "cpu" else _copy_to(result.model, torch.device("cpu"))
        )
        onnx_fields = _onnx_export(
            model,
            pruned_cpu,
            batch,
            out / ONNX_FILE,
            sample,
            batch_sizes if measure else (),
            repeats=repeats,
            warmup=warmup,
        )
        report = dataclasses.replace(report, **onnx_fields)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    fileio.write_text(out / REPORT_FILE, text)  # last: a record exists only when complete
    log.debug("exported %s to %s", checkpoint, model_path)
    return report


def _onnx_export(
    dense: nn.Module,
    pruned: nn.Module,
    batch: torch.Tensor,
    path: Path,
    sample: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """ExportReport's ONNX fields: write and check `path`; time dense vs pruned ONNX at
    `batch_sizes` (none: not timed). Failures become `onnx_error`; nothing raises."""

    threads = torch.get_num_threads()
    fields: dict[str, Any] = {"onnx_threads": threads}
    try:
        fields["onnx"] = write_onnx(pruned, batch[:2], path, check=batch)
    except OnnxMismatch as exc:
        log.warning("ONNX export refused: %s", exc)
        return {**fields, "onnx": exc.check, "onnx_error": str(exc)}
    except (OnnxError, ValueError, RuntimeError) as exc:
        log.warning("ONNX export failed: %s", exc)
        return {**fields, "onnx_error": describe_exception(exc)}
    if not batch_sizes:
        return fields

    try:
        with tempfile.TemporaryDirectory(prefix="rsst-tune-onnx-") as tmp:
            dense_path = Path(tmp) / "dense.onnx"
            fields["onnx_dense_params"] = export_onnx(dense, batch[:2], dense_path)
            fields["onnx_latency"] = tuple(
                onnx_latency(dense_path, path, sample, batch_sizes, repeats=repeats, warmup=warmup)
            )
    except (OnnxError, RuntimeError) as exc:  # the pruned file stands; only the timing is lost
        log.warning("onnxruntime latency not measured: %s", exc)
    return fields


def check_out_dir(out: Path, *, overwrite: bool = False) -> None:
    """A one-line ConfigError for an export directory that is a file, cannot be created or
    written, or already holds an export (unless `overwrite`)."""
    import os

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    held = [name for name in (MODEL_FILE, REPORT_FILE, ONNX_FILE) if (out / name).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"--out {out} already holds an export ({', '.join(held)}); pass --overwrite to "
            "replace it, or choose another --out"
        )
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable")


def _check_device_name(device: str) -> None:
    import re

    if device not in DEVICES and not re.fullmatch(r"cuda:\d{1,3}", device):
        raise unknown_choice("device", device, (*DEVICES, "cuda:N"))


def load_pruned_model(checkpoint: str | Path, *, device: str = "cpu") -> nn.Module:
    """The physically smaller model of a state checkpoint (removed heads, neurons and filters
    sliced out, docs/methods.md §7), checked against the masked model, in eval mode on
    `device`; nothing is written."""
    _check_device_name(device)
    _cfg, spec, model = _load_ticket(checkpoint)
    sample = (spec.in_chans, spec.img_size, spec.img_size)
    batch = torch.randn(CHECK_BATCH, *sample, generator=torch.Generator().manual_seed(0))
    structure = find_structure(model, target="both", prune_stem=True, example_input=batch[:2])
    return export_model(model, structure, resolve_device(device), example=batch).model.eval()


def _load_ticket(checkpoint: str | Path) -> tuple[TrialConfig, DataSpec, nn.Module]:
    """(TrialConfig, DataSpec, the masked model in eval mode on CPU) of a state checkpoint."""
    from rsst_tune.models import create_model

    saved = ckpt.TrialCheckpoint.load(checkpoint)
    cfg = TrialConfig.from_dict(saved.config)
    try:
        spec = DataSpec(**saved.spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{checkpoint}: its dataset spec is not usable ({exc})") from None
    model = create_model(
        cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans, img_size=spec.img_size
    )
    try:
        model.load_state_dict(saved.ticket)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{checkpoint} does not match model {cfg.model}: {first}") from None
    return cfg, spec, model.eval()


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device)
