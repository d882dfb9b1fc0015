"""Each TrialConfig field says once, in its metadata, what it accepts; the validators and the
views importable from `rsst_tune.config` (INT_RANGES, FLOAT_RANGES, ...) read it."""

from __future__ import annotations

import dataclasses

import pytest

from rsst_tune import config
from rsst_tune.config import Accepts, TrialConfig
from rsst_tune.errors import ConfigError

# what each type of value is annotated as
ANNOTATION = {
    config.INT: "int",
    config.FLOAT: "float",
    config.BOOL: "bool",
    config.STR: "str",
    config.CHOICE: "str",
    config.EPOCHS: "tuple[int, ...]",
    config.RATIOS: "tuple[float, ...]",
    config.JSON: "dict[str, Any]",
}


@pytest.mark.parametrize("f", dataclasses.fields(TrialConfig), ids=lambda f: f.name)
def test_metadata_agrees_with_the_annotation(f: dataclasses.Field[object]) -> None:
    valid = f.metadata["valid"]
    assert isinstance(valid, Accepts) and config.accepts(f.name) is valid
    annotation = str(f.type)
    assert annotation.removesuffix(" | None") == ANNOTATION[valid.type]
    assert valid.optional == annotation.endswith(" | None")
    if f.metadata["choices"]:
        assert valid.type in (config.STR, config.CHOICE)
    if valid.type in (config.INT, config.FLOAT, config.EPOCHS, config.RATIOS):
        assert valid.low < valid.high


def test_views_read_the_metadata() -> None:
    assert config.INT_RANGES["pruning_times"] == (1, config.MAX_STATES)
    assert config.FLOAT_RANGES["rate"] == (0.0, True, 1.0, False)
    assert config.interval("distill_T") == f"(0, {config.MAX_TEMPERATURE:g}]"
    assert "augment" in config.OPTIONAL and "augment" in config.BOOL_FIELDS
    assert config.RATIO_LISTS == ("head_ratios", "mlp_ratios", "filter_ratios")
    assert "compile_mode" not in config.STR_FIELDS  # checked by its choices alone


def test_a_range_in_the_metadata_is_the_one_enforced() -> None:
    with pytest.raises(ConfigError, match=r"rate must be a finite number in \[0, 1\) \(rate 1"):
        TrialConfig(rate=1.0)
    with pytest.raises(ConfigError, match=r"threads must be an integer in \[0, 4096\] \(0: "):
        TrialConfig(threads=-1)
    with pytest.raises(ConfigError, match=r"head_ratios must be a list of numbers in \[0, 1\)"):
        TrialConfig(head_ratios=(1.0,))
    with pytest.raises(ConfigError, match=r"decreasing_lr must be a list of epochs, .* \[1, "):
        TrialConfig(decreasing_lr=(0,))
