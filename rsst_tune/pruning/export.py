"""Physical export of a structured ticket (ALGORITHMS.md §7).

`export_model(model, structure, device)` returns a physically smaller copy of a masked model:
a unit (head, MLP neuron, conv filter) whose member slices (`structure.Member`) are all zero
is sliced out of every parameter that holds it: the q, k and v rows of `attn.qkv` (weight and
bias) and the input columns of `attn.proj` (the block's `num_heads` and `attn_dim` shrink,
`head_dim` stays); the rows of `mlp.fc1` and columns of `mlp.fc2`; a conv's output channels,
its BatchNorm (parameters and running statistics) and the input channels of the layers that
read them (`UnitGroup.consumers`). Units a coupling keeps (a conv whose channels reach a
residual add, an attention block with a norm over its heads) stay and are counted, and a layer
keeps at least one unit (a zero one if all are zero) so every module keeps a valid shape.

Removing a zero unit does not change the outputs: a zero head has zero values, so its
attention output is zero whatever its softmax; a zero neuron's fc1 output is act(0) = 0 for
GELU/ReLU; a zero filter's BatchNorm output is 0 · x̂ + 0. `check_equivalence` verifies it on
a batch (max abs difference ≤ 1e-4 in float32, eval mode) and raises `ExportError` otherwise.

The saved file holds only tensors and plain data, so it loads with `weights_only=True`::

    from rsst_tune.pruning.export import load_exported
    model = load_exported("export/model.pt")     # an nn.Module in eval mode, on CPU

which rebuilds the architecture with `create_model`, shrinks it to the recorded widths and
loads the state dict. `export_command` is `rsst-tune export CHECKPOINT --out DIR`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune import checkpoint as ckpt
from rsst_tune.errors import ConfigError
from rsst_tune.latency import Latency, compare_latency
from rsst_tune.pruning.cost import Cost, CostModel, count_params
from rsst_tune.pruning.structure import Member, Structure, UnitGroup, find_structure

log = logging.getLogger(__name__)

__all__ = [
    "ATOL",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MODEL_FILE",
    "REPORT_FILE",
    "ExportError",
    "ExportResult",
    "LayerReport",
    "check_equivalence",
    "export_command",
    "export_model",
    "load_exported",
    "max_abs_diff",
    "save_exported",
]

EXPORT_FORMAT = "rsst-tune-export"
EXPORT_VERSION = 1
MODEL_FILE = "model.pt"
REPORT_FILE = "export.json"
ATOL = 1e-4
LOAD_CALL = "rsst_tune.pruning.export.load_exported({path!r})"


class ExportError(RuntimeError):
    """The exported model does not compute what the masked model computes (a bug, not input)."""


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


@dataclass
class ExportResult:
    """The physically pruned model and what was removed from it."""

    model: nn.Module
    layers: list[LayerReport]
    keep: dict[str, Tensor]  # group name -> bool [num_units] of the units kept (CPU)
    num_heads: dict[str, int]  # attention module -> heads after export
    max_abs_diff: float | None = None

    @property
    def kept_counts(self) -> dict[str, int]:
        return {r.name: r.kept for r in self.layers}

    @property
    def zero_kept_coupled(self) -> int:
        return sum(r.zero_kept_coupled for r in self.layers)

    @property
    def zero_kept_min(self) -> int:
        return sum(r.zero_kept_min for r in self.layers)


# --------------------------------------------------------------------------- slicing
@dataclass(frozen=True)
class _Cut:
    """Keep `index` along axis `sub_axis` of parameter dim `dim` viewed as `sub_shape`."""

    dim: int
    sub_shape: tuple[int, ...]
    sub_axis: int
    index: Tensor


def _cut(member: Member, shape: torch.Size, index: Tensor) -> _Cut:
    """Map a member's (view, axis) onto the parameter dim that holds its units."""
    view, start = member.view, 0
    for d, size in enumerate(shape):
        end = start
        if d == len(shape) - 1:
            end = len(view)
        else:
            while end < len(view) and math.prod(view[start:end]) < size:
                end += 1
        if math.prod(view[start:end]) != size:
            break
        if start <= member.axis < end:
            return _Cut(d, tuple(view[start:end]), member.axis - start, index)
        start = end
    raise ExportError(f"{member.param}: view {view} does not match shape {tuple(shape)}")


