"""docs/extending.md: its examples (docs/examples/*.py) are the code the page shows, and each
one, imported as a user would, really takes part in a tiny trial (real digits data, real
models, CPU): the criterion decides which units stay, the models are pruned and still run
physically smaller, the dataset is what the trial trains on, the space proposes the new
criterion, and the page's command lines run as written."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import rsst_tune
from rsst_tune.checkpoint import TrialCheckpoint, state_file
from rsst_tune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
GUIDE = REPO / "docs" / "extending.md"

# A few seconds a trial on 2 cores: one CPU thread, no augmentation, one epoch per state.
FAST: dict[str, Any] = {
    "device": "cpu",
    "threads": 1,
    "amp": False,
    "augment": False,
    "epochs": 1,
    "warmup_epochs": 0.0,
    "rewind_epoch": 0,
    "score_batches": 1,
    "eval_batch_size": 512,
}
DIGITS: dict[str, Any] = {**FAST, "dataset": "digits", "train_subset": 0.25, "method": "refill"}


# ----------------------------------------------------------------------------- helpers
def _registries() -> list[Any]:
    from rsst_tune.data import DATASETS
    from rsst_tune.models import MODELS
    from rsst_tune.pruning.criteria import CRITERIA
    from search_spaces import SPACES

    return [CRITERIA, MODELS, DATASETS, SPACES]


@pytest.fixture
def load_example() -> Iterator[Callable[[str], ModuleType]]:
    """`load_example("my_model")` imports docs/examples/my_model.py as a user's `import
    my_model` would (docs/examples on sys.path); afterwards every name it registered is
    unregistered and the module forgotten, so no other test sees the examples."""
    before = [set(r.names()) for r in _registries()]
    sys.path.insert(0, str(EXAMPLES))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)  # registers on its first import in this test

    try:
        yield load
    finally:
        sys.path.remove(str(EXAMPLES))
        for registry, names in zip(_registries(), before, strict=True):
            for name in set(registry.names()) - names:
                registry.unregister(name)
        for path in EXAMPLES.glob("*.py"):  # my_space imports my_criterion itself
            sys.modules.pop(path.stem, None)


def _alive(run: Path, state: int) -> dict[str, list[int]]:
    """The units alive after the prune that ended `state`, per layer (its checkpoint)."""
    saved = TrialCheckpoint.load(run / state_file(state))
    return {name: keep.nonzero().flatten().tolist() for name, keep in saved.alive.items()}


def _fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


# ----------------------------------------------------------------------------- the page
def test_the_guide_shows_every_example_as_it_is() -> None:
    """Each example file is one ```python block of the page, character for character."""
    blocks = _fenced(GUIDE.read_text(encoding="utf-8"), "python")
    files = sorted(EXAMPLES.glob("*.py"))
    assert [p.name for p in files] == [
        "my_criterion.py",
        "my_dataset.py",
        "my_model.py",
        "my_space.py",
    ]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text in blocks, f"docs/extending.md does not show {path.name} as it is now"


# ----------------------------------------------------------------------------- criterion
def test_keep_last_decides_which_units_a_trial_keeps(
    load_example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """keep_last scores the last units of every layer highest, so each prune keeps the last
    k heads and neurons of every block: no weight- or activation-based criterion would."""
    load_example("my_criterion")
    results = rsst_tune.run_trial(
        {**DIGITS, "model": "vit_digits", "criteria": "keep_last"},
        tmp_path,
        head_ratio=0.5,
        mlp_ratio=0.5,
        pruning_times=3,
    )
    assert [r.heads_per_layer for r in results] == [(4,) * 4, (2,) * 4, (1,) * 4]
    assert [r.neurons_per_layer for r in results] == [(128,) * 4, (64,) * 4, (32,) * 4]
    for state, (heads, neurons) in enumerate([(2, 64), (1, 32)]):
        alive = _alive(tmp_path, state)
        assert len(alive) == 8  # a head group and a neuron group per block
        for layer, kept in alive.items():
            n, k = (4, heads) if layer.endswith(".attn") else (128, neurons)
            assert kept == list(range(n - k, n)), (state, layer)


def _head_norms(w: dict[str, torch.Tensor], attn: str) -> torch.Tensor:
    """L2 norm of each of vit_digits' 4 heads (head_dim 16, width 64), sliced by hand: head h
    owns rows h of q, k and v in qkv ([q|k|v] x head x head_dim) and columns h of proj."""
    qkv = w[f"{attn}.qkv.weight"].reshape(3, 4, 16, 64)
    proj = w[f"{attn}.proj.weight"].reshape(64, 4, 16)
    return (qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))).sqrt()


def _neuron_norms(w: dict[str, torch.Tensor], mlp: str) -> torch.Tensor:
    """L2 norm of each MLP neuron: row n of fc1 and column n of fc2."""
    return (w[f"{mlp}.fc1.weight"].pow(2).sum(1) + w[f"{mlp}.fc2.weight"].pow(2).sum(0)).sqrt()


def test_weight_l2_keeps_the_units_with_the_largest_weights(
    load_example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """Selected by its alias, weight_l2 scores the trained model of state 0, and each block
    keeps the 2 heads and 64 neurons with the largest weights."""
    my_criterion = load_example("my_criterion")
    rsst_tune.run_trial(
        {**DIGITS, "model": "vit_digits", "criteria": "wl2"},
        tmp_path,
        head_ratio=0.5,
        mlp_ratio=0.5,
        pruning_times=2,
    )
    trained = TrialCheckpoint.load(tmp_path / state_file(0)).ticket  # the weights scored
    w = {name: t.float() for name, t in trained.items()}
    alive = _alive(tmp_path, 0)
    for block in range(4):
        attn, mlp = f"blocks.{block}.attn", f"blocks.{block}.mlp"
        assert alive[attn] == sorted(_head_norms(w, attn).topk(2).indices.tolist()), attn
        assert alive[mlp] == sorted(_neuron_norms(w, mlp).topk(64).indices.tolist()), mlp

    # the criterion itself, called as the loop calls it, on the model rebuilt from the ticket
    from rsst_tune.models import create_model
    from rsst_tune.pruning.criteria import ScoreInputs
    from rsst_tune.pruning.structure import find_structure

    model = create_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
    model.load_state_dict(trained)
    groups = find_structure(model, target="both").groups
    dense = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    inputs = ScoreInputs(dense, dense, [], nn.CrossEntropyLoss())
    scores = my_criterion.weight_l2(model, groups, inputs)
    expected = [
        _head_norms(w, g.name) if g.kind == "head" else _neuron_norms(w, g.name) for g in groups
    ]
    assert len(scores) == len(groups) == 8
    for g, got, want in zip(groups, scores, expected, strict=True):
        assert got.shape == (g.num_units,)
        assert torch.allclose(got, want, rtol=1e-5), g.name


# ----------------------------------------------------------------------------- models
MODEL_CASES = {
    # model: (ratios, dense units per layer, units per layer after one prune at ratio 0.5)
    "small_convnet": (
        {"filter_ratio": 0.5},
        {"filters_per_layer": (32, 32)},  # conv1 and conv2; the stem is not pruned
        {"filters_per_layer": (16, 16)},
    ),
    "tiny_transformer": (
        {"head_ratio": 0.5, "mlp_ratio": 0.5},
        {"heads_per_layer": (4, 4), "neurons_per_layer": (64, 64)},
        {"heads_per_layer": (2, 2), "neurons_per_layer": (32, 32)},
    ),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_a_registered_model_is_pruned_and_runs_physically_smaller(
    name: str, load_example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """The units the pruning finds in the example models are the ones the page names; after
    one prune the states report fewer units, params and MACs, and the exported model (units
    sliced out) has the reported params and computes the masked model's outputs."""
    from rsst_tune.export import load_pruned_model
    from rsst_tune.pruning.cost import count_params

    load_example("my_model")
    ratios, dense_units, pruned_units = MODEL_CASES[name]
    dense, pruned = rsst_tune.run_trial(
        {**DIGITS, "model": name, "pruning_times": 2, **ratios}, tmp_path
    )
    for field, units in dense_units.items():
        assert getattr(dense, field) == units
    for field, units in pruned_units.items():
        assert getattr(pruned, field) == units
    assert pruned.params < dense.params and pruned.params_frac < 1.0
    assert pruned.macs < dense.macs and pruned.macs_frac < 1.0
    assert dense.params_frac == dense.macs_frac == 1.0

    # load_pruned_model raises unless the sliced model computes what the masked one does
    model: Any = load_pruned_model(tmp_path / state_file(1))  # its layers, by attribute
    assert count_params(model) == pruned.params
    with torch.no_grad():
        logits = model(torch.randn(5, 1, 8, 8))  # digits: 1 x 8 x 8, 10 classes
    assert logits.shape == (5, 10) and bool(torch.isfinite(logits).all())
    if name == "small_convnet":
        assert (model.stem.out_channels, model.conv1.out_channels) == (16, 16)
        assert (model.conv2.in_channels, model.conv2.out_channels) == (16, 16)
        assert model.fc.in_features == 16
    else:
        for block in model.blocks:
            assert block.attn.num_heads == 2 and block.attn.qkv.out_features == 3 * 2 * 8
            assert block.attn.proj.in_features == 2 * 8 and block.mlp.fc1.out_features == 32


