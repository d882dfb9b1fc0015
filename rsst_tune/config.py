"""A trial's whole configuration: one frozen, validated dataclass.

Parse arguments at the boundary only: the CLI and the Ray trainable turn their input into a
`TrialConfig` once (`TrialConfig.from_dict`), and nothing below sees a namespace or a dict.
Field names follow the research code users know (`criteria`, `rate`, `pruning_times`,
`RST_schedule`, `reg_granularity_prune`, `exponents`, `fillback_rate`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError, unknown_choice

METHODS = ("imp", "refill", "rsst")
CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
TARGETS = ("head", "mlp", "both")
SORTINGS = ("layer", "global")
SCHEDULES = ("constant", "x", "x^2", "x^3", "exp", "exp_custom_exponents")
PRUNE_TYPES = ("lt", "rewind_lt", "pt")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
IMP_DEFAULT_RATE = 0.2

# Accepted spellings from the research code (`--arch`, `--struct`) map onto field names.
ALIASES = {"arch": "model", "struct": "method", "states": "pruning_times"}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; immutable and JSON round-trippable."""

    # what to prune
    model: str = "vit_digits"
    pretrained: bool = False  # timm:<name> models: start from timm's weights (needs network)
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    method: str = "rsst"
    pruning_times: int = 4
    epochs: int = 40
    # how much to prune (ALGORITHMS.md §2.4, §3.2)
    rate: float | None = None
    target: str = "both"
    head_ratio: float | None = None
    mlp_ratio: float | None = None
    filter_ratio: float | None = None
    fillback_rate: float = 0.0
    min_units: int = 1
    sorting: str = "layer"
    criteria: str = "l1"
    score_batches: int = 4
    prune_stem: bool = False
    # the RSST regularizer (§4)
    RST_schedule: str = "x^2"
    reg_granularity_prune: float = 1.0
    exponents: float = 4.0
    # rewinding (§2.5)
    prune_type: str = "lt"
    rewind_epoch: int = 1
    # optimisation
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0  # linear warm-up; capped at the state's length
    lr_schedule: str = "cosine"
    decreasing_lr: tuple[int, ...] = ()
    batch_size: int = 64
    eval_batch_size: int = 1024
    label_smoothing: float = 0.1
    augment: bool | None = None  # None: the dataset's default (digits off, CIFAR on)
    val_size: int | None = None
    # execution
    seed: int = 0
    device: str = "auto"
    # CPU threads for torch (0: torch's default). Float reductions depend on it, so a sweep
    # records its per-trial value and `rsst-tune run --config` repeats a trial bit for bit.
    threads: int = 0
    amp: bool = True
    compile: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name, choices in (
            ("method", METHODS),
            ("criteria", CRITERIA),
            ("target", TARGETS),
            ("sorting", SORTINGS),
            ("RST_schedule", SCHEDULES),
            ("prune_type", PRUNE_TYPES),
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", LR_SCHEDULES),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise unknown_choice(name, value, choices)
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
        if self.reg_granularity_prune < 0:
            raise ConfigError(
                f"reg_granularity_prune must be >= 0, got {self.reg_granularity_prune}"
            )
        if self.exponents <= 0:
            raise ConfigError(f"exponents must be > 0, got {self.exponents}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.rewind_epoch <= self.epochs:
            raise ConfigError(
                f"rewind_epoch must be in [0, epochs={self.epochs}], got {self.rewind_epoch}"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_schedule == "multistep" and not self.decreasing_lr:
            raise ConfigError("lr_schedule 'multistep' needs decreasing_lr, e.g. [20, 30]")

    # ------------------------------------------------------------------ derived values
    @property
    def structured(self) -> bool:
        """Whether the method builds structured masks (refill, rsst) or not (imp)."""
        return self.method != "imp"

    def effective_rate(self) -> float | None:
        """The asked `rate`; `imp` defaults to 0.2; None means 'derived from unit ratios'."""
        if self.rate is None and self.method == "imp":
            return IMP_DEFAULT_RATE
        return self.rate

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
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(f.default, int) or name == "val_size":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r}") from None
    return value
