"""The iterative prune loop of docs/methods.md §2: train, (RSST) impose, evaluate, prune, rewind.

`PruneLoop(cfg, out_dir).states()` yields one `StateResult` per pruning state (§6) and writes
a `TrialCheckpoint` after each (§5), so a run can stop after any state and
`PruneLoop.resume(out_dir)` continues it with bit-identical results on CPU. What never changes
between states is built once by `build_setup`; what changes (masks, alive units, θr, results)
lives on the instance: a Ray worker may run many trials in one process.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune import checkpoint as ckpt
from rsst_tune.config import TrialConfig, check_host
from rsst_tune.data import BatchTransforms, DataBundle, make_generator
from rsst_tune.dense_cache import DenseCache, dense_key
from rsst_tune.device import describe_device
from rsst_tune.errors import ConfigError, TrialDiverged
from rsst_tune.limits import MAX_BATCH
from rsst_tune.numerics import NumericsCache
from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.cost import nonzero_params
from rsst_tune.pruning.criteria import ScoreInputs
from rsst_tune.pruning.regularizer import TargetPull
from rsst_tune.pruning.select import (
    Budget,
    clamp_keep,
    density_matched_keep,
    explicit_keep,
    magnitude_prune,
    round_to_for,
    select_units,
)
from rsst_tune.pruning.structure import Structure, UnitGroup
from rsst_tune.results import PruneStats, StateResult
from rsst_tune.resume import check_fits, resume_point
from rsst_tune.train import Distillation, TrainStats, evaluate, train_state
from rsst_tune.trial_setup import TrialSetup, build_setup
from rsst_tune.units import UNIT_KINDS, unit_kind
from rsst_tune.utilisation import (
    fmt_utilisation,
    mfu,
    peak_flops,
    tf32_enabled,
    train_flops_per_image,
)
from rsst_tune.workers import Shard

log = logging.getLogger(__name__)

# (state, epochs done, epochs, mean train loss of the last epoch); called with 0 (and NaN) when
# a state starts, then after every epoch.
EpochCallback = Callable[[int, int, int, float], None]


def derive_seed(seed: int, state: int, salt: int = 0) -> int:
    """A seed for (trial seed, state, purpose): restarting it each state makes resume exact."""
    return (seed * 1_000_003 + state * 10_007 + salt * 101) % (2**63 - 1)


@dataclasses.dataclass(frozen=True)
class _Trained:
    """Step 1's outcome."""

    stats: TrainStats
    epochs_trained: int
    pull: TargetPull | None


@dataclasses.dataclass(frozen=True)
class _Used:
    """A state's utilisation fields (StateResult.images_per_s, gpu_busy, mfu)."""

    images_per_s: float | None
    gpu_busy: float | None
    mfu: float | None


