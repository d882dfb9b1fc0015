"""Training and evaluation of one pruning state: the hot path.

Data stay on the device; masks and the RSST pull are one fused op each per step; the loss is
accumulated on the device and read once per epoch; evaluation runs at a large batch under
`inference_mode`. AMP (bf16) only where the device has it.

Divergence is caught where the loss is read anyway: an epoch whose mean loss is NaN or
infinite raises `TrialDiverged` (no extra host synchronisation per step); the weights are
checked for NaN/inf once, when the state's training ends.

Long epochs log their progress (`rsst_tune.train` logger, INFO: the console of `rsst-tune
run`, `run.log`, a sweep's `trial.log`): batches done, images/s, the running loss and the time
left, at most once every `PROGRESS_EVERY_S` seconds of wall time and never in an epoch shorter
than that. Between those lines a step costs one `time.monotonic()` call; the loss is read (the
one host synchronisation) only when a line is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsst_tune.config import TrialConfig
from rsst_tune.data import BatchTransforms
from rsst_tune.device import autocast
from rsst_tune.errors import TrialDiverged
from rsst_tune.pruning.masks import MaskEnforcer
from rsst_tune.pruning.regularizer import TargetPull, lam
from rsst_tune.utilisation import BusyRecorder, Utilisation

EpochHook = Callable[[int, float], None]  # (epochs done, mean train loss)

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0
"""Wall-time seconds between two progress lines inside an epoch (and before the first)."""


@dataclass(frozen=True)
class TrainStats:
    steps: int
    train_loss: float
    lambda_reached: float
    # images trained, training seconds and (CUDA) GPU busy fraction (`rsst_tune.utilisation`);
    # None when the state was not trained here (the shared dense cache)
    utilisation: Utilisation | None = None


def build_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices and kernels only: not on biases, norms, or what the model lists
    in `no_weight_decay()` (timm ViTs: position embedding, class and distillation tokens).
    Fused kernels on CUDA, torch's default (for-each) elsewhere."""
    no_wd = getattr(model, "no_weight_decay", None)
    skip: set[str] = set(no_wd()) if callable(no_wd) else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    no_decay = [p for n, p in named if p.ndim < 2 or n in skip]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # On CUDA the fused kernels: one launch per step for all parameters (the step of a small
    # model is bound by kernel launches; docs/data.md)
    fused = all(p.device.type == "cuda" for _, p in named) or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused)


@dataclass(frozen=True)
class Distillation:
    """Hinton distillation (docs/methods.md §4b): the loss (1 − α)·CE(labels) +
    α·T²·KL(softmax(z_t/T) ‖ softmax(z/T)), z_t the logits of a frozen teacher.

    `teacher` is called in eval mode under `torch.inference_mode()` (no graph, no gradient),
    under the student's autocast; its log-probabilities are cloned out of inference mode so
    that autograd can save them for the student's backward. No host synchronisation."""

    teacher: Callable[[Tensor], Tensor]
    alpha: float
    T: float

    def soft_targets(self, x: Tensor) -> Tensor:
        """log softmax(z_t / T) for the batch `x`, as a normal (non-inference) float32 tensor."""
        with torch.inference_mode():
            log_p = F.log_softmax(self.teacher(x).float() / self.T, dim=1)
        return log_p.clone()

    def loss(self, hard: Tensor, logits: Tensor, log_p_teacher: Tensor) -> Tensor:
        """Mix the label loss `hard` with the soft loss of the student's `logits`."""
        log_p = F.log_softmax(logits.float() / self.T, dim=1)
        soft = F.kl_div(log_p, log_p_teacher, reduction="batchmean", log_target=True)
        return (1.0 - self.alpha) * hard + (self.alpha * self.T * self.T) * soft


