"""The `rsst-tune` command: its parsers, and a dispatch that hands each subcommand's validated
values to the module that does the work (`rsst_tune.run`, `rsst_tune.tune`, the report, export).

    rsst-tune run --config CONFIG.json            one trial of the prune loop
    rsst-tune run --arch vit_tiny --struct rsst   the same, with the research code's flag names
    rsst-tune tune --space vit_head_mlp           a Ray Tune + Optuna sweep (also tune_main.py)
    rsst-tune report EXPERIMENT_DIR               the best-config report of a sweep
    rsst-tune export CHECKPOINT --out DIR         a physically pruned model (--onnx: and ONNX)

Bad input is one line on stderr and exit status 2, without a traceback, and nothing is
written. A run whose training diverges (NaN or infinite loss) is one line and exit status 1;
so is any unexpected error, with the log file that holds its traceback (`-v` prints it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rsst_tune import __version__
from rsst_tune.command import (
    OneLineParser,
    add_both_spellings,
    add_import,
    add_verbose,
    one_line,
    run_guarded,
)
from rsst_tune.config import (
    AUTO_WORDS,
    BOOL,
    BOOL_WORDS,
    DENSE,
    EXECUTION,
    FLOAT,
    GROUPS,
    INT,
    NUMERICS,
    PRUNE,
    TrialConfig,
    accepts,
    registry_for,
)
from rsst_tune.errors import ConfigError
from rsst_tune.limits import MAX_REPEATS
from rsst_tune.tracking import WandbOptions, parse_tags
from rsst_tune.tune.plan import WANDB_MODES

# Spellings of the research code (seeds/) that map onto config fields.
FLAG_ALIASES: dict[str, list[str]] = {
    "model": ["--arch"],
    "method": ["--struct"],
    "target": ["--vit_prune_target", "--vit-prune-target"],
    "mlp_ratio": ["--mlp_prune_ratio", "--mlp-prune-ratio"],
    "warmup_epochs": ["--warmup"],
    "pruning_times": ["--states"],
}
NO_FLAG = {"extra"}

# `rsst-tune run --help`: one argument group per TrialConfig field group (each field's
# `metadata["group"]`, `rsst_tune.config.GROUPS`), as (title, one-line description), after
# the command's own options (RUN_GROUP, TRACKING_GROUP).
CONFIG_GROUPS: dict[str, tuple[str, str]] = {
    DENSE: (
        "dense training",
        "what state 0 trains, and every later state retrains with: model, data, recipe",
    ),
    PRUNE: (
        "pruning",
        "how states >= 1 prune and retrain: method, ratios, criterion, RSST, rewinding",
    ),
    NUMERICS: (
        "numerics",
        "how the device computes: results depend on it, but --resume may change it",
    ),
    EXECUTION: (
        "execution",
        "where the data come from and how evaluation is batched: no effect on results",
    ),
}
RUN_GROUP = ("run", "this command's input and output: config file, run directory, console")
TRACKING_GROUP = (
    "tracking",
    "Weights & Biases: one row per state (needs pip install 'rsst-tune[wandb]')",
)


def _bool(text: str) -> bool:

    value = BOOL_WORDS.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(
            f"expected true/false (also 1/0, yes/no, on/off), got {text!r}"
        )
    return value


def _bool_or_auto(text: str) -> bool | None:
    """amp, compile: a bool, or `auto` (None: rsst_tune.numerics decides)."""
    if text.strip().lower() in AUTO_WORDS:
        return None
    if text.strip().lower() not in BOOL_WORDS:
        raise argparse.ArgumentTypeError(
            f"expected true/false (also 1/0, yes/no, on/off) or auto, got {text!r}"
        )
    return _bool(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "") else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def _ratio_list(text: str) -> tuple[float, ...] | None:
    """Per-layer ratios as a comma list (`0.25,0,0.5,0.25`); `none` for no list."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, one per layer (e.g. 0.25,0,0.5,0.25), got {text!r}"
        ) from None


