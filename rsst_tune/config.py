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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsst_tune import limits
from rsst_tune.errors import ConfigError, unknown_choice
from rsst_tune.machine import available_cores as available_cores
from rsst_tune.units import TARGETS, UNIT_KINDS, unit_kind

# Choices of the fields that are not registries (models, datasets, methods, criteria and λ
# schedules are: `registry_for(field)`, so a user's registration is a valid config value).
# TARGETS (ViT units to prune: head, mlp, both) come with the unit kinds (`rsst_tune.units`).
SORTINGS = ("layer", "global")
PRUNE_TYPES = ("lt", "rewind_lt", "pt")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PLACEMENTS = ("auto", "device", "stream")  # data_placement (rsst_tune.streaming)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile(mode=...)

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
# Each unit kind's ratio field and per-layer ratio field (one ratio per block or conv;
# docs/methods.md §3.2): `rsst_tune.units.UnitKind.ratio` and `.ratios`.

# ---------------------------------------------------------------------- bounds
# The limits of the fields are declared in `rsst_tune.limits`; still importable from here.
MAX_STATES = limits.MAX_STATES
MAX_EPOCHS = limits.MAX_EPOCHS
MAX_BATCH = limits.MAX_BATCH
MAX_SEED = limits.MAX_SEED
MAX_THREADS = limits.MAX_THREADS
MAX_COUNT = limits.MAX_COUNT
MAX_VAL_SIZE = limits.MAX_VAL_SIZE
MAX_WORKERS = limits.MAX_WORKERS
MAX_IMG_SIZE = limits.MAX_IMG_SIZE
MAX_TEMPERATURE = limits.MAX_TEMPERATURE
MAX_COEFF = limits.MAX_COEFF
MAX_LAYERS = limits.MAX_LAYERS
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True}
BOOL_WORDS.update({"0": False, "false": False, "no": False, "off": False})
AUTO_WORDS = ("auto",)  # amp=auto, compile=auto: None, decided per device (rsst_tune.numerics)

# What a field holds (`Accepts.type`):
INT = "int"  # an integer in [low, high]
FLOAT = "float"  # a finite number between low and high (each bound included unless open)
BOOL = "bool"  # true or false (also 1/0, yes/no, on/off when read from text)
STR = "str"  # a non-empty string without NUL
CHOICE = "choice"  # one of the field's `choices`, checked by them alone (compile_mode)
EPOCHS = "epochs"  # a list of integers in [low, high] (decreasing_lr)
RATIOS = "ratios"  # 1 to max_items numbers between low and high, one per layer
JSON = "json"  # a JSON object with string keys (extra)


@dataclass(frozen=True)
class Accepts:
    """The values a config field accepts: its type, range and optionality, in the field's
    metadata (`metadata["valid"]`). Validation (`TrialConfig._validate`), the coercion of
    `from_dict` and the CLI's messages read it; nothing else says a field's range."""

    type: str  # INT, FLOAT, BOOL, STR, CHOICE, EPOCHS, RATIOS or JSON
    low: int | float = 0
    high: int | float = 0
    low_open: bool = False  # FLOAT, RATIOS: low itself is not valid
    high_open: bool = False
    optional: bool = False  # None is valid too (the field's default decides then)
    hint: str = ""  # appended to the range in the error message
    max_items: int = 0  # RATIOS: the longest list
    auto: bool = False  # optional BOOL: None is also spelled `auto` (amp, compile)

    def interval(self) -> str:
        """The valid values, as `[1, 100]` (INT, EPOCHS) or `[0, 1)` (FLOAT, RATIOS)."""
        if self.type in (INT, EPOCHS):
            return f"[{self.low}, {self.high}]"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{low}{self.low:g}, {self.high:g}{high}"

    def contains(self, value: float) -> bool:
        """Whether a number lies within the bounds (not whether it has the right type)."""
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _int(low: int, high: int, *, optional: bool = False, hint: str = "") -> Accepts:
    return Accepts(INT, low, high, optional=optional, hint=hint)