def _apply_cut(t: Tensor, cut: _Cut) -> Tensor:
    shape = list(t.shape)
    d = cut.dim
    expanded = t.reshape(shape[:d] + list(cut.sub_shape) + shape[d + 1 :])
    kept = expanded.index_select(d + cut.sub_axis, cut.index.to(t.device))
    shape[d] = math.prod(kept.shape[d : d + len(cut.sub_shape)])
    return kept.reshape(shape).contiguous()


def _owner(model: nn.Module, param: str) -> tuple[nn.Module, str]:
    mod_name, _, leaf = param.rpartition(".")
    return model.get_submodule(mod_name), leaf


def _replace_tensor(module: nn.Module, leaf: str, value: Tensor) -> None:
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(
            value, requires_grad=old.requires_grad if old is not None else True
        )
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:  # pragma: no cover - names come from named_parameters/state_dict
        raise ExportError(f"{type(module).__name__} has no tensor {leaf!r}")


def _is_attention(m: nn.Module) -> bool:
    return isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(
        getattr(m, "num_heads", None), int
    )


def _sync_attributes(model: nn.Module, num_heads: Mapping[str, int]) -> None:
    """Make every module's size attributes agree with its (possibly sliced) tensors."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = int(m.weight.shape[0]), int(m.weight.shape[1])
        elif isinstance(m, nn.Conv2d):
            m.out_channels = int(m.weight.shape[0])
            m.in_channels = int(m.weight.shape[1]) * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:
                m.num_features = int(ref.shape[0])
        if name in num_heads and _is_attention(m):
            heads = int(num_heads[name])
            m.num_heads = heads
            if hasattr(m, "attn_dim"):
                m.attn_dim = heads * int(m.head_dim)  # type: ignore[operator]


def _coupling(model: nn.Module, group: UnitGroup) -> str | None:
    """Why a group's zero units cannot be sliced out, or None when they can."""
    if not group.removable:
        return "its channels reach a residual add or an untraced op"
    mod = model.get_submodule(group.name)
    norm = getattr(mod, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        return "a norm layer spans all its units"
    if group.kind == "neuron":
        fc1, fc2 = getattr(mod, "fc1", None), getattr(mod, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)) or (
            fc1.out_features != fc2.in_features
        ):
            return "fc1 and fc2 widths differ (gated MLP)"
    return None


def _group_cuts(
    model: nn.Module, group: UnitGroup, index: Tensor, params: Mapping[str, Tensor]
) -> list[tuple[str, _Cut]]:
    """Every tensor slice that holds the group's units: members, consumers, BN stats, gate."""
    cuts = [
        (m.param, _cut(m, params[m.param].shape, index)) for m in group.members + group.consumers
    ]
    for m in group.members:
        owner, leaf = _owner(model, m.param)
        if isinstance(owner, nn.modules.batchnorm._NormBase) and leaf == "weight":
            prefix = m.param.rpartition(".")[0]
            for buf in ("running_mean", "running_var"):
                if getattr(owner, buf, None) is not None:
                    cuts.append((f"{prefix}.{buf}", _Cut(0, (group.num_units,), 0, index)))
    if group.kind == "head":
        gate = getattr(model.get_submodule(group.name), "gate", None)
        if isinstance(gate, nn.Linear):
            d, h = group.unit_dim, group.num_units
            cuts.append((f"{group.name}.gate.weight", _Cut(0, (h, d), 0, index)))
            if gate.bias is not None:
                cuts.append((f"{group.name}.gate.bias", _Cut(0, (h, d), 0, index)))
    return cuts


@torch.no_grad()
def zero_units(model: nn.Module, group: UnitGroup) -> Tensor:
    """bool [num_units]: True where every member slice of the unit is zero."""
    params = dict(model.named_parameters())
    device = params[group.members[0].param].device
    alive = torch.zeros(group.num_units, dtype=torch.bool, device=device)
    for m in group.members:
        alive |= m.per_unit(params[m.param] != 0, reduce="any")
    return ~alive


