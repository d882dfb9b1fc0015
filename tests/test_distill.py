"""docs/methods.md §4b: distillation of the pruned states from the trial's own dense state 0,
on real tiny models (vit_digits, resnet20) and digits, CPU."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F

from rsst_tune import checkpoint as ckpt
from rsst_tune.config import TrialConfig
from rsst_tune.dense_cache import DenseCache
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop
from rsst_tune.train import Distillation
from search_spaces import get_space

# Refill with fine-tuning (`pt`): state 1 starts from the trained dense weights
PT = dict(
    model="vit_digits",
    method="refill",
    prune_type="pt",
    head_ratio=0.25,
    mlp_ratio=0.5,
    pruning_times=2,
    epochs=2,
)


def _weights(loop: PruneLoop) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loop.model.named_parameters()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def test_a_distilled_pt_state_differs_from_an_undistilled_one(
    make_cfg, digits_small, drop_timing
) -> None:
    plain = PruneLoop(make_cfg(**PT), data=digits_small)
    distilled = PruneLoop(make_cfg(**PT, distill_alpha=0.5, distill_T=2.0), data=digits_small)
    rp, rd = drop_timing(plain.run()), drop_timing(distilled.run())
    assert rp[0] == rd[0]  # state 0 is the dense run either way (the teacher)
    assert rp[1]["train_loss"] != rd[1]["train_loss"]
    assert not _same_weights(_weights(plain), _weights(distilled))
    assert rd[1]["epochs_trained"] == 2


def test_alpha_zero_is_the_undistilled_run_bit_for_bit(make_cfg, digits_small, drop_timing) -> None:
    plain = PruneLoop(make_cfg(**PT), data=digits_small)
    off = PruneLoop(make_cfg(**PT, distill_alpha=0.0, distill_T=8.0), data=digits_small)
    assert drop_timing(plain.run()) == drop_timing(off.run())
    assert _same_weights(_weights(plain), _weights(off))
    assert off.teacher is None  # no teacher is built when distillation is off


def test_the_loss_uses_the_teacher(make_cfg, digits_small, drop_timing) -> None:
    """With α = 1 the loss is the soft loss alone: another teacher, another state 1."""
    cfg = make_cfg(**PT, distill_alpha=1.0)
    a, b = PruneLoop(cfg, data=digits_small), PruneLoop(cfg, data=digits_small)
    next(a.states()), next(b.states())  # state 0 of both: the same dense model
    assert a.teacher is not None and b.teacher is not None
    assert _same_weights(dict(a.teacher.named_parameters()), dict(b.teacher.named_parameters()))
    b.teacher.load_state_dict(b.theta0)  # b's teacher: the untrained initialisation
    ra, rb = drop_timing(a.run()), drop_timing(b.run())
    assert ra[0] == rb[0]
    assert ra[1] != rb[1]
    assert not _same_weights(_weights(a), _weights(b))


def test_the_teacher_is_the_trained_dense_state_and_never_trains(
    make_cfg, digits_small, tmp_path
) -> None:
    cfg = make_cfg(**{**PT, "pruning_times": 3}, distill_alpha=0.7)
    loop = PruneLoop(cfg, tmp_path, data=digits_small)
    loop.run()
    dense = ckpt.TrialCheckpoint.load(tmp_path / "state_00.pt").ticket  # state 0 as evaluated
    assert loop.teacher is not None and not loop.teacher.training
    assert all(not p.requires_grad for p in loop.teacher.parameters())
    for n, w in loop.teacher.state_dict().items():
        assert torch.equal(w, dense[n]), n
    for state in (1, 2):  # every state file carries it: the latest one alone resumes
        saved = ckpt.TrialCheckpoint.load(tmp_path / ckpt.state_file(state)).teacher
        assert saved is not None and all(torch.equal(saved[n], dense[n]) for n in dense)


def test_distillation_loss_is_hintons() -> None:
    """(1 − α)·CE + α·T²·KL(p_t ‖ p_s); with α = 1 the gradient on the student's logits is
    T·(softmax(z/T) − softmax(z_t/T)) / batch, so it depends on the teacher's logits."""
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(5, 10, generator=gen)
    z = torch.randn(5, 10, generator=gen, requires_grad=True)
    y = torch.randint(0, 10, (5,), generator=gen)
    T = 3.0
    kd = Distillation(lambda x: z_t, alpha=1.0, T=T)
    targets = kd.soft_targets(torch.zeros(5, 1))
    assert not targets.is_inference()  # autograd can save it
    hard = F.cross_entropy(z, y)
    kd.loss(hard, z, targets).backward()
    assert z.grad is not None
    expect = T * (F.softmax(z.detach() / T, 1) - F.softmax(z_t / T, 1)) / 5
    torch.testing.assert_close(z.grad, expect)
    half = Distillation(lambda x: z_t, alpha=0.25, T=T)
    p_t = F.softmax(z_t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z.detach() / T, 1))).sum() / 5
    mixed = half.loss(hard.detach(), z.detach(), targets)
    torch.testing.assert_close(mixed, 0.75 * hard.detach() + 0.25 * T * T * kl)