def lr_factor(
    cfg: TrialConfig, step: int, steps_per_epoch: int, epochs: int | None = None
) -> float:
    """Multiplier of the base LR at optimizer step `step` of a state of `epochs` epochs
    (default `cfg.epochs`) (pure function: linear warm-up, then cosine to zero, multistep ×0.1
    at each epoch of `decreasing_lr`, or constant)."""
    total = (cfg.epochs if epochs is None else epochs) * steps_per_epoch
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "cosine":
        progress = (step - warm) / max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.lr_schedule == "multistep":
        epoch = step // steps_per_epoch
        return 0.1 ** sum(epoch >= m for m in cfg.decreasing_lr)
    return 1.0


def train_state(
    model: nn.Module,
    forward: Callable[[Tensor], Tensor],
    data: BatchTransforms,
    cfg: TrialConfig,
    *,
    generator: torch.Generator,
    enforcer: MaskEnforcer,
    pull: TargetPull | None,
    amp: torch.dtype | None,
    on_epoch: EpochHook | None = None,
    state: int = 0,
    progress_every_s: float | None = PROGRESS_EVERY_S,
    epochs: int | None = None,
    distill: Distillation | None = None,
) -> TrainStats:
    """Train `epochs` epochs (default `cfg.epochs`) with M enforced after every step and, in
    RSST states, the pull; with `distill`, on the distillation loss.

    `progress_every_s`: seconds between progress lines inside an epoch (None: none).
    Raises `TrialDiverged` (naming `state` and the epoch) when an epoch's mean loss is not
    finite, or when the trained weights hold NaN or inf."""
    device = next(model.parameters()).device
    n_epochs = cfg.epochs if epochs is None else epochs
    steps_per_epoch = data.num_train_batches(cfg.batch_size)
    total = n_epochs * steps_per_epoch
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(cfg, step, steps_per_epoch, n_epochs)
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    enforcer.apply()
    step = 0
    lam_value = 0.0
    mean_loss = float("nan")
    recorder = BusyRecorder(device)
    for epoch in range(n_epochs):
        recorder.epoch_start()
        loss_sum = torch.zeros((), device=device)
        progress = (
            None
            if progress_every_s is None
            else EpochProgress(
                state=state,
                epoch=epoch + 1,
                epochs=n_epochs,
                steps=steps_per_epoch,
                images=len(data),
                batch_size=cfg.batch_size,
                every_s=progress_every_s,
            )
        )
        for done, (x, y) in enumerate(
            data.train_batches(
                cfg.batch_size,
                generator,
                augment=data.spec.augment_default if cfg.augment is None else cfg.augment,
            ),
            start=1,
        ):
            scale = 1.0
            if data.world > 1:  # DDP averages the workers' gradients: weight by share
                mine, total_images = data.local_share(cfg.batch_size, done - 1)
                scale = mine * data.world / total_images
            if pull is not None:
                lam_value = lam(
                    cfg.RST_schedule,
                    step / max(total - 1, 1),
                    cfg.reg_granularity_prune,
                    cfg.exponents,
                )
            recorder.step_start()
            loss_sum += train_step(
                forward,
                x,
                y,
                opt=opt,
                loss_fn=loss_fn,
                enforcer=enforcer,
                pull=pull,
                lam_value=lam_value,
                amp=amp,
                distill=distill,
                loss_scale=scale,
            )
            recorder.step_end(int(x.shape[0]))
            sched.step()
            step += 1
            if progress is not None:
                progress.tick(done, loss_sum)
        if data.world > 1:  # the global batch's mean loss: the workers' scaled losses
            loss_sum = all_reduce_sum(loss_sum) / data.world
        mean_loss = float(loss_sum) / steps_per_epoch  # one host sync per epoch
        recorder.epoch_end()  # reads the epoch's step spans: the device is done
        if not math.isfinite(mean_loss):
            raise TrialDiverged(state, epoch + 1, mean_loss)
        if on_epoch is not None:
            on_epoch(epoch + 1, mean_loss)
    if not weights_finite(model):  # the last step can overflow after the last loss was read
        raise TrialDiverged(state, n_epochs, mean_loss, "non-finite weights")
    return TrainStats(step, mean_loss, lam_value, recorder.result())


