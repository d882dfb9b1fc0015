"""Find the prunable units of a model (docs/methods.md §1) and the weights each one owns.

A `UnitGroup` is one layer's worth of units of one kind: the heads of one attention block,
the neurons of one MLP, or the filters of one convolution. Each parameter slice a unit owns is
a `Member`: the parameter viewed so that one axis enumerates the units. Everything the rest of
the package does with units (criteria, masks, costs, export) goes through these two records,
so a new architecture only needs a new finder here.

- head h of a ViT block: rows of q, k and v of `attn.qkv` (weight and bias) and the input
  columns of `attn.proj`;
- neuron n of a ViT MLP: row n of `mlp.fc1` (weight, bias) and column n of `mlp.fc2`;
- filter c of a conv: output channel c of the weight (and bias) and the BatchNorm after it.

Physical removal facts for CNNs (which convolution reads a filter, whether a residual add
couples it) come from a torch.fx trace; a model that cannot be traced keeps all filters
(counted as not removable), which only makes the reported params/MACs conservative.

What this finds on the model families users pick:

- timm ViTs of every kind (ViT, DeiT, DeiT with a distillation token, models without a class
  token and average pooling): one head group and one neuron group per block; the tokens
  (`cls_token`, `dist_token`), `pos_embed`, the patch embedding and the classifiers (`head`,
  DeiT's `head_dist`) are never units, so the token count only enters the costs;
- CIFAR ResNets (`BasicBlock`): `conv1` of a block is removable (read only by `conv2`),
  `conv2` reaches the residual add and is kept whole by an export;
- ImageNet ResNets (torchvision `resnet50` or timm `resnet50`, `Bottleneck`): the inner
  `conv1` and `conv2` of each block are removable (read only by the next conv), `conv3` and
  `downsample.0` reach the residual add and stay whole; with `prune_stem`, the stem's filters
  are removable too (read, after the max-pool, by the first block's `conv1` and downsample).
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune.errors import ConfigError
from rsst_tune.units import FILTER, HEAD, KINDS, NEURON, prunes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """A parameter slice owned unit-wise: `param` viewed as `view`, units along `axis`."""

    param: str
    view: tuple[int, ...]
    axis: int
    is_weight: bool  # a prunable-layer weight (counted in U, W, magnitude); else bias/norm

    def expand(self, units: Tensor, shape: torch.Size) -> Tensor:
        """Broadcast a per-unit vector onto the parameter's shape."""
        bshape = [1] * len(self.view)
        bshape[self.axis] = units.numel()
        return units.reshape(bshape).expand(self.view).reshape(shape)

    def per_unit(self, tensor: Tensor, reduce: str = "sum") -> Tensor:
        """Reduce a parameter-shaped tensor to one value per unit (sum or any)."""
        moved = tensor.reshape(self.view).movedim(self.axis, 0).reshape(self.view[self.axis], -1)
        if reduce == "any":
            return moved.any(dim=1)
        return moved.sum(dim=1)


@dataclass(frozen=True)
class UnitGroup:
    """The units of one kind in one layer."""

    name: str  # module path, e.g. "blocks.0.attn"
    kind: str  # head | neuron | filter (`rsst_tune.units.KINDS`)
    num_units: int
    members: tuple[Member, ...]
    act_module: str  # module whose input (heads, neurons) or output (filters) is the activation
    act_is_input: bool
    consumers: tuple[Member, ...] = ()  # slices that vanish on physical removal (next conv input)
    removable: bool = True  # False when a coupling (residual add) keeps the unit's channel
    unit_dim: int = 1  # head_dim for heads (for attention MACs)

    @property
    def weight_members(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.is_weight)

    def weights_per_unit(self) -> int:
        return sum(math.prod(m.view) // self.num_units for m in self.weight_members)

    def activation_matrix(self, act: Tensor) -> Tensor:
        """Reshape a captured activation to [samples, units]."""
        if self.kind == HEAD.name:
            heads = act.reshape(*act.shape[:-1], self.num_units, self.unit_dim)
            return heads.movedim(-2, -1).reshape(-1, self.num_units)
        if self.kind == NEURON.name:
            return act.reshape(-1, self.num_units)
        return act.movedim(1, -1).reshape(-1, self.num_units)


@dataclass(frozen=True)
class Structure:
    """All unit groups of a model, and the parameters they make prunable or maskable."""

    groups: tuple[UnitGroup, ...]

    @property
    def weight_names(self) -> list[str]:
        """Weights of the prunable layers: the domain of unstructured pruning (U)."""
        return [m.param for g in self.groups for m in g.weight_members]

    @property
    def maskable_names(self) -> list[str]:
        """Every parameter a mask covers: prunable weights plus unit biases and norms."""
        return [m.param for g in self.groups for m in g.members]

    def by_kind(self, kind: str) -> list[UnitGroup]:
        return [g for g in self.groups if g.kind == kind]

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.by_kind(k)]