class PruneLoop:
    """One trial: the whole iterative prune loop of one configuration."""

    def __init__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path | None = None,
        *,
        data: DataBundle | None = None,
        on_epoch: EpochCallback | None = None,
        dense_cache: DenseCache | None = None,
        numerics_cache: NumericsCache | None = None,
        shard: Shard | None = None,
    ) -> None:
        """`numerics_cache`: where amp/compile auto keeps its probe's choice (default: beside
        the dense cache, `dense_cache.root`; without one, this process's memory).

        `shard`: this process's place among several data-parallel workers (`rsst_tune.workers`,
        docs/engine.md "Several workers"): the loop trains under DDP on its shard of each
        global batch, reduces evaluation over the workers, takes every prune decision from
        rank 0 and, on ranks other than 0, writes nothing. None: one process, as always. A
        shard of world 1 (one Ray Train worker: `run_workers(..., 1)`, what `make gpu-check`
        runs on one GPU) takes the same path, DDP on a single worker included."""
        check_host(cfg)  # before the data loads: threads this machine cannot run
        if numerics_cache is None and dense_cache is not None:
            numerics_cache = NumericsCache(dense_cache.root)
        self.shard = shard
        self.setup: TrialSetup
        if self.shard is None:
            self.setup = build_setup(cfg, data, numerics_cache=numerics_cache)
        else:
            self.shard.check(cfg, dense_cache)
            self.setup = self.shard.build(cfg, data, numerics_cache)
        _check_batches(self.setup)
        self.cfg = cfg
        self.writes = self.shard is None or self.shard.rank == 0  # checkpoints, theta0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_epoch = on_epoch
        self.dense_cache = dense_cache
        model, structure = self.setup.model, self.setup.structure
        self.theta0 = _state_dict(model)  # never modified (clone of the init)
        self.theta_r: dict[str, Tensor] | None = None
        self.M = mk.full_masks(model, structure.maskable_names)
        self.U: mk.Masks | None = None  # the last unstructured mask (kept for the checkpoint)
        self.R: mk.Masks | None = None  # structure to impose at step 2 of the next RSST state
        self.T: mk.Masks = {}
        self.alive = {
            g.name: torch.ones(g.num_units, dtype=torch.bool, device=self.device)
            for g in structure.groups
        }
        self.next_state = 0
        self.results: list[StateResult] = []
        self.prune_stats = PruneStats.dense(self.setup.method.structured, structure.kinds)
        self._warned: set[str] = set()
        # distillation: the trained dense state 0 (CPU copy, for checkpoints) and the frozen
        # teacher model built from it; set after state 0 when distill_alpha > 0
        self.teacher_weights: dict[str, Tensor] | None = None
        self.teacher: nn.Module | None = None
        # a finished run resumed with more states: its last ticket still has to be pruned
        self._pending_prune: dict[str, Tensor] | None = None
        self._dense_stats: TrainStats | None = None  # state 0 trained here for the dense cache

    @property
    def device(self) -> torch.device:
        return self.setup.device

    @property
    def model(self) -> nn.Module:
        return self.setup.model

    @property
    def structure(self) -> Structure:
        """The units this trial prunes."""
        return self.setup.structure

    # ------------------------------------------------------------------ the loop
    def states(self) -> Iterator[StateResult]:
        """Run the remaining states, yielding each state's result after its checkpoint."""
        if self.out_dir is not None and self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not (self.out_dir / ckpt.THETA0_FILE).exists():
                ckpt.save_theta0(mk.to_cpu(self.theta0), self.out_dir)
        if self._pending_prune is not None and self.next_state < self.cfg.pruning_times:
            self._extend(self._pending_prune)
        while self.next_state < self.cfg.pruning_times:
            yield self._run_state(self.next_state)

    def run(self) -> list[StateResult]:
        for _ in self.states():
            pass
        return self.results

    def _run_state(self, s: int) -> StateResult:
        t0 = time.perf_counter()
        trained = self._train(s)  # 1. train
        if self.shard is not None:  # BatchNorm statistics: rank 0's, as DDP uses them
            self.shard.sync_model(self.model)
        if s == 0 and self.cfg.distill_alpha > 0:
            self._set_teacher(mk.to_cpu(_state_dict(self.model)))
        before = self._impose_structure(trained)  # 2. RSST: M ← R
        val_acc, test_acc = self._eval(self.setup.val_data), self._eval(self.setup.test_data)  # 3.
        measured, ticket_stats = self._measure(), self.prune_stats
        ticket = mk.to_cpu(_state_dict(self.model)) if self.out_dir is not None else None
        if s < self.cfg.pruning_times - 1:
            self.prune_stats = self._prune(s)  # 4. score and prune
            self._rewind()  # 5. rewind
        self._agree(s)
        used = self._utilisation(trained.stats, s)
        result = StateResult(
            state=s,
            method=self.cfg.method,
            val_acc=val_acc,
            test_acc=test_acc,
            **measured,
            **dataclasses.asdict(ticket_stats),
            **before,
            train_loss=trained.stats.train_loss,
            epochs_trained=trained.epochs_trained,
            wall_time_s=time.perf_counter() - t0,
            val_size=len(self.setup.val_data),
            test_size=len(self.setup.test_data),
            device=self._device_text(),
            numerics=self.setup.numerics,
            images_per_s=used.images_per_s,
            gpu_busy=used.gpu_busy,
            mfu=used.mfu,
            world_size=1 if self.shard is None else self.shard.world,
        )
        text = fmt_utilisation(result.images_per_s, result.gpu_busy, result.mfu)
        if text:
            log.info("state %d trained: %s", s, text)
        self.results.append(result)
        self.next_state = s + 1
        self._save(ticket)
        return result

    def _device_text(self) -> str:
        """`cpu`, `cuda (NAME)`; with several workers `cpu x2 (gloo)`."""
        text = describe_device(self.setup.device)
        return text if self.shard is None else self.shard.describe(text)

    def _agree(self, s: int) -> None:
        """Several workers: rank 0's masks, T, alive units and prune statistics everywhere
        (and the rewound weights); the digests each worker held are recorded by rank 0."""
        if self.shard is None:
            return
        decided = self._masks_digest()
        synced = self.shard.sync_decisions(self)
        mk.MaskEnforcer(self.model, self.M).apply()
        self.shard.record(s, decided, self._masks_digest() if synced else decided)

    def _masks_digest(self) -> str:
        from rsst_tune.workers import masks_digest

        return masks_digest(self.M, self.U, self.R, self.T, self.alive)

    def _utilisation(self, stats: TrainStats, s: int) -> _Used:
        """images/s, GPU busy and MFU of state `s`'s training (`rsst_tune.utilisation`); all
        None when the state was not trained here (state 0 from the dense cache)."""
        used = stats.utilisation
        if used is None or used.images_per_s is None:
            return _Used(None, None, None)
        if self.shard is not None:  # the workers train in lockstep: rank 0's images x N
            used = dataclasses.replace(used, images=used.images * self.shard.world)
        value = None
        device = self.setup.device
        if device.type == "cuda":
            dense_macs = self.setup.cost.dense.macs  # masked training runs the dense shapes
            teacher = dense_macs if s >= 1 and self.cfg.distill_alpha > 0 else 0
            peak = peak_flops(torch.cuda.get_device_name(device), self.setup.amp, tf32_enabled())
            flops = train_flops_per_image(dense_macs, teacher_macs=teacher)
            value = mfu(flops, used.images, used.seconds, peak)
        return _Used(used.images_per_s, used.gpu_busy, value)

    def _extend(self, ticket: dict[str, Tensor]) -> None:
        """A finished run resumed with a larger `pruning_times`: steps 4 and 5 of its last
        state, which the shorter run skipped (same seeds, so the run goes on exactly as one
        started with the larger `pruning_times`); its checkpoint is written again."""
        s = self.next_state - 1
        log.info("extending the run from %d to %d states", s + 1, self.cfg.pruning_times)
        self.prune_stats = self._prune(s)
        self._rewind()
        self._agree(s)
        self._pending_prune = None
        self._save(ticket)

    # ------------------------------------------------------------------ step 1
    def _train(self, s: int) -> _Trained:
        cfg = self.cfg
        # several workers: each its own dropout and drop-path noise, as one big batch has
        torch.manual_seed(derive_seed(cfg.seed, s, 1) + (self.shard.rank if self.shard else 0))
        pull = TargetPull(self.model, self.T) if self.setup.method.regularized and self.T else None
        if s == 0 and cfg.prune_type == "rewind_lt" and cfg.rewind_epoch == 0:
            self.theta_r = _state_dict(self.model)
        epochs = cfg.state_epochs(s)
        if self.on_epoch is not None:
            self.on_epoch(s, 0, epochs, float("nan"))  # the state starts
        train = functools.partial(self._train_epochs, s, pull)
        if s == 0 and self.dense_cache is not None:
            stats, trained_here = self._shared_dense_state(train)
            return _Trained(stats, epochs if trained_here else 0, pull)
        return _Trained(train(None), epochs, pull)

    def _train_epochs(
        self, s: int, pull: TargetPull | None, heartbeat: Callable[[], None] | None
    ) -> TrainStats:
        return train_state(
            self.model,
            self.setup.forward if self.shard is None else self.shard.ddp,
            self.setup.train_data,
            self.cfg,
            generator=make_generator(derive_seed(self.cfg.seed, s), self.device),
            enforcer=mk.MaskEnforcer(self.model, self.M),
            pull=pull,
            amp=self.setup.amp,
            on_epoch=functools.partial(self._epoch_done, s, heartbeat),
            state=s,
            epochs=self.cfg.state_epochs(s),
            distill=self._distillation() if s >= 1 else None,
        )

    def _distillation(self) -> Distillation | None:
        """States >= 1 with distill_alpha > 0: the loss against the dense state 0 (§4b)."""
        if self.cfg.distill_alpha <= 0:
            return None
        assert self.teacher is not None, "the teacher is set after state 0"
        return Distillation(self.teacher, self.cfg.distill_alpha, self.cfg.distill_T)

    def _set_teacher(self, weights: dict[str, Tensor]) -> None:
        """The frozen teacher (§4b): a copy of the model with the trained dense weights of
        state 0, in eval mode, without gradients; trained never."""
        teacher = copy.deepcopy(self.setup.model)
        teacher.load_state_dict(weights)
        for p in teacher.parameters():
            p.grad = None
            p.requires_grad_(False)
        self.teacher = teacher.eval()
        self.teacher_weights = weights

    def _epoch_done(
        self, s: int, heartbeat: Callable[[], None] | None, epoch: int, loss: float
    ) -> None:
        if s == 0 and self.cfg.prune_type == "rewind_lt" and epoch == self.cfg.rewind_epoch:
            self.theta_r = _state_dict(self.model)
        if self.on_epoch is not None:
            self.on_epoch(s, epoch, self.cfg.state_epochs(s), loss)
        if heartbeat is not None:
            heartbeat()

    def _shared_dense_state(
        self, train: Callable[[Callable[[], None] | None], TrainStats]
    ) -> tuple[TrainStats, bool]:
        """State 0 from the dense cache: train it once per key, load it everywhere else.

        Returns the training stats and whether this trial trained it."""
        assert self.dense_cache is not None
        key, pack = (
            dense_key(self.setup.numerics_cfg),
            functools.partial(self._train_and_pack, train),
        )
        if self.shard is not None:  # rank 0 asks the cache; the others follow its decision
            shared, trained_here = self.shard.dense_state(self.dense_cache, key, pack)
            if self.shard.rank != 0:  # its weights come from rank 0 after the state (_run_state)
                theta_r, steps, loss = self.shard.broadcast_object(None)
                if theta_r is not None:
                    self.theta_r = mk.to_device(theta_r, self.device)
                if trained_here and self._dense_stats is not None:
                    return self._dense_stats, True
                return TrainStats(steps, loss, 0.0), trained_here
            payload = shared
            assert payload is not None
        else:
            payload, trained_here = self.dense_cache.get_or_train(key, pack)
        if not trained_here:
            loss = float(payload["train_loss"])
            if not math.isfinite(loss):  # written by an rsst-tune that did not check
                raise TrialDiverged(0, self.cfg.epochs, loss)
            self.model.load_state_dict(payload["model"])
            if payload["theta_r"] is not None:
                self.theta_r = mk.to_device(payload["theta_r"], self.device)
        if self.shard is not None:  # rank 0's θr and stats for the others
            theta_r = mk.to_cpu(self.theta_r) if self.theta_r else None
            self.shard.broadcast_object(
                (theta_r, int(payload["steps"]), float(payload["train_loss"]))
            )
        if trained_here and self._dense_stats is not None:
            return self._dense_stats, True  # with its utilisation
        return TrainStats(int(payload["steps"]), float(payload["train_loss"]), 0.0), trained_here

    def _train_and_pack(
        self,
        train: Callable[[Callable[[], None] | None], TrainStats],
        heartbeat: Callable[[], None],
    ) -> dict[str, Any]:
        stats = train(heartbeat)
        self._dense_stats = stats
        return {
            "model": mk.to_cpu(_state_dict(self.model)),
            "theta_r": mk.to_cpu(self.theta_r) if self.theta_r is not None else None,
            "steps": stats.steps,
            "train_loss": stats.train_loss,
        }

    # ------------------------------------------------------------------ step 2
    def _impose_structure(self, trained: _Trained) -> dict[str, Any]:
        """RSST states: zero T (M ← R); returns what §6 reports about it (None elsewhere)."""
        if not (self.setup.method.regularized and self.R is not None):
            return {"acc_before_structure": None, "t_norm": None, "lambda_reached": None}
        before: dict[str, Any] = {
            "acc_before_structure": self._eval(self.setup.test_data),
            "t_norm": trained.pull.norm() if trained.pull is not None else 0.0,
            "lambda_reached": trained.stats.lambda_reached,
        }
        self.M = mk.clone(self.R)
        mk.MaskEnforcer(self.model, self.M).apply()
        return before

    # ------------------------------------------------------------------ step 3
    def _eval(self, data: BatchTransforms) -> float:
        return evaluate(
            self.model, self.setup.forward, data, self.cfg.eval_batch_size, self.setup.amp
        )

    @torch.no_grad()
    def _measure(self) -> dict[str, Any]:
        """Sparsity over every prunable layer of §1 (whatever the target), units, cost."""
        structure = self.setup.report_structure
        params = dict(self.model.named_parameters())
        wnames = structure.weight_names
        zeros = sum(int((params[n] == 0).sum()) for n in wnames)
        total = sum(params[n].numel() for n in wnames)
        out: dict[str, Any] = {
            "sparsity": zeros / max(total, 1),
            "density_total": nonzero_params(self.model) / self.setup.dense_params,
        }
        alive_counts: dict[str, int] = {}
        for g in structure.groups:
            alive = torch.zeros(g.num_units, dtype=torch.bool, device=self.device)
            for m in g.members:
                alive |= m.per_unit(params[m.param] != 0, reduce="any")
            alive_counts[g.name] = int(alive.sum())
        for kind in UNIT_KINDS:
            per_layer = [alive_counts[g.name] for g in structure.by_kind(kind.name)]
            out[kind.report] = sum(per_layer) if per_layer else None
            out[kind.per_layer] = tuple(per_layer) if per_layer else None
        cost, pf, mf = self.setup.cost.fractions(alive_counts)
        out.update(params=cost.params, macs=cost.macs, params_frac=pf, macs_frac=mf)
        return out

    # ------------------------------------------------------------------ step 4
    def _prune(self, s: int) -> PruneStats:
        cfg, structure = self.cfg, self.setup.structure
        prunes = s + 1
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, s, 2))
        params = dict(self.model.named_parameters())
        wnames, groups = structure.weight_names, structure.groups
        kept_m, total_w = mk.count(self.M, wnames)
        rate = self.setup.rate
        if rate is None:  # derived so that U keeps as many weights as R will (§2.4.1)
            # every kind has an explicit ratio here, so budgets need no U
            r_weights = sum(
                self._budget(g, None, prunes).keep * g.weights_per_unit() for g in groups
            )
            rate = max(0.0, 1.0 - r_weights / max(kept_m, 1))
        U = magnitude_prune({n: params[n] for n in wnames}, self.M, rate, gen)
        for n in structure.maskable_names:
            U.setdefault(n, self.M[n].clone())  # biases and norms: unstructured pruning keeps them
        kept_u, _ = mk.count(U, wnames)
        stats: dict[str, Any] = {
            "rate": 1.0 - kept_u / max(kept_m, 1),
            "density_U": kept_u / total_w,
        }
        R = U
        if self.setup.method.structured:
            R, ratios = self._structure_from(U, s, gen, prunes)
            stats.update(ratios, density_R=mk.density(R, wnames))
        self.U = U
        self.M, self.T = self.setup.method.policy(U, R)
        self.R = mk.clone(R) if self.setup.method.regularized else None
        return PruneStats(**stats)

    def _score_inputs(self, U: mk.Masks, s: int) -> ScoreInputs:
        """What the criterion scores with; its loss is the training loss, label smoothing
        included (§3.1: `saliency` differentiates it)."""
        loss = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        return ScoreInputs(U, self.M, self._score_batches(s), loss)

    def _structure_from(
        self, U: mk.Masks, s: int, gen: torch.Generator, prunes: int
    ) -> tuple[mk.Masks, dict[str, float]]:
        """R from U (§3): score units, budget each layer, keep the best; effective ratios."""
        structure = self.setup.structure
        groups = structure.groups
        inputs = self._score_inputs(U, s)
        scores = self.setup.criterion(self.model, groups, inputs)
        budgets = [self._budget(g, U, prunes) for g in groups]
        keep = select_units(
            groups,
            scores,
            self.alive,
            budgets,
            sorting=self.cfg.sorting,
            min_units=self.cfg.min_units,
            generator=gen,
        )
        self._warn_if_no_removal(groups, budgets)
        R = mk.from_units(self.model, structure, keep, self.M)
        ratios = {}
        for kind in structure.kinds:
            kind_groups = structure.by_kind(kind)
            before = sum(int(self.alive[g.name].sum()) for g in kind_groups)
            after = sum(int(keep[g.name].sum()) for g in kind_groups)
            ratios[unit_kind(kind).effective] = 1.0 - after / max(before, 1)
        self.alive = {n: k.clone() for n, k in keep.items()}
        return R, ratios

    def _budget(self, g: UnitGroup, U: mk.Masks | None, prunes: int) -> Budget:
        """Units `g` keeps: explicit ratio (compounding) or density-matched to U (§3.2)."""
        alive = int(self.alive[g.name].sum())
        ratio = self.setup.ratios.get(g.name)  # the kind's ratio or the layer's own (§3.2)
        if ratio is not None:
            k = explicit_keep(g.num_units, ratio, prunes)
        else:
            assert U is not None, "density-matched budgets need U"
            kept = sum(int(U[m.param].sum()) for m in g.weight_members)
            k = density_matched_keep(kept, g.weights_per_unit(), alive, self.cfg.fillback_rate)
        snap = round_to_for(g.kind, self.cfg.round_to)
        return Budget(clamp_keep(k, alive, self.cfg.min_units, snap), alive, ratio)

    def _warn_if_no_removal(self, groups: Sequence[UnitGroup], budgets: Sequence[Budget]) -> None:
        """Say once per run and kind when a non-zero ratio's budget removes nothing (§3.2):
        per layer with `layer` sorting, for the whole kind with `global` sorting."""
        for kind in self.setup.structure.kinds:
            pairs = [(g, b) for g, b in zip(groups, budgets, strict=True) if g.kind == kind]
            if kind in self._warned or not any(b.asked_ratio for _, b in pairs):
                continue
            if self.cfg.sorting == "global":
                removes = sum(b.keep for _, b in pairs) < sum(b.alive for _, b in pairs)
                idle = [] if removes else [(g, b) for g, b in pairs if b.asked_ratio]
            else:  # a layer whose own ratio is 0 removes nothing by design
                idle = [(g, b) for g, b in pairs if b.asked_ratio and b.keep >= b.alive]
            if not idle:
                continue
            self._warned.add(kind)
            g, b = idle[0]
            snap = round_to_for(kind, self.cfg.round_to)
            log.warning(
                "%s=%.3g removes no %s of %s this state (round(%d·(1-%.3g)^p)%s keeps all %d "
                "alive, min_units=%d): effective ratio 0.00",
                unit_kind(kind).ratio,
                b.asked_ratio,
                kind,
                g.name if self.cfg.sorting == "layer" else f"any {kind} layer",
                g.num_units,
                b.asked_ratio,
                f" snapped to a multiple of round_to={snap}" if snap > 1 else "",
                b.alive,
                self.cfg.min_units,
            )

    def _score_batches(self, s: int) -> list[tuple[Tensor, Tensor]]:
        gen = make_generator(derive_seed(self.cfg.seed, s, 3), self.device)
        out = []
        # the whole training split (not a worker's shard): every worker scores the same batches
        train = self.setup.train_data.unsharded()
        for batch in train.train_batches(self.cfg.batch_size, gen, augment=False):
            out.append(batch)
            if len(out) >= self.cfg.score_batches:
                break
        return out

    # ------------------------------------------------------------------ step 5
    def _rewind(self) -> None:
        kind = self.cfg.prune_type
        if kind == "lt":
            self.model.load_state_dict(self.theta0)
        elif kind == "rewind_lt":
            assert self.theta_r is not None, "θr is captured during state 0"
            self.model.load_state_dict(self.theta_r)
        mk.MaskEnforcer(self.model, self.M).apply()

    # ------------------------------------------------------------------ checkpoints (§5)
    def _save(self, ticket: dict[str, Tensor] | None) -> None:
        if self.out_dir is None or not self.writes:
            return
        model = mk.to_cpu(_state_dict(self.model))
        last = self.next_state >= self.cfg.pruning_times
        ckpt.TrialCheckpoint(
            config=self.cfg.to_dict(),
            next_state=self.next_state,
            model=model,
            ticket=model if last or ticket is None else ticket,
            spec=dataclasses.asdict(self.setup.spec),
            theta_r=mk.to_cpu(self.theta_r) if self.theta_r is not None else None,
            M=mk.to_cpu(self.M),
            U=mk.to_cpu(self.U) if self.U is not None else None,
            R=mk.to_cpu(self.R) if self.R is not None else None,
            T=mk.to_cpu(self.T),
            alive=mk.to_cpu(self.alive),
            prune_stats=dataclasses.asdict(self.prune_stats),
            results=[r.to_dict() for r in self.results],
            rng={"torch": torch.get_rng_state()},
            warned=sorted(self._warned),
            teacher=self.teacher_weights,
        ).save(self.out_dir)

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        cfg: TrialConfig | None = None,
        *,
        data: DataBundle | None = None,
        on_epoch: EpochCallback | None = None,
        numerics_cache: NumericsCache | None = None,
        shard: Shard | None = None,
    ) -> PruneLoop:
        """Continue the run in `out_dir` from its last state checkpoint.

        Checked before anything is written (a one-line ConfigError otherwise): the checkpoint
        is the run's own (its config agrees with the run's `config.json` and with `cfg` on
        every field a resumed run may not change) and fits the model, its units, θ0 and the
        dataset.
        """
        out_dir = Path(out_dir)
        point = resume_point(out_dir, cfg)  # the run's own checkpoint, and cfg agrees
        loop = cls(
            point.cfg, out_dir, data=data, on_epoch=on_epoch, numerics_cache=numerics_cache,
            shard=shard,
        )  # fmt: skip
        loop._restore(point.saved, ckpt.load_theta0(out_dir), point.path)
        if point.extends:
            loop._pending_prune = point.saved.ticket  # the last state did not prune: states() will
        return loop

    def _restore(
        self, saved: ckpt.TrialCheckpoint, theta0: dict[str, Tensor], path: Path | None = None
    ) -> None:
        check_fits(saved, theta0, self.setup, self.out_dir, path)
        dev = self.device
        try:
            self.model.load_state_dict(saved.model)
            self.theta0 = mk.to_device(theta0, dev)
            self.theta_r = mk.to_device(saved.theta_r, dev) if saved.theta_r else None
            self.M = mk.to_device(saved.M, dev)
            self.U = mk.to_device(saved.U, dev) if saved.U is not None else None
            self.R = mk.to_device(saved.R, dev) if saved.R is not None else None
            self.T = mk.to_device(saved.T, dev)
            self.alive = mk.to_device(saved.alive, dev)
            self.results = [StateResult.from_dict(r) for r in saved.results]
            self.prune_stats = PruneStats(**saved.prune_stats)
            if saved.teacher is not None:
                self._set_teacher(saved.teacher)
            torch.set_rng_state(saved.rng["torch"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"checkpoint does not match model {self.cfg.model}: {first}"
            ) from None
        self.next_state = saved.next_state
        self._warned = set(saved.warned)


def _check_batches(setup: TrialSetup) -> None:
    """That every epoch has a training batch BatchNorm can train on (before any work)."""
    cfg, train = setup.cfg, setup.train_data
    if train.num_train_batches(cfg.batch_size) < 1:
        raise ConfigError(
            f"the training split has {len(train)} image(s), too few for a training batch "
            f"(batch_size {cfg.batch_size}); lower val_size (got {cfg.val_size})"
        )
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in setup.model.modules())
    if has_bn and train.world > 1 and cfg.batch_size < 2 * train.world:
        raise ConfigError(
            f"batch_size must be at least {2 * train.world} for {cfg.model} on {train.world} "
            f"workers (BatchNorm cannot train on one image per worker), got {cfg.batch_size}"
        )
    if has_bn and cfg.batch_size < 2:
        raise ConfigError(
            f"batch_size must be in [2, {MAX_BATCH}] for {cfg.model} (BatchNorm cannot train on "
            f"one image), got {cfg.batch_size}"
        )


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