def _repeats(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_REPEATS:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_REPEATS}], got {text}")
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrialConfig field (`--head_ratio` and `--head-ratio`), its help, default
    and choices generated from the field's metadata and the registries; in one argument
    group per field group (CONFIG_GROUPS)."""

    assert set(CONFIG_GROUPS) == set(GROUPS), "every field group needs a title"
    groups = {
        name: parser.add_argument_group(title, description)
        for name, (title, description) in CONFIG_GROUPS.items()
    }
    defaults = TrialConfig()
    for f in dataclasses.fields(TrialConfig):
        if f.name in NO_FLAG:
            continue
        group = groups[f.metadata["group"]]
        names = [f"--{f.name}"]
        if "_" in f.name:
            names.append(f"--{f.name.replace('_', '-')}")
        names += FLAG_ALIASES.get(f.name, [])
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "decreasing_lr":
            kwargs.update(type=int, nargs="+", metavar="EPOCH")
        elif accepts(f.name).type == BOOL:  # augment, amp and compile too (default None)
            auto = accepts(f.name).auto
            kwargs.update(
                type=_bool_or_auto if auto else _bool,
                nargs="?",
                const=True,
                metavar="BOOL|auto" if auto else "BOOL",
            )
        elif f.name in ("rate", "head_ratio", "mlp_ratio", "filter_ratio"):
            kwargs.update(type=_optional_float, metavar="FLOAT")
        elif f.name in ("head_ratios", "mlp_ratios", "filter_ratios"):
            kwargs.update(type=_ratio_list, metavar="R,R,...")
        elif f.name in ("val_size", "img_size", "finetune_epochs"):
            kwargs.update(type=int, metavar="N")
        elif isinstance(default, float):
            kwargs.update(type=float, metavar="FLOAT")
        elif isinstance(default, int):
            kwargs.update(type=int, metavar="N")
        elif accepts(f.name).type == FLOAT:  # optional (default None), e.g. train_subset
            kwargs.update(type=_optional_float, metavar="FLOAT")
        elif accepts(f.name).type == INT:
            kwargs.update(type=_optional_int, metavar="N")
        else:
            kwargs.update(type=str, metavar=f.name.upper())
        choices = f.metadata.get("choices")
        registry = registry_for(f.name)
        if registry is not None:
            choices = (*registry.names(), *(["timm:NAME"] if f.name == "model" else []))
        text = str(f.metadata["help"]).replace("%", "%%")
        shown = "none" if default is None else ("[]" if default == () else str(default))
        shown = "auto" if default is None and accepts(f.name).auto else shown
        text += f" (default: {shown.replace('%', '%%')}"
        if choices:
            text += "; choices: " + ", ".join(choices).replace("%", "%%")
        kwargs["help"] = text + ")"
        group.add_argument(*names, **kwargs)
    # accepted for compatibility with the research code; structure comes from --method/--target
    groups[PRUNE].add_argument(
        "--vit_structured", "--vit-structured", action="store_true", help=argparse.SUPPRESS
    )
    groups[NUMERICS].add_argument(
        "--gpu", type=int, default=argparse.SUPPRESS, help="shorthand for --device cuda:N"
    )


def add_tracking_flags(parser: argparse.ArgumentParser) -> None:
    """`--wandb off|offline|online` and the W&B run's project, entity and tags."""
    group = parser.add_argument_group(*TRACKING_GROUP)
    group.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default="off",
        help="log every state to Weights & Biases; online needs WANDB_API_KEY in the "
        "environment; offline writes OUT/wandb/ (upload later: wandb sync) (default: off)",
    )
    group.add_argument(
        "--wandb-project",
        default=None,
        metavar="NAME",
        help="W&B project (default: $WANDB_PROJECT, else rsst-tune)",
    )
    group.add_argument(
        "--wandb-entity",
        default=None,
        metavar="NAME",
        help="W&B entity, a team or user (default: $WANDB_ENTITY, else your key's default)",
    )
    group.add_argument(
        "--wandb-tags",
        type=parse_tags,
        default=(),
        metavar="A,B",
        help="W&B tags of the run, comma-separated",
    )