@torch.no_grad()
def export_model(
    model: nn.Module,
    structure: Structure,
    device: torch.device | str,
    *,
    example: Tensor | None = None,
    atol: float = ATOL,
) -> ExportResult:
    """A physically smaller copy of the masked `model` (left unchanged), in eval mode on `device`.

    With `example` (a normalised input batch), the copy's outputs are checked against the
    masked model's on CPU in float32 (`check_equivalence`, raises `ExportError` above `atol`);
    the difference is in `max_abs_diff`.
    """
    device = torch.device(device)
    cpu = torch.device("cpu")
    pruned = copy.deepcopy(model).to(cpu).eval()  # sliced and checked on CPU, then moved
    params: dict[str, Tensor] = dict(pruned.named_parameters())
    params.update(dict(pruned.named_buffers()))
    reports: list[LayerReport] = []
    keep_all: dict[str, Tensor] = {}
    cuts: dict[str, list[_Cut]] = {}
    num_heads = {n: int(m.num_heads) for n, m in pruned.named_modules() if _is_attention(m)}
    for g in structure.groups:
        zero = zero_units(pruned, g)
        n_zero = int(zero.sum())
        reason = _coupling(pruned, g) if n_zero else None
        keep = torch.ones_like(zero) if reason else ~zero
        kept_min = 0
        if not bool(keep.any()):  # every unit zero: keep one so the layer keeps a shape
            keep[0] = True
            kept_min = 1
        if reason:
            log.info("%s: %d zero %ss kept (%s)", g.name, n_zero, g.kind, reason)
        kept = int(keep.sum())
        reports.append(
            LayerReport(
                g.name, g.kind, g.num_units, kept, n_zero, n_zero if reason else 0, kept_min
            )
        )
        keep_all[g.name] = keep.cpu()
        if g.kind == "head" and g.name in num_heads:
            num_heads[g.name] = kept
        if kept == g.num_units:
            continue
        index = keep.nonzero().flatten()
        for pname, cut in _group_cuts(pruned, g, index, params):
            cuts.setdefault(pname, []).append(cut)
    for pname, plist in cuts.items():
        dims = [c.dim for c in plist]
        if len(set(dims)) != len(dims):
            raise ExportError(f"{pname}: two unit groups slice the same dimension {dims}")
        owner, leaf = _owner(pruned, pname)
        t = getattr(owner, leaf).detach()
        for c in plist:
            t = _apply_cut(t, c)
        _replace_tensor(owner, leaf, t)
    _sync_attributes(pruned, num_heads)
    diff = None
    if example is not None:  # float32 on CPU: no TF32 or reduced-precision kernels
        masked = model if _device_of(model) == cpu else copy.deepcopy(model).to(cpu)
        diff = check_equivalence(masked, pruned, example.to(cpu), atol=atol)
    return ExportResult(pruned.to(device), reports, keep_all, num_heads, diff)


# --------------------------------------------------------------------------- equivalence
def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """max |a(x) − b(x)| in eval mode (each model on its own device, x moved to it)."""
    modes = (a.training, b.training)
    a.eval()
    b.eval()
    try:
        with torch.inference_mode():
            ya = a(x.to(_device_of(a))).float()
            yb = b(x.to(_device_of(b))).float().to(ya.device)
    finally:
        a.train(modes[0])
        b.train(modes[1])
    if ya.shape != yb.shape:
        raise ExportError(f"output shapes differ: {tuple(ya.shape)} vs {tuple(yb.shape)}")
    return float((ya - yb).abs().max()) if ya.numel() else 0.0