@pytest.mark.parametrize("method", ["refill", "rsst"])
@pytest.mark.parametrize("stop_after", [0, 1])
def test_resume_of_a_distilled_run_is_exact(
    make_cfg, digits_small, drop_timing, tmp_path, method, stop_after
) -> None:
    cfg = make_cfg(**{**PT, "method": method, "pruning_times": 3}, distill_alpha=0.6)
    full = PruneLoop(cfg, tmp_path / "full", data=digits_small)
    expected = drop_timing(full.run())
    part = PruneLoop(cfg, tmp_path / "part", data=digits_small)
    for r in part.states():
        if r.state == stop_after:
            break
    del part
    resumed = PruneLoop.resume(tmp_path / "part", data=digits_small)  # the teacher from the file
    assert drop_timing(resumed.run()) == expected
    assert _same_weights(_weights(full), _weights(resumed))


def test_the_teacher_comes_from_the_dense_cache_like_state_0(
    make_cfg, digits_small, drop_timing, tmp_path
) -> None:
    cfg = make_cfg(**PT, distill_alpha=0.5)
    cache = DenseCache(tmp_path / "cache")
    trained = PruneLoop(cfg, data=digits_small, dense_cache=cache)
    loaded = PruneLoop(cfg, data=digits_small, dense_cache=cache)
    rt, rl = drop_timing(trained.run()), drop_timing(loaded.run())
    assert rl[0]["epochs_trained"] == 0  # state 0 (and so the teacher) came from the cache
    assert [r["val_acc"] for r in rt] == [r["val_acc"] for r in rl]
    assert rt[1] == rl[1]


def test_a_resnet_state_distills_too(make_cfg, digits_small, drop_timing) -> None:
    """BatchNorm: the teacher runs in eval mode (running statistics), the student trains."""
    base = dict(model="resnet20", method="refill", prune_type="pt", filter_ratio=0.5)
    plain = PruneLoop(make_cfg(**base, pruning_times=2), data=digits_small).run()
    kd = PruneLoop(make_cfg(**base, pruning_times=2, distill_alpha=0.5), data=digits_small)
    distilled = kd.run()
    assert drop_timing(plain)[1] != drop_timing(distilled)[1]
    assert kd.teacher is not None and not kd.teacher.training


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("distill_alpha", -0.1, r"distill_alpha must be a finite number in \[0, 1\], got -0.1"),
        ("distill_alpha", 1.5, r"distill_alpha must be a finite number in \[0, 1\], got 1.5"),
        ("distill_alpha", math.nan, r"distill_alpha must be a finite number in \[0, 1\]"),
        ("distill_alpha", "high", r"distill_alpha must be a finite number"),
        ("distill_T", 0.0, r"distill_T must be a finite number in \(0, 1000\], got 0.0"),
        ("distill_T", -2.0, r"distill_T must be a finite number in \(0, 1000\]"),
        ("distill_T", math.inf, r"distill_T must be a finite number"),
        ("finetune_epochs", 0, r"finetune_epochs must be an integer in \[1, 100000\], got 0"),
        ("finetune_epochs", 2.5, r"finetune_epochs must be an integer"),
    ],
)
def test_bad_values_are_one_line_config_errors(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        TrialConfig.from_dict({field: value})
    assert "\n" not in str(err.value)


def test_fields_are_prune_fields_with_flags() -> None:
    from rsst_tune.cli import build_parser
    from rsst_tune.dense_cache import dense_key

    base = TrialConfig()
    for name in ("distill_alpha", "distill_T", "finetune_epochs"):
        assert name in TrialConfig.fields_in("prune")  # state 0 is the same: not in its key
    assert dense_key(base) == dense_key(base.replace(distill_alpha=0.5, finetune_epochs=3))
    args = build_parser().parse_args(
        ["run", "--distill_alpha", "0.5", "--distill_T", "2", "--finetune_epochs", "3"]
    )
    assert (args.distill_alpha, args.distill_T, args.finetune_epochs) == (0.5, 2.0, 3)


def test_vit_head_mlp_searches_distillation_as_a_conditional_choice() -> None:
    space = get_space("vit_head_mlp")
    base = space.resolve_base(preset="smoke")
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    for point in space.starting_points:
        study.enqueue_trial(dict(point))
    seen = []
    for i in range(24):
        trial = study.ask()
        cfg = space.trial_config(base, trial)
        on = trial.params["distill"] == "on"
        assert ("distill_alpha" in trial.params) == on and ("distill_T" in trial.params) == on
        if on:
            assert 0.3 <= cfg.distill_alpha <= 0.9 and cfg.distill_T in (2.0, 4.0, 8.0)
        else:
            assert cfg.distill_alpha == 0.0
        if i == 0:  # the starting point: the known-good recipe, undistilled
            assert not on
        seen.append(on)
        study.tell(trial, [0.0, 0.0])
    assert any(seen) and not all(seen)