def wandb_options(args: argparse.Namespace) -> WandbOptions:
    """The tracking flags as `WandbOptions`; a project, entity or tags without --wandb is
    an error (nothing would be logged)."""
    options = WandbOptions(args.wandb, args.wandb_project, args.wandb_entity, args.wandb_tags)
    if not options.enabled:
        given = [
            flag
            for flag, value in (
                ("--wandb-project", options.project),
                ("--wandb-entity", options.entity),
                ("--wandb-tags", options.tags),
            )
            if value
        ]
        if given:
            raise ConfigError(f"{given[0]} needs --wandb offline or --wandb online (default: off)")
    return options


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrialConfig:
    """The trial config: `base` (e.g. from --config) overridden by the flags given."""
    data = dict(base or {})
    for f in dataclasses.fields(TrialConfig):
        if hasattr(args, f.name):
            data[f.name] = getattr(args, f.name)
    if getattr(args, "gpu", None) is not None and not hasattr(args, "device"):
        data["device"] = f"cuda:{args.gpu}"
    return TrialConfig.from_dict(data)


RUN_EXAMPLES = """examples:
  rsst-tune run --model vit_digits --dataset digits --method rsst --head_ratio 0.25 \\
      --mlp_ratio 0.5 --pruning_times 3 --out runs/demo
  rsst-tune run --out runs/demo --resume              # continue an interrupted run
  rsst-tune run --config best_config.json --out runs/best   # re-run a sweep's best config
"""
EXPORT_EXAMPLES = """examples:
  rsst-tune export runs/demo/state_02.pt --out runs/demo/export --onnx
"""