def check_equivalence(
    masked: nn.Module, exported: nn.Module, x: Tensor, atol: float = ATOL
) -> float:
    """The max abs output difference; raises `ExportError` if it exceeds `atol` (or is NaN)."""
    try:
        diff = max_abs_diff(masked, exported, x)
    except ExportError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported model fails on the check batch: {first}") from exc
    if not diff <= atol:
        raise ExportError(
            f"exported model differs from the masked model: max abs difference {diff:.3g} > "
            f"{atol:g} on a batch of {x.shape[0]}"
        )
    log.debug("export equivalence: max abs difference %.3g", diff)
    return diff


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- save / load
def save_exported(
    result: ExportResult,
    path: str | Path,
    *,
    model_name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the pruned model: its architecture as data and its state dict (CPU tensors).

    `model_name` must rebuild the dense architecture through `create_model`. Load it with
    `load_exported(path)`.
    """
    blob = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": model_name,
        "model_kwargs": {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size},
        "num_heads": dict(result.num_heads),
        "state_dict": {
            k: v.detach().to("cpu", copy=True) for k, v in result.model.state_dict().items()
        },
        "meta": dict(meta or {}),
    }
    path = Path(path)
    ckpt.atomic_save(blob, path)
    return path


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by `save_exported` / `rsst-tune export` (eval mode).

    Safe to call on untrusted files: it reads with `torch.load(weights_only=True)`, then
    rebuilds the architecture with `create_model`, shrinks it to the saved shapes and loads
    the state dict strictly.
    """
    from rsst_tune.models import create_model

    blob = ckpt.load(path)
    if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{path} is not an rsst-tune export (write one with `rsst-tune export`)")
    if blob.get("version") != EXPORT_VERSION:
        raise ConfigError(f"{path}: export version {blob.get('version')} is not {EXPORT_VERSION}")
    model = create_model(blob["model"], **blob["model_kwargs"])
    state: dict[str, Tensor] = blob["state_dict"]
    _resize_like(model, state, blob["num_heads"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path} does not fit model {blob['model']!r}: {first}") from None
    return model.to(map_location).eval()


@torch.no_grad()
def _resize_like(
    model: nn.Module, state: Mapping[str, Tensor], num_heads: Mapping[str, int]
) -> None:
    """Give every tensor of `model` the shape it has in `state` (values come from load)."""
    for name, current in model.state_dict().items():
        saved = state.get(name)
        if saved is None or saved.shape == current.shape:
            continue
        owner, leaf = _owner(model, name)
        _replace_tensor(owner, leaf, torch.empty(saved.shape, dtype=saved.dtype))
    _sync_attributes(model, num_heads)


# --------------------------------------------------------------------------- report
def export_report(
    result: ExportResult,
    dense_cost: Cost,
    pruned_cost: Cost,
    dense_params: int,
    latencies: Sequence[Latency],
) -> dict[str, Any]:
    """The content of export.json (plain data)."""
    pruned_params = count_params(result.model)
    mac_ratio = dense_cost.macs / max(pruned_cost.macs, 1)
    return {
        "params": {
            "dense": dense_params,
            "pruned": pruned_params,
            "fraction": pruned_params / max(dense_params, 1),
            "analytic_pruned": pruned_cost.params,
        },
        "macs": {
            "dense": dense_cost.macs,
            "pruned": pruned_cost.macs,
            "fraction": pruned_cost.macs / max(dense_cost.macs, 1),
            "ratio": mac_ratio,
        },
        "latency": [{**lat.to_dict(), "mac_ratio": mac_ratio} for lat in latencies],
        "speedup": {f"{lat.device}@{lat.batch}": lat.speedup for lat in latencies},
        "units": {
            kind: {
                "before": sum(r.units for r in result.layers if r.kind == kind),
                "after": sum(r.kept for r in result.layers if r.kind == kind),
            }
            for kind in dict.fromkeys(r.kind for r in result.layers)
        },
        "layers": [r.to_dict() for r in result.layers],
        "zero_units_kept_by_couplings": result.zero_kept_coupled,
        "zero_units_kept_min_one": result.zero_kept_min,
        "num_heads": dict(result.num_heads),
        "max_abs_diff": result.max_abs_diff,
        "atol": ATOL,
    }


def _table(report: Mapping[str, Any]) -> str:
    p, m = report["params"], report["macs"]
    lines = [
        f"{'':<8}{'dense':>14}{'pruned':>14}{'fraction':>10}",
        f"{'params':<8}{p['dense']:>14,}{p['pruned']:>14,}{p['fraction']:>10.3f}",
        f"{'MACs':<8}{m['dense']:>14,}{m['pruned']:>14,}{m['fraction']:>10.3f}",
        "",
        f"{'device':<8}{'batch':>6}{'dense ms':>11}{'pruned ms':>11}"
        f"{'speed-up':>10}{'MAC ratio':>11}",
    ]
    for lat in report["latency"]:
        lines.append(
            f"{lat['device']:<8}{lat['batch']:>6}{lat['dense_ms']:>11.3f}{lat['pruned_ms']:>11.3f}"
            f"{lat['speedup']:>9.2f}x{lat['mac_ratio']:>10.2f}x"
        )
    lines.append("")
    lines.append(
        f"zero units kept by couplings: {report['zero_units_kept_by_couplings']}; "
        f"max abs output difference {report['max_abs_diff']:.2e} (<= {report['atol']:g})"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- command
def _spec_of(state: Mapping[str, Any], cfg: Any) -> tuple[Any, Tensor | None]:
    """(DataSpec, a test batch or None): from the checkpoint when it holds a spec, else the data."""
    from rsst_tune.data import DataSpec, DeviceData, load_dataset

    saved = state.get("spec")
    if isinstance(saved, Mapping):
        try:
            return DataSpec(**saved), None
        except TypeError:
            log.debug("checkpoint spec %r not usable; loading the dataset", saved)
    bundle = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, download=False)
    batch = next(DeviceData(bundle.test, bundle.spec, "cpu").eval_batches(64))[0]
    return bundle.spec, batch


def export_command(
    checkpoint: str | Path,
    out: str | Path,
    device: str = "auto",
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 11,
    show: bool = True,
) -> int:
    """`rsst-tune export CHECKPOINT --out DIR`: write DIR/model.pt and DIR/export.json."""
    from rsst_tune.config import TrialConfig
    from rsst_tune.device import resolve_device
    from rsst_tune.models import create_model

    state = ckpt.load(checkpoint)
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("model"), dict)
    ):
        raise ConfigError(f"{checkpoint} is not an rsst-tune state checkpoint (state_XX.pt)")
    cfg = TrialConfig.from_dict(state["config"])
    dev = resolve_device(device)
    weights = state.get("ticket")
    next_state = state.get("next_state")
    if not isinstance(weights, dict):  # an older checkpoint without the evaluated ticket
        weights = state["model"]
        if isinstance(next_state, int) and next_state < cfg.pruning_times:
            log.warning(
                "%s is not the last state and holds no ticket: exporting the rewound weights "
                "prepared for state %d",
                checkpoint,
                next_state,
            )
    spec, batch = _spec_of(state, cfg)
    model = create_model(
        cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans, img_size=spec.img_size
    )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{checkpoint} does not match model {cfg.model}: {first}") from None
    masks = state.get("M") or {}
    if weights is state["model"]:  # a ticket is exactly as evaluated; the rewound weights need M
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks and masks[name].shape == p.shape:
                    p.mul_(masks[name].to(p.dtype))
    model.eval()
    sample = (spec.in_chans, spec.img_size, spec.img_size)
    if batch is None:
        batch = torch.randn(64, *sample, generator=torch.Generator().manual_seed(0))
    structure = find_structure(model, target="both", prune_stem=True, example_input=batch[:2])
    result = export_model(model, structure, dev, example=batch)
    cost = CostModel(model, structure, batch[:1])
    pruned_cost = cost.cost(result.kept_counts)

    latencies = compare_latency(
        model,
        result.model if dev.type == "cpu" else _copy_to(result.model, "cpu"),
        sample,
        torch.device("cpu"),
        batch_sizes,
        repeats=repeats,
    )
    if dev.type != "cpu":
        latencies += compare_latency(
            _copy_to(model, dev), result.model, sample, dev, batch_sizes, repeats=repeats
        )
    report = export_report(result, cost.dense, pruned_cost, count_params(model), latencies)
    out = Path(out)
    model_path = out / MODEL_FILE
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
            "input": {
                "in_chans": spec.in_chans,
                "img_size": spec.img_size,
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
        },
    )
    report.update(
        model=cfg.model,
        checkpoint=str(checkpoint),
        file=str(model_path),
        load=LOAD_CALL.format(path=str(model_path)),
        input={
            "mean": list(spec.mean),
            "std": list(spec.std),
            "shape": [spec.in_chans, spec.img_size, spec.img_size],
        },
    )
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if show:
        print(f"rsst-tune export: {cfg.model} from {checkpoint} -> {model_path}")
        print(_table(report))
        print(f"load with: {report['load']}")
    return 0


def _copy_to(model: nn.Module, device: torch.device | str) -> nn.Module:
    return copy.deepcopy(model).to(device)
