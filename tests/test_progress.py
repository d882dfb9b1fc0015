"""Progress inside long epochs: lines appear for a slow epoch, never more often than the
throttle, and not at all for a short one."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle, DeviceData, make_generator
from rsst_tune.models import create_model
from rsst_tune.pruning.masks import MaskEnforcer
from rsst_tune.train import train_state

LINE = re.compile(
    r"state 2 epoch (\d)/2: batch (\d+)/(\d+) \((\d+)%\), (\d+) img/s, loss ([\d.]+), "
    r"left (\S+) \(state (\S+)\)"
)


def _train(
    digits_small: DataBundle, forward_delay_s: float, every_s: float | None
) -> Callable[[], None]:
    cfg = TrialConfig(device="cpu", amp=False, epochs=2, batch_size=16, augment=False)
    torch.manual_seed(0)
    model = create_model("vit_digits")
    data = DeviceData(digits_small.train, digits_small.spec, "cpu")  # 256 images: 16 batches

    def slow_forward(x: Tensor) -> Tensor:
        time.sleep(forward_delay_s)  # an epoch that takes a while
        out: Tensor = model(x)
        return out

    def run() -> None:
        train_state(
            model,
            slow_forward,
            data,
            cfg,
            generator=make_generator(0, "cpu"),
            enforcer=MaskEnforcer(model, {}),
            pull=None,
            amp=None,
            state=2,
            progress_every_s=every_s,
        )

    return run


def test_a_slow_epoch_logs_progress_no_more_often_than_the_throttle(
    digits_small: DataBundle, caplog: pytest.LogCaptureFixture
) -> None:
    every_s = 0.25
    run = _train(digits_small, forward_delay_s=0.04, every_s=every_s)  # >= 0.64 s per epoch
    with caplog.at_level(logging.INFO, logger="rsst_tune.train"):
        run()
    records = [r for r in caplog.records if r.name == "rsst_tune.train"]
    assert len(records) >= 2  # at least one line in each of the two epochs
    epochs = set()
    for record in records:
        match = LINE.fullmatch(record.getMessage())
        assert match, record.getMessage()
        epoch, done, steps, pct = (int(g) for g in match.groups()[:4])
        epochs.add(epoch)
        assert steps == 16 and 1 <= done < steps and pct == 100 * done // steps
        assert int(match.group(5)) > 0 and float(match.group(6)) > 0
    assert epochs == {1, 2}
    # never closer than the throttle (the clock is read after the previous line was written)
    times = [r.created for r in records]
    assert all(b - a >= every_s - 0.02 for a, b in itertools.pairwise(times))


def test_short_epochs_and_disabled_progress_log_nothing(
    digits_small: DataBundle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="rsst_tune.train"):
        _train(digits_small, forward_delay_s=0.0, every_s=600.0)()  # shorter than the throttle
        _train(digits_small, forward_delay_s=0.01, every_s=None)()
    assert not [r for r in caplog.records if r.name == "rsst_tune.train"]