def _float(
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    hint: str = "",
) -> Accepts:
    return Accepts(FLOAT, low, high, low_open, high_open, optional, hint)


def _bool(*, optional: bool = False, auto: bool = False) -> Accepts:
    return Accepts(BOOL, optional=optional, auto=auto)


def _str(*, optional: bool = False) -> Accepts:
    return Accepts(STR, optional=optional)


_CHOICE = Accepts(CHOICE)
_EPOCHS = Accepts(EPOCHS, 1, MAX_EPOCHS)
# per-layer ratios: values in [0, 1), like the ratios
_RATIOS = Accepts(RATIOS, 0.0, 1.0, high_open=True, optional=True, max_items=MAX_LAYERS)
_JSON = Accepts(JSON)


def _field(
    default: Any,
    group: str,
    help: str,
    *,
    valid: Accepts,
    choices: tuple[str, ...] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    meta = {"group": group, "help": help, "choices": choices, "valid": valid}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; immutable and JSON round-trippable.

    Each field's metadata holds its `group` (see GROUPS), a one-line `help` (the CLI's),
    what it accepts (`valid`: an `Accepts`, its type, range and optionality) and, for fixed
    sets, its `choices`.
    """

    # what to prune
    model: str = _field(
        "vit_digits", DENSE, "registered model or timm:NAME (see the model registry)", valid=_str()
    )
    pretrained: bool = _field(
        False, DENSE, "timm:NAME models: start from timm's weights", valid=_bool()
    )
    pretrained_file: str | None = _field(
        None,
        DENSE,
        "start from the weights in this local file, no hub needed: a timm/torchvision state "
        "dict (.pt/.pth, read with weights_only=True) or a .safetensors file",
        valid=_str(optional=True),
    )
    dataset: str = _field(
        "digits", DENSE, "registered dataset (digits and synthetic: offline)", valid=_str()
    )
    img_size: int | None = _field(
        None,
        DENSE,
        "input image side in pixels; the data are resized to it; default: the model's (timm: "
        "its pretrained input size, e.g. 224; the built-in models: the dataset's, 32 for CIFAR)",
        valid=_int(1, MAX_IMG_SIZE, optional=True),
    )
    data_dir: str = _field("data", EXECUTION, "folder of the dataset's files", valid=_str())
    download: bool = _field(
        False, EXECUTION, "download the dataset into data_dir if missing", valid=_bool()
    )
    method: str = _field("rsst", PRUNE, "pruning method (docs/methods.md §2.4)", valid=_str())
    pruning_times: int = _field(
        4, PRUNE, "number of pruning states S (state 0 is dense)", valid=_int(1, MAX_STATES)
    )
    epochs: int = _field(40, DENSE, "training epochs per state", valid=_int(1, MAX_EPOCHS))
    finetune_epochs: int | None = _field(
        None,
        PRUNE,
        "training epochs of each state >= 1 (pt fine-tuning, or the retraining of lt/rewind_lt "
        "and RSST's pull); state 0 trains epochs; default: epochs",
        valid=_int(1, MAX_EPOCHS, optional=True),
    )
    # how much to prune (docs/methods.md §2.4, §3.2)
    rate: float | None = _field(
        None,
        PRUNE,
        "fraction of the kept weights U removes per prune; default: derived from the unit "
        "ratios when every pruned kind has one, else the method's default (0.2)",
        valid=_float(
            0.0, 1.0, high_open=True, optional=True, hint=" (rate 1 would remove every weight)"
        ),
    )
    target: str = _field("both", PRUNE, "ViT units to prune", choices=TARGETS, valid=_str())
    head_ratio: float | None = _field(
        None,
        PRUNE,
        "ViT heads removed per prune, compounding; default: density-matched to U",
        valid=_float(0.0, 1.0, high_open=True, optional=True),
    )
    mlp_ratio: float | None = _field(
        None,
        PRUNE,
        "ViT MLP neurons removed per prune, compounding; default: density-matched",
        valid=_float(0.0, 1.0, high_open=True, optional=True),
    )
    filter_ratio: float | None = _field(
        None,
        PRUNE,
        "CNN filters removed per prune, compounding; default: density-matched",
        valid=_float(0.0, 1.0, high_open=True, optional=True),
    )
    # layer-wise budgets (docs/methods.md §3.2): one ratio per block or conv, instead of the
    # global ratio of the same kind; the length is checked against the model at setup
    head_ratios: tuple[float, ...] | None = _field(
        None,
        PRUNE,
        "ViT heads removed per prune, one ratio per block (comma list), compounding",
        valid=_RATIOS,
    )
    mlp_ratios: tuple[float, ...] | None = _field(
        None,
        PRUNE,
        "ViT MLP neurons removed per prune, one ratio per block (comma list), compounding",
        valid=_RATIOS,
    )
    filter_ratios: tuple[float, ...] | None = _field(
        None,
        PRUNE,
        "CNN filters removed per prune, one ratio per prunable conv (comma list), compounding",
        valid=_RATIOS,
    )
    fillback_rate: float = _field(
        0.0,
        PRUNE,
        "density-matched budgets: 0 keeps U's weight budget, 1 keeps every unit",
        valid=_float(0.0, 1.0),
    )
    min_units: int = _field(1, PRUNE, "units every layer keeps at least", valid=_int(1, MAX_COUNT))
    round_to: int = _field(
        1,
        PRUNE,
        "neurons and filters a layer keeps are a multiple of this (heads stay whole): 8, 16 "
        "or 64 suit GPU kernels; 1: any count (docs/methods.md §3.2)",
        valid=_int(1, MAX_COUNT),
    )
    sorting: str = _field(
        "layer",
        PRUNE,
        "rank units within each layer, or all layers together",
        choices=SORTINGS,
        valid=_str(),
    )
    criteria: str = _field("l1", PRUNE, "unit score (docs/methods.md §3.1)", valid=_str())
    score_batches: int = _field(
        4, PRUNE, "training batches the criterion scores on", valid=_int(1, MAX_COUNT)
    )
    prune_stem: bool = _field(False, PRUNE, "CNNs: also prune the first convolution", valid=_bool())
    # the RSST regularizer (§4)
    RST_schedule: str = _field("x^2", PRUNE, "shape of λ over a state (RSST)", valid=_str())
    reg_granularity_prune: float = _field(
        1.0, PRUNE, "λ's ceiling g, reached at the state's end", valid=_float(0.0, MAX_COEFF)
    )
    exponents: float = _field(
        4.0,
        PRUNE,
        "k of the exp_custom_exponents schedule",
        valid=_float(0.0, MAX_COEFF, low_open=True),
    )
    # distillation from the trial's own dense state 0 (§4b)
    distill_alpha: float = _field(
        0.0,
        PRUNE,
        "states >= 1 train on (1-A)*CE + A*T^2*KL against the trial's dense state 0 (0: off)",
        valid=_float(0.0, 1.0),
    )
    distill_T: float = _field(
        4.0,
        PRUNE,
        "distillation temperature T (distill_alpha > 0)",
        valid=_float(0.0, MAX_TEMPERATURE, low_open=True),
    )
    # rewinding (§2.5)
    prune_type: str = _field(
        "lt",
        PRUNE,
        "after a prune: lt rewinds to θ0, rewind_lt to θr, pt keeps the trained weights",
        choices=PRUNE_TYPES,
        valid=_str(),
    )
    rewind_epoch: int = _field(  # and at most epochs (`_validate`)
        1, PRUNE, "epoch of state 0 whose weights are θr (rewind_lt)", valid=_int(0, MAX_EPOCHS)
    )
    # optimisation
    optimizer: str = _field("adamw", DENSE, "optimizer", choices=OPTIMIZERS, valid=_str())
    lr: float = _field(
        3e-3, DENSE, "peak learning rate", valid=_float(0.0, MAX_COEFF, low_open=True)
    )
    momentum: float = _field(0.9, DENSE, "SGD momentum", valid=_float(0.0, 1.0, high_open=True))
    weight_decay: float = _field(
        0.05, DENSE, "weight decay (matrices and kernels only)", valid=_float(0.0, MAX_COEFF)
    )
    warmup_epochs: float = _field(
        2.0,
        DENSE,
        "linear warm-up epochs (capped at the state)",
        valid=_float(0.0, float(MAX_EPOCHS)),
    )
    lr_schedule: str = _field(
        "cosine", DENSE, "learning-rate schedule", choices=LR_SCHEDULES, valid=_str()
    )
    decreasing_lr: tuple[int, ...] = _field(
        (),
        DENSE,
        "multistep: epochs at which the LR is multiplied by 0.1",
        factory=tuple,
        valid=_EPOCHS,
    )
    batch_size: int = _field(64, DENSE, "training batch size", valid=_int(1, MAX_BATCH))
    eval_batch_size: int = _field(
        1024, EXECUTION, "evaluation batch size", valid=_int(1, MAX_BATCH)
    )
    label_smoothing: float = _field(
        0.1, DENSE, "label smoothing of the training loss", valid=_float(0.0, 1.0, high_open=True)
    )
    augment: bool | None = _field(
        None,
        DENSE,
        "batched crop and flip; default: the dataset's (digits off, CIFAR on)",
        valid=_bool(optional=True),
    )
    val_size: int | None = _field(
        None,
        DENSE,
        "validation images carved from train; default: the dataset's",
        valid=_int(1, MAX_VAL_SIZE, optional=True),
    )
    train_subset: float | None = _field(
        None,
        DENSE,
        "train on this fraction of the training split (a fixed-seed subset, the same for every "
        "trial), for quick sweeps; default: all of it",
        valid=_float(0.0, 1.0, low_open=True, optional=True),
    )
    data_placement: str = _field(
        "auto",
        NUMERICS,
        "device: decode every split once and keep it on the device; stream: read image folders "
        "from disk batch by batch (DataLoader workers; JPEGs decoded on the GPU on CUDA); auto: "
        "device when the decoded splits take at most a quarter of the device's memory",
        choices=PLACEMENTS,
        valid=_str(),
    )
    data_workers: int | None = _field(
        None,
        EXECUTION,
        "DataLoader worker processes of data_placement stream (0: read in the trial's process); "
        "default: one per core but one, at most 8",
        valid=_int(0, MAX_WORKERS, optional=True),
    )
    # execution
    seed: int = _field(
        0, DENSE, "trial seed (initialisation, data order, tie-breaks)", valid=_int(0, MAX_SEED)
    )
    device: str = _field(
        "auto",
        NUMERICS,
        "auto picks cuda, then mps, then cpu",
        choices=(*DEVICES, "cuda:N"),
        valid=_str(),
    )
    # CPU threads for torch (0: torch's default). Float reductions depend on it, so a sweep
    # records its per-trial value and `rsst-tune run --config` repeats a trial bit for bit.
    threads: int = _field(
        0,
        NUMERICS,
        "torch CPU threads (0: torch's default)",
        valid=_int(0, MAX_THREADS, hint=" (0: torch's default)"),
    )
    # None (`auto`, the default): `rsst_tune.numerics` decides both (on CUDA a short probe of
    # fp32, bf16 and bf16 with CUDA graphs per model, image size, batch and GPU; elsewhere
    # fp32 eager); either one given fixes both (the other then takes amp true / compile false)
    amp: bool | None = _field(
        None,
        NUMERICS,
        "bf16 autocast where the device supports it (CUDA); auto: on CUDA a short probe picks "
        "the fastest of fp32, bf16, and bf16 with CUDA graphs (docs/engine.md#numerics), "
        "elsewhere fp32; giving amp or compile turns the probe off (the other: amp true, "
        "compile false)",
        valid=_bool(optional=True, auto=True),
    )
    compile: bool | None = _field(
        None,
        NUMERICS,
        "torch.compile the model (CUDA only); auto: as amp's",
        valid=_bool(optional=True, auto=True),
    )
    compile_mode: str = _field(
        "default",
        NUMERICS,
        "torch.compile mode when compile is on: reduce-overhead replays each step as CUDA "
        "graphs (small models, whose steps are bound by kernel launches: docs/data.md); "
        "max-autotune also tunes the kernels (slow to compile), with CUDA graphs",
        choices=COMPILE_MODES,
        valid=_CHOICE,
    )
    extra: dict[str, Any] = _field(  # noqa: RUF009 (a default_factory field)
        None,
        DENSE,
        "free-form values for user extensions (part of every key)",
        factory=dict,
        valid=_JSON,
    )

    def __post_init__(self) -> None:
        for name, value in _normalised(self).items():  # 3 -> 3.0 for floats, lists -> tuples
            object.__setattr__(self, name, value)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        """Type, finiteness and range of every field; the first problem is a ConfigError that
        names the field, the value and what is valid."""
        for f in fields(self):
            _check_type_and_range(f, getattr(self, f.name))
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
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d{1,3}", self.device):
            raise unknown_choice("device", self.device, (*DEVICES, "cuda:N"))
        if self.rewind_epoch > self.epochs:
            raise ConfigError(
                f"rewind_epoch must be in [0, epochs={self.epochs}], got {self.rewind_epoch}"
            )
        if self.lr_schedule == "multistep" and not self.decreasing_lr:
            raise ConfigError("lr_schedule 'multistep' needs decreasing_lr, e.g. [20, 30]")
        if self.round_to > 1 and self.sorting == "global":
            raise ConfigError(
                f"round_to {self.round_to} needs sorting 'layer': global sorting decides each "
                "layer's count by rank across layers, so it cannot keep multiples per layer"
            )
        for kind in UNIT_KINDS:
            if getattr(self, kind.ratios) is not None and getattr(self, kind.ratio) is not None:
                raise ConfigError(
                    f"give {kind.ratio} (every layer) or {kind.ratios} (one per layer), not both"
                )

    # ------------------------------------------------------------------ derived values
    @property
    def numerics_auto(self) -> bool:
        """Whether `rsst_tune.numerics` picks amp and compile (neither was given)."""
        return self.amp is None and self.compile is None

    def fixed_numerics(self) -> tuple[bool, bool]:
        """(amp, compile) as given, an unset one at its fixed default (amp on, compile off):
        what a trial runs with when it does not probe."""
        return (True if self.amp is None else self.amp, bool(self.compile))

    def state_epochs(self, state: int) -> int:
        """Training epochs of state `state`: `epochs` for state 0, `finetune_epochs` (default
        `epochs`) for every later state."""
        if state == 0 or self.finetune_epochs is None:
            return self.epochs
        return self.finetune_epochs

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
        """The global pruning ratio of a unit kind (`head`, `neuron`, `filter`), or None."""
        value: float | None = getattr(self, unit_kind(kind).ratio)
        return value

    def ratios_for(self, kind: str) -> tuple[float, ...] | None:
        """The per-layer pruning ratios of a unit kind (one per block or conv), or None."""
        value: tuple[float, ...] | None = getattr(self, unit_kind(kind).ratios)
        return value

    def has_ratio(self, kind: str) -> bool:
        """Whether a unit kind has explicit ratios (global or per layer), not density-matched."""
        return self.ratio_for(kind) is not None or self.ratios_for(kind) is not None

    def effective_rate(self, pruned_kinds: Iterable[str] = ()) -> float | None:
        """The rate of U (docs/methods.md §2.4.1): the asked `rate`; else None ("derived each
        state from the unit ratios") when the method is structured and every pruned kind has an
        explicit ratio; else the method's default rate (0.2 for the built-in methods)."""
        if self.rate is not None:
            return self.rate
        kinds = list(pruned_kinds)
        method = self.method_info
        if method.structured and kinds and all(self.has_ratio(k) for k in kinds):
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
        for name in RATIO_LISTS:
            if out[name] is not None:
                out[name] = list(out[name])
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
            size = Path(path).stat().st_size
            if size > limits.MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"config file {path} is {size:,} bytes; a config file holds at most "
                    f"{limits.MAX_CONFIG_BYTES:,}"
                )
            data = parse_json(Path(path).read_text(encoding="utf-8"), f"config file {path}")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"config file {path} cannot be read: {reason}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        # A best_config.json may wrap the config with other facts.
        if "config" in data and isinstance(data["config"], dict):
            data = data["config"]
        return cls.from_dict(data)