LATENCY_EXAMPLES = """examples:
  rsst-tune latency-table --model vit_tiny --img-size 32 --out vit_tiny_cpu_b1.json
  rsst-tune latency-table --model timm:deit_tiny_patch16_224 --device cuda --batch 256 \\
      --out deit_tiny_h100_b256.json     # then: tune_main.py ... --latency-table that file
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rsst-tune",
        description="Structured pruning (IMP, Refill, RSST) of vision models, and sweeps of its "
        "hyperparameters: run one trial, sweep with Ray Tune + Optuna, report, export.",
    )
    add_verbose(parser, top=True)
    parser.add_argument("--version", action="version", version=f"rsst-tune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser(
        "run",
        help="run one trial of the prune loop",
        description="Run the iterative prune loop once and report every state.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(run)
    own = run.add_argument_group(*RUN_GROUP)
    own.add_argument("--config", help="a TrialConfig JSON (flags override it)")
    own.add_argument(
        "--out",
        "--save_dir",
        "--save-dir",
        dest="out",
        default=None,
        help="output directory (default: runs/<model>_<method>_<dataset>_s<seed>)",
    )
    own.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last state",
    )
    own.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier run in --out"
    )
    own.add_argument("--quiet", action="store_true", help="no progress bar")
    own.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="data-parallel workers (Ray Train + DDP; gloo on CPU, nccl on CUDA): batch_size "
        "is the global batch, divisible by N (default 1: this process, no Ray)",
    )
    add_import(own)
    add_tracking_flags(run)
    add_config_flags(run)

    try:
        from rsst_tune.tune.cli import add_tune_parsers
    except ImportError:  # pragma: no cover - the tune package is part of the install
        add_tune_parsers = None  # type: ignore[assignment]
    if add_tune_parsers is not None:
        add_tune_parsers(sub)

    export = sub.add_parser(
        "export",
        help="physically remove pruned units from a checkpoint",
        description="Write DIR/model.pt (the physically pruned ticket) and DIR/export.json "
        "(params, MACs, the equivalence check, dense vs pruned latency); with --onnx also "
        "DIR/model.onnx, checked and timed in onnxruntime.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(export)
    export.add_argument("checkpoint", help="a state_XX.pt written by `rsst-tune run`")
    add_import(export)
    export.add_argument("--out", required=True, help="directory for the exported model")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --out"
    )
    export.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    export.add_argument(
        "--repeats",
        type=_repeats,
        default=11,
        metavar="N",
        help="timed runs per model and batch size (median and IQR; default 11)",
    )
    export.add_argument("--no-measure", action="store_true", help="skip the latency measurement")
    export.add_argument(
        "--onnx",
        action="store_true",
        help="also write DIR/model.onnx (dynamic batch axis), check onnxruntime's outputs "
        "against PyTorch's (max abs diff <= 1e-4) and time it in onnxruntime on CPU; exit "
        "status 1 when no usable ONNX file could be written",
    )
    latency = sub.add_parser(
        "latency-table",
        help="time a model's prunable blocks at each kept width on a device",
        description="Time each prunable block of MODEL (its heads, MLP neurons or filters at "
        "each kept width) and the dense model on one device, and write the latency table a "
        "sweep predicts `latency_ms` from (`--latency-table FILE`).",
        epilog=LATENCY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(latency)
    add_import(latency)
    latency.add_argument("--model", required=True, help="a registered model or timm:NAME")
    latency.add_argument("--out", required=True, help="the table file to write (JSON)")
    latency.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    latency.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    latency.add_argument("--img-size", type=_positive, default=None, help="input side")
    latency.add_argument("--num-classes", type=_positive, default=None)
    latency.add_argument("--in-chans", type=_positive, default=None)
    latency.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    latency.add_argument(
        "--step", type=_positive, default=1, help="widths in steps of this (a sweep's round_to)"
    )
    latency.add_argument(
        "--max-points", type=_positive, default=16, help="at most this many widths per block"
    )
    latency.add_argument("--repeats", type=_repeats, default=7, metavar="N")
    latency.add_argument(
        "--calibrate",
        type=int,
        default=12,
        metavar="N",
        help="random tickets timed whole to fit one factor per unit kind (default 12; 0: none)",
    )
    latency.add_argument("--threads", type=_positive, default=None, help="torch threads")
    latency.add_argument(
        "--prune-stem", action="store_true", help="for sweeps that prune the stem conv too"
    )
    add_both_spellings(parser)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 2**20:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {2**20}], got {text!r}")
    return value


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _dispatch(args: argparse.Namespace) -> int:
    from rsst_tune.plugins import resolve_imports

    resolve_imports(getattr(args, "imports", None) or ())  # before any name is looked up
    if args.command == "run":
        from rsst_tune.run import run_command

        tracking = wandb_options(args)  # checked by run_command before anything runs
        base: dict[str, Any] = {}
        if args.config:
            base = TrialConfig.from_json_file(args.config).to_dict()
        elif args.resume and args.out and (Path(args.out) / "config.json").is_file():
            base = TrialConfig.from_json_file(Path(args.out) / "config.json").to_dict()
        cfg = None
        flags = [f.name for f in dataclasses.fields(TrialConfig)] + ["gpu"]
        if args.config or any(hasattr(args, name) for name in flags):
            cfg = config_from_args(args, base)
        run_command(
            cfg,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            wandb=tracking,
            workers=args.workers,
        )
        return 0
    if args.command == "export":
        from rsst_tune.export import export_checkpoint

        report = export_checkpoint(
            args.checkpoint,
            args.out,
            device=args.device,
            measure=not args.no_measure,
            repeats=args.repeats,
            overwrite=args.overwrite,
            onnx=args.onnx,
        )
        print(report.table())
        if report.onnx_error is not None:
            print(f"rsst-tune: error: {one_line(report.onnx_error)}", file=sys.stderr)
            return 1
        return 0
    if args.command == "latency-table":
        return _latency_table(args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _latency_table(args: argparse.Namespace) -> int:
    import torch

    from rsst_tune.latency_model import build_latency_table

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the table's file name")
    if args.max_points < 2:
        raise ConfigError("--max-points must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    table = build_latency_table(
        args.model, device=args.device, batch=args.batch, img_size=args.img_size,
        num_classes=args.num_classes, in_chans=args.in_chans, dtype=args.dtype,
        step=args.step, max_points=args.max_points, repeats=args.repeats,
        calibrate=max(0, args.calibrate), prune_stem=args.prune_stem,
    )  # fmt: skip
    table.save(out)
    print(f"{table.describe()}; {len(table.groups)} groups, {len(table.blocks)} distinct blocks")
    if table.calibration:
        c = table.calibration
        print(
            f"calibrated on {c['tickets']} tickets timed whole: factors "
            + ", ".join(f"{k} {v:.2f}" for k, v in table.scale.items())
            + f"; median error {100 * c['median_error_raw']:.1f} % -> "
            f"{100 * c['median_error']:.1f} %; margin {100 * table.margin:.1f} % (the largest "
            "under-prediction among them: a --latency-budget holds a ticket to its prediction "
            "raised by it)"
        )
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from rsst_tune.tune.cli import expand_tune_argv  # `tune --config SWEEP.yaml`

    args = build_parser().parse_args(expand_tune_argv(list(sys.argv[1:] if argv is None else argv)))
    return run_guarded("rsst-tune", args.verbose, lambda: _dispatch(args), "resume with --resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
