"""The two command lines speak one language: every long flag in both spellings (dashes and
underscores), the same name for the same thing (`--states` and `--pruning-times` on both),
`-v` in any position, `--version`, and examples at the end of every command's help."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import rsst_tune
from rsst_tune.cli import build_parser as rsst_tune_parser
from rsst_tune.tune.cli import build_parser as tune_main_parser

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    top = rsst_tune_parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    commands = {f"rsst-tune {name}": p for name, p in sub.choices.items()}
    return {"rsst-tune": top, **commands, "tune_main.py": tune_main_parser()}


@pytest.mark.parametrize("name", list(_commands()))
def test_every_long_flag_answers_to_both_spellings(name: str) -> None:
    parser = _commands()[name]
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                body = option[2:]
                for other in (f"--{body.replace('-', '_')}", f"--{body.replace('_', '-')}"):
                    assert parser._option_string_actions[other].dest == action.dest, (
                        name,
                        option,
                        other,
                    )


def test_states_and_pruning_times_are_one_flag_on_both_commands() -> None:
    run = rsst_tune_parser().parse_args(["run", "--states", "3"])
    assert run.pruning_times == 3
    run = rsst_tune_parser().parse_args(["run", "--pruning-times", "4"])
    assert run.pruning_times == 4
    for spelling in ("--states", "--pruning-times", "--pruning_times"):
        args = tune_main_parser().parse_args(["--space", "vit_head_mlp", spelling, "5"])
        assert args.states == 5
        args = rsst_tune_parser().parse_args(["tune", "--space", "vit_head_mlp", spelling, "5"])
        assert args.states == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "tune", "--space", "vit_head_mlp"],
        ["tune", "-v", "--space", "vit_head_mlp"],
        ["tune", "--space", "vit_head_mlp", "-v"],
        ["run", "--verbose"],
        ["-v", "run"],
        ["report", "DIR", "-v"],
    ],
)
def test_verbose_works_in_any_position(argv: list[str]) -> None:
    assert rsst_tune_parser().parse_args(argv).verbose is True
    quiet = [a for a in argv if a not in ("-v", "--verbose")]
    assert rsst_tune_parser().parse_args(quiet).verbose is False


def test_version_on_both_commands() -> None:
    for argv in (
        [str(Path(sys.executable).with_name("rsst-tune")), "--version"],
        [sys.executable, str(REPO / "tune_main.py"), "--version"],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == f"rsst-tune {rsst_tune.__version__}"


@pytest.mark.parametrize("name", [n for n in _commands() if n != "rsst-tune"])
def test_every_command_help_ends_with_examples(name: str) -> None:
    text = _commands()[name].format_help()
    assert "\nexamples:\n" in text, name
    examples = text.split("\nexamples:\n", 1)[1]
    prog = name.split()[-1] if name != "tune_main.py" else "tune_main.py"
    assert prog in examples, examples


def test_flags_are_never_abbreviated() -> None:
    """`--pretrained` is that flag, never an ambiguous prefix of `--pretrained-file`; a prefix
    of a flag is an unknown argument (exit 2), not a guess."""
    args = tune_main_parser().parse_args(["--space", "vit_head_mlp", "--pretrained"])
    assert args.pretrained is True and args.pretrained_file is None
    with pytest.raises(SystemExit) as stop:
        tune_main_parser().parse_args(["--space", "vit_head_mlp", "--num", "2"])
    assert stop.value.code == 2


def test_both_commands_name_weights_and_biases_the_same() -> None:
    """`rsst-tune run` and a sweep take the same W&B flags, modes and tag lists."""
    from rsst_tune.tune.plan import WANDB_MODES

    tags = ["--wandb-tags", "a,b", "--wandb_project", "p", "--wandb-entity", "e"]
    run = rsst_tune_parser().parse_args(["run", "--wandb", "offline", *tags])
    sweep = tune_main_parser().parse_args(["--space", "vit_head_mlp", "--wandb", "offline", *tags])
    for args in (run, sweep):
        assert (args.wandb, args.wandb_project, args.wandb_entity) == ("offline", "p", "e")
        assert list(args.wandb_tags) == ["a", "b"]
    commands = _commands()
    for name in ("rsst-tune run", "tune_main.py"):
        (action,) = [a for a in commands[name]._actions if "--wandb" in a.option_strings]
        assert set(action.choices) == set(WANDB_MODES), name
