"""One trial on several data-parallel workers: `rsst-tune run --workers N`, `run_trial(...,
workers=N)` (docs/engine.md "Several workers"; the contract is docs/methods.md's).

`run_workers` (the driver) starts N Ray Train workers (`ray.train.torch.TorchTrainer`: gloo
on CPU, nccl on CUDA; a local Ray on 127.0.0.1 unless one is running) and waits for them.
Each worker runs the trial's `PruneLoop` with a `Shard`, its place among the workers:

* `batch_size` is the global batch: every worker draws the same permutation of the training
  split (resident, or a streamed image folder) and trains on its slice of each batch under
  DistributedDataParallel (a partial last batch is split as evenly as it goes and each
  worker's loss weighted by its share, so the averaged gradient is the global batch's); a
  streamed worker reads only the files of its slice, with the crops one process would draw;
* every score, prune decision, mask, T and λ is computed on every worker from identical
  weights and the same (unsharded) scoring batches, then rank 0's are broadcast; the
  digests of the masks each worker decided and holds are recorded per state;
* each worker evaluates a contiguous part of val and test; the counts are summed, so the
  accuracies (and `val_size`, `test_size`) are over the whole split;
* rank 0 alone writes the checkpoints, `results.json`/`.csv`, `config.json`, the log lines
  of the workers (`run.log`) and `workers.json` (this launch's states with the digests).

`workers == 1` never comes here: one process, no Ray, no DDP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rsst_tune import fileio
from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError, TrialDiverged

if TYPE_CHECKING:
    from rsst_tune.data import DataBundle
    from rsst_tune.dense_cache import DenseCache
    from rsst_tune.loop import PruneLoop
    from rsst_tune.numerics import NumericsCache
    from rsst_tune.results import StateResult
    from rsst_tune.trial_setup import TrialSetup

log = logging.getLogger(__name__)

HANDOFF_FILE = "workers.json"
"""Rank 0's record of this launch: each state's result and the masks' digests per worker."""
STORAGE_DIR = "ray_train"
"""Ray Train's own storage, inside the run's directory."""
POLL_S = 0.5
DENSE_SIGNAL = "dense_state0_"
"""Rank 0's decision about the shared dense state 0: `dense_state0_<launch>.json`."""
PLACEMENT = "placement_"
"""Rank 0's record of the placement group its launch's workers run in: `placement_<launch>`."""
CANCEL = "cancel_"
"""The driver's word that its launch is over: `cancel_<launch>` (see `cancel_launch`)."""


def check_workers(workers: object) -> int:
    """`workers` as an int >= 1, else a one-line ConfigError."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


def check_divisible(batch_size: int, workers: int) -> None:
    """The global batch splits evenly over the workers, else a one-line ConfigError."""
    if batch_size % workers:
        raise ConfigError(
            f"batch_size {batch_size} is not divisible by workers {workers}: batch_size is the "
            f"global batch, each worker trains on batch_size / workers images"
        )


def masks_digest(*parts: Mapping[str, Tensor] | None) -> str:
    """A short digest of mask dicts (keys and values, in key order; None counts)."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"\0none")
            continue
        for name in sorted(part):
            t = part[name].detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclasses.dataclass
