"""What a trial builds once before its first state: device, data, model, structure, costs.

`build_setup(cfg, data=None) -> TrialSetup`. Bad input fails here, before any training: an
unprunable model/target, a rate that would remove every weight, a method that needs `rate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rsst_tune.config import KIND_RATIO, TrialConfig
from rsst_tune.data import DataBundle, DataSpec, DeviceData, load_dataset
from rsst_tune.device import amp_dtype, can_compile, resolve_device
from rsst_tune.errors import ConfigError
from rsst_tune.models import create_model
from rsst_tune.pruning.cost import CostModel, count_params
from rsst_tune.pruning.criteria import Criterion, get_criterion
from rsst_tune.pruning.methods import Method, get_method
from rsst_tune.pruning.structure import Structure, find_structure
from rsst_tune.results import KIND_REPORT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSetup:
    """The parts of a trial that never change between its states."""

    cfg: TrialConfig
    device: torch.device
    amp: torch.dtype | None
    method: Method
    criterion: Criterion
    spec: DataSpec
    train_data: DeviceData
    val_data: DeviceData
    test_data: DeviceData
    model: nn.Module  # the one model the trial trains (its weights change, never its shape)
    forward: Callable[[Tensor], Tensor]  # the model, or its torch.compile'd wrapper
    structure: Structure  # the units this trial prunes (cfg.target)
    report_structure: Structure  # every unit kind: §6 reports heads and neurons always
    cost: CostModel
    dense_params: int
    rate: float | None  # U's rate; None: derived each state from the unit ratios (§2.4.1)


def build_setup(cfg: TrialConfig, data: DataBundle | None = None) -> TrialSetup:
    """Resolve the device, load the data onto it, build and inspect the model."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # per trial: one trial at a time per process
    device = resolve_device(cfg.device)
    bundle = data or load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, download=cfg.download
    )
    spec = bundle.spec
    train, val, test = (
        DeviceData(s, spec, device) for s in (bundle.train, bundle.val, bundle.test)
    )
    torch.manual_seed(cfg.seed)
    model = create_model(
        cfg.model,
        num_classes=spec.num_classes,
        in_chans=spec.in_chans,
        img_size=spec.img_size,
        pretrained=cfg.pretrained,
    ).to(device)
    example = next(val.eval_batches(2))[0]
    structure = find_structure(
        model, target=cfg.target, prune_stem=cfg.prune_stem, example_input=example
    )
    report_structure = find_structure(
        model, target="both", prune_stem=cfg.prune_stem, example_input=example
    )
    method = get_method(cfg.method)
    rate = cfg.effective_rate(structure.kinds)
    _check_prunable(cfg, model, structure, method, rate)
    if device.type == "cuda" and structure.by_kind("filter"):
        model.to(memory_format=torch.channels_last)  # faster convs on tensor cores
    forward: Callable[[Tensor], Tensor] = model
    if cfg.compile and can_compile(device):
        forward = torch.compile(model)
    return TrialSetup(
        cfg=cfg,
        device=device,
        amp=amp_dtype(device, cfg.amp),
        method=method,
        criterion=get_criterion(cfg.criteria),
        spec=spec,
        train_data=train,
        val_data=val,
        test_data=test,
        model=model,
        forward=forward,
        structure=structure,
        report_structure=report_structure,
        cost=CostModel(model, report_structure, example),
        dense_params=count_params(model),
        rate=rate,
    )


def _check_prunable(
    cfg: TrialConfig, model: nn.Module, structure: Structure, method: Method, rate: float | None
) -> None:
    if not structure.groups:
        raise ConfigError(f"{cfg.model} has no prunable units for target {cfg.target!r}")
    if method.structured:
        for kind in structure.kinds:
            if cfg.ratio_for(kind) == 0.0:
                continue
            if all(g.num_units <= cfg.min_units for g in structure.by_kind(kind)):
                raise ConfigError(
                    f"cannot prune {KIND_REPORT[kind]} of {cfg.model}: every layer already has "
                    f"<= min_units={cfg.min_units}; lower min_units or change target"
                )
        partial = [KIND_RATIO[k] for k in structure.kinds if cfg.ratio_for(k) is not None]
        if cfg.rate is None and rate is not None and partial:
            log.info(
                "rate %.3g (the %s default): %s explicit, other kinds density-matched to U",
                rate,
                cfg.method,
                ", ".join(partial),
            )
    explicit = all(cfg.ratio_for(k) is not None for k in structure.kinds)
    if rate is None and not (method.structured and explicit):
        raise ConfigError(f"method {cfg.method!r} has no default rate: give rate")
    if rate is not None and cfg.pruning_times > 1:
        params = dict(model.named_parameters())
        total = sum(params[n].numel() for n in structure.weight_names)
        if round(total * (1 - rate) ** (cfg.pruning_times - 1)) < 1:
            raise ConfigError(
                f"rate {rate} over {cfg.pruning_times - 1} prunes would remove every weight"
            )
