"""`rsst-tune export`'s logic: a checkpoint in, an exported model and its `ExportReport` out.

    report = export_checkpoint("runs/demo/state_02.pt", "runs/demo/export")
    print(report.table())

`export_checkpoint` slices the checkpoint's evaluated ticket (`rsst_tune.pruning.slicing`),
checks the outputs, counts params and MACs, times dense against pruned (`rsst_tune.latency`,
unless `measure=False`), and writes DIR/model.pt (`rsst_tune.pruning.exported`) and
DIR/export.json (`report.to_dict()`); with `onnx=True` also DIR/model.onnx, checked and
timed in onnxruntime (`rsst_tune.onnx_export`). It prints nothing; the CLI prints `report.table()`.
`ExportReport.from_dict(json.loads(...))` reads a recorded export.json back unchanged, so a
report can show the numbers measured once instead of timing the model again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.errors import ConfigError
from rsst_tune.latency import Latency, compare_latency
from rsst_tune.onnx_export import ONNX_FILE, OnnxCheck, OnnxError, OnnxMismatch
from rsst_tune.pruning.exported import load_call, save_exported
from rsst_tune.pruning.slicing import ATOL, LayerReport, export_model

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
REPORT_FORMAT = "rsst-tune-export-report"
REPORT_VERSION = 1
CHECK_BATCH = 64  # inputs of the equivalence check


@dataclass(frozen=True)
class ExportReport:
    """What one export did and measured; export.json holds `to_dict()`."""

    model: str  # registry name (create_model)
    checkpoint: str  # the state checkpoint exported
    file: str  # the exported model file
    params_dense: int
    params_pruned: int  # counted on the exported model
    params_analytic: int  # CostModel's count for the kept units (equals params_pruned)
    macs_dense: int
    macs_pruned: int
    layers: tuple[LayerReport, ...]
    num_heads: dict[str, int]  # attention module -> heads after export
    max_abs_diff: float  # exported vs masked outputs on the check batch
    atol: float
    latency: tuple[Latency, ...]  # empty when not measured
    input_shape: tuple[int, ...]  # one input, without the batch dimension
    input_mean: tuple[float, ...]  # the model takes inputs normalised with these
    input_std: tuple[float, ...]
    # ONNX (`onnx=True`); None / empty where it was not asked for or not measured
    onnx: OnnxCheck | None = None  # the pruned model's file and its onnxruntime check
    onnx_error: str | None = None  # why no usable model.onnx was written (it was asked for)
    onnx_dense_params: int | None = None  # weights in the dense model's ONNX (when measured)
    onnx_latency: tuple[Latency, ...] = ()  # onnxruntime CPU, dense vs pruned ONNX
    onnx_threads: int | None = None  # onnxruntime intra-op threads (= torch's)

    @property
    def onnx_file(self) -> str | None:
        """The ONNX file written and verified, or None."""
        if self.onnx is None or self.onnx_error is not None or not self.onnx.ok:
            return None
        return self.onnx.file

    def onnx_vs_torch(self, lat: Latency) -> float | None:
        """onnxruntime's pruned ms / PyTorch's pruned ms on CPU at `lat`'s batch size."""
        torch_cpu = [t for t in self.latency if t.device == "cpu" and t.batch == lat.batch]
        if not torch_cpu or torch_cpu[0].pruned_ms <= 0:
            return None
        return lat.pruned_ms / torch_cpu[0].pruned_ms

    @property
    def params_fraction(self) -> float:
        return self.params_pruned / max(self.params_dense, 1)

    @property
    def macs_fraction(self) -> float:
        return self.macs_pruned / max(self.macs_dense, 1)

    @property
    def mac_ratio(self) -> float:
        """dense MACs / pruned MACs: the speed-up that MACs alone would predict."""
        return self.macs_dense / max(self.macs_pruned, 1)

    @property
    def units(self) -> dict[str, tuple[int, int]]:
        """Units per kind: (before, after)."""
        kinds = dict.fromkeys(r.kind for r in self.layers)
        return {
            k: (
                sum(r.units for r in self.layers if r.kind == k),
                sum(r.kept for r in self.layers if r.kind == k),
            )
            for k in kinds
        }

    @property
    def zero_kept_coupled(self) -> int:
        """Zero units kept because a coupling (residual add, norm) spans them."""
        return sum(r.zero_kept_coupled for r in self.layers)

    @property
    def zero_kept_min(self) -> int:
        """Zero units kept so that every layer keeps at least one unit."""
        return sum(r.zero_kept_min for r in self.layers)

    @property
    def load(self) -> str:
        """The Python call that loads the exported model."""
        return load_call(self.file)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the content of export.json); derived values are included."""
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "file": self.file,
            "load": self.load,
            "params": {
                "dense": self.params_dense,
                "pruned": self.params_pruned,
                "fraction": self.params_fraction,
                "analytic_pruned": self.params_analytic,
            },
            "macs": {
                "dense": self.macs_dense,
                "pruned": self.macs_pruned,
                "fraction": self.macs_fraction,
                "ratio": self.mac_ratio,
            },
            "latency": [{**lat.to_dict(), "mac_ratio": self.mac_ratio} for lat in self.latency],
            "units": {k: {"before": b, "after": a} for k, (b, a) in self.units.items()},
            "layers": [r.to_dict() for r in self.layers],
            "zero_units_kept_by_couplings": self.zero_kept_coupled,
            "zero_units_kept_min_one": self.zero_kept_min,
            "num_heads": dict(self.num_heads),
            "max_abs_diff": self.max_abs_diff,
            "atol": self.atol,
            "input": {
                "shape": list(self.input_shape),
                "mean": list(self.input_mean),
                "std": list(self.input_std),
            },
            "onnx": self._onnx_dict(),
        }

    def _onnx_dict(self) -> dict[str, Any] | None:
        if self.onnx is None and self.onnx_error is None:
            return None
        return {
            "file": self.onnx_file,
            "check": None if self.onnx is None else self.onnx.to_dict(),
            "ok": self.onnx_file is not None,
            "error": self.onnx_error,
            "params": {
                "dense": self.onnx_dense_params,
                "pruned": None if self.onnx is None else self.onnx.params,
            },
            "threads": self.onnx_threads,
            "latency": [
                {**lat.to_dict(), "runtime": "onnxruntime", "vs_torch": self.onnx_vs_torch(lat)}
                for lat in self.onnx_latency
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportReport:
        """Read `to_dict()` back; another format or version is a one-line ConfigError."""
        if not isinstance(data, Mapping) or data.get("format") != REPORT_FORMAT:
            raise ConfigError("not an rsst-tune export record (export.json)")
        if data.get("version") != REPORT_VERSION:
            raise ConfigError(
                f"export record version {data.get('version')!r} is not {REPORT_VERSION} "
                "(export the checkpoint again)"
            )
        try:
            params, macs, inp = data["params"], data["macs"], data["input"]
            return cls(
                model=str(data["model"]),
                checkpoint=str(data["checkpoint"]),
                file=str(data["file"]),
                params_dense=int(params["dense"]),
                params_pruned=int(params["pruned"]),
                params_analytic=int(params["analytic_pruned"]),
                macs_dense=int(macs["dense"]),
                macs_pruned=int(macs["pruned"]),
                layers=tuple(LayerReport.from_dict(r) for r in data["layers"]),
                num_heads={str(k): int(v) for k, v in data["num_heads"].items()},
                max_abs_diff=float(data["max_abs_diff"]),
                atol=float(data["atol"]),
                latency=tuple(Latency.from_dict(lat) for lat in data["latency"]),
                input_shape=tuple(int(v) for v in inp["shape"]),
                input_mean=tuple(float(v) for v in inp["mean"]),
                input_std=tuple(float(v) for v in inp["std"]),
                **_onnx_fields(data.get("onnx")),  # absent in records before ONNX
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"incomplete export record: {exc!r}") from None

    def table(self) -> str:
        """The export as text: sizes, latency (median and IQR), the check, how to load."""
        lines = [
            f"rsst-tune export: {self.model} from {self.checkpoint} -> {self.file}",
            f"{'':<8}{'dense':>14}{'pruned':>14}{'fraction':>10}",
            f"{'params':<8}{self.params_dense:>14,}{self.params_pruned:>14,}"
            f"{self.params_fraction:>10.3f}",
            f"{'MACs':<8}{self.macs_dense:>14,}{self.macs_pruned:>14,}{self.macs_fraction:>10.3f}",
            "",
        ]
        if self.latency:
            lines.append(
                f"{'device':<8}{'batch':>6}{'dense ms (IQR)':>20}{'pruned ms (IQR)':>20}"
                f"{'speed-up':>10}{'MAC ratio':>11}"
            )
            for lat in self.latency:
                lines.append(
                    f"{lat.device:<8}{lat.batch:>6}"
                    f"{fmt_ms(lat.dense_ms, lat.dense_iqr_ms):>20}"
                    f"{fmt_ms(lat.pruned_ms, lat.pruned_iqr_ms):>20}"
                    f"{lat.speedup:>9.2f}x{self.mac_ratio:>10.2f}x"
                )
            runs = "/".join(str(r) for r in sorted({lat.repeats for lat in self.latency}))
            lines.append(
                f"ms per forward: median (interquartile range) of {runs} timed runs per model, "
                "dense and pruned alternating"
            )
        else:
            lines.append(f"latency not measured (MAC ratio {self.mac_ratio:.2f}x)")
        lines += [
            "",
            f"zero units kept by couplings: {self.zero_kept_coupled}; max abs output "
            f"difference {self.max_abs_diff:.2e} (<= {self.atol:g})",
            f"load with: {self.load}",
        ]
        if self.onnx is not None or self.onnx_error is not None:
            lines += ["", *self.onnx_lines()]
        return "\n".join(lines)

    def onnx_lines(self) -> list[str]:
        """The ONNX part of `table()`: the file, its check, onnxruntime's latency."""
        check = self.onnx
        if check is not None and self.onnx_file is not None:
            dense = "" if self.onnx_dense_params is None else f"{self.onnx_dense_params:,} -> "
            lines = [
                f"ONNX: {check.file} (opset {check.opset}, dynamic batch axis; weights "
                f"{dense}{check.params:,}; exported in {check.export_s:.1f}s)",
                f"onnxruntime vs PyTorch: max abs difference {check.max_abs_diff:.2e} "
                f"(<= {check.atol:g}) on a batch of {check.check_batch} "
                f"(exported with {check.export_batch})",
            ]
        else:
            lines = [f"ONNX not written: {self.onnx_error or 'unknown reason'}"]
        if self.onnx_latency:
            lines.append(
                f"{'onnxruntime':<12}{'batch':>6}{'dense ms (IQR)':>20}{'pruned ms (IQR)':>20}"
                f"{'speed-up':>10}{'vs torch':>10}"
            )
            for lat in self.onnx_latency:
                ratio = self.onnx_vs_torch(lat)
                lines.append(
                    f"{'cpu':<12}{lat.batch:>6}"
                    f"{fmt_ms(lat.dense_ms, lat.dense_iqr_ms):>20}"
                    f"{fmt_ms(lat.pruned_ms, lat.pruned_iqr_ms):>20}"
                    f"{lat.speedup:>9.2f}x"
                    f"{'-' if ratio is None else f'{ratio:.2f}x':>10}"
                )
            lines.append(
                f"onnxruntime CPUExecutionProvider, {self.onnx_threads} intra-op thread(s); "
                "vs torch = onnxruntime pruned ms / PyTorch pruned ms on CPU"
            )
        elif check is not None and self.onnx_file is not None:
            lines.append("onnxruntime latency not measured")
        return lines


