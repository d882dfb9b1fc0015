"""The iterative prune loop of ALGORITHMS.md §2: train, (RSST) impose, evaluate, prune, rewind.

`PruneLoop(cfg, out_dir).states()` yields one result dict per pruning state (§6) and writes a
checkpoint after each (§5), so a run can stop after any state and `PruneLoop.resume(out_dir)`
continues it with bit-identical results on CPU. All mutable state lives on the instance: a Ray
worker may run many trials in one process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune import checkpoint as ckpt
from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle, DeviceData, load_dataset, make_generator
from rsst_tune.dense_cache import DenseCache, dense_key
from rsst_tune.device import amp_dtype, can_compile, resolve_device
from rsst_tune.errors import ConfigError
from rsst_tune.models import create_model, is_registered
from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.cost import CostModel, count_params, nonzero_params
from rsst_tune.pruning.criteria import ScoreInputs, get_criterion
from rsst_tune.pruning.methods import get_method
from rsst_tune.pruning.regularizer import TargetPull
from rsst_tune.pruning.select import (
    Budget,
    clamp_keep,
    density_matched_keep,
    explicit_keep,
    magnitude_prune,
    select_units,
)
from rsst_tune.pruning.structure import Structure, UnitGroup, find_structure
from rsst_tune.train import TrainStats, evaluate, train_state

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
THETA0_FILE = "theta0.pt"
CHECKPOINT_KEYS = (
    "config", "next_state", "model", "theta_r", "M", "U", "R", "T", "alive",
    "ticket_stats", "results", "rng",
)  # fmt: skip
# Fields that may differ between a checkpoint and the run resuming it.
EXECUTION_FIELDS = {
    "device", "amp", "compile", "data_dir", "download", "eval_batch_size", "threads",
}  # fmt: skip
KIND_RATIO = {"head": "head_ratio", "neuron": "mlp_ratio", "filter": "filter_ratio"}
KIND_REPORT = {"head": "heads", "neuron": "neurons", "filter": "filters"}

# (state, epochs done, epochs, mean train loss of the last epoch); called with 0 (and NaN) when
# a state starts, then after every epoch.
EpochCallback = Callable[[int, int, int, float], None]


def derive_seed(seed: int, state: int, salt: int = 0) -> int:
    """A seed for (trial seed, state, purpose): restarting it each state makes resume exact."""
    return (seed * 1_000_003 + state * 10_007 + salt * 101) % (2**63 - 1)


def state_file(state: int) -> str:
    return f"state_{state:02d}.pt"


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
    ) -> None:
        self.cfg = cfg
        self.dense_cache = dense_cache
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_epoch = on_epoch
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)  # per trial: one trial at a time per process
        self.device = resolve_device(cfg.device)
        self.amp = amp_dtype(self.device, cfg.amp)
        if not is_registered(cfg.model):  # before the data loads: bad input fails first
            create_model(cfg.model, num_classes=2, in_chans=1, img_size=8)  # raises the error
        self.method = get_method(cfg.method)
        self.criterion = get_criterion(cfg.criteria)
        bundle = (
            data
            if data is not None
            else load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, download=cfg.download
            )
        )
        self.spec = bundle.spec
        self.train_data = DeviceData(bundle.train, bundle.spec, self.device)
        self.val_data = DeviceData(bundle.val, bundle.spec, self.device)
        self.test_data = DeviceData(bundle.test, bundle.spec, self.device)

        torch.manual_seed(cfg.seed)
        self.model: nn.Module = create_model(
            cfg.model,
            num_classes=bundle.spec.num_classes,
            in_chans=bundle.spec.in_chans,
            img_size=bundle.spec.img_size,
            pretrained=cfg.pretrained,
        ).to(self.device)
        example = next(self.val_data.eval_batches(2))[0]
        self.structure = find_structure(
            self.model, target=cfg.target, prune_stem=cfg.prune_stem, example_input=example
        )
        # Units of every kind are reported (heads and neurons even when only one is pruned).
        self.report_structure = find_structure(
            self.model, target="both", prune_stem=cfg.prune_stem, example_input=example
        )
        self.cost = CostModel(self.model, self.report_structure, example)
        self.dense_params = count_params(self.model)
        self._check_prunable()
        if self.device.type == "cuda" and self.structure.by_kind("filter"):
            self.model.to(memory_format=torch.channels_last)  # faster convs on tensor cores
        self.forward: Callable[[Tensor], Tensor] = self.model
        if cfg.compile and can_compile(self.device):
            self.forward = torch.compile(self.model)  # type: ignore[assignment]

        self.theta0 = _state_dict(self.model)  # never modified (clone of the init)
        self.theta_r: dict[str, Tensor] | None = None
        self.M = mk.full_masks(self.model, self.structure.maskable_names)
        self.U: mk.Masks | None = None  # the last unstructured mask (kept for the checkpoint)
        self.R: mk.Masks | None = None  # structure to impose at step 2 of the next RSST state
        self.T: mk.Masks = {}
        self.alive = {
            g.name: torch.ones(g.num_units, dtype=torch.bool, device=self.device)
            for g in self.structure.groups
        }
        self.next_state = 0
        self.results: list[dict[str, Any]] = []
        self._ticket_stats: dict[str, Any] = _dense_ticket_stats(
            self.structure, self.method.structured
        )
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ validation
    def _check_prunable(self) -> None:
        cfg = self.cfg
        kinds = self.structure.kinds
        if self.method.structured:
            for kind in kinds:
                ratio = getattr(cfg, KIND_RATIO[kind])
                if ratio == 0.0:
                    continue
                if all(g.num_units <= cfg.min_units for g in self.structure.by_kind(kind)):
                    raise ConfigError(
                        f"cannot prune {KIND_REPORT[kind]} of {cfg.model}: every layer already has "
                        f"<= min_units={cfg.min_units}; lower min_units or change target"
                    )
            if cfg.effective_rate() is None:
                missing = [KIND_RATIO[k] for k in kinds if getattr(cfg, KIND_RATIO[k]) is None]
                if missing:
                    raise ConfigError(
                        f"give rate, or an explicit ratio for every pruned kind (missing: "
                        f"{', '.join(missing)})"
                    )
        rate = cfg.effective_rate()
        if rate is not None and cfg.pruning_times > 1:
            params = dict(self.model.named_parameters())
            total = sum(params[n].numel() for n in self.structure.weight_names)
            if round(total * (1 - rate) ** (cfg.pruning_times - 1)) < 1:
                raise ConfigError(
                    f"rate {rate} over {cfg.pruning_times - 1} prunes would remove every weight"
                )

    # ------------------------------------------------------------------ the loop
    def states(self) -> Iterator[dict[str, Any]]:
        """Run the remaining states, yielding each state's result after its checkpoint."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not (self.out_dir / THETA0_FILE).exists():
                ckpt.atomic_save(mk.to_cpu(self.theta0), self.out_dir / THETA0_FILE)
        while self.next_state < self.cfg.pruning_times:
            result = self._run_state(self.next_state)
            yield result

    def run(self) -> list[dict[str, Any]]:
        for _ in self.states():
            pass
        return self.results

    def _run_state(self, s: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, s, 1))
        gen = make_generator(derive_seed(cfg.seed, s), self.device)
        pull = TargetPull(self.model, self.T) if self.method.regularized and self.T else None
        enforcer = mk.MaskEnforcer(self.model, self.M)

        def epoch_done(epoch: int, loss: float) -> None:
            if s == 0 and cfg.prune_type == "rewind_lt" and epoch == cfg.rewind_epoch:
                self.theta_r = _state_dict(self.model)
            if self.on_epoch is not None:
                self.on_epoch(s, epoch, cfg.epochs, loss)

        if s == 0 and cfg.prune_type == "rewind_lt" and cfg.rewind_epoch == 0:
            self.theta_r = _state_dict(self.model)
        if self.on_epoch is not None:
            self.on_epoch(s, 0, cfg.epochs, float("nan"))  # the state starts

        # 1. train (state 0 may come from the shared dense cache)
        def train(heartbeat: Callable[[], None] | None = None) -> TrainStats:
            def on_epoch(epoch: int, loss: float) -> None:
                epoch_done(epoch, loss)
                if heartbeat is not None:
                    heartbeat()

            return train_state(
                self.model,
                self.forward,
                self.train_data,
                cfg,
                generator=gen,
                enforcer=enforcer,
                pull=pull,
                amp=self.amp,
                on_epoch=on_epoch,
            )

        if s == 0 and self.dense_cache is not None:
            stats, trained_here = self._shared_dense_state(train)
            epochs_trained = cfg.epochs if trained_here else 0
        else:
            stats, epochs_trained = train(), cfg.epochs
        result: dict[str, Any] = {"state": s, "method": cfg.method}
        # 2. RSST: impose the structure (M ← R)
        if self.method.regularized and self.R is not None:
            result["acc_before_structure"] = self._eval(self.test_data)
            result["t_norm"] = pull.norm() if pull is not None else 0.0
            result["lambda_reached"] = stats.lambda_reached
            self.M = mk.clone(self.R)
            mk.MaskEnforcer(self.model, self.M).apply()
        # 3. evaluate the ticket as it now is
        result["val_acc"] = self._eval(self.val_data)
        result["test_acc"] = self._eval(self.test_data)
        result["train_loss"] = stats.train_loss
        result["epochs_trained"] = epochs_trained
        result.update(self._ticket_stats)
        result.update(self._measure())
        ticket = mk.to_cpu(_state_dict(self.model)) if self.out_dir is not None else None
        # 4–5. score, prune, rewind (not after the last state)
        if s < cfg.pruning_times - 1:
            self._ticket_stats = self._prune(s)
            self._rewind()
        result["wall_time_s"] = time.perf_counter() - t0
        self.results.append(result)
        self.next_state = s + 1
        self._save(ticket)
        return result

    def _shared_dense_state(
        self, train: Callable[[Callable[[], None]], TrainStats]
    ) -> tuple[TrainStats, bool]:
        """State 0 from the dense cache: train it once per key, load it everywhere else.

        Returns the training stats and whether this trial trained it."""
        assert self.dense_cache is not None

        def train_and_pack(heartbeat: Callable[[], None]) -> dict[str, Any]:
            st = train(heartbeat)
            return {
                "model": mk.to_cpu(_state_dict(self.model)),
                "theta_r": mk.to_cpu(self.theta_r) if self.theta_r is not None else None,
                "steps": st.steps,
                "train_loss": st.train_loss,
            }

        payload, trained_here = self.dense_cache.get_or_train(dense_key(self.cfg), train_and_pack)
        if not trained_here:
            self.model.load_state_dict(payload["model"])
            if payload["theta_r"] is not None:
                self.theta_r = {k: v.to(self.device) for k, v in payload["theta_r"].items()}
        return TrainStats(int(payload["steps"]), float(payload["train_loss"]), 0.0), trained_here

    def _eval(self, data: DeviceData) -> float:
        return evaluate(self.model, self.forward, data, self.cfg.eval_batch_size, self.amp)

    # ------------------------------------------------------------------ step 4
    def _prune(self, s: int) -> dict[str, Any]:
        cfg = self.cfg
        prunes = s + 1
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, s, 2))
        params = dict(self.model.named_parameters())
        wnames = self.structure.weight_names
        groups = self.structure.groups
        kept_m, total_w = mk.count(self.M, wnames)

        explicit: dict[str, float | None] = {
            g.name: getattr(cfg, KIND_RATIO[g.kind]) for g in groups
        }
        rate = cfg.effective_rate()
        if rate is None:  # derived so that U keeps as many weights as R will (§2.4.1)
            # every kind has an explicit ratio here (_check_prunable), so budgets need no U
            r_weights = sum(
                self._budget(g, None, explicit[g.name], prunes).keep * g.weights_per_unit()
                for g in groups
            )
            rate = max(0.0, 1.0 - r_weights / max(kept_m, 1))
        U = magnitude_prune({n: params[n] for n in wnames}, self.M, rate, gen)
        for n in self.structure.maskable_names:
            U.setdefault(n, self.M[n].clone())  # biases and norms: unstructured pruning keeps them
        kept_u, _ = mk.count(U, wnames)
        stats: dict[str, Any] = {
            "rate": 1.0 - kept_u / max(kept_m, 1),
            "density_U": kept_u / total_w,
        }
        R = U
        if self.method.structured:
            batches = self._score_batches(s)
            loss_fn = nn.CrossEntropyLoss()
            scores = self.criterion(self.model, groups, ScoreInputs(U, self.M, batches, loss_fn))
            budgets = [self._budget(g, U, explicit[g.name], prunes) for g in groups]
            keep = select_units(
                groups,
                scores,
                self.alive,
                budgets,
                sorting=cfg.sorting,
                min_units=cfg.min_units,
                generator=gen,
            )
            self._warn_if_no_removal(groups, budgets)
            R = mk.from_units(self.model, self.structure, keep, self.M)
            before = {
                k: sum(int(self.alive[g.name].sum()) for g in self.structure.by_kind(k))
                for k in self.structure.kinds
            }
            self.alive = {n: k.clone() for n, k in keep.items()}
            for kind in self.structure.kinds:
                after = sum(int(self.alive[g.name].sum()) for g in self.structure.by_kind(kind))
                stats[f"{KIND_RATIO[kind]}_effective"] = 1.0 - after / max(before[kind], 1)
            stats["density_R"] = mk.density(R, wnames)
        self.U = U
        self.M, self.T = self.method.policy(U, R)
        self.R = mk.clone(R) if self.method.regularized else None
        return stats

    def _budget(self, g: UnitGroup, U: mk.Masks | None, ratio: float | None, prunes: int) -> Budget:
        """Units `g` keeps: explicit ratio (compounding) or density-matched to U (§3.2)."""
        alive = int(self.alive[g.name].sum())
        if ratio is not None:
            k = explicit_keep(g.num_units, ratio, prunes)
        else:
            assert U is not None, "density-matched budgets need U"
            kept = sum(int(U[m.param].sum()) for m in g.weight_members)
            k = density_matched_keep(kept, g.weights_per_unit(), alive, self.cfg.fillback_rate)
        return Budget(clamp_keep(k, alive, self.cfg.min_units), alive, ratio)

    def _warn_if_no_removal(self, groups: Sequence[UnitGroup], budgets: Sequence[Budget]) -> None:
        """Say once per run and kind when a non-zero ratio's budget removes nothing (§3.2):
        per layer with `layer` sorting, for the whole kind with `global` sorting."""
        for kind in self.structure.kinds:
            pairs = [(g, b) for g, b in zip(groups, budgets, strict=True) if g.kind == kind]
            if kind in self._warned or not pairs or not pairs[0][1].asked_ratio:
                continue
            if self.cfg.sorting == "global":
                idle = (
                    [] if sum(b.keep for _, b in pairs) < sum(b.alive for _, b in pairs) else pairs
                )
            else:
                idle = [(g, b) for g, b in pairs if b.keep >= b.alive]
            if not idle:
                continue
            self._warned.add(kind)
            g, b = idle[0]
            log.warning(
                "%s=%.3g removes no %s of %s this state (round(%d·(1-%.3g)^p) keeps all %d "
                "alive, min_units=%d): effective ratio 0.00",
                KIND_RATIO[kind],
                b.asked_ratio,
                kind,
                g.name if self.cfg.sorting == "layer" else f"any {kind} layer",
                g.num_units,
                b.asked_ratio,
                b.alive,
                self.cfg.min_units,
            )

    def _score_batches(self, s: int) -> list[tuple[Tensor, Tensor]]:
        gen = make_generator(derive_seed(self.cfg.seed, s, 3), self.device)
        out = []
        for batch in self.train_data.train_batches(self.cfg.batch_size, gen, augment=False):
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

    # ------------------------------------------------------------------ §6 measurements
    @torch.no_grad()
    def _measure(self) -> dict[str, Any]:
        params = dict(self.model.named_parameters())
        wnames = self.structure.weight_names
        zeros = sum(int((params[n] == 0).sum()) for n in wnames)
        total = sum(params[n].numel() for n in wnames)
        out: dict[str, Any] = {
            "sparsity": zeros / max(total, 1),
            "density_total": nonzero_params(self.model) / self.dense_params,
        }
        alive_counts: dict[str, int] = {}
        for g in self.report_structure.groups:
            alive = torch.zeros(g.num_units, dtype=torch.bool, device=self.device)
            for m in g.members:
                alive |= m.per_unit(params[m.param] != 0, reduce="any")
            alive_counts[g.name] = int(alive.sum())
        for kind in self.report_structure.kinds:
            per_layer = [alive_counts[g.name] for g in self.report_structure.by_kind(kind)]
            out[KIND_REPORT[kind]] = sum(per_layer)
            out[f"{KIND_REPORT[kind]}_per_layer"] = per_layer
        cost, pf, mf = self.cost.fractions(alive_counts)
        out.update(params=cost.params, macs=cost.macs, params_frac=pf, macs_frac=mf)
        return out

    # ------------------------------------------------------------------ checkpoints (§5)
    def _save(self, ticket: dict[str, Tensor] | None) -> None:
        if self.out_dir is None:
            return
        model = mk.to_cpu(_state_dict(self.model))
        state = {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "next_state": self.next_state,
            "optimizer_step": 0,  # the optimizer and LR schedule restart each state
            "model": model,  # the weights the next state starts from (rewound, masked)
            # the ticket this state evaluated (what `rsst-tune export` exports)
            "ticket": model if self.next_state >= self.cfg.pruning_times else ticket,
            "spec": dataclasses.asdict(self.spec),
            "theta0": THETA0_FILE,
            "theta_r": mk.to_cpu(self.theta_r) if self.theta_r is not None else None,
            "M": mk.to_cpu(self.M),
            "U": mk.to_cpu(self.U) if self.U is not None else None,
            "R": mk.to_cpu(self.R) if self.R is not None else None,
            "T": mk.to_cpu(self.T),
            "alive": mk.to_cpu(self.alive),
            "ticket_stats": dict(self._ticket_stats),
            "results": list(self.results),
            "rng": {"torch": torch.get_rng_state()},
            "warned": sorted(self._warned),
        }
        ckpt.atomic_save(state, self.out_dir / state_file(self.next_state - 1))

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        cfg: TrialConfig | None = None,
        *,
        data: DataBundle | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> PruneLoop:
        """Continue the run in `out_dir` from its last state checkpoint."""
        out_dir = Path(out_dir)
        path = latest_checkpoint(out_dir)
        if path is None:
            raise ConfigError(f"nothing to resume: no state_XX.pt checkpoint in {out_dir}")
        state = ckpt.load(path)
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"checkpoint {path} is not an rsst-tune v{CHECKPOINT_VERSION} checkpoint"
            )
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing or not isinstance(state["config"], dict):
            raise ConfigError(f"checkpoint {path} is incomplete (missing: {', '.join(missing)})")
        saved = TrialConfig.from_dict(state["config"])
        if cfg is None:
            cfg = saved
        else:
            diff = sorted(
                k
                for k, v in cfg.to_dict().items()
                if k not in EXECUTION_FIELDS and state["config"].get(k) != v
            )
            if diff:
                raise ConfigError(
                    f"checkpoint {path} was written with a different config ({', '.join(diff)}); "
                    "resume with the same config or start a new --out"
                )
        loop = cls(cfg, out_dir, data=data, on_epoch=on_epoch)
        loop._restore(state, ckpt.load(out_dir / THETA0_FILE))
        return loop

    def _restore(self, state: dict[str, Any], theta0: dict[str, Tensor]) -> None:
        dev = self.device
        expected = {k: v.shape for k, v in self.model.state_dict().items()}
        if not isinstance(theta0, dict) or {k: v.shape for k, v in theta0.items()} != expected:
            raise ConfigError(
                f"{THETA0_FILE} in {self.out_dir} does not belong to {self.cfg.model}"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.theta0 = {k: v.to(dev) for k, v in theta0.items()}
            self.theta_r = (
                {k: v.to(dev) for k, v in state["theta_r"].items()} if state["theta_r"] else None
            )
            self.M = mk.to_device(state["M"], dev)
            self.U = mk.to_device(state["U"], dev) if state["U"] is not None else None
            self.R = mk.to_device(state["R"], dev) if state["R"] is not None else None
            self.T = mk.to_device(state["T"], dev)
            self.alive = mk.to_device(state["alive"], dev)
        except (KeyError, RuntimeError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"checkpoint does not match model {self.cfg.model}: {first}"
            ) from None
        self.next_state = int(state["next_state"])
        self.results = list(state["results"])
        self._ticket_stats = dict(state["ticket_stats"])
        self._warned = set(state.get("warned", []))
        torch.set_rng_state(state["rng"]["torch"])


def latest_checkpoint(out_dir: Path) -> Path | None:
    files = sorted(out_dir.glob("state_[0-9][0-9].pt"))
    return files[-1] if files else None


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _dense_ticket_stats(structure: Structure, structured: bool) -> dict[str, Any]:
    stats: dict[str, Any] = {"rate": 0.0, "density_U": 1.0}
    if not structured:
        return stats
    stats["density_R"] = 1.0
    for kind in structure.kinds:
        stats[f"{KIND_RATIO[kind]}_effective"] = 0.0
    return stats
