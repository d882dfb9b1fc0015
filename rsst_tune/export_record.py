"""What export.json holds, as plain data: `ExportReport` and the records inside it
(`LayerReport`, `Latency`, `OnnxCheck`), and `read_report`. No torch, no models: the record
layer and the report read exports with this module alone.

    report = read_report("experiments/NAME/best_exports/<trial>_s<state>/export.json")
    report.mac_ratio, report.latency, report.onnx_file, print(report.table())

The modules that measure and write them re-export their names (`rsst_tune.export`:
`ExportReport`, `read_report`; `rsst_tune.latency`: `Latency`; `rsst_tune.onnx_export`:
`OnnxCheck`; `rsst_tune.pruning.slicing`: `LayerReport`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError

__all__ = [
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "ExportReport",
    "Latency",
    "LayerReport",
    "OnnxCheck",
    "fmt_ms",
    "load_call",
    "read_report",
]

REPORT_FORMAT = "rsst-tune-export-report"
REPORT_VERSION = 1


def load_call(path: str | Path) -> str:
    """The Python call that loads the exported model at `path` (also importable from
    `rsst_tune.pruning.exported`, which defines `load_exported`)."""
    return f"rsst_tune.pruning.exported.load_exported({str(path)!r})"


@dataclass(frozen=True)
class LayerReport:
    """What the export did to one unit group."""

    name: str
    kind: str
    units: int  # before export
    kept: int  # after export
    zero: int  # units whose member slices were all zero
    zero_kept_coupled: int  # zero units a coupling (residual add, norm) kept
    zero_kept_min: int  # zero units kept so the layer keeps at least one unit

    @property
    def removed(self) -> int:
        return self.units - self.kept

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "removed": self.removed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerReport:
        """Read `to_dict()` back (`removed` is derived, so ignored)."""
        try:
            return cls(
                str(data["name"]),
                str(data["kind"]),
                *(int(data[f.name]) for f in fields(cls)[2:]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a layer record: {exc!r}") from None


@dataclass(frozen=True)
class Latency:
    """Milliseconds per forward of the dense and the pruned model on one setting: the median
    of `repeats` timed runs and their interquartile range (0 with fewer than 2 runs), and the
    fastest run (what a latency table predicts, `rsst_tune.latency_model`; None in records made
    before it was recorded)."""

    device: str
    batch: int
    dense_ms: float  # median
    pruned_ms: float  # median
    dense_iqr_ms: float
    pruned_iqr_ms: float
    repeats: int  # timed runs of each model
    inner: int  # forwards per timed run
    dense_min_ms: float | None = None  # the fastest run
    pruned_min_ms: float | None = None
    threads: int | None = None  # torch intra-op threads while timing (None: not recorded)

    @property
    def speedup(self) -> float:
        """dense time / pruned time (> 1 means the pruned model is faster)."""
        return self.dense_ms / self.pruned_ms if self.pruned_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the fields and `speedup` (None when it is not finite)."""
        speedup = self.speedup
        return {**asdict(self), "speedup": speedup if math.isfinite(speedup) else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Latency:
        """Read `to_dict()` back (derived keys such as `speedup` are ignored)."""
        try:
            return cls(
                device=str(data["device"]),
                batch=int(data["batch"]),
                dense_ms=float(data["dense_ms"]),
                pruned_ms=float(data["pruned_ms"]),
                dense_iqr_ms=float(data["dense_iqr_ms"]),
                pruned_iqr_ms=float(data["pruned_iqr_ms"]),
                repeats=int(data["repeats"]),
                inner=int(data["inner"]),
                dense_min_ms=_optional_float(data.get("dense_min_ms")),
                pruned_min_ms=_optional_float(data.get("pruned_min_ms")),
                threads=None if data.get("threads") is None else int(data["threads"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            names = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"not a latency record ({names}): {exc!r}") from None


@dataclass(frozen=True)
class OnnxCheck:
    """One ONNX file and its equivalence check against the PyTorch model it came from."""

    file: str
    opset: int
    export_batch: int  # batch size of the example the graph was exported with
    check_batch: int  # batch size of the check (another size: the batch axis is dynamic)
    max_abs_diff: float  # onnxruntime vs PyTorch on the check batch
    atol: float
    params: int  # weights stored in the file (elements of its initializers)
    export_s: float  # seconds torch.onnx.export took

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol  # False for NaN

    def to_dict(self) -> dict[str, Any]:
        diff = self.max_abs_diff
        return {**asdict(self), "max_abs_diff": diff if math.isfinite(diff) else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnnxCheck:
        """Read `to_dict()` back."""
        try:
            diff = data["max_abs_diff"]
            return cls(
                file=str(data["file"]),
                opset=int(data["opset"]),
                export_batch=int(data["export_batch"]),
                check_batch=int(data["check_batch"]),
                max_abs_diff=math.nan if diff is None else float(diff),
                atol=float(data["atol"]),
                params=int(data["params"]),
                export_s=float(data["export_s"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            names = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"not an ONNX check record ({names}): {exc!r}") from None


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


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