class Shard:
    """This process's place among `world` data-parallel workers (a process group is up)."""

    rank: int
    world: int
    backend: str
    forward: Callable[[Tensor], Tensor] | None = None  # the DDP-wrapped model (`prepare`)
    # where rank 0 tells the others what it decided about the shared dense state 0: a file
    # named for this launch in the run directory (`dense_state`); None: no shared cache
    signal_dir: Path | None = None
    launch: str = ""
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    nodes: list[str] = dataclasses.field(default_factory=list)  # each rank's Ray node id

    @property
    def ddp(self) -> Callable[[Tensor], Tensor]:
        """The model under DDP, what the workers train with."""
        assert self.forward is not None, "Shard.build wraps the model"
        return self.forward

    def describe(self, device_text: str) -> str:
        """`cpu x2 (gloo)`, `cuda (NVIDIA H100 ...) x8 (nccl)`, `... x16 (nccl, 2 nodes)`."""
        n = len(set(self.nodes))
        return f"{device_text} x{self.world} ({self.backend}{f', {n} nodes' if n > 1 else ''})"

    def gather_nodes(self, node: str) -> list[str]:
        """Every rank's `node` (its Ray node id), in rank order, kept in `nodes`."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, node)
        self.nodes = [str(g) for g in gathered]
        return self.nodes

    def check(self, cfg: TrialConfig, dense_cache: DenseCache | None) -> None:
        check_divisible(cfg.batch_size, self.world)
        if dense_cache is not None and self.signal_dir is None:
            raise ConfigError("the shared dense cache needs the run's directory (signal_dir)")

    def dense_state(
        self,
        cache: DenseCache,
        key: str,
        train: Callable[[Callable[[], None] | None], dict[str, Any]],
    ) -> tuple[dict[str, Any] | None, bool]:
        """State 0 from the shared dense cache, on every worker: rank 0 asks the cache (it
        may wait there while another trial trains the same state 0, for as long as that
        takes) and writes what it decided to a file of this launch; the other ranks poll for
        that file, so no collective waits meanwhile (a collective would time out). Then all
        ranks train together (`train(heartbeat)`, rank 0 touching the cache's lock), or none
        does and rank 0 holds the cached payload (the loop then broadcasts rank 0's weights).
        Returns (the payload: rank 0's, None elsewhere; whether this trial trained it)."""
        assert self.signal_dir is not None
        flag = self.signal_dir / f"{DENSE_SIGNAL}{self.launch}.json"
        if self.rank == 0:

            def lead(heartbeat: Callable[[], None]) -> dict[str, Any]:
                _write_json(flag, {"train": True})
                return train(heartbeat)

            payload, here = cache.get_or_train(key, lead)
            if not here:
                _write_json(flag, {"train": False})
            return payload, here
        while not flag.is_file():
            time.sleep(POLL_S)
        here = bool(json.loads(flag.read_text())["train"])
        if here:
            train(None)
        return None, here

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every worker."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def build(
        self,
        cfg: TrialConfig,
        data: DataBundle | None,
        numerics_cache: NumericsCache | None,
    ) -> TrialSetup:
        """`build_setup` on every worker, then `prepare`. amp/compile auto on CUDA is decided
        once: rank 0 probes, the others build with its choice."""
        from rsst_tune.device import resolve_device
        from rsst_tune.trial_setup import build_setup

        asked = cfg.compile is True  # compile given, not auto's choice
        if not (cfg.numerics_auto and resolve_device(cfg.device).type == "cuda"):
            return self.prepare(build_setup(cfg, data, numerics_cache=numerics_cache), asked)
        import torch.distributed as dist

        choice: list[Any] = [None]
        setup = None
        if self.rank == 0:
            setup = build_setup(cfg, data, numerics_cache=numerics_cache)
            d = setup.decision
            choice = [None if d is None else (d.amp, d.compile, d.compile_mode)]
        dist.broadcast_object_list(choice, src=0)
        if setup is None:
            fixed = cfg
            if choice[0] is not None:
                amp, comp, mode = choice[0]
                fixed = cfg.replace(amp=amp, compile=comp, compile_mode=mode)
            setup = build_setup(fixed, data, numerics_cache=numerics_cache)
        return self.prepare(setup, asked)

    def prepare(self, setup: TrialSetup, compile_asked: bool = False) -> TrialSetup:
        """The setup with this worker's shards of the splits (resident or streamed) and the
        model under DDP (the loop evaluates and scores with the plain model). The DDP model
        is compiled (`torch.compile` of the DDP module, in the setup's mode) only when the
        config asked for compile itself (`compile_asked`): auto's probe times one process,
        not DDP, so its choice of compile is not applied to the workers."""
        from torch.nn.parallel import DistributedDataParallel

        from rsst_tune.device import compile_forward

        splits = (setup.train_data, setup.val_data, setup.test_data)
        device = setup.device
        ids = [device] if device.type == "cuda" else None
        ddp = DistributedDataParallel(setup.model, device_ids=ids)
        mode = setup.compile_mode if compile_asked else None
        if setup.compile_mode is not None and mode is None:
            log.warning("amp/compile auto chose torch.compile for one process: eager DDP here")
        self.forward = ddp if mode is None else compile_forward(ddp, mode)
        train, val, test = (s.shard(self.rank, self.world) for s in splits)  # type: ignore[attr-defined]
        for split in splits:  # a streamed split's loader (build_setup read from it) stops
            close = getattr(split, "close", None)
            if close is not None:
                close()
        return dataclasses.replace(
            setup,
            train_data=train,
            val_data=val,
            test_data=test,
            forward=setup.model,
            compile_mode=mode,
        )

    # ------------------------------------------------------------------ agreement
    @torch.no_grad()
    def sync_model(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers (BatchNorm statistics) on every worker."""
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, src=0)

    @torch.no_grad()
    def broadcast_masks(self, masks: Mapping[str, Tensor]) -> None:
        import torch.distributed as dist

        for name in sorted(masks):
            t = masks[name]
            if t.dtype == torch.bool:  # as bytes: every backend broadcasts uint8
                b = t.to(torch.uint8)
                dist.broadcast(b, src=0)
                t.copy_(b.bool())
            else:
                dist.broadcast(t, src=0)

    def sync_decisions(self, loop: PruneLoop) -> bool:
        """Rank 0's M, U, R, T, alive units, prune statistics and (rewound) weights on every
        worker. Returns True."""
        import torch.distributed as dist

        for masks in (loop.M, loop.U, loop.R, loop.T, loop.alive):
            if masks is not None:
                self.broadcast_masks(masks)
        stats: list[Any] = [loop.prune_stats]
        dist.broadcast_object_list(stats, src=0)
        loop.prune_stats = stats[0]
        self.sync_model(loop.model)
        return True

    def record(self, state: int, decided: str, held: str) -> None:
        """Gather every worker's mask digests for `state` (what it decided itself, what it
        holds after the broadcast); rank 0 keeps them. A worker holding other masks than
        rank 0 is an error."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (decided, held))
        decided_all: list[str] = [g[0] for g in gathered]
        held_all: list[str] = [g[1] for g in gathered]
        entry = {"state": state, "masks_decided": decided_all, "masks_held": held_all}
        if len(set(held_all)) != 1:
            raise RuntimeError(f"state {state}: the workers hold different masks: {entry}")
        if len(set(decided_all)) != 1:
            log.warning("state %d: the workers decided different masks; rank 0's are used", state)
        self.records.append(entry)


# ---------------------------------------------------------------------- the launch
def launch_workers(
    entry: Callable[[dict[str, Any]], None],
    cfg: TrialConfig | None,
    run_dir: Path,
    workers: int,
    *,
    resume: bool,
    use_gpu: bool,
    on_state: Callable[[StateResult], None] | None = None,
    log_path: Path | None = None,
    data: DataBundle | None = None,
    cpus_per_worker: float | None = None,
    dense_cache_dir: str | None = None,
    span_nodes: bool = False,
) -> None:
    """Run the trial in `run_dir` (a fresh one, or `resume` its last state checkpoint) on
    `workers` Ray Train workers, each calling `entry(conf)` (`rsst_tune.run.worker_entry`),
    one GPU each with `use_gpu` (nccl, else gloo) and `cpus_per_worker` CPUs each (default
    Ray Train's 1); wait for them, calling `on_state` in this thread as rank 0 finishes each
    state; rank 0 appends its log lines to `log_path`; a fresh run shares state 0 through
    the dense cache in `dense_cache_dir` (`Shard.dense_state`). The workers run on one node
    (Ray's STRICT_PACK placement), or with `span_nodes` on as few as hold them (PACK): then
    `run_dir` must be on storage every node sees at the same path. No checks of the directory:
    `rsst_tune.run.run_workers` makes them for a run, a sweep's trainable owns its scratch
    directory."""
    launch = uuid.uuid4().hex
    conf = {
        "config": None if cfg is None else cfg.to_dict(),
        "out_dir": str(run_dir),
        "resume": resume,
        "data": data,
        "cuda": use_gpu,
        "log": None if log_path is None else str(log_path),
        "launch": launch,
        "dense_cache": dense_cache_dir,
    }
    poller = _Poller(run_dir / HANDOFF_FILE, launch, on_state)
    scaling = {
        "num_workers": workers, "use_gpu": use_gpu,
        "resources_per_worker": {
            "CPU": 1.0 if cpus_per_worker is None else cpus_per_worker,
            **({"GPU": 1.0} if use_gpu else {}),
        },
        "placement_strategy": "PACK" if span_nodes else "STRICT_PACK",
    }  # fmt: skip
    _fit(entry, conf, scaling, run_dir / STORAGE_DIR, launch, poller, pin=not span_nodes)


def _fit(
    entry: Callable[[dict[str, Any]], None],
    conf: dict[str, Any],
    scaling: dict[str, Any],
    storage: Path,
    launch: str,
    poller: _Poller,
    *,
    pin: bool,
) -> None:
    """Start the workers (Ray first, when none runs here) and wait for them; `trainer.fit()`
    runs in a thread so that `poller` calls `on_state` in this one, as states finish. `pin`:
    the workers run on this process's node (they share its local run directory)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rsst_tune.tune.run.ray_setup import init_ray

    started = init_ray(None)
    import ray

    try:
        if pin:
            scaling = _pinned(scaling)
        trainer = TorchTrainer(
            entry,
            train_loop_config=conf,
            torch_config=TorchConfig(backend="nccl" if scaling["use_gpu"] else "gloo"),
            scaling_config=ScalingConfig(**scaling),
            run_config=RunConfig(name=f"workers-{launch[:12]}", storage_path=str(storage)),
        )
        failed: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # raised below, in the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=fit, name="rsst-workers-fit", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_S)
                poller.poll()
        except BaseException:  # Tune stopped the trial (SystemExit in a report), Ctrl-C, ...
            try:
                cancel_launch(Path(conf["out_dir"]), launch)
            except Exception as exc:  # what ended the wait is what the caller must see
                log.warning("launch %s could not be cancelled: %s", launch[:12], exc)
            raise
        poller.poll()  # the last states
        if failed:
            error = failed[0]
            raise (_worker_error(error) if isinstance(error, Exception) else error) from None
    finally:
        (Path(conf["out_dir"]) / f"{PLACEMENT}{launch}").unlink(missing_ok=True)
        if started:
            ray.shutdown()


def cancel_launch(run_dir: Path, launch: str) -> None:
    """End the launch `launch` in `run_dir` now, when its driver stops waiting for it before
    it finished (Tune stopped the trial between states, Ctrl-C, an error in `on_state`).

    Tune keeps a stopped trial's process for its next trial, so the Train run would go on in
    the background, holding its CPUs and GPUs; and when Ray ends that process instead, the
    Train controller dies with it, and the workers' placement group, which Ray keeps for the
    whole job, would hold them until the sweep ends. So: the launch's cancel file tells
    workers not yet started to stop at once, and the placement group rank 0 recorded is
    removed, which ends the running workers (Ray Train then ends the run)."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    fileio.write_text(run_dir / f"{CANCEL}{launch}", "")
    record = run_dir / f"{PLACEMENT}{launch}"
    if not record.exists():
        return
    try:
        group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(record.read_text().strip())))
        remove_placement_group(group)
    except Exception as exc:  # a group already removed, a record cut short: nothing to end
        log.debug("launch %s: placement group not removed: %s", launch[:12], exc)
    log.info("launch %s cancelled: its workers end", launch[:12])