def parse_json(text: str, what: str) -> Any:
    """User-given JSON (`what` names it in messages): invalid or too deeply nested JSON is a
    ConfigError, never a RecursionError."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:  # bracket depth outside strings, before the parser recurses
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > limits.MAX_JSON_DEPTH:
        raise ConfigError(
            f"{what} nests brackets {deepest} deep; at most {limits.MAX_JSON_DEPTH} are allowed"
        )
    try:  # at most MAX_JSON_DEPTH deep: the parser cannot run out of recursion
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------------- what fields accept
ACCEPTS: dict[str, Accepts] = {f.name: f.metadata["valid"] for f in fields(TrialConfig)}


def accepts(name: str) -> Accepts:
    """What config field `name` accepts (its `metadata["valid"]`)."""
    return ACCEPTS[name]


def _named(kind: str) -> tuple[str, ...]:
    return tuple(n for n, a in ACCEPTS.items() if a.type == kind)


# Views of the fields' metadata, by type (importable as before):
# (low, high), both inclusive
INT_RANGES = {n: (int(ACCEPTS[n].low), int(ACCEPTS[n].high)) for n in _named(INT)}
# (low, low included, high, high included); every value must also be finite
FLOAT_RANGES = {
    n: (
        float(ACCEPTS[n].low),
        not ACCEPTS[n].low_open,
        float(ACCEPTS[n].high),
        not ACCEPTS[n].high_open,
    )
    for n in _named(FLOAT)
}
RATIO_LISTS = _named(RATIOS)
OPTIONAL = {n for n, a in ACCEPTS.items() if a.optional}
BOOL_FIELDS = set(_named(BOOL))
STR_FIELDS = set(_named(STR))


def interval(name: str) -> str:
    """The valid values of a numeric field, as `[0, 1)` or `(0, inf)`."""
    return accepts(name).interval()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_type_and_range(f: dataclasses.Field[Any], value: Any) -> None:
    name, valid = f.name, accepts(f.name)
    if value is None and valid.optional:
        return
    if valid.type == INT:
        if not _is_int(value) or not valid.contains(value):
            raise ConfigError(
                f"{name} must be an integer in {valid.interval()}{valid.hint}, got {value!r}"
            )
    elif valid.type == FLOAT:
        if not (_is_number(value) and math.isfinite(value) and valid.contains(value)):
            raise ConfigError(
                f"{name} must be a finite number in {valid.interval()}{valid.hint}, got {value!r}"
            )
    elif valid.type == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(
                f"{name} must be true or false (also 1/0, yes/no)"
                + (" or auto" if valid.auto else " or null" if valid.optional else "")
                + f", got {value!r}"
            )
    elif valid.type == STR:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    elif valid.type == EPOCHS:
        if not isinstance(value, tuple) or not all(_is_int(e) and valid.contains(e) for e in value):
            raise ConfigError(
                f"{name} must be a list of epochs, integers in {valid.interval()}, "
                f"got {_shown(value)}"
            )
    elif valid.type == RATIOS:
        ok = isinstance(value, tuple) and 1 <= len(value) <= valid.max_items
        ok = ok and all(_is_number(v) and math.isfinite(v) and valid.contains(v) for v in value)
        if not ok:
            raise ConfigError(
                f"{name} must be a list of numbers in {valid.interval()}, one per layer "
                f"(e.g. 0.25,0,0.5,0.25), got {_shown(value)}"
            )
    elif valid.type == JSON:
        _check_extra(value)


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _check_extra(value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"extra must be a JSON object with string keys, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"extra must hold JSON data (finite numbers), got {value!r}: {exc}"
        ) from None


def _normalised(cfg: Any) -> dict[str, Any]:
    """Fields of a directly built config that need a canonical type (ints for floats, tuples
    for lists), so equal configs compare, hash and serialise the same."""
    out: dict[str, Any] = {}
    for name, valid in ACCEPTS.items():
        value = getattr(cfg, name)
        if valid.type == FLOAT and _is_int(value):
            out[name] = float(value)
        elif valid.type == EPOCHS and isinstance(value, list):
            out[name] = tuple(value)
        elif valid.type == RATIOS and isinstance(value, list | tuple):
            out[name] = tuple(float(v) if _is_int(v) else v for v in value)
    return out


def check_host(cfg: TrialConfig) -> None:
    """What only the machine that runs the trial can check: `threads` within its cores, and
    a `cuda:N` device that exists (`rsst_tune.device.resolve_device` checks the rest)."""
    cores = available_cores()
    if cfg.threads > cores:
        raise ConfigError(
            f"threads must be in [0, {cores}] on this machine ({cores} CPU cores available; "
            f"0: torch's default), got {cfg.threads}"
        )
    if cfg.device.startswith("cuda:"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and int(cfg.device.split(":", 1)[1]) >= count:
            raise ConfigError(
                f"device must be one of cuda:0 to cuda:{count - 1} on this machine "
                f"({count} CUDA devices), got {cfg.device!r}"
            )


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    """Tune and JSON hand us ints for floats, lists for tuples, numpy scalars and words for
    bools: normalise what is unambiguous; anything else is left for `_validate` to name."""
    kind = accepts(f.name).type
    if kind == JSON:
        return {} if value is None else dict(value) if isinstance(value, Mapping) else value
    if value is None:
        return None
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        try:  # numpy / torch scalar
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    if kind == EPOCHS:
        if isinstance(value, list | tuple):
            return tuple(_coerce_int(v) for v in value)
        return value
    if kind == RATIOS:
        return _coerce_ratios(value)
    if kind == FLOAT:
        return float(value) if _is_int(value) else value
    if kind == BOOL:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in AUTO_WORDS and accepts(f.name).auto:
                return None
            return BOOL_WORDS.get(word, value)
        if _is_int(value) and value in (0, 1):
            return bool(value)
        return value
    if kind == INT:
        return _coerce_int(value)
    return value


def _coerce_ratios(value: Any) -> Any:
    """Per-layer ratios from a list, a tuple or a comma list (`0.25,0,0.5`); numpy scalars and
    ints become floats; anything else is left for `_validate` to name."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            return value
    if not isinstance(value, list | tuple):
        return value
    out = []
    for v in value:
        if hasattr(v, "item") and callable(v.item) and not isinstance(v, str):
            try:
                v = v.item()
            except (TypeError, ValueError, RuntimeError):
                return value  # left for `_validate` to name
        out.append(float(v) if _is_int(v) else v)
    return tuple(out)


def _coerce_int(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    if isinstance(value, float) and value.is_integer():  # JSON's 5.0; 2.5 stays a float
        return int(value)
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
