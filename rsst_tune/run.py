"""`rsst-tune run`: one trial from the command line, with a progress bar and a per-state table.

Writes, under the output directory: `config.json` (the resolved config), one checkpoint per
state (`state_XX.pt`, plus `theta0.pt`), and `results.json` / `results.csv` rewritten after
every state, so an interrupted run loses at most the state in progress (`--resume`). The
command also keeps `run.log` there (its log lines, and the traceback of an unexpected error).

Everything is validated before the first write: bad input leaves the directory untouched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rsst_tune import checkpoint as ckpt
from rsst_tune import fileio
from rsst_tune.config import ALIASES, TrialConfig
from rsst_tune.data import DataBundle
from rsst_tune.dense_cache import DenseCache
from rsst_tune.device import describe_device
from rsst_tune.errors import (
    CommandFailed,
    ConfigError,
    TrialDiverged,
    describe_exception,
    unknown_choice,
)
from rsst_tune.logfile import log_to_file
from rsst_tune.loop import EpochCallback, PruneLoop
from rsst_tune.results import UNIT_FIELDS, StateResult
from rsst_tune.resume import resume_point
from rsst_tune.tracking import WandbOptions, WandbTracker

log = logging.getLogger(__name__)

LOG_FILE = "run.log"
RESULT_FILES = ("results.json", "results.csv", "config.json", ckpt.THETA0_FILE, LOG_FILE)
FIELD_NAMES = tuple(TrialConfig.field_names())  # each a keyword argument of `run_trial`
RUN_OPTIONS = (
    "config", "out_dir", "resume", "overwrite", "data", "on_state", "on_epoch", "workers",
)  # fmt: skip


def default_out(cfg: TrialConfig) -> Path:
    model = cfg.model.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{model}_{cfg.method}_{cfg.dataset}_s{cfg.seed}"


def run_trial(
    config: TrialConfig | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: DataBundle | None = None,
    on_state: Callable[[StateResult], None] | None = None,
    on_epoch: EpochCallback | None = None,
    workers: int = 1,
    # TrialConfig's fields, each None: not overridden (`test_run_cli` keeps them in step)
    model: str | None = None,
    pretrained: bool | None = None,
    pretrained_file: str | None = None,
    dataset: str | None = None,
    img_size: int | None = None,
    data_dir: str | None = None,
    download: bool | None = None,
    method: str | None = None,
    pruning_times: int | None = None,
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    rate: float | None = None,
    target: str | None = None,
    head_ratio: float | None = None,
    mlp_ratio: float | None = None,
    filter_ratio: float | None = None,
    head_ratios: tuple[float, ...] | None = None,
    mlp_ratios: tuple[float, ...] | None = None,
    filter_ratios: tuple[float, ...] | None = None,
    fillback_rate: float | None = None,
    min_units: int | None = None,
    round_to: int | None = None,
    sorting: str | None = None,
    criteria: str | None = None,
    score_batches: int | None = None,
    prune_stem: bool | None = None,
    RST_schedule: str | None = None,
    reg_granularity_prune: float | None = None,
    exponents: float | None = None,
    distill_alpha: float | None = None,
    distill_T: float | None = None,
    prune_type: str | None = None,
    rewind_epoch: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    lr_schedule: str | None = None,
    decreasing_lr: tuple[int, ...] | None = None,
    batch_size: int | None = None,
    eval_batch_size: int | None = None,
    label_smoothing: float | None = None,
    augment: bool | None = None,
    val_size: int | None = None,
    train_subset: float | None = None,
    data_placement: str | None = None,
    data_workers: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    amp: bool | None = None,
    compile: bool | None = None,
    compile_mode: str | None = None,
    extra: dict[str, Any] | None = None,
    **aliases: Any,
) -> list[StateResult]:
    """Run one trial of the prune loop and return every state's result (the Python API).

    `config` is a `TrialConfig`, a dict of its fields (research-code aliases accepted) or None
    (the defaults). Every `TrialConfig` field is also a keyword argument (`method`, `epochs`,
    `pruning_times`, `head_ratio`, ...; see `rsst-tune run --help` for what each means) that
    overrides the field when it is not None; to reset a field to None, pass a `config` that
    says so (`cfg.replace(rate=None)`). The research code's names `arch`, `struct` and
    `states` (for `model`, `method`, `pruning_times`) are accepted too; any other name is a
    `ConfigError` that lists the valid ones.

    With `out_dir`, the run writes `config.json`, `results.json`, `results.csv` and one
    checkpoint per state there, and `resume=True` continues an interrupted run from its last
    state (with `config` None, the saved config). Without `out_dir`, nothing is written.
    `on_state` is called after each state; `data` replaces loading the dataset (e.g. a subset
    in a notebook).

        >>> results = rsst_tune.run_trial({"method": "refill", "epochs": 5}, pruning_times=3)
        >>> [round(r.val_acc, 3) for r in results]

    W&B tracking (what `rsst-tune run --wandb` does) is `rsst_tune.tracking.WandbTracker`:

        >>> from rsst_tune.tracking import WandbTracker
        >>> with WandbTracker(cfg, "runs/demo", mode="offline", tags=["demo"]) as tracker:
        ...     rsst_tune.run_trial(cfg, "runs/demo", on_state=tracker.log_state)

    `workers=N` (N > 1) runs the trial on N data-parallel Ray Train workers under DDP
    (`rsst_tune.workers`, docs/engine.md "Several workers"): `batch_size` is the global batch
    (divisible by N), every prune decision is rank 0's, accuracies are over the whole split;
    `on_state` is called as rank 0 finishes each state, `on_epoch` is not called. 1 (the
    default): this process, no Ray.

    Raises `ConfigError` for bad input (before anything is written) and `TrialDiverged` when
    the training loss becomes NaN or infinite (the states before it stay in `out_dir`).
    """
    given = dict(locals())  # first: the arguments only
    overrides = {name: given[name] for name in FIELD_NAMES if given[name] is not None}
    overrides.update(_aliases(aliases, overrides))
    from rsst_tune.workers import check_workers

    if check_workers(workers) > 1:
        return run_workers(
            _config(config, overrides), out_dir, workers, resume=resume, overwrite=overwrite,
            data=data, on_state=on_state,
        )  # fmt: skip
    loop = open_run(
        _config(config, overrides), out_dir, resume=resume, overwrite=overwrite, data=data,
        on_epoch=on_epoch,
    )  # fmt: skip
    return _run_states(loop, out_dir, on_state)


def _aliases(aliases: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`run_trial`'s research-code names (`states=3`) as field overrides; any other name is
    a ConfigError naming the valid ones, and an alias given with its field one too."""
    out: dict[str, Any] = {}
    for name, value in aliases.items():
        if name not in ALIASES:
            valid = (*FIELD_NAMES, *ALIASES, *RUN_OPTIONS)
            raise unknown_choice("run_trial keyword argument", name, valid)
        if value is None:
            continue
        field_name = ALIASES[name]
        if field_name in overrides or field_name in out:
            raise ConfigError(f"give {field_name} or its alias {name}, not both")
        out[field_name] = value
    return out