class EpochProgress:
    """Progress lines inside one epoch, throttled by wall time: `tick` after every step costs
    a clock read; only when `every_s` seconds have passed since the epoch began or since the
    last line does it read the running loss (one host synchronisation) and log a line."""

    def __init__(
        self,
        *,
        state: int,
        epoch: int,
        epochs: int,
        steps: int,
        images: int,
        batch_size: int,
        every_s: float,
    ) -> None:
        """Epoch `epoch` (1-based) of `epochs`, `steps` batches over `images` images."""
        self.state, self.epoch, self.epochs = state, epoch, epochs
        self.steps, self.images, self.batch_size = steps, images, batch_size
        self.every_s = every_s
        self.start = time.monotonic()
        self.next_at = self.start + every_s
        self.lines = 0

    def tick(self, done: int, loss_sum: Tensor) -> None:
        """After `done` batches of the epoch, whose losses sum (on the device) to `loss_sum`."""
        if time.monotonic() < self.next_at or done >= self.steps:
            return
        loss = float(loss_sum) / done  # the host sync: the steps so far have finished
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        per_batch = elapsed / done
        left_epoch = (self.steps - done) * per_batch
        left_state = left_epoch + (self.epochs - self.epoch) * self.steps * per_batch
        seen = min(done * self.batch_size, self.images)
        log.info(
            "state %d epoch %d/%d: batch %d/%d (%d%%), %.0f img/s, loss %.4f, left %s (state %s)",
            self.state,
            self.epoch,
            self.epochs,
            done,
            self.steps,
            100 * done // self.steps,
            seen / elapsed,
            loss,
            _duration(left_epoch),
            _duration(left_state),
        )
        self.lines += 1
        self.next_at = now + self.every_s


def _duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@torch.no_grad()
def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is free of NaN and inf (one host synchronisation)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def train_step(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    enforcer: MaskEnforcer,
    pull: TargetPull | None,
    lam_value: float,
    amp: torch.dtype | None,
    distill: Distillation | None = None,
    loss_scale: float = 1.0,
) -> Tensor:
    """One optimizer step: forward (and the teacher's, distilling), backward, RSST pull on T,
    step, re-apply M.

    `loss_scale`: the loss is multiplied by it (several workers: this worker's share of the
    global batch times the number of workers, so that DDP's mean of the workers' gradients is
    the gradient of the global batch's mean loss). Returns the detached (scaled) loss, still
    on the device (no host synchronisation).
    """
    with autocast(x.device, amp):
        if distill is None:
            loss = loss_fn(forward(x), y)
        else:
            log_p_teacher = distill.soft_targets(x)
            logits = forward(x)
            loss = distill.loss(loss_fn(logits, y), logits, log_p_teacher)
        if loss_scale != 1.0:
            loss = loss * loss_scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if pull is not None:
        pull.apply(lam_value)
    opt.step()
    enforcer.apply()
    return loss.detach()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    forward: Callable[[Tensor], Tensor],
    data: BatchTransforms,
    batch_size: int,
    amp: torch.dtype | None,
) -> float:
    """Top-1 accuracy, counted on the device and read once. A shard view of the data
    (several workers) evaluates its part; the counts are summed over the workers, so every
    worker returns the accuracy over the whole split."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in data.eval_batches(batch_size):
        with autocast(device, amp):
            out = forward(x)
        correct += (out.argmax(dim=1) == y).sum()
        n += y.numel()
    model.train(was_training)
    if data.world > 1:
        counts = all_reduce_sum(torch.stack([correct, torch.tensor(n, device=device)]))
        correct, n = counts[0], int(counts[1])
        if n > len(data) or (n != len(data) and not data.drops_unreadable):
            raise RuntimeError(f"the workers evaluated {n} of {len(data)} images")
    return float(correct) / max(n, 1)


def all_reduce_sum(t: Tensor) -> Tensor:
    """`t` summed over the workers of the default process group (a new tensor)."""
    import torch.distributed as dist

    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
