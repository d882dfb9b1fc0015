"""What a trial builds once before its first state: device, data, model, structure, costs.

`build_setup(cfg, data=None) -> TrialSetup`. Bad input fails here, before any training: an
image size the model cannot take, a `pretrained_file` that is missing or does not fit, an
unprunable model/target, a rate that would remove every weight, a method that needs `rate`.

The trial's input: `cfg.img_size`, else the model's default (a `timm:` model's pretrained
input size; the dataset's size for the built-in models). `setup.spec` is the dataset's spec at
that size, with the mean/std of the timm model's data config where it has one per channel.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune import numerics
from rsst_tune.config import TrialConfig
from rsst_tune.data import (
    BatchTransforms,
    DataBundle,
    DataSpec,
    DeviceData,
    FileSplit,
    ShardSplit,
    Split,
    load_dataset,
    make_generator,
    seeded_subset,
)
from rsst_tune.data.streaming import StreamData, choose_placement
from rsst_tune.device import (
    amp_dtype,
    can_compile,
    compile_forward,
    describe_numerics,
    resolve_device,
)
from rsst_tune.errors import ConfigError
from rsst_tune.models import (
    check_img_size,
    create_model,
    default_img_size,
    input_stats,
    load_pretrained_file,
)
from rsst_tune.pruning.cost import CostModel, count_params
from rsst_tune.pruning.criteria import Criterion, get_criterion
from rsst_tune.pruning.methods import Method, get_method
from rsst_tune.pruning.structure import Structure, find_structure
from rsst_tune.unit_budget import check_layer_ratios, layer_ratios
from rsst_tune.units import unit_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSetup:
    """The parts of a trial that never change between its states."""

    cfg: TrialConfig
    device: torch.device
    amp: torch.dtype | None
    method: Method
    criterion: Criterion
    spec: DataSpec  # the trial's input: the dataset's spec at the trial's size and mean/std
    train_data: BatchTransforms  # DeviceData (resident) or StreamData (read from disk)
    val_data: BatchTransforms
    test_data: BatchTransforms
    placement: str  # "device" or "stream": cfg.data_placement resolved
    model: nn.Module  # the one model the trial trains (its weights change, never its shape)
    forward: Callable[[Tensor], Tensor]  # the model, or its torch.compile'd wrapper
    compile_mode: str | None  # the torch.compile mode `forward` runs with, None: eager
    structure: Structure  # the units this trial prunes (cfg.target)
    report_structure: Structure  # every unit kind: §6 reports heads and neurons always
    cost: CostModel
    dense_params: int
    rate: float | None  # U's rate; None: derived each state from the unit ratios (§2.4.1)
    # each pruned group's explicit ratio (global or per layer), None: density-matched (§3.2)
    ratios: dict[str, float | None] = dataclasses.field(default_factory=dict)
    # how amp and compile were decided (`rsst_tune.numerics`: given, or auto's probe)
    decision: numerics.Decision | None = None

    @property
    def numerics(self) -> str:
        """How the forward runs (`fp32`, `bf16 autocast, compiled (MODE)`; auto on CUDA: `auto:
        bf16+cudagraphs (probe fp32 N img/s, ...)`), for the results."""
        text = describe_numerics(self.amp, self.compile_mode)
        return text if self.decision is None else self.decision.label(text)

    @property
    def numerics_cfg(self) -> TrialConfig:
        """The config with amp, compile and compile_mode as the trial runs them (auto
        resolved): what decides state 0's numbers, so the dense cache's key."""
        if self.decision is None:
            return self.cfg
        d = self.decision
        return self.cfg.replace(amp=d.amp, compile=d.compile, compile_mode=d.compile_mode)


def build_setup(
    cfg: TrialConfig,
    data: DataBundle | None = None,
    *,
    numerics_cache: numerics.NumericsCache | None = None,
) -> TrialSetup:
    """Resolve the device, load the data onto it, build and inspect the model, and decide
    its numerics (`rsst_tune.numerics`: amp/compile auto probes on CUDA, its choice cached in
    `numerics_cache`, default: this process's memory)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # per trial: one trial at a time per process
    device = resolve_device(cfg.device)
    asked = cfg.img_size or default_img_size(cfg.model)
    bundle = data or load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        val_size=cfg.val_size,
        download=cfg.download,
        img_size=asked,
        lazy=True,  # image folders stay on disk until the placement is chosen
    )
    if cfg.train_subset is not None:
        bundle = dataclasses.replace(bundle, train=seeded_subset(bundle.train, cfg.train_subset))
    placement = choose_placement(cfg.data_placement, bundle, device)
    if placement == "device":
        bundle = bundle.decoded()
    else:
        log.info("data placement stream: %s read from disk batch by batch", cfg.dataset)
    img_size = asked or bundle.spec.img_size
    torch.manual_seed(cfg.seed)
    model, spec = build_model(cfg, bundle.spec, img_size)
    model.to(device)
    cnn_on_cuda = device.type == "cuda" and _has_convs(model) and patch_free(model)

    def serve(split: object) -> BatchTransforms:
        if isinstance(split, Split):
            return DeviceData(split, spec, device, channels_last=cnn_on_cuda)
        if isinstance(split, ShardSplit):  # tar shards: read shard by shard
            return split.streamed(spec, device, channels_last=cnn_on_cuda, workers=cfg.data_workers)
        assert isinstance(split, FileSplit)
        return StreamData(split, spec, device, channels_last=cnn_on_cuda, workers=cfg.data_workers)

    train, val, test = (serve(s) for s in (bundle.train, bundle.val, bundle.test))
    example = next(val.eval_batches(2))[0]
    structure = find_structure(
        model, target=cfg.target, prune_stem=cfg.prune_stem, example_input=example
    )
    report_structure = find_structure(
        model, target="both", prune_stem=cfg.prune_stem, example_input=example
    )
    check_layer_ratios(cfg, report_structure)  # per-layer ratios: one per block or conv
    method = get_method(cfg.method)
    rate = cfg.effective_rate(structure.kinds)
    _check_prunable(cfg, model, structure, method, rate)
    if cnn_on_cuda:
        model.to(memory_format=torch.channels_last)  # faster convs on tensor cores
    decision = numerics.decide(
        cfg,
        device,
        key=lambda: numerics.probe_key(cfg, img_size, torch.cuda.get_device_name(device)),
        probe=lambda: numerics.probe_training(
            model, _probe_batches(cfg, train, device), cfg, structure.maskable_names
        ),
        cache=numerics_cache,
    )
    forward: Callable[[Tensor], Tensor] = model
    compiled = decision.compile and can_compile(device)
    if compiled:
        forward = compile_forward(model, decision.compile_mode)
    return TrialSetup(
        cfg=cfg,
        device=device,
        amp=amp_dtype(device, decision.amp),
        method=method,
        criterion=get_criterion(cfg.criteria),
        spec=spec,
        train_data=train,
        val_data=val,
        test_data=test,
        placement=placement,
        model=model,
        forward=forward,
        compile_mode=decision.compile_mode if compiled else None,
        structure=structure,
        report_structure=report_structure,
        cost=CostModel(model, report_structure, example),
        dense_params=count_params(model),
        rate=rate,
        ratios=layer_ratios(cfg, structure),
        decision=decision,
    )