def open_run(
    cfg: TrialConfig | None,
    out_dir: str | Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: DataBundle | None = None,
    on_epoch: EpochCallback | None = None,
) -> PruneLoop:
    """Validate everything, then prepare `out_dir`: the loop, ready to run its states."""
    if resume:
        if out_dir is None:
            raise ConfigError("resume needs the directory of the run to continue (out_dir)")
        loop = PruneLoop.resume(out_dir, cfg, data=data, on_epoch=on_epoch)
        log.info("resuming %s at state %d of %d", out_dir, loop.next_state, loop.cfg.pruning_times)
        record_length(Path(out_dir), loop.cfg)
        return loop
    cfg = cfg or TrialConfig()
    if out_dir is not None:
        _check_fresh(Path(out_dir), overwrite)
        _check_writable(Path(out_dir))
    loop = PruneLoop(cfg, out_dir, data=data, on_epoch=on_epoch)  # validates first
    if out_dir is not None:
        _clear(Path(out_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fileio.write_text(Path(out_dir) / "config.json", loop.cfg.to_json() + "\n")
    return loop


def record_length(out_dir: Path, cfg: TrialConfig) -> None:
    """A run extended (or shortened) on resume: its `config.json` gets the new length (so a
    later `--resume` reads it)."""
    recorded = out_dir / "config.json"
    if recorded.is_file():
        before = TrialConfig.from_json_file(recorded)
        if before.pruning_times != cfg.pruning_times:
            after = before.replace(pruning_times=cfg.pruning_times)
            fileio.write_text(recorded, after.to_json() + "\n")


def _run_states(
    loop: PruneLoop,
    out_dir: str | Path | None,
    on_state: Callable[[StateResult], None] | None = None,
) -> list[StateResult]:
    c = loop.cfg
    log.info(
        "run %s: %s on %s, %s, %d states x %d epochs, device %s, %s",
        out_dir or "(in memory)", c.model, c.dataset, c.method, c.pruning_times, c.epochs,
        describe_device(loop.device), loop.setup.numerics,
    )  # fmt: skip
    for result in loop.states():
        if out_dir is not None:
            write_results(Path(out_dir), loop.results)
        if on_state is not None:
            on_state(result)
    if out_dir is not None:
        write_results(Path(out_dir), loop.results)
    return list(loop.results)


def _config(
    config: TrialConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> TrialConfig | None:
    if isinstance(config, TrialConfig):
        return config.replace(**overrides) if overrides else config
    if config is None and not overrides:
        return None
    return TrialConfig.from_dict({**dict(config or {}), **overrides})


def run_command(
    cfg: TrialConfig | None,
    out: str | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    wandb: WandbOptions | None = None,
    workers: int = 1,
) -> None:
    """`rsst-tune run`: `run_trial` with a progress bar and the per-state table, and with
    `wandb` (mode offline or online) one W&B run that logs every state (`rsst_tune.tracking`;
    a resumed run starts a new W&B run, which logs the states done before first).
    `workers` > 1: on that many data-parallel workers (`rsst_tune.workers`; no epoch bar)."""
    from rsst_tune.workers import check_workers

    tracking = wandb or WandbOptions()
    tracking.check()  # before anything: the package, WANDB_API_KEY for online
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR (the directory of the run to continue)")
        out_dir = default_out(cfg or TrialConfig())
    else:
        out_dir = Path(out)
    if check_workers(workers) > 1:
        _run_workers_command(cfg, out_dir, workers, resume, overwrite, tracking)
        return
    bar = _EpochBar(enabled=progress)
    table = StateTable()
    loop = open_run(cfg, out_dir, resume=resume, overwrite=overwrite, on_epoch=bar.update)
    if resume:
        for row in loop.results:
            table.print_row(row)

    with (
        run_log(out_dir / LOG_FILE),
        WandbTracker.from_options(tracking, loop.cfg, out_dir) as tracker,
    ):
        for row in loop.results:  # resumed: the states done before
            tracker.log_state(row)

        def on_state(result: StateResult) -> None:
            bar.close()
            table.print_row(result)
            tracker.log_state(result)

        try:
            _run_states(loop, out_dir, on_state)
        finally:
            bar.close()
    log.info("results: %s", out_dir / "results.json")


# ---------------------------------------------------------------------- several workers
def worker_entry(conf: dict[str, Any]) -> None:
    """One Ray Train worker of `rsst_tune.workers.launch_workers`: the trial's loop with its
    `Shard`; rank 0 writes the run's files and the handoff file."""
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    from rsst_tune.workers import HANDOFF_FILE, Shard, check_cancelled, record_placement

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if conf["cuda"]:
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    out_dir = Path(conf["out_dir"])
    if rank == 0:
        group = ray.get_runtime_context().get_placement_group_id()
        record_placement(out_dir, conf["launch"], group)
    check_cancelled(out_dir, conf["launch"])
    shard = Shard(rank, world, str(dist.get_backend()), signal_dir=out_dir, launch=conf["launch"])
    nodes = shard.gather_nodes(ray.get_runtime_context().get_node_id())
    cfg = None if conf["config"] is None else TrialConfig.from_dict(conf["config"])
    with contextlib.ExitStack() as stack:
        if rank == 0 and conf["log"]:
            stack.enter_context(log_to_file(Path(conf["log"])))
        if conf["resume"]:
            loop = PruneLoop.resume(out_dir, cfg, data=conf["data"], shard=shard)
        else:
            cache = DenseCache(conf["dense_cache"]) if conf.get("dense_cache") else None
            loop = PruneLoop(
                cfg or TrialConfig(), out_dir, data=conf["data"], shard=shard, dense_cache=cache
            )
            if rank == 0:
                _clear_for_run(out_dir, loop.cfg)
        if rank == 0:
            log.info(
                "workers: %d x %s on %d node(s), global batch %d (%d per worker)", world,
                loop.setup.device, len(set(nodes)), loop.cfg.batch_size,
                loop.cfg.batch_size // world,
            )  # fmt: skip
        handoff = {
            "launch": conf["launch"], "world_size": world, "backend": shard.backend,
            "nodes": nodes,
        }  # fmt: skip
        states: list[dict[str, Any]] = []
        for result in loop.states():
            check_cancelled(out_dir, conf["launch"])
            if rank != 0:
                continue
            write_results(out_dir, loop.results)
            states.append({**shard.records[-1], "result": result.to_dict()})
            fileio.write_text(out_dir / HANDOFF_FILE, json.dumps({**handoff, "states": states}))
        if rank == 0:
            write_results(out_dir, loop.results)


def _clear_for_run(out_dir: Path, cfg: TrialConfig) -> None:
    """A fresh run (validated by now): an earlier run's files go (its log stays, appended to)
    and the config is recorded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in ckpt.state_files(out_dir):
        path.unlink()
    for name in RESULT_FILES:
        if name != LOG_FILE:
            (out_dir / name).unlink(missing_ok=True)
    fileio.write_text(out_dir / "config.json", cfg.to_json() + "\n")


# ---------------------------------------------------------------------- the driver
def resolve_config(cfg: TrialConfig | None, out_dir: Path, resume: bool) -> TrialConfig:
    """The config the run will use: the resumed checkpoint's (checked against `cfg`), else
    `cfg` or the defaults."""
    if resume:
        return resume_point(out_dir, cfg).cfg
    return cfg or TrialConfig()


def run_workers(
    cfg: TrialConfig | None,
    out_dir: str | Path | None,
    workers: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: DataBundle | None = None,
    on_state: Callable[[StateResult], None] | None = None,
    log_file: bool = False,
) -> list[StateResult]:
    """Run the trial on `workers` Ray Train workers and return every state's result (the
    resumed run's earlier states included). Checked first, in one line each: `workers`, the
    batch's divisibility, `out_dir` (fresh unless `overwrite`; the run's own checkpoint when
    `resume`). Without `out_dir` the run goes to a temporary directory, removed afterwards.
    `on_state` is called here, in the driver, as rank 0 finishes each state; `log_file`: rank
    0 appends its log lines to the run's `run.log`."""
    from rsst_tune.device import resolve_device
    from rsst_tune.workers import STORAGE_DIR, check_divisible, check_workers, launch_workers

    check_workers(workers)
    temp = None
    if out_dir is None:
        if resume:
            raise ConfigError("resume needs the directory of the run to continue (out_dir)")
        temp = Path(tempfile.mkdtemp(prefix="rsst-workers-"))
        run_dir = temp
    else:
        run_dir = Path(out_dir).absolute()
        if not resume:
            _check_fresh(run_dir, overwrite)
            _check_writable(run_dir)
    try:
        used = resolve_config(cfg, run_dir, resume)
        check_divisible(used.batch_size, workers)
        if resume:
            record_length(run_dir, used)
        existed = run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            launch_workers(
                worker_entry,
                None if cfg is None and resume else used,
                run_dir,
                workers,
                resume=resume,
                use_gpu=resolve_device(used.device).type == "cuda",
                on_state=on_state,
                log_path=run_dir / LOG_FILE if log_file else None,
                data=data,
            )
        except ConfigError:  # refused by the workers before any state: leave no directory
            if not existed and temp is None:
                shutil.rmtree(run_dir / STORAGE_DIR, ignore_errors=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only when empty
            raise
        rows = json.loads((run_dir / "results.json").read_text())
        return [StateResult.from_dict(r) for r in rows]
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _run_workers_command(
    cfg: TrialConfig | None,
    out_dir: Path,
    workers: int,
    resume: bool,
    overwrite: bool,
    tracking: WandbOptions,
) -> None:
    """`rsst-tune run --workers N`: the per-state table and W&B in this process, the trial on
    the workers (rank 0 keeps `run.log`)."""
    from rsst_tune.workers import check_divisible

    before: list[StateResult] = []
    if resume:  # checked before W&B starts
        point = resume_point(out_dir, cfg)
        used = point.cfg
        before = [StateResult.from_dict(r) for r in point.saved.results]
    else:
        used = cfg or TrialConfig()
    check_divisible(used.batch_size, workers)
    table = StateTable()
    for row in before:
        table.print_row(row)
    with WandbTracker.from_options(tracking, used, out_dir) as tracker:
        for row in before:
            tracker.log_state(row)

        def on_state(result: StateResult) -> None:
            table.print_row(result)
            tracker.log_state(result)

        run_workers(
            cfg, out_dir, workers, resume=resume, overwrite=overwrite, on_state=on_state,
            log_file=True,
        )  # fmt: skip
    log.info("results: %s", out_dir / "results.json")


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """The run's log lines into `path` (appended across resumes). An unexpected exception is
    logged there with its traceback and raised again as a one-line `CommandFailed` naming the
    file; bad input (`ConfigError`), divergence and Ctrl+C pass through as they are."""
    with log_to_file(path) as handler:
        try:
            yield
        except (ConfigError, TrialDiverged) as exc:
            _to_file(handler, logging.ERROR, str(exc))
            raise
        except KeyboardInterrupt:
            _to_file(handler, logging.WARNING, "interrupted; continue with --resume")
            raise
        except Exception as exc:
            _to_file(handler, logging.ERROR, "run failed", sys.exc_info())
            raise CommandFailed(describe_exception(exc), path) from exc


def _check_fresh(out_dir: Path, overwrite: bool) -> None:
    if overwrite or not out_dir.exists():
        return
    if ckpt.latest_state_file(out_dir) is not None or (out_dir / "results.json").exists():
        raise ConfigError(
            f"{out_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to replace it"
        )


def _to_file(handler: logging.Handler, level: int, message: str, exc_info: Any = None) -> None:
    """A record for the log file only (the console gets the CLI's one line)."""
    handler.handle(logging.LogRecord(log.name, level, __file__, 0, message, None, exc_info))


def _check_writable(out_dir: Path) -> None:
    """A one-line ConfigError for an --out that cannot become a run directory."""
    import os

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a directory")
    existing = out_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out_dir}: {existing} is not writable")


def _clear(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    for path in ckpt.state_files(out_dir):
        path.unlink()
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_results(out_dir: Path, results: Sequence[StateResult]) -> None:
    rows = [r.to_dict() for r in results]
    fileio.write_text(out_dir / "results.json", json.dumps(rows, indent=2) + "\n")
    fileio.write_text(out_dir / "results.csv", results_csv(results))


def results_csv(results: Sequence[StateResult]) -> str:
    """One row per state, every StateResult field a column (per-layer lists space-joined)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=StateResult.keys())
    writer.writeheader()
    for r in results:
        writer.writerow({k: _cell(v) for k, v in r.to_dict().items()})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return " ".join(str(x) for x in v)
    return "" if v is None else v


class StateTable:
    """The per-state table printed to stdout as states finish."""

    def __init__(self) -> None:
        self.units: list[str] | None = None

    def print_row(self, r: StateResult) -> None:
        if self.units is None:
            self.units = [k for k in UNIT_FIELDS if getattr(r, k) is not None]
            cols = ["state", "sparsity", *self.units, "val_acc", "test_acc", "MACs", "params"]
            print(" ".join(f"{c:>9}" for c in [*cols, "time", "img/s"]))
        cells = [
            f"{r.state:>9d}",
            f"{100 * r.sparsity:>8.1f}%",
            *[f"{getattr(r, u):>9}" for u in self.units],
            f"{100 * r.val_acc:>8.2f}%",
            f"{100 * r.test_acc:>8.2f}%",
            f"{100 * r.macs_frac:>8.1f}%",
            f"{100 * r.params_frac:>8.1f}%",
            f"{r.wall_time_s:>8.1f}s",
            f"{r.images_per_s:>9,.0f}" if r.images_per_s is not None else f"{'-':>9}",
        ]
        print(" ".join(cells), flush=True)


class _EpochBar:
    """A tqdm bar over the epochs of the state in progress (on stderr)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def update(self, state: int, epoch: int, epochs: int, loss: float) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=epochs,
                desc=f"state {state}",
                unit="ep",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if epoch > 0:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
