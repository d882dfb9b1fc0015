"""A trial's whole configuration: one frozen, validated dataclass.

Parse arguments at the boundary only: the CLI and the Ray trainable turn their input into a
`TrialConfig` once (`TrialConfig.from_dict`), and nothing below sees a namespace or a dict.
Field names follow the research code users know (`criteria`, `rate`, `pruning_times`,
`RST_schedule`, `reg_granularity_prune`, `exponents`, `fillback_rate`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError, unknown_choice

# Choices of the fields that are not registries (models, datasets, methods, criteria and λ
# schedules are: `registry_for(field)`, so a user's registration is a valid config value).
TARGETS = ("head", "mlp", "both")
SORTINGS = ("layer", "global")
PRUNE_TYPES = ("lt", "rewind_lt", "pt")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Accepted spellings from the research code (`--arch`, `--struct`) map onto field names.
ALIASES = {"arch": "model", "struct": "method", "states": "pruning_times"}

# Every field belongs to exactly one group (its `metadata["group"]`):
DENSE = "dense"  # decides what state 0 computes: the shared dense state's key
PRUNE = "prune"  # only changes states >= 1 (how much, which units, how the pull runs)
NUMERICS = "numerics"  # how it executes, and float results depend on it: in the dense key,
#                        but a resumed run may change it
EXECUTION = "execution"  # where inputs come from and how evaluation is batched: no effect on
#                          the numbers; a resumed run may change it
GROUPS = (DENSE, PRUNE, NUMERICS, EXECUTION)
# Pruning ratio field of each unit kind.
KIND_RATIO = {"head": "head_ratio", "neuron": "mlp_ratio", "filter": "filter_ratio"}


def _field(
    default: Any,
    group: str,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    meta = {"group": group, "help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; immutable and JSON round-trippable.

    Each field's metadata holds its `group` (see GROUPS), a one-line `help` (the CLI's) and,
    for fixed sets, its `choices`.
    """

    # what to prune
    model: str = _field(
        "vit_digits", DENSE, "registered model or timm:NAME (see the model registry)"
    )
    pretrained: bool = _field(False, DENSE, "timm:NAME models: start from timm's weights")
    dataset: str = _field("digits", DENSE, "registered dataset (digits and synthetic: offline)")
    data_dir: str = _field("data", EXECUTION, "folder of the dataset's files")
    download: bool = _field(False, EXECUTION, "download the dataset into data_dir if missing")
    method: str = _field("rsst", PRUNE, "pruning method (ALGORITHMS.md §2.4)")
    pruning_times: int = _field(4, PRUNE, "number of pruning states S (state 0 is dense)")
    epochs: int = _field(40, DENSE, "training epochs per state")
    # how much to prune (ALGORITHMS.md §2.4, §3.2)
    rate: float | None = _field(
        None,
        PRUNE,
        "fraction of the kept weights U removes per prune; default: derived from the unit "
        "ratios when every pruned kind has one, else the method's default (0.2)",
    )
    target: str = _field("both", PRUNE, "ViT units to prune", choices=TARGETS)
    head_ratio: float | None = _field(
        None, PRUNE, "ViT heads removed per prune, compounding; default: density-matched to U"
    )
    mlp_ratio: float | None = _field(
        None, PRUNE, "ViT MLP neurons removed per prune, compounding; default: density-matched"
    )
    filter_ratio: float | None = _field(
        None, PRUNE, "CNN filters removed per prune, compounding; default: density-matched"
    )
    fillback_rate: float = _field(
        0.0, PRUNE, "density-matched budgets: 0 keeps U's weight budget, 1 keeps every unit"
    )
    min_units: int = _field(1, PRUNE, "units every layer keeps at least")
    sorting: str = _field(
        "layer", PRUNE, "rank units within each layer, or all layers together", choices=SORTINGS
    )
    criteria: str = _field("l1", PRUNE, "unit score (ALGORITHMS.md §3.1)")
    score_batches: int = _field(4, PRUNE, "training batches the criterion scores on")
    prune_stem: bool = _field(False, PRUNE, "CNNs: also prune the first convolution")
    # the RSST regularizer (§4)
    RST_schedule: str = _field("x^2", PRUNE, "shape of λ over a state (RSST)")
    reg_granularity_prune: float = _field(1.0, PRUNE, "λ's ceiling g, reached at the state's end")
    exponents: float = _field(4.0, PRUNE, "k of the exp_custom_exponents schedule")
    # rewinding (§2.5)
    prune_type: str = _field(
        "lt",
        PRUNE,
        "after a prune: lt rewinds to θ0, rewind_lt to θr, pt keeps the trained weights",
        choices=PRUNE_TYPES,
    )
    rewind_epoch: int = _field(1, PRUNE, "epoch of state 0 whose weights are θr (rewind_lt)")
    # optimisation
    optimizer: str = _field("adamw", DENSE, "optimizer", choices=OPTIMIZERS)
    lr: float = _field(3e-3, DENSE, "peak learning rate")
    momentum: float = _field(0.9, DENSE, "SGD momentum")
    weight_decay: float = _field(0.05, DENSE, "weight decay (matrices and kernels only)")
    warmup_epochs: float = _field(2.0, DENSE, "linear warm-up epochs (capped at the state)")
    lr_schedule: str = _field("cosine", DENSE, "learning-rate schedule", choices=LR_SCHEDULES)
    decreasing_lr: tuple[int, ...] = _field(
        (), DENSE, "multistep: epochs at which the LR is multiplied by 0.1", factory=tuple
    )
    batch_size: int = _field(64, DENSE, "training batch size")
    eval_batch_size: int = _field(1024, EXECUTION, "evaluation batch size")
    label_smoothing: float = _field(0.1, DENSE, "label smoothing of the training loss")
    augment: bool | None = _field(
        None, DENSE, "batched crop and flip; default: the dataset's (digits off, CIFAR on)"
    )
    val_size: int | None = _field(
        None, DENSE, "validation images carved from train; default: the dataset's"
    )
    # execution
    seed: int = _field(0, DENSE, "trial seed (initialisation, data order, tie-breaks)")
    device: str = _field(
        "auto", NUMERICS, "auto picks cuda, then mps, then cpu", choices=(*DEVICES, "cuda:N")
    )
    # CPU threads for torch (0: torch's default). Float reductions depend on it, so a sweep
    # records its per-trial value and `rsst-tune run --config` repeats a trial bit for bit.
    threads: int = _field(0, NUMERICS, "torch CPU threads (0: torch's default)")
    amp: bool = _field(True, NUMERICS, "bf16 autocast where the device supports it (CUDA)")
    compile: bool = _field(False, NUMERICS, "torch.compile the model (CUDA only)")
    extra: dict[str, Any] = _field(  # noqa: RUF009 (a default_factory field)
        None, DENSE, "free-form values for user extensions (part of every key)", factory=dict
    )

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and f.name != "device" and value not in choices:
                raise unknown_choice(f.name, value, choices)
            registry = registry_for(f.name)
            if registry is not None and f.name != "model" and value not in registry:
                raise registry.unknown(value, f.name)
        from rsst_tune.models import check_model_name  # registered names and timm:NAME

        check_model_name(self.model)
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise unknown_choice("device", self.device, (*DEVICES, "cuda:N"))
        for name in ("pruning_times", "epochs", "batch_size", "eval_batch_size", "score_batches"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.min_units < 1:
            raise ConfigError(f"min_units must be >= 1, got {self.min_units}")
        for name in ("head_ratio", "mlp_ratio", "filter_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.rate is not None and not 0.0 <= self.rate < 1.0:
            raise ConfigError(
                f"rate must be in [0, 1) (rate 1 would remove every weight), got {self.rate}"
            )
        if not 0.0 <= self.fillback_rate <= 1.0:
            raise ConfigError(f"fillback_rate must be in [0, 1], got {self.fillback_rate}")
        if not 0 <= self.reg_granularity_prune < math.inf:
            raise ConfigError(
                f"reg_granularity_prune must be finite and >= 0, got {self.reg_granularity_prune}"
            )
        if not 0 < self.exponents < math.inf:
            raise ConfigError(f"exponents must be finite and > 0, got {self.exponents}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be finite and > 0, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.rewind_epoch <= self.epochs:
            raise ConfigError(
                f"rewind_epoch must be in [0, epochs={self.epochs}], got {self.rewind_epoch}"
            )
        if not 0 <= self.warmup_epochs < math.inf:
            raise ConfigError(f"warmup_epochs must be finite and >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_schedule == "multistep" and not self.decreasing_lr:
            raise ConfigError("lr_schedule 'multistep' needs decreasing_lr, e.g. [20, 30]")
        if any(e < 1 for e in self.decreasing_lr):
            raise ConfigError(f"decreasing_lr epochs must be >= 1, got {list(self.decreasing_lr)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.val_size is not None and self.val_size < 1:
            raise ConfigError(f"val_size must be a positive integer, got {self.val_size}")

    # ------------------------------------------------------------------ derived values
    @property
    def method_info(self) -> Any:
        """The registered `Method` (structured, regularized, default rate, policy)."""
        from rsst_tune.pruning.methods import METHODS

        return METHODS.get(self.method)

    @property
    def structured(self) -> bool:
        """Whether the method builds structured masks (refill, rsst) or not (imp)."""
        return bool(self.method_info.structured)

    def ratio_for(self, kind: str) -> float | None:
        """The explicit pruning ratio of a unit kind (`head`, `neuron`, `filter`), or None."""
        value: float | None = getattr(self, KIND_RATIO[kind])
        return value

    def effective_rate(self, pruned_kinds: Iterable[str] = ()) -> float | None:
        """The rate of U (ALGORITHMS.md §2.4.1): the asked `rate`; else None ("derived each
        state from the unit ratios") when the method is structured and every pruned kind has an
        explicit ratio; else the method's default rate (0.2 for the built-in methods)."""
        if self.rate is not None:
            return self.rate
        kinds = list(pruned_kinds)
        method = self.method_info
        if method.structured and kinds and all(self.ratio_for(k) is not None for k in kinds):
            return None
        default: float | None = method.default_rate
        return default

    @classmethod
    def fields_in(cls, group: str) -> tuple[str, ...]:
        """The names of the fields of one group (DENSE, PRUNE, NUMERICS, EXECUTION)."""
        if group not in GROUPS:
            raise unknown_choice("field group", group, GROUPS)
        return tuple(f.name for f in fields(cls) if f.metadata["group"] == group)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["decreasing_lr"] = list(self.decreasing_lr)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict (JSON, Tune's `config`); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = ALIASES.get(key, key)
            if name not in known:
                raise unknown_choice("config key", key, known)
            kwargs[name] = _coerce(known[name], value)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - defensive, from_dict filters keys
            raise ConfigError(str(exc)) from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> TrialConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        # A best_config.json may wrap the config with other facts.
        if "config" in data and isinstance(data["config"], dict):
            data = data["config"]
        return cls.from_dict(data)


_FLOAT_FIELDS = {
    "rate",
    "head_ratio",
    "mlp_ratio",
    "filter_ratio",
    "fillback_rate",
    "reg_granularity_prune",
    "exponents",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
}


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    """Tune and JSON hand us ints for floats, lists for tuples and numpy scalars: normalise."""
    if value is None:
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        value = value.item()
    name = f.name
    try:
        if name == "decreasing_lr":
            return tuple(int(v) for v in value)
        if name == "extra":
            return dict(value)
        if name in _FLOAT_FIELDS:
            return float(value)
        if isinstance(f.default, bool) or name == "augment":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ValueError
        if isinstance(f.default, int) or name == "val_size":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r}") from None
    return value


def registry_for(name: str) -> Any:
    """The registry whose names are the valid values of config field `name` (None if none).

    Imported lazily: `import rsst_tune.config` stays cheap, and a registration made after
    import (a user's `@register_criterion`) is seen by every later validation.
    """
    if name == "method":
        from rsst_tune.pruning.methods import METHODS

        return METHODS
    if name == "criteria":
        from rsst_tune.pruning.criteria import CRITERIA

        return CRITERIA
    if name == "RST_schedule":
        from rsst_tune.pruning.regularizer import SCHEDULES

        return SCHEDULES
    if name == "dataset":
        from rsst_tune.data import DATASETS

        return DATASETS
    if name == "model":  # timm:NAME is valid too (`rsst_tune.models.check_model_name`)
        from rsst_tune.models import MODELS

        return MODELS
    return None
