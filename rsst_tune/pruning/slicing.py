"""Slicing a masked model into a physically smaller one (docs/methods.md §7): pure functions.

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

Nothing here reads or writes files: the file format is `rsst_tune.pruning.exported`, the
`rsst-tune export` command `rsst_tune.export`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune.export_record import LayerReport as LayerReport
from rsst_tune.pruning.structure import Member, Structure, UnitGroup, is_attention
from rsst_tune.units import HEAD, NEURON

log = logging.getLogger(__name__)

__all__ = [
    "ATOL",
    "ExportError",
    "ExportResult",
    "LayerReport",
    "check_equivalence",
    "device_of",
    "export_model",
    "max_abs_diff",
    "resize_to",
    "zero_units",
]

ATOL = 1e-4


class ExportError(RuntimeError):
    """The exported model does not compute what the masked model computes (a bug, not input)."""


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
        if name in num_heads and is_attention(m):
            heads = int(num_heads[name])
            m.num_heads = heads
            if hasattr(m, "attn_dim"):
                m.attn_dim = heads * int(m.head_dim)


def _coupling(model: nn.Module, group: UnitGroup) -> str | None:
    """Why a group's zero units cannot be sliced out, or None when they can."""
    if not group.removable:
        return "its channels reach a residual add or an untraced op"
    mod = model.get_submodule(group.name)
    norm = getattr(mod, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        return "a norm layer spans all its units"
    if group.kind == NEURON.name:
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
    if group.kind == HEAD.name:
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
    num_heads = {n: int(m.num_heads) for n, m in pruned.named_modules() if is_attention(m)}
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
        if g.kind == HEAD.name and g.name in num_heads:
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
        masked = model if device_of(model) == cpu else copy.deepcopy(model).to(cpu)
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
            ya = a(x.to(device_of(a))).float()
            yb = b(x.to(device_of(b))).float().to(ya.device)
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


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU when it has none)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- loading
@torch.no_grad()
def resize_to(model: nn.Module, state: Mapping[str, Tensor], num_heads: Mapping[str, int]) -> None:
    """Give every tensor of `model` the shape it has in `state`, in place (uninitialised: the
    values come from `load_state_dict`), and set `num_heads` of the attention blocks."""
    for name, current in model.state_dict().items():
        saved = state.get(name)
        if saved is None or saved.shape == current.shape:
            continue
        owner, leaf = _owner(model, name)
        _replace_tensor(owner, leaf, torch.empty(saved.shape, dtype=saved.dtype))
    _sync_attributes(model, num_heads)