def find_structure(
    model: nn.Module,
    *,
    target: str = "both",
    prune_stem: bool = False,
    example_input: Tensor | None = None,
) -> Structure:
    """The unit groups of `model`: ViT heads/neurons (by `target`) or CNN filters."""
    vit = _vit_groups(model, target)
    if vit is not None:
        return Structure(tuple(vit))
    convs = _conv_groups(model, prune_stem)
    if not convs:
        raise ConfigError(
            f"{type(model).__name__} has no prunable units: expected timm ViT blocks "
            "(attn.qkv/attn.proj, mlp.fc1/mlp.fc2) or Conv2d layers"
        )
    if example_input is not None:
        convs = _with_couplings(model, convs, example_input)
    return Structure(tuple(convs))


# --------------------------------------------------------------------------- ViT
def is_attention(m: nn.Module) -> bool:
    """A timm-style attention whose heads are units: `qkv` and `proj` linears and an integer
    `num_heads` (head h owns rows of q, k and v and input columns of `proj`). The export
    (`slicing`) reads the same test for the modules whose `num_heads` follows the slicing."""
    return (
        isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    )


def _is_mlp(m: nn.Module) -> bool:
    return isinstance(getattr(m, "fc1", None), nn.Linear) and isinstance(
        getattr(m, "fc2", None), nn.Linear
    )


def _vit_groups(model: nn.Module, target: str) -> list[UnitGroup] | None:
    attns = [(n, m) for n, m in model.named_modules() if is_attention(m)]
    if not attns:
        return None
    groups: list[UnitGroup] = []
    for name, block in model.named_modules():
        attn = getattr(block, "attn", None)
        mlp = getattr(block, "mlp", None)
        if attn is None or not is_attention(attn):
            continue
        prefix = f"{name}." if name else ""
        if prunes(target, HEAD):
            groups.append(_head_group(f"{prefix}attn", attn))
        if prunes(target, NEURON) and mlp is not None and _is_mlp(mlp):
            groups.append(_neuron_group(f"{prefix}mlp", mlp))
    return groups


def _head_group(name: str, attn: nn.Module) -> UnitGroup:
    qkv: nn.Linear = attn.qkv  # type: ignore[assignment]
    proj: nn.Linear = attn.proj  # type: ignore[assignment]
    heads = int(attn.num_heads)  # type: ignore[arg-type]
    attn_dim = qkv.out_features // 3
    if attn_dim % heads or proj.in_features != attn_dim:
        raise ConfigError(f"{name}: qkv width {qkv.out_features} does not split into {heads} heads")
    d = attn_dim // heads
    members = [
        Member(f"{name}.qkv.weight", (3, heads, d, qkv.in_features), 1, True),
        Member(f"{name}.proj.weight", (proj.out_features, heads, d), 1, True),
    ]
    if qkv.bias is not None:
        members.append(Member(f"{name}.qkv.bias", (3, heads, d), 1, False))
    return UnitGroup(
        name, HEAD.name, heads, tuple(members), f"{name}.proj", act_is_input=True, unit_dim=d
    )


def _neuron_group(name: str, mlp: nn.Module) -> UnitGroup:
    fc1: nn.Linear = mlp.fc1  # type: ignore[assignment]
    fc2: nn.Linear = mlp.fc2  # type: ignore[assignment]
    n = fc1.out_features
    members = [
        Member(f"{name}.fc1.weight", (n, fc1.in_features), 0, True),
        Member(f"{name}.fc2.weight", (fc2.out_features, n), 1, True),
    ]
    if fc1.bias is not None:
        members.append(Member(f"{name}.fc1.bias", (n,), 0, False))
    return UnitGroup(name, NEURON.name, n, tuple(members), f"{name}.fc2", act_is_input=True)