# ----------------------------------------------------------------------------- dataset
def test_a_registered_dataset_is_read_from_data_dir_and_trained_on(
    load_example: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """stripes: refused without its files unless download; written under data_dir, then the
    trial's classes, channels, image size and split sizes are the dataset's, and it learns
    (chance is 1/3)."""
    from rsst_tune.data import load_dataset

    load_example("my_dataset")
    with pytest.raises(ConfigError, match=r"stripes not found under .*; pass --download"):
        load_dataset("stripes", data_dir=tmp_path)
    assert not (tmp_path / "stripes").exists()

    results = rsst_tune.run_trial(
        {**FAST, "model": "vit_digits", "dataset": "stripes", "epochs": 5},
        tmp_path / "run",
        data_dir=str(tmp_path),
        download=True,
        method="refill",
        head_ratio=0.5,
        pruning_times=1,
    )
    assert sorted(p.name for p in (tmp_path / "stripes").iterdir()) == ["test.npz", "train.npz"]
    (state,) = results
    assert (state.val_size, state.test_size) == (60, 90)  # 300 - 60 train, 60 val, 90 test
    saved = TrialCheckpoint.load(tmp_path / "run" / state_file(0))
    spec = saved.spec
    assert (spec["name"], spec["num_classes"], spec["in_chans"], spec["img_size"]) == (
        "stripes", 3, 3, 12,
    )  # fmt: skip
    assert saved.ticket["head.weight"].shape == (3, 64)  # vit_digits built for 3 classes
    assert saved.ticket["patch_embed.proj.weight"].shape[1] == 3  # and 3 channels
    assert state.val_acc > 0.6 and state.test_acc > 0.6

    bundle = load_dataset("stripes", data_dir=tmp_path, val_size=30)  # the files, read again
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (270, 30, 90)


# ----------------------------------------------------------------------------- sweep space
def test_the_space_proposes_the_new_criterion(load_example: Callable[[str], ModuleType]) -> None:
    """my_space.py's SPACE, read from the file as `--space docs/examples/my_space.py` reads
    it: a proposal naming weight_l2 is a valid trial config once the criterion is imported
    (`--import docs/examples/my_criterion.py`)."""
    import optuna

    from rsst_tune.config import TrialConfig
    from rsst_tune.tune.space import SearchSpace
    from search_spaces import get_space

    load_example("my_criterion")
    space = get_space(str(EXAMPLES / "my_space.py"))  # as --space FILE.py: its SPACE
    assert isinstance(space, SearchSpace)
    assert sys.modules["my_space"].SPACE.define is space.define
    proposal = optuna.trial.FixedTrial(
        {"head_ratio": 0.3, "mlp_ratio": 0.4, "criteria": "weight_l2", "lr": 1e-3}
    )
    cfg = TrialConfig.from_dict({**space.resolve_base(preset="smoke"), **space.define(proposal)})
    assert (cfg.criteria, cfg.model, cfg.head_ratio) == ("weight_l2", "vit_digits", 0.3)


# ----------------------------------------------------------------------------- command lines
PROGRAMS = ("rsst-tune run ", "rsst-tune export ", "python tune_main.py ")


def _commands(program: str = "") -> list[list[str]]:
    """Every command of the page's ```bash blocks that starts with `program` (one of PROGRAMS;
    "": all of them), split as the shell would (continuation lines joined)."""
    out = []
    for block in _fenced(GUIDE.read_text(encoding="utf-8"), "bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith(PROGRAMS) and command.startswith(program):
                out.append(shlex.split(command))
    return out


def _imports(words: list[str]) -> list[str]:
    """The values of a command's `--import` flags."""
    return [words[i + 1] for i, word in enumerate(words) if word == "--import"]


def _value(words: list[str], flag: str) -> str:
    (value,) = [words[i + 1] for i, word in enumerate(words) if word == flag]
    return value


def _env() -> dict[str, str]:
    """The commands' environment: the repository on the path, not docs/examples (`--import`
    takes the example files by path)."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_the_guide_shows_only_commands_it_checks() -> None:
    """Every line of a ```bash block is an `rsst-tune run`, `rsst-tune export` or
    `python tune_main.py` command (no launcher left over), and every `--import` is an
    example file, by its path from the repository root."""
    text = GUIDE.read_text(encoding="utf-8")
    assert "python -c" not in text and "PYTHONPATH=docs/examples" not in text
    for block in _fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            assert line.startswith(PROGRAMS), line
    for words in _commands():
        for module in _imports(words):
            assert module.startswith("docs/examples/") and (REPO / module).is_file(), module


def test_every_command_of_the_guide_is_valid(
    load_example: Callable[[str], ModuleType],
) -> None:
    """The real parser takes each `rsst-tune` command; its `--import`s import from the
    repository root, and then a run's flags make a valid trial config. An export imports the
    modules of the run whose checkpoint it exports."""
    from rsst_tune.cli import build_parser, config_from_args
    from rsst_tune.plugins import resolve_imports

    runs, exports = _commands("rsst-tune run "), _commands("rsst-tune export ")
    assert len(runs) >= 4 and len(exports) >= 1  # one run per part, and all three together
    imports_of_run = {}
    for words in runs:
        args = build_parser().parse_args(words[1:])
        assert args.command == "run" and args.imports == _imports(words)
        resolve_imports(args.imports, cwd=REPO)  # as `rsst-tune run` does, first
        config_from_args(args)  # a ConfigError names what is wrong
        imports_of_run[args.out] = sorted(args.imports)
    for words in exports:
        args = build_parser().parse_args(words[1:])
        assert args.command == "export" and args.imports
        resolve_imports(args.imports, cwd=REPO)
        run = str(Path(args.checkpoint).parent)
        assert sorted(args.imports) == imports_of_run[run], words


def test_the_guide_command_with_all_three_runs_as_written(tmp_path: Path) -> None:
    """The run that imports all three examples, from the repository root with only the
    repository on PYTHONPATH (its run and data put under tmp_path): it trains small_convnet
    on stripes (files written by --download) and keeps the last filters of each conv
    (keep_last). Then the page's export of it, and the same export without the dataset's
    import, which stops with one line."""
    (words,) = [w for w in _commands("rsst-tune run ") if len(_imports(w)) == 3]
    out, data = tmp_path / "runs" / "stripes", tmp_path / "data"
    argv = [sys.executable, "-m", "rsst_tune.cli", *words[1:], "--quiet", "--device", "cpu"]
    argv += ["--threads", "1", "--out", str(out), "--data_dir", str(data)]  # the last flag wins
    res = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["dataset"], config["criteria"]) == (
        "small_convnet", "stripes", "keep_last",
    )  # fmt: skip
    assert (data / "stripes" / "train.npz").is_file()
    states = json.loads((out / "results.json").read_text())  # one row per state
    assert [s["filters_per_layer"] for s in states] == [[32, 32], [16, 16]]
    assert _alive(out, 0) == {"conv1": list(range(16, 32)), "conv2": list(range(16, 32))}

    (export,) = _commands("rsst-tune export ")
    page_out = _value(words, "--out")
    export = [w.replace(page_out, str(out), 1) if w.startswith(page_out) else w for w in export]
    argv = [sys.executable, "-m", "rsst_tune.cli", *export[1:], "--no-measure"]
    res = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "export" / "export.json").read_text())
    assert (out / "export" / "model.pt").is_file() and "small_convnet" in json.dumps(record)

    i = argv.index("docs/examples/my_dataset.py")
    without = argv[: i - 1] + argv[i + 1 :]  # its `--import FILE` left out
    without[without.index("--out") + 1] = str(tmp_path / "export2")
    res = subprocess.run(without, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("rsst-tune: error: unknown dataset 'stripes'"), res.stderr


def test_rsst_tune_run_imports_a_user_module_by_name(tmp_path: Path) -> None:
    """The installed `rsst-tune run --import my_criterion`: a module name on PYTHONPATH (here
    docs/examples) instead of a file. keep_last keeps the last 2 of each block's 4 heads."""
    rsst = Path(sys.executable).with_name("rsst-tune")
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    argv = [str(rsst), "run", "--import", "my_criterion", "--criteria", "keep_last"]
    argv += ["--head_ratio", "0.5", "--mlp_ratio", "0.5", "--pruning_times", "2", "--epochs", "1"]
    argv += ["--method", "refill", "--train_subset", "0.25", "--device", "cpu", "--quiet"]
    argv += ["--threads", "1", "--out", "run"]
    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _alive(tmp_path / "run", 0)["blocks.0.attn"] == [2, 3]


def _dry_run(words: list[str], storage: Path) -> subprocess.CompletedProcess[str]:
    """`python tune_main.py ...` of the page with --dry-run appended, from the repository root:
    the plan is resolved (imports, space, base config, budget) and nothing runs."""
    assert words[:2] == ["python", "tune_main.py"], words
    argv = [sys.executable, "tune_main.py", *words[2:], "--dry-run", "--storage", str(storage)]
    return subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)


def test_every_sweep_of_the_guide_resolves(tmp_path: Path) -> None:
    """Each `python tune_main.py` command of the page, the sweep file's included (its YAML
    block written where the command reads it), passes --dry-run: the criterion file is
    imported, my_space.py's SPACE is read and proposes weight_l2. Without the --import the
    sweep is refused before it starts, as the page says."""
    text = GUIDE.read_text(encoding="utf-8")
    (sweep_file,) = _fenced(text, "yaml")
    name = re.findall(r"^# ([\w.-]+\.yaml)", sweep_file)[0]  # "# my_sweep.yaml, in ..."
    (tmp_path / name).write_text(sweep_file, encoding="utf-8")
    sweeps = _commands("python tune_main.py ")
    assert {"--space", "--config"} <= {w for words in sweeps for w in words}
    for words in sweeps:
        if "--config" in words:
            assert _value(words, "--config") == name
            words = [str(tmp_path / name) if w == name else w for w in words]
        res = _dry_run(words, tmp_path / "experiments")
        assert res.returncode == 0, res.stderr
        assert "my_space.py" in res.stdout and "weight_l2" in res.stdout, res.stdout
        if "--config" in words:
            assert "criteria               fixed at 'weight_l2' (--fix)" in res.stdout
    assert not (tmp_path / "experiments").exists()  # a dry run writes nothing

    (first,) = [w for w in sweeps if "--space" in w]
    i = first.index("--import")
    res = _dry_run(first[:i] + first[i + 2 :], tmp_path / "experiments")
    assert res.returncode == 2
    assert "unknown criteria 'weight_l2'" in res.stderr, res.stderr