def _onnx_fields(onnx: Mapping[str, Any] | None) -> dict[str, Any]:
    """ExportReport's ONNX fields from export.json's `onnx` (None: ONNX not asked for)."""
    if onnx is None:
        return {}

    def opt_int(value: Any) -> int | None:
        return None if value is None else int(value)

    check = onnx["check"]
    return {
        "onnx": None if check is None else OnnxCheck.from_dict(check),
        "onnx_error": None if onnx["error"] is None else str(onnx["error"]),
        "onnx_dense_params": opt_int(onnx["params"]["dense"]),
        "onnx_latency": tuple(Latency.from_dict(lat) for lat in onnx["latency"]),
        "onnx_threads": opt_int(onnx["threads"]),
    }


def fmt_ms(median: float, spread: float) -> str:
    """`1.130 (0.021)`: a median and its interquartile range, in ms."""
    return f"{median:.3f} ({spread:.3f})"


def read_report(path: str | Path) -> ExportReport:
    """An export.json read back; missing, unreadable or other files are a ConfigError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"export record not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"export record {path} is unreadable: {exc}") from None
    try:
        return ExportReport.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
    from rsst_tune.device import resolve_device
    from rsst_tune.pruning.cost import CostModel, count_params
    from rsst_tune.pruning.structure import find_structure

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
    from rsst_tune.errors import describe_exception
    from rsst_tune.onnx_export import onnx_latency, write_onnx

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
    from rsst_tune.onnx_export import export_onnx

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

    from rsst_tune.config import DEVICES
    from rsst_tune.errors import unknown_choice

    if device not in DEVICES and not re.fullmatch(r"cuda:\d{1,3}", device):
        raise unknown_choice("device", device, (*DEVICES, "cuda:N"))


def _load_ticket(checkpoint: str | Path) -> tuple[TrialConfig, DataSpec, nn.Module]:
    """(TrialConfig, DataSpec, the masked model in eval mode on CPU) of a state checkpoint."""
    from rsst_tune.config import TrialConfig
    from rsst_tune.data import DataSpec
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
