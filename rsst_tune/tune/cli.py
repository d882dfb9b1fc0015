"""The `tune` and `report` subcommands (also `python tune_main.py`): their flags, the checks
that need the machine (GPUs, cores), and the hand-off to the sweep (`rsst_tune.tune.sweep`),
the report and seed confirmation, with how each ended turned into an exit status.

Importing this module is cheap (no torch, no Ray): bad input fails in well under a second.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rsst_tune import __version__
from rsst_tune.command import (
    OneLineParser,
    add_both_spellings,
    add_import,
    add_verbose,
    run_guarded,
)
from rsst_tune.config import PLACEMENTS, available_cores
from rsst_tune.errors import (
    CommandFailed,
    ConfigError,
    ReportFailed,
    SweepInterrupted,
    describe_exception,
)
from rsst_tune.experiment.layout import PLAN_FILE
from rsst_tune.experiment.reader import load_experiment
from rsst_tune.limits import (
    MAX_CONFIRM,
    MAX_FAILURES,
    MAX_REDUCTION_FACTOR,
    MAX_RESOURCES,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_TRIAL_WORKERS,
    MAX_WORKERS,
)
from rsst_tune.tune.gpu_share import AUTO as AUTO_SHARE
from rsst_tune.tune.plan import (
    DRIVER_CPUS,
    KEEP_CHECKPOINTS,
    SETTABLE,
    SweepOptions,
    describe_plan,
    load_plan,
    resolve_plan,
)
from rsst_tune.tune.preflight import check_data, disk_estimate, idle_gpu_warning
from rsst_tune.tune.run.runner import write_report_if_available
from rsst_tune.tune.search.samplers import sampler_names
from rsst_tune.tune.search.schedulers import scheduler_names
from rsst_tune.tune.sweep import run_sweep

if TYPE_CHECKING:
    from rsst_tune.experiment.experiment import Experiment

EXIT_NO_TRIAL = 1  # the sweep finished but no trial completed or was pruned
EXIT_INTERRUPTED = 130  # stopped before its trials finished: resumable

TUNE_HELP = "a Ray Tune + Optuna sweep over the prune loop"
REPORT_HELP = "write the best-config report of a sweep"


def _int_in(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1  # reported below
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text!r}")
    return value


def _float_in(text: str, low: float, high: float, *, low_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise argparse.ArgumentTypeError(
            f"must be a finite number in {bracket}{low:g}, {high:g}], got {text!r}"
        )
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, 1, MAX_SAMPLES)


def _seed(text: str) -> int:
    return _int_in(text, 0, MAX_SEED)


def _nonneg_float(text: str) -> float:
    return _float_in(text, 0.0, MAX_RESOURCES, low_open=False)


def _gpu_share(text: str) -> float | str:
    """--gpus-per-trial: a number of GPUs, or auto (`rsst_tune.tune.gpu_share`)."""
    if text.strip().lower() == AUTO_SHARE:
        return AUTO_SHARE
    try:
        return _nonneg_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a number in [0, {MAX_RESOURCES:g}] or auto, got {text!r}"
        ) from None


def _positive_float(text: str) -> float:
    return _float_in(text, 0.0, MAX_RESOURCES, low_open=True)


def _fraction(text: str) -> float:
    return _float_in(text, 0.0, 1.0, low_open=True)


def _workers(text: str) -> int:
    return _int_in(text, 0, MAX_WORKERS)


def _trial_workers(text: str) -> int:
    return _int_in(text, 1, MAX_TRIAL_WORKERS)


def _seconds(text: str) -> float:
    return _float_in(text, 0.0, 10.0**9, low_open=True)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to search")
    what.add_argument(
        "--config",
        metavar="SWEEP.yaml",
        help="read the options from a sweep file (keys named as these flags; fix: and set: as "
        "maps; import: a list); flags given beside it win",
    )
    what.add_argument(
        "--space",
        help="search space: a name (see --list-spaces), a file (my_space.py, its SPACE; "
        "my_space.py:NAME) or package.module:NAME",
    )
    what.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import your module (a name on the Python path, or a .py file) in the driver and "
        "in every Ray worker first: its criteria, models, datasets, methods and schedules "
        "register as in the package (repeatable)",
    )
    what.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    what.add_argument(
        "--objective",
        help="objective(s) instead of the space's: val_acc, "
        "macs_frac, latency_ms (predicted, see --latency-batch), val_acc@macs<=0.5 (best "
        "val_acc at a MACs budget); comma-separated for several",
    )
    what.add_argument(
        "--macs-budget",
        type=_macs_budget,
        default=None,
        metavar="B",
        help="spaces with analytic MACs (vit_layerwise, resnet_layerwise): only "
        "configurations whose last state keeps at most B of the dense MACs run, 0 < B <= 1; "
        "Optuna learns the others as infeasible before any training",
    )
    what.add_argument(
        "--latency-budget",
        type=_positive_float,
        default=None,
        metavar="MS",
        help="like --macs-budget, in milliseconds per batch of --latency-batch on the trials' "
        "device, predicted by a latency table timed before the trials and raised by its margin "
        "(the largest under-prediction of its calibration): proposals over it never run",
    )
    what.add_argument(
        "--latency-batch",
        type=_positive_int,
        default=1,
        metavar="B",
        help="batch size the latency (objective latency_ms, --latency-budget) is predicted at "
        "(default 1)",
    )
    what.add_argument(
        "--latency-table",
        default=None,
        metavar="FILE",
        help="a table from `rsst-tune latency-table` instead of timing one at the start (e.g. "
        "timed on a GPU node for a sweep driven from a CPU one)",
    )
    what.add_argument(
        "--sampler",
        default="tpe",
        metavar="NAME",
        help=f"Optuna sampler: {', '.join(sampler_names())} (default: tpe; a space's module "
        "may register more with register_sampler)",
    )
    what.add_argument(
        "--scheduler",
        default=None,
        metavar="NAME",
        help=f"trial scheduler, {', '.join(scheduler_names())} (default: the space's; a "
        "space's module may register more with register_scheduler): moasha stops trials "
        "outside the top 1/η of a rung state by Pareto rank (val_acc, MACs); asha ranks the "
        "first objective, only for spaces that do not search sparsity; fifo runs every trial "
        "to the end",
    )
    what.add_argument(
        "--grace",
        type=_grace,
        default=None,
        metavar="STATE",
        help="moasha/asha: the first rung, a pruning state (default: 1 for moasha, the first "
        "pruned state; 0, the dense state, for asha); rungs at grace, grace·η, ...",
    )
    what.add_argument(
        "--reduction-factor",
        type=_reduction_factor,
        default=None,
        metavar="η",
        help="moasha/asha: keep the top 1/η of the trials at each rung (default: 2)",
    )
    what.add_argument(
        "--seed", type=_seed, default=0, help="sampler seed and trial seed (0 to 2**32-1)"
    )
    what.add_argument(
        "--fix",
        type=_fixed_param,
        action="append",
        metavar="NAME=VALUE",
        help="pin a searched parameter (repeatable), e.g. --fix lr=3e-3",
    )
    what.add_argument(
        "--set",
        dest="settings",
        type=_fixed_param,
        action="append",
        metavar="NAME=VALUE",
        help="set a trial config field for every trial (repeatable), any field the space does "
        "not search (a searched one: --fix), e.g. --set batch_size=256 --set compile=true; "
        f"how trials execute: {', '.join(SETTABLE)}",
    )
    what.add_argument(
        "--preset",
        choices=("smoke",),
        default=None,
        help="smoke: an offline digits sweep of a few trials (minutes on 2 cores)",
    )
    over = parser.add_argument_group("base-config overrides (when the space allows them)")
    over.add_argument("--dataset", default=None)
    over.add_argument("--model", "--arch", dest="model", default=None)
    over.add_argument(
        "--states",
        "--pruning-times",
        dest="states",
        type=_positive_int,
        default=None,
        help="pruning states per trial (the trial config's pruning_times)",
    )
    over.add_argument("--epochs", type=_positive_int, default=None, help="epochs per state")
    over.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "mps"))
    inputs = parser.add_argument_group("trial inputs (every trial; see docs/data.md)")
    inputs.add_argument(
        "--img-size", "--img_size", dest="img_size", type=_positive_int, default=None,
        help="input image side; default: the model's (timm: its pretrained size)",
    )  # fmt: skip
    inputs.add_argument(
        "--data-dir", "--data_dir", dest="data_dir", default=None,
        help="the dataset's folder (imagefolder: DIR/train/CLASS/*.jpg, DIR/val/...), or for "
        "--dataset wds a shard pattern ('shards/train-{000..099}.tar': brace ranges, globs, "
        "several joined by ::), stored absolute; on a cluster, a path every node sees",
    )  # fmt: skip
    inputs.add_argument(
        "--data-placement", "--data_placement", dest="data_placement", default=None,
        choices=PLACEMENTS,
        help="device: decode once, keep on the device; stream: read image folders batch by "
        "batch; auto (default): device when the decoded splits fit in a quarter of its memory",
    )  # fmt: skip
    inputs.add_argument(
        "--train-subset", "--train_subset", dest="train_subset", type=_fraction,
        default=None, help="train on this fixed-seed fraction (0, 1] of the training split",
    )  # fmt: skip
    inputs.add_argument(
        "--data-workers", "--data_workers", dest="data_workers", type=_workers,
        default=None, help="DataLoader workers per trial when streaming (default: cores - 1)",
    )  # fmt: skip
    inputs.add_argument(
        "--pretrained-file", "--pretrained_file", dest="pretrained_file", default=None,
        help="start every trial from these weights (a local state dict or .safetensors)",
    )  # fmt: skip
    inputs.add_argument(
        "--pretrained", action="store_true", default=None,
        help="timm:NAME models: every trial starts from timm's pretrained weights (read from "
        "the Hugging Face cache: on an offline cluster, fill it first or use --pretrained-file)",
    )  # fmt: skip
    budget = parser.add_argument_group("budget and resources")
    budget.add_argument(
        "--num-samples",
        type=_positive_int,
        default=None,
        help="number of trials (default: the space's, or the preset's)",
    )
    budget.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=None,
        help="trials at once (default: as resources allow)",
    )
    budget.add_argument(
        "--max-failures",
        type=_max_failures,
        default=2,
        metavar="N",
        help="restart a trial whose worker or node died up to N times, from its last state "
        "checkpoint (default: 2; 0: never)",
    )
    budget.add_argument(
        "--confirm",
        type=_confirm,
        default=None,
        metavar="K",
        help="when the sweep ends, re-run the top K tickets of each MACs budget with 2 more "
        "seeds and choose by the mean over seeds (default: 2 with --preset smoke, else 0)",
    )
    budget.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="export the best tickets as model.pt only (default: also model.onnx, checked and "
        "timed in onnxruntime; about 5 s per ticket on a CPU)",
    )
    budget.add_argument("--cpus-per-trial", type=_positive_float, default=None, help="default 1")
    budget.add_argument(
        "--gpus-per-trial",
        type=_gpu_share,
        default=0.0,
        help="GPUs per trial; fractions pack several trials on one GPU; auto: one short "
        "probe of the trial on a GPU sizes the share from its memory and how busy it keeps "
        "the GPU (none in the cluster: 0)",
    )
    budget.add_argument(
        "--workers-per-trial",
        type=_trial_workers,
        default=1,
        metavar="N",
        help="data-parallel workers per trial (Ray Train + DDP; gloo on CPU, nccl with "
        "--gpus-per-trial 1): --cpus-per-trial and --gpus-per-trial (0 or 1) are then per "
        "worker, batch_size is the global batch (divisible by N); default 1",
    )
    budget.add_argument(
        "--time-budget",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="stop the sweep after this long (running trials end as pruned)",
    )
    budget.add_argument(
        "--epoch-budget",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="start no trial once this many trial-epochs (one epoch of one trial) are spent "
        "or committed to running trials; running trials finish. With --scheduler moasha the "
        "epochs of stopped trials go to new trials; --num-samples still caps the trials",
    )
    where = parser.add_argument_group("where and how")
    where.add_argument(
        "--storage",
        default="experiments",
        help="directory (or URI Ray accepts) for experiments (default: ./experiments)",
    )
    where.add_argument("--name", default=None, help="experiment name (default: SPACE-TIMESTAMP)")
    where.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="EXPERIMENT_DIR",
        help="continue an interrupted sweep (default dir: STORAGE/NAME)",
    )
    where.add_argument(
        "--trust-pickles",
        action="store_true",
        help="with --resume: let Ray load the directory's pickles (tuner.pkl, its experiment "
        "and searcher state, error.pkl) even when they carry no signature of your rsst-tune "
        "(a directory from another user or machine); loading a pickle runs any code it "
        "holds, so use it only for a directory whose writer you trust",
    )
    where.add_argument(
        "--address",
        default=None,
        help="join a Ray cluster (auto, HOST:PORT, ray://HOST:PORT); "
        "default: a local one on 127.0.0.1",
    )
    where.add_argument(
        "--wandb",
        choices=("off", "offline", "online"),
        default="off",
        help="Weights & Biases logging, one run per trial grouped by the sweep's name (key "
        "from WANDB_API_KEY only)",
    )
    where.add_argument(
        "--wandb-project",
        default=None,
        help="W&B project (default: $WANDB_PROJECT, else rsst-tune)",
    )
    where.add_argument("--wandb-entity", default=None, help="W&B entity (default: $WANDB_ENTITY)")
    where.add_argument(
        "--wandb-tags", type=_tags, default=None, metavar="A,B", help="W&B tags of every run"
    )
    where.add_argument(
        "--keep-checkpoints",
        choices=KEEP_CHECKPOINTS,
        default="best",
        help="state checkpoints kept: best (default: each trial's latest, for resume, and "
        "every state that at most --confirm states of the sweep beat on val_acc, MACs and "
        "params: what the report can choose), last, or all; --dry-run estimates the disk",
    )
    where.add_argument(
        "--no-share-dense",
        action="store_true",
        help="train state 0 in every trial (default: trials whose state 0 is "
        "identical train it once and share it through the experiment directory)",
    )
    where.add_argument(
        "--dry-run", action="store_true", help="print the resolved space and budget, run nothing"
    )
    where.add_argument("--quiet", action="store_true", help="no live view")
    where.add_argument(
        "--tune-verbose", dest="tune_verbose", action="store_true", help="debug logs in sweep.log"
    )


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _macs_budget(text: str) -> float:
    return _float_in(text, 0.0, 1.0, low_open=True)


def _grace(text: str) -> int:
    return _int_in(text, 0, MAX_SAMPLES)


def _reduction_factor(text: str) -> int:
    return _int_in(text, 2, MAX_REDUCTION_FACTOR)


def _max_failures(text: str) -> int:
    return _int_in(text, 0, MAX_FAILURES)


def _confirm(text: str) -> int:
    return _int_in(text, 0, MAX_CONFIRM)


def add_tune_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `tune` and `report` on the `rsst-tune` command."""
    tune = subparsers.add_parser(
        "tune",
        help=TUNE_HELP,
        description=TUNE_HELP,
        epilog=TUNE_EXAMPLES.replace("python tune_main.py", "rsst-tune tune"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(tune)
    add_tune_arguments(tune)
    tune.set_defaults(handler=tune_command)
    report = subparsers.add_parser(
        "report",
        help=REPORT_HELP,
        description=REPORT_HELP,
        epilog=REPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(report)
    report.add_argument("experiment", help="an experiment directory (STORAGE/NAME)")
    add_import(report)
    report.add_argument(
        "--measure",
        action="store_true",
        help="export and time each budget's best ticket again (default: show the latency "
        "recorded when the sweep ended)",
    )
    report.add_argument(
        "--confirm",
        type=_confirm,
        default=0,
        metavar="K",
        help="first re-run the top K tickets of each MACs budget with 2 more seeds (Ray, the "
        "shared dense cache) and choose by the mean over seeds; runs already recorded in "
        "confirm.json are kept",
    )
    report.add_argument(
        "--address", default=None, help="for --confirm: join this Ray cluster (default: local)"
    )
    report.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="with --measure or --confirm: export the best tickets as model.pt only",
    )
    report.set_defaults(handler=report_command)


def tune_command(args: argparse.Namespace) -> int:
    """Start, resume or dry-run a sweep; exit status 0 done, 1 when no trial completed or was
    pruned (e.g. every trial failed), 130 interrupted (the resume command goes to stderr)."""

    prog = getattr(args, "prog", "rsst-tune")
    verbose = bool(getattr(args, "verbose", False) or getattr(args, "tune_verbose", False))
    if args.list_spaces:
        print(list_spaces_text())
        return 0
    if args.resume is not None:
        if args.resume:
            path = Path(args.resume)
        elif args.name:
            path = Path(args.storage) / args.name
        else:
            raise ConfigError("--resume needs an experiment directory (or --storage and --name)")
        plan = load_plan(path)
        ignored = ignored_with_resume(args)
        if ignored:  # the user re-typed the sweep's command, or hoped to change it
            print(
                f"{prog}: --resume continues the sweep as it was planned ({path / PLAN_FILE}); "
                f"ignored: {', '.join(ignored)}",
                file=sys.stderr,
            )
        check_local_resources(plan, args.address)
        return _run(
            prog,
            lambda: run_sweep(
                plan,
                resume=True,
                address=args.address,
                verbose=verbose,
                show=not args.quiet,
                trust_pickles=args.trust_pickles,
            ),
            Path(plan.local_dir) / "sweep.log",
        )
    if not args.space:
        raise ConfigError("--space NAME is required; " + spaces_sentence())
    command = getattr(args, "command_line", None) or shlex.join(["rsst-tune", *sys.argv[1:]])
    opts = SweepOptions(
        space=args.space,
        objective=args.objective,
        sampler=args.sampler,
        scheduler=args.scheduler,
        grace=args.grace,
        reduction_factor=args.reduction_factor,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        confirm=args.confirm,
        onnx=args.onnx,
        macs_budget=args.macs_budget,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        time_budget=args.time_budget,
        epoch_budget=args.epoch_budget,
        storage=args.storage,
        name=args.name,
        wandb=args.wandb,
        share_dense=not args.no_share_dense,
        fixed=tuple(args.fix or ()),
        settings=tuple(args.settings or ()),
        dataset=args.dataset,
        model=args.model,
        states=args.states,
        epochs=args.epochs,
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        img_size=args.img_size,
        data_dir=args.data_dir,
        data_placement=args.data_placement,
        train_subset=args.train_subset,
        data_workers=args.data_workers,
        pretrained_file=args.pretrained_file,
        pretrained=args.pretrained,
        imports=tuple(args.imports or ()),
        keep_checkpoints=args.keep_checkpoints,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        wandb_tags=tuple(args.wandb_tags or ()),
        latency_budget=args.latency_budget,
        latency_batch=args.latency_batch,
        latency_table=args.latency_table,
        command=command,
    )
    plan = resolve_plan(opts)
    data_line = check_data(plan, address=args.address)  # a missing dataset: exit 2 here
    if args.dry_run:
        print(f"sweep file (--config reads it; flags beside it win):\n{plan.sweep_file}")
        print(describe_plan(plan))
        print(disk_estimate(plan))
        print(data_line)
        warning = idle_gpu_warning(plan)
        if warning:
            print(warning)
        return 0
    if data_line.startswith("warning:"):
        print(data_line, file=sys.stderr)
    check_local_resources(plan, args.address)
    return _run(
        prog,
        lambda: run_sweep(plan, address=args.address, verbose=verbose, show=not args.quiet),
        Path(plan.local_dir) / "sweep.log",
    )


# Options `--resume` uses; every other one is decided by the sweep's saved plan.
RESUME_OPTIONS = frozenset(
    {"resume", "trust_pickles", "address", "storage", "name", "quiet", "verbose", "tune_verbose"}
)


def ignored_with_resume(args: argparse.Namespace) -> list[str]:
    """The options given with `--resume` that it does not use (the saved plan decides the
    space, trials, scheduler and every trial's config), as typed flags, e.g. `--set`."""
    reference = argparse.ArgumentParser(add_help=False)
    add_tune_arguments(reference)
    ignored = []
    for action in reference._actions:
        if action.dest in RESUME_OPTIONS or not action.option_strings:
            continue
        if getattr(args, action.dest, action.default) != action.default:
            ignored.append(action.option_strings[0])
    return ignored


def check_local_resources(plan: Any, address: str | None) -> None:
    """On a local cluster (no `--address`), refuse what this machine cannot run up front: the
    CUDA device, more GPUs or CPUs per trial than it has (Ray would wait for them forever)."""
    if address is not None:
        return

    device = str(plan.base_config.get("device", "auto"))
    cores = available_cores()
    if plan.cpus_per_trial > cores:
        raise ConfigError(
            f"--cpus-per-trial must be in (0, {cores}] on this machine ({cores} CPU cores, local "
            f"Ray cluster; give --address to use a cluster), got {plan.cpus_per_trial:g}"
        )
    n = plan.workers_per_trial
    if n > 1 and n * plan.cpus_per_trial + DRIVER_CPUS > cores:
        raise ConfigError(
            f"--workers-per-trial {n} x --cpus-per-trial {plan.cpus_per_trial:g} (+ "
            f"{DRIVER_CPUS:g} for the trial's driver) is more than this machine's {cores} CPU "
            "cores (local Ray cluster; give --address to use a cluster): lower either"
        )
    if not device.startswith("cuda") and plan.gpus_per_trial <= 0:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.startswith("cuda") and gpus == 0:
        raise ConfigError(
            f"--device {device}: CUDA is not available on this machine (local Ray cluster); "
            "use --device cpu or auto, or --address to join a cluster with GPUs"
        )
    if n > 1 and n * plan.gpus_per_trial > gpus:
        raise ConfigError(
            f"--workers-per-trial {n} with one GPU each needs {n} GPUs; this machine has "
            f"{gpus} (local Ray cluster; give --address to use a cluster)"
        )
    if plan.gpus_per_trial > gpus:
        raise ConfigError(
            f"--gpus-per-trial must be in [0, {gpus}] on this machine ({gpus} CUDA GPUs, local "
            f"Ray cluster; give --address to use a cluster), got {plan.gpus_per_trial:g}"
        )


def _run(prog: str, sweep: Callable[[], Experiment | None], log_path: Path | None = None) -> int:
    """Run the sweep and turn how it ended into an exit status. An unexpected error becomes a
    one-line `CommandFailed` naming `log_path` (where its traceback is appended)."""
    try:
        experiment = sweep()
    except SweepInterrupted as stop:
        print(f"{prog}: {stop.reason}; continue with: {stop.resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ReportFailed as failed:  # the traceback is in the sweep's log already
        print(f"{prog}: error: {failed}", file=sys.stderr)
        return 1
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if log_path is None or not log_path.parent.is_dir():
            raise
        try:
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write("sweep failed:\n" + "".join(traceback.format_exception(exc)))
        except OSError:
            raise exc from None
        raise CommandFailed(describe_exception(exc), log_path) from exc
    if experiment is None or not experiment.trials:  # URI storage: nothing to check here
        return 0
    if any(t.status in ("complete", "pruned") for t in experiment.trials):
        return 0
    errors = [t for t in experiment.trials if t.status == "error"]
    first = next((t.error for t in errors if t.error), None)
    print(
        f"{prog}: error: no trial completed ({len(errors)} of {len(experiment.trials)} failed"
        + (f"; first error: {first}" if first else "")
        + f"); see {Path(experiment.path) / 'sweep.log'}",
        file=sys.stderr,
    )
    return EXIT_NO_TRIAL


def report_command(args: argparse.Namespace) -> int:

    export = "all" if getattr(args, "measure", False) else "recorded"
    if getattr(args, "confirm", 0):
        from rsst_tune.tune.confirm import confirm_sweep

        try:
            experiment = confirm_sweep(
                args.experiment,
                args.confirm,
                address=getattr(args, "address", None),
                verbose=bool(getattr(args, "verbose", False)),
            )
        except SweepInterrupted as stop:
            again = shlex.join(["rsst-tune", "report", str(args.experiment), "--confirm"])
            print(
                f"rsst-tune: {stop.reason}; the finished runs are kept in confirm.json; "
                f"continue with: {again} {args.confirm}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        export = "all" if export == "all" else "missing"  # the best tickets may have changed
    else:
        experiment = load_experiment(args.experiment)
    path = write_report_if_available(
        experiment, Path(experiment.path), export=export, onnx=getattr(args, "onnx", True)
    )
    if path is None:
        print(
            "rsst-tune: error: the report could not be written (see the log above)", file=sys.stderr
        )
        return 1
    print(path)
    return 0


def list_spaces_text() -> str:
    from search_spaces import get_space, list_spaces

    lines = []
    for name in list_spaces():
        lines.append(f"{name:<22} {get_space(name).description}")
    return "\n".join(lines)


def spaces_sentence() -> str:
    from search_spaces import list_spaces

    return "choose one of: " + ", ".join(list_spaces())


# ---------------------------------------------------------------------- tune_main.py
TUNE_EXAMPLES = """examples:
  python tune_main.py --space vit_head_mlp --preset smoke      # offline, minutes on a CPU
  python tune_main.py --space vit_head_mlp --dry-run           # the plan, nothing run
  python tune_main.py --space vit_head_mlp --num-samples 64 --gpus-per-trial 0.25 --name head_mlp
  python tune_main.py --space vit_head_mlp --dataset imagefolder --data-dir /data/imagenet \\
      --img-size 224 --gpus-per-trial 1 --name inet
  python tune_main.py --resume experiments/head_mlp            # continue an interrupted sweep
"""
REPORT_EXAMPLES = """examples:
  rsst-tune report experiments/head_mlp                # rewrite the report
  rsst-tune report experiments/head_mlp --confirm 2    # 2 more seeds for the top 2 per budget
"""


def build_parser(prog: str = "tune_main.py") -> argparse.ArgumentParser:
    parser = OneLineParser(  # errors are one line and exit status 2
        prog=prog,
        description="Start (or resume) a hyperparameter sweep of the prune loop: " + TUNE_HELP,
        epilog=TUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(parser, top=True)
    parser.add_argument("--version", action="version", version=f"rsst-tune {__version__}")
    add_tune_arguments(parser)
    add_both_spellings(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python tune_main.py ...`: the same options as `rsst-tune tune`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(expand_sweep_file(argv))
    args.command_line = shlex.join(["python", "tune_main.py", *argv])
    args.prog = "tune_main.py"
    return run_guarded(
        "tune_main.py",
        args.verbose,
        lambda: tune_command(args),
        "resume with --resume EXPERIMENT_DIR",
    )


# ---------------------------------------------------------------------- sweep file
# Keys a sweep file may not hold: they are about this command, not the sweep.
NOT_IN_SWEEP_FILE = ("config", "resume", "trust-pickles", "list-spaces", "help", "version")


def expand_sweep_file(argv: list[str]) -> list[str]:
    """`argv` (the options of a sweep) with those of its `--config SWEEP.yaml` put first: the
    flags given beside the file win (the last value of an option wins; the `--fix`, `--set`
    and `--import` of the flags come after the file's). A bad file exits 2 with one line."""
    path = _config_path(argv)
    return argv if path is None else sweep_file_args(Path(path)) + argv


def expand_tune_argv(argv: list[str]) -> list[str]:
    """`rsst-tune [-v] tune ...`: the sweep file of the `tune` subcommand expanded."""
    first = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if first is None or argv[first] != "tune":
        return argv
    return argv[: first + 1] + expand_sweep_file(argv[first + 1 :])


def _config_path(argv: list[str]) -> str | None:
    path = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif token.startswith("--config="):
            path = token.partition("=")[2]
    return path


def sweep_file_args(path: Path) -> list[str]:
    """The flags a sweep file stands for (YAML: keys named as the long flags, with dashes or
    underscores; `fix:` and `set:` maps; `import:` and `wandb-tags:` lists); checked here,
    so a bad key or value names the file."""
    import yaml

    from rsst_tune.limits import MAX_CONFIG_BYTES

    def refuse(message: str) -> NoReturn:
        print(f"{path}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            refuse(f"larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a sweep file")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        refuse(f"cannot be read ({exc.strerror or exc})")
    except UnicodeDecodeError:
        refuse("not a text file")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        refuse(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}")
    except RecursionError:
        refuse("nests too deeply")
    if data is None:
        return []
    if not isinstance(data, dict):
        refuse("must be a map of options (NAME: VALUE per line)")
    parser = build_parser(prog=str(path))
    options = parser._option_string_actions
    longs = (
        next((o[2:] for o in a.option_strings if o.startswith("--")), "") for a in parser._actions
    )
    valid = sorted(k for k in longs if k and k not in NOT_IN_SWEEP_FILE)
    tokens: list[str] = []
    for raw_key, value in data.items():
        key = str(raw_key).strip().replace("_", "-")
        flag = f"--{key}"
        if key in NOT_IN_SWEEP_FILE or flag not in options:
            refuse(f"unknown key {raw_key!r}; a sweep file takes: {', '.join(valid)}")
        action = options[flag]
        if value is None:
            refuse(f"{raw_key}: has no value")
        if key in ("fix", "set"):
            if not isinstance(value, dict):
                refuse(f"{raw_key}: must be a map (NAME: VALUE per line)")
            for name, v in value.items():
                # as on the command line: the text is read as JSON, else kept as a string
                # (YAML leaves 1e-3 a string; json.dumps would quote it into one)
                text = v if isinstance(v, str) else json.dumps(v)
                tokens += [flag, f"{name}={text}"]
        elif isinstance(action, argparse._AppendAction):
            for item in value if isinstance(value, list) else [value]:
                tokens += [flag, _scalar(item, raw_key, refuse)]
        elif key == "wandb-tags" and isinstance(value, list):
            tokens += [flag, ",".join(_scalar(v, raw_key, refuse) for v in value)]
        elif action.nargs == 0:  # a switch: true turns it on
            if not isinstance(value, bool):
                refuse(f"{raw_key}: must be true or false, got {value!r}")
            tokens += [flag] if value else []
        elif isinstance(value, bool):  # YAML reads off/no/yes as booleans
            if action.choices and not value and "off" in action.choices:
                tokens += [f"{flag}=off"]
            else:
                refuse(f"{raw_key}: YAML read {value!r}; write the value in quotes")
        else:
            tokens += [f"{flag}={_scalar(value, raw_key, refuse)}"]
    parser.parse_args(tokens)  # a bad value: one line naming the file, exit 2
    return tokens


def _scalar(value: Any, key: Any, refuse: Callable[[str], NoReturn]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    refuse(f"{key}: must be a single value, got {value!r}")


def _fixed_param(text: str) -> tuple[str, Any]:
    """NAME=VALUE, VALUE read as JSON when it parses (numbers, true/false), else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{name.strip()}: the value nests too deeply") from None
    return name.strip(), value