def _probe_batches(
    cfg: TrialConfig, train: BatchTransforms, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """A few training batches for the numerics probe (its own generator: the trial's data
    order is untouched)."""
    out: list[tuple[Tensor, Tensor]] = []
    gen = make_generator(cfg.seed, device)
    for batch in train.train_batches(cfg.batch_size, gen, augment=False):
        out.append(batch)
        if len(out) >= numerics.PROBE_BATCHES:
            break
    return out


def build_model(cfg: TrialConfig, spec: DataSpec, img_size: int) -> tuple[nn.Module, DataSpec]:
    """The model at ``img_size`` (checked to take it), its weights from ``pretrained_file``
    when given, and the trial's data spec (the size, and the timm model's mean/std); also
    what `rsst_tune.macs_plan` builds to count a config's MACs before training."""

    def build(size: int, pretrained: bool = False) -> nn.Module:
        return create_model(
            cfg.model,
            num_classes=spec.num_classes,
            in_chans=spec.in_chans,
            img_size=size,
            pretrained=pretrained,
        )

    # a timm model with no size asked is built at its default (the size asked of the data)
    model = build(img_size, cfg.pretrained and cfg.pretrained_file is None)
    check_img_size(model, cfg.model, img_size, spec.in_chans, build)
    if cfg.pretrained_file is not None:
        load_pretrained_file(model, cfg.pretrained_file, name=cfg.model)
    stats = input_stats(cfg.model, model, spec.in_chans)
    mean, std = stats if stats is not None else (spec.mean, spec.std)
    if (img_size, mean, std) != (spec.img_size, spec.mean, spec.std):
        log.info(
            "%s input: %dx%d (data %dx%d), mean %s, std %s",
            cfg.model,
            img_size,
            img_size,
            spec.img_size,
            spec.img_size,
            _fmt(mean),
            _fmt(std),
        )
    return model, dataclasses.replace(spec, img_size=img_size, mean=mean, std=std)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def patch_free(model: nn.Module) -> bool:
    """Whether the model is a CNN rather than a patch-embedding transformer (whose single
    patch convolution gains nothing from channels_last)."""
    return getattr(model, "patch_embed", None) is None


def _check_prunable(
    cfg: TrialConfig, model: nn.Module, structure: Structure, method: Method, rate: float | None
) -> None:
    if not structure.groups:
        raise ConfigError(f"{cfg.model} has no prunable units for target {cfg.target!r}")
    ratios = layer_ratios(cfg, structure)
    if method.structured:
        for kind in structure.kinds:
            if all(ratios[g.name] == 0.0 for g in structure.by_kind(kind)):
                continue
            if all(g.num_units <= cfg.min_units for g in structure.by_kind(kind)):
                raise ConfigError(
                    f"cannot prune {unit_kind(kind).report} of {cfg.model}: every layer already "
                    f"has <= min_units={cfg.min_units}; lower min_units or change target"
                )
        partial = [
            unit_kind(k).ratio if cfg.ratio_for(k) is not None else unit_kind(k).ratios
            for k in structure.kinds
            if cfg.has_ratio(k)
        ]
        if cfg.rate is None and rate is not None and partial:
            log.info(
                "rate %.3g (the %s default): %s explicit, other kinds density-matched to U",
                rate,
                cfg.method,
                ", ".join(partial),
            )
    explicit = all(cfg.has_ratio(k) for k in structure.kinds)
    if rate is None and not (method.structured and explicit):
        raise ConfigError(f"method {cfg.method!r} has no default rate: give rate")
    if rate is not None and cfg.pruning_times > 1:
        params = dict(model.named_parameters())
        total = sum(params[n].numel() for n in structure.weight_names)
        if round(total * (1 - rate) ** (cfg.pruning_times - 1)) < 1:
            raise ConfigError(
                f"rate {rate} over {cfg.pruning_times - 1} prunes would remove every weight"
            )