# --------------------------------------------------------------------------- CNN
def _conv_groups(model: nn.Module, prune_stem: bool) -> list[UnitGroup]:
    modules = list(model.named_modules())
    groups: list[UnitGroup] = []
    first_conv = True
    for i, (name, m) in enumerate(modules):
        if not isinstance(m, nn.Conv2d):
            continue
        is_stem = first_conv
        first_conv = False
        if (is_stem and not prune_stem) or m.groups != 1:
            continue
        c = m.out_channels
        w = m.weight
        members = [Member(f"{name}.weight", tuple(w.shape), 0, True)]
        if m.bias is not None:
            members.append(Member(f"{name}.bias", (c,), 0, False))
        bn = _following_norm(modules, i, c)
        if bn is not None:
            bn_name, bn_mod = bn
            if bn_mod.weight is not None:
                members.append(Member(f"{bn_name}.weight", (c,), 0, False))
            if bn_mod.bias is not None:
                members.append(Member(f"{bn_name}.bias", (c,), 0, False))
        # Until a trace proves otherwise, a filter is not physically removable.
        groups.append(
            UnitGroup(
                name, FILTER.name, c, tuple(members), name, act_is_input=False, removable=False
            )
        )
    return groups


def _following_norm(
    modules: list[tuple[str, nn.Module]], i: int, channels: int
) -> tuple[str, nn.BatchNorm2d] | None:
    for name, m in modules[i + 1 : i + 4]:
        if isinstance(m, nn.BatchNorm2d) and m.num_features == channels:
            return name, m
        if isinstance(m, nn.Conv2d):
            return None
    return None


_PASS_THROUGH_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
)
_PASS_THROUGH_FUNCS: set[object] = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.gelu,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.flatten,
}


def _with_couplings(model: nn.Module, groups: list[UnitGroup], example: Tensor) -> list[UnitGroup]:
    """Mark filters removable when their channel flows into exactly one conv or linear."""
    try:
        import torch.fx as fx

        traced = fx.symbolic_trace(model)
    except Exception as exc:
        log.warning(
            "cannot trace %s (%s): filters count as not removable", type(model).__name__, exc
        )
        return groups
    modules = dict(traced.named_modules())
    by_target = {g.name: g for g in groups}
    out: list[UnitGroup] = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or node.target not in by_target:
            continue
        group = by_target[node.target]
        consumers = _trace_consumers(node, modules, group.num_units)
        if consumers is None:
            out.append(group)
        else:
            out.append(
                UnitGroup(
                    group.name,
                    group.kind,
                    group.num_units,
                    group.members,
                    group.act_module,
                    group.act_is_input,
                    consumers=tuple(consumers),
                    removable=True,
                )
            )
    seen = {g.name for g in out}
    out.extend(g for g in groups if g.name not in seen)
    order = {g.name: i for i, g in enumerate(groups)}
    return sorted(out, key=lambda g: order[g.name])


def _trace_consumers(
    node: object, modules: dict[str, nn.Module], channels: int
) -> list[Member] | None:
    """Follow channel-preserving ops from a conv to the single layer that reads its channels."""
    frontier = list(node.users)  # type: ignore[attr-defined]
    consumers: list[Member] = []
    flattened = False
    while frontier:
        user = frontier.pop()
        if user.op == "call_module":
            mod = modules[user.target]
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.in_channels == channels:
                w = mod.weight
                consumers.append(Member(f"{user.target}.weight", tuple(w.shape), 1, True))
                continue
            if isinstance(mod, nn.Linear) and flattened and mod.in_features == channels:
                consumers.append(
                    Member(f"{user.target}.weight", (mod.out_features, channels), 1, True)
                )
                continue
            if isinstance(mod, nn.Flatten):
                flattened = True
                frontier.extend(user.users)
                continue
            if isinstance(mod, _PASS_THROUGH_MODULES):
                frontier.extend(user.users)
                continue
            return None
        if user.op in ("call_function", "call_method"):
            fn = user.target
            if fn in _PASS_THROUGH_FUNCS or fn in ("relu", "relu_", "view", "flatten", "mean"):
                if fn in (torch.flatten, "view", "flatten", "mean"):
                    flattened = True
                frontier.extend(user.users)
                continue
            if fn is operator.getitem:
                return None
            return None
        return None
    return consumers or None
