"""What every command line of the project shares: a parser whose errors are one line, and the
guard that turns how a command ended into one line and an exit status (2 bad input, 1 a failure,
130 Ctrl+C). `rsst-tune` (`rsst_tune.cli`) and `tune_main.py` (`rsst_tune.tune.cli`) use both."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from rsst_tune.errors import CommandFailed, ConfigError, TrialDiverged, describe_exception


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2 (`--help` still shows usage).
    Flags are never abbreviated: `--pretrained` is that flag, not a prefix of another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_verbose(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """`-v/--verbose` (debug logging): on a command's top parser (default False) and again on
    each subcommand (default left to the top parser), so `-v` works in any position."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="debug logging, and tracebacks of unexpected errors",
    )


def add_import(parser: Any) -> None:
    """`--import MODULE` (repeatable): the user's registrations (`rsst_tune.plugins`)."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import your module first (a name on the Python path, or a .py file): its "
        "criteria, models, datasets, methods and schedules register as in the package "
        "(repeatable)",
    )


def add_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Every long option of `parser` and its subcommands also answers to its other spelling:
    `--num-samples` and `--num_samples`, `--data_dir` and `--data-dir`. A spelling that
    another option already owns is left to it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                add_both_spellings(sub)
            continue
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            body = option[2:]
            for other in (f"--{body.replace('-', '_')}", f"--{body.replace('_', '-')}"):
                # parsed, not listed: help and error messages keep the spellings declared
                parser._option_string_actions.setdefault(other, action)
    if parser.epilog and SPELLING_NOTE not in parser.epilog:
        parser.epilog = f"{parser.epilog.rstrip()}\n\n{SPELLING_NOTE}\n"


SPELLING_NOTE = "Every --long-flag also takes the other spelling: --num-samples or --num_samples."


def run_guarded(prog: str, verbose: bool, command: Callable[[], int], resume_hint: str) -> int:
    """Run a command with logging set up: bad input is one line and exit 2; a diverged trial
    or an unexpected error one line and exit 1 (the traceback only with `verbose`, and in the
    log file a `CommandFailed` names); Ctrl+C exit 130."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    try:
        return command()
    except ConfigError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except TrialDiverged as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except CommandFailed as exc:
        if verbose and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with -v for the traceback)"
        print(
            f"{prog}: error: unexpected {one_line(describe_exception(exc))}{hint}", file=sys.stderr
        )
        return 1


def one_line(text: str) -> str:
    """`text` with its line breaks as spaces."""
    return " ".join(text.split("\n"))