def record_placement(run_dir: Path, launch: str, group: str | None) -> None:
    """Rank 0 at its start: the placement group its workers run in, for `cancel_launch`
    (written before the workers' `check_cancelled`, so that either that check or
    `cancel_launch` sees the other's file)."""
    if group:
        fileio.write_text(run_dir / f"{PLACEMENT}{launch}", group)


def check_cancelled(run_dir: Path, launch: str) -> None:
    """A LaunchCancelled when the driver has cancelled the launch `launch`."""
    if (run_dir / f"{CANCEL}{launch}").exists():
        raise LaunchCancelled(f"launch {launch[:12]} was cancelled by its driver")


class LaunchCancelled(RuntimeError):
    """A worker learnt that its launch's driver stopped waiting for it (`cancel_launch`)."""


def _pinned(scaling: dict[str, Any]) -> dict[str, Any]:
    """`scaling` with each worker asking for a sliver of this process's node's own resource
    (`node:<ip>`), so that the workers run here; a ConfigError when this node cannot hold
    them at all (Ray would wait for that placement for ever)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n.get("NodeID") == me), None)
    if node is None:
        return scaling
    have: dict[str, float] = node.get("Resources", {})
    n, each = int(scaling["num_workers"]), dict(scaling["resources_per_worker"])
    for kind, amount in each.items():
        if float(have.get(kind, 0.0)) < n * amount:
            raise ConfigError(
                f"{n} workers need {n * amount:g} {kind}s on this machine (they share its "
                f"run directory), and it has {float(have.get(kind, 0.0)):g}"
            )
    name = next((k for k in have if k.startswith("node:") and k != "node:__internal_head__"), None)
    if name is not None:
        each[name] = min(0.001, 0.5 / n)
    return {**scaling, "resources_per_worker": each}


def _worker_error(exc: Exception) -> Exception:
    """A worker's ConfigError or TrialDiverged as itself (one line); anything else as a
    RuntimeError naming the worker and the error's first line."""
    failures: Mapping[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    found: list[tuple[int, BaseException]] = sorted(failures.items())
    if not found:
        found = [(-1, exc)]
    for _, err in found:
        original = _original(err)
        if isinstance(original, ConfigError):
            return ConfigError(_first_line(original))
        if isinstance(original, TrialDiverged):
            return original
    rank, err = found[0]
    where = "the workers" if rank < 0 else f"worker {rank}"
    return RuntimeError(f"{where} failed: {_first_line(_original(err))}")


def _original(err: BaseException) -> BaseException:
    """The user-code exception behind Ray's wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None or inner is err:
            break
        err, seen = inner, seen + 1
    return err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """`data` as JSON at `path`, written whole (a reader never sees half a file)."""
    fileio.write_text(path, json.dumps(data))


class _Poller:
    """Calls `on_state` for each state rank 0 has recorded in this launch's handoff file
    since the last call (an earlier launch's file is ignored)."""

    def __init__(
        self, path: Path, launch: str, on_state: Callable[[StateResult], None] | None
    ) -> None:
        self.path, self.launch, self.on_state = path, launch, on_state
        self.seen = 0

    def poll(self) -> None:
        from rsst_tune.results import StateResult

        if self.on_state is None:
            return
        try:
            handoff = json.loads(self.path.read_text())
        except (OSError, ValueError):  # not written yet (it is replaced atomically)
            return
        if handoff.get("launch") != self.launch:
            return
        states: Sequence[Mapping[str, Any]] = handoff.get("states", [])
        for entry in states[self.seen :]:
            self.seen += 1
            self.on_state(StateResult.from_dict(entry["result"]))
