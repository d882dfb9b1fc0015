"""``wds``: WebDataset tar shards written here with ``tarfile`` (``KEY.png``/``KEY.jpg`` +
``KEY.cls``), decoded for real. Order and crops from the trial's generator, every sample once
per epoch across workers and nodes, resumed epochs, the splits, the errors, a trial, and a
sweep given a shard pattern as its data_dir."""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsst_tune.data import (
    DeviceData,
    ShardData,
    ShardSplit,
    Split,
    list_datasets,
    load_dataset,
    make_generator,
)
from rsst_tune.data.shards import sibling_pattern
from rsst_tune.errors import ConfigError

IMG = 16  # served size (stored at 18)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    folder: Path,
    prefix: str,
    shards: int,
    per_shard: int,
    *,
    start: int = 0,
    classes: int = 3,
    solid: bool = True,
    first: int = 0,
) -> dict[int, int]:
    """``folder/PREFIX-00k.tar`` (k from ``first``); sample i is ``{i:06d}.png`` (``.jpg``
    for odd i when not ``solid``) with ``{i:06d}.cls``. Solid images have red = i % 256 and
    green = 40 * label, so a batch says which samples it holds. Returns sample -> label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    labels: dict[int, int] = {}
    i = start
    for s in range(first, first + shards):
        with tarfile.open(folder / f"{prefix}-{s:03d}.tar", "w") as tar:
            for _ in range(per_shard):
                label = i % classes
                h, w = (int(v) for v in rng.integers(18, 30, 2))
                if solid:
                    pixels = np.zeros((h, w, 3), dtype=np.uint8)
                    pixels[..., 0], pixels[..., 1] = i % 256, 40 * label
                else:
                    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                buf = io.BytesIO()
                fmt = "JPEG" if not solid and i % 2 else "PNG"
                Image.fromarray(pixels).save(buf, format=fmt)
                add(tar, f"{i:06d}.{'jpg' if fmt == 'JPEG' else 'png'}", buf.getvalue())
                add(tar, f"{i:06d}.cls", str(label).encode())
                labels[i] = label
                i += 1
    return labels


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 training samples in 3 shards, 12 val and 12 test samples beside them."""
    folder = tmp_path_factory.mktemp("wds")
    write_shards(folder, "train", 3, 20)
    write_shards(folder, "val", 1, 12, start=100)
    write_shards(folder, "test", 1, 12, start=200)
    return folder


def train_pattern(folder: Path) -> str:
    return str(folder / "train-{000..002}.tar")


def ids(data: ShardData, xb: torch.Tensor) -> list[int]:
    """The samples of a batch from their red value (solid images)."""
    red = xb[:, 0].mean(dim=(1, 2)) * data.std[0, 0, 0, 0] + data.mean[0, 0, 0, 0]
    return (red * 255).round().long().tolist()


def train_data(folder: Path, workers: int, rank: int = 0, world_size: int = 1) -> ShardData:
    bundle = load_dataset("wds", data_dir=train_pattern(folder), img_size=IMG, lazy=True)
    assert isinstance(bundle.train, ShardSplit)
    return ShardData(
        bundle.train, bundle.spec, "cpu", workers=workers, rank=rank, world_size=world_size
    )


def epoch(data: ShardData, gen: torch.Generator, batch: int = 8) -> list[tuple[torch.Tensor, ...]]:
    return [(x.clone(), y.clone()) for x, y in data.train_batches(batch, gen, augment=True)]


def same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------------- the splits


def test_sibling_shards_are_the_validation_and_test_splits(shards: Path) -> None:
    assert sibling_pattern("d/train-{000..099}.tar", "val") == "d/val-*.tar"
    assert "wds" in list_datasets()
    lazy = load_dataset("wds", data_dir=train_pattern(shards), img_size=IMG, lazy=True)
    assert [len(s) for s in (lazy.train, lazy.val, lazy.test)] == [60, 12, 12]
    assert lazy.spec.num_classes == 3 and lazy.spec.img_size == IMG and lazy.lazy
    assert str(lazy.val.files[0]).endswith("val-000.tar/000100.png")  # type: ignore[union-attr]
    # the folder form, and the eager load: exactly the lazy bundle decoded
    eager = load_dataset("wds", data_dir=str(shards), img_size=IMG)
    decoded = lazy.decoded()
    assert eager.spec == lazy.spec
    for part in ("train", "val", "test"):
        a, b = getattr(eager, part), getattr(decoded, part)
        assert isinstance(a, Split) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.x.shape[1:] == (3, 18, 18)


def test_validation_is_carved_from_train_without_test_shards(tmp_path: Path) -> None:
    labels = write_shards(tmp_path, "train", 2, 10, solid=False)
    write_shards(tmp_path, "val", 1, 6, start=50)
    bundle = load_dataset("wds", data_dir=str(tmp_path / "train-*.tar"), val_size=4, lazy=True)
    assert [len(s) for s in (bundle.train, bundle.val, bundle.test)] == [16, 4, 6]
    train, val = bundle.train, bundle.val
    assert isinstance(train, ShardSplit) and isinstance(val, ShardSplit)
    names = [set(map(str, s.files)) for s in (train, val)]
    assert not names[0] & names[1] and len(names[0] | names[1]) == len(labels)
    # no sibling shards at all: validation and test both carved, 10 % each by default
    solo = tmp_path / "solo"
    write_shards(solo, "shard", 2, 10)
    alone = load_dataset("wds", data_dir=str(solo / "shard-{000..001}.tar"), lazy=True)
    assert [len(s) for s in (alone.train, alone.val, alone.test)] == [16, 2, 2]


def test_classes_come_from_a_classes_file_when_there_is_one(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", 1, 6)
    (tmp_path / "classes.txt").write_text("ant\nbee\ncat\ndog\neel\n")
    assert load_dataset("wds", data_dir=str(tmp_path), lazy=True).spec.num_classes == 5
    (tmp_path / "classes.txt").write_text("ant\nbee\n")
    with pytest.raises(ConfigError, match=r"class 2 in the shards .* names 2"):
        load_dataset("wds", data_dir=str(tmp_path), lazy=True)


def test_errors_name_the_pattern_the_shard_and_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pattern = str(tmp_path / "train-{000..009}.tar")
    with pytest.raises(ConfigError, match=r"no shard matches .*train-\{000\.\.009\}\.tar"):
        load_dataset("wds", data_dir=pattern)
    write_shards(tmp_path, "train", 2, 4)
    with pytest.raises(ConfigError, match=r"8 of 10 shards named by .* missing: .*train-002"):
        load_dataset("wds", data_dir=pattern)
    with tarfile.open(tmp_path / "train-002.tar", "w") as tar:  # images without labels
        add(tar, "x.txt", b"hello")
        add(tar, "000099.png", b"not read")
    with pytest.raises(ConfigError, match=r"shard .*train-002\.tar has no image/label pair"):
        load_dataset("wds", data_dir=str(tmp_path / "train-*.tar"))
    for name in ("webdataset", "webdataset.shardlists", "webdataset.tariterators"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'rsst-tune\[wds\]'"):
        load_dataset("wds", data_dir=str(tmp_path / "train-000.tar"))


def test_a_split_that_would_hold_training_shards_is_refused(tmp_path: Path) -> None:
    # a brace group holding `train` is read as `*`: the siblings of {train,extra}-000.tar
    # are `*-*.tar`, which match the training shards too
    write_shards(tmp_path, "train", 1, 4)
    write_shards(tmp_path, "extra", 1, 4, start=50)
    with pytest.raises(ConfigError, match=r"would be in both train and (val|test)"):
        load_dataset("wds", data_dir=str(tmp_path / "{train,extra}-000.tar"))


def test_the_default_worker_count_is_the_same_on_every_machine(shards: Path) -> None:
    from rsst_tune.data.shards import DEFAULT_SHARD_WORKERS

    bundle = load_dataset("wds", data_dir=train_pattern(shards), img_size=IMG, lazy=True)
    assert isinstance(bundle.train, ShardSplit)
    # not the machine's cores: the order of an epoch depends on the worker count
    assert ShardData(bundle.train, bundle.spec, "cpu").workers == DEFAULT_SHARD_WORKERS


# ----------------------------------------------------------------------------- streaming


def test_the_order_is_a_function_of_the_generator(shards: Path) -> None:
    data = train_data(shards, workers=0)
    a, b = epoch(data, make_generator(3, "cpu")), epoch(data, make_generator(3, "cpu"))
    c = epoch(data, make_generator(4, "cpu"))
    assert same(a, b) and not same(a, c)
    order = [i for x, _ in a for i in ids(data, x)]
    assert order != [i for x, _ in c for i in ids(data, x)]
    assert sorted(order) == list(range(60))  # each once, random-resized crops of solid images
    assert all(x.shape[1:] == (3, IMG, IMG) for x, _ in a)
    assert len(a) == data.num_train_batches(8) == 8  # 7 of 8 and one of 4


def test_two_workers_read_every_sample_once_and_the_same_batches_each_time(
    shards: Path,
) -> None:
    data = train_data(shards, workers=2)
    a = epoch(data, make_generator(0, "cpu"), batch=7)
    assert same(a, epoch(data, make_generator(0, "cpu"), batch=7))
    seen = [i for x, _ in a for i in ids(data, x)]
    assert sorted(seen) == list(range(60))  # no duplicates, nothing lost
    assert [len(y) for _, y in a] == [7] * 8 + [4]
    labels = torch.cat([y for _, y in a])
    assert labels.tolist() == [i % 3 for i in seen]
    # evaluation: every sample, the decoded placement's pixels, in the split's order
    split = data.split
    resident = DeviceData(split.decode(), data.spec, "cpu")
    one = ShardData(split, data.spec, "cpu", workers=1)
    for (x, y), (u, v) in zip(one.eval_batches(16), resident.eval_batches(16), strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    two = sorted(i for x, _ in data.eval_batches(16) for i in ids(data, x))
    assert two == list(range(60))


def test_nodes_read_disjoint_halves(shards: Path) -> None:
    parts = []
    for rank in (0, 1):
        data = train_data(shards, workers=1, rank=rank, world_size=2)
        parts.append({i for x, _ in epoch(data, make_generator(5, "cpu")) for i in ids(data, x)})
    assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(60))
    assert {len(p) for p in parts} == {20, 40}  # whole shards: one node two, the other one


def test_ddp_workers_take_the_same_number_of_full_steps_and_split_evaluation(
    shards: Path,
) -> None:
    """Shards of one trial's data-parallel workers: each reads its own shards (3 over 2
    workers: 40 and 20 samples) and serves exactly the split's full global batches (60 // 8
    = 7) of its share (4 images), the one with fewer samples reading its shard again; their
    evaluation parts cover the split once; the scoring view is the whole split."""
    whole = train_data(shards, workers=1)
    parts = [whole.shard(r, 2) for r in range(2)]
    assert [(p.rank, p.world, p.world_size) for p in parts] == [(0, 2, 2), (1, 2, 2)]
    assert [p.num_train_batches(8) for p in parts] == [7, 7]
    read = [epoch(p, make_generator(5, "cpu")) for p in parts]
    assert [[len(y) for _, y in r] for r in read] == [[4] * 7, [4] * 7]
    seen = [[i for x, _ in r for i in ids(whole, x)] for r in read]
    assert not set(seen[0]) & set(seen[1])  # disjoint shards
    assert sorted(len(set(s)) for s in seen) == [20, 28]  # 20 samples read once, then 8 again
    assert same(read[0], epoch(whole.shard(0, 2), make_generator(5, "cpu")))  # reproducible
    evaluated = sorted(i for p in parts for x, _ in p.eval_batches(16) for i in ids(whole, x))
    assert evaluated == list(range(60))
    scoring = parts[1].unsharded()
    assert scoring.world == 1 and scoring.workers == 0 and parts[1].unsharded() is scoring
    with pytest.raises(ConfigError, match=r"^4 workers need at least 4 training shards .*got 3"):
        epoch(whole.shard(3, 4), make_generator(5, "cpu"))


def test_a_resumed_epoch_gives_the_same_batches(shards: Path) -> None:
    data = train_data(shards, workers=2)
    gen = make_generator(11, "cpu")
    epoch(data, gen)
    saved = gen.get_state()
    second = epoch(data, gen)
    again = make_generator(0, "cpu")
    again.set_state(saved)
    assert same(second, epoch(train_data(shards, workers=2), again))


# ----------------------------------------------------------------------------- a trial


def test_a_trial_runs_on_streamed_shards(tmp_path: Path) -> None:
    from rsst_tune.run import run_trial

    write_shards(tmp_path, "train", 3, 20, solid=False)
    write_shards(tmp_path, "val", 1, 12, start=100, solid=False)
    results = run_trial(
        out_dir=tmp_path / "run", model="resnet20", dataset="wds",
        data_dir=str(tmp_path / "train-{000..002}.tar"), img_size=IMG, device="cpu",
        amp=False, epochs=1, pruning_times=2, batch_size=8, data_placement="stream",
        data_workers=1, score_batches=1,
    )  # fmt: skip
    assert len(results) == 2 and all(0.0 <= r.test_acc <= 1.0 for r in results)
    assert results[0].val_size == 6  # 10 % of the training shards


def test_the_sweep_cli_takes_a_folder_of_shards(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rsst_tune.tune.cli import main as tune_main

    argv = ["--space", "resnet_rsst", "--preset", "smoke", "--dataset", "wds", "--data-dir"]
    rc = tune_main(
        [*argv, str(shards), "--img-size", "16", "--dry-run", "--storage", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"data        wds from {shards}" in out and "60 train / 12 val / 12 test" in out
    assert Counter(p.name for p in tmp_path.iterdir()) == Counter()  # a dry run writes nothing


# ----------------------------------------------------------------------------- sweeps
# `tune_main.py --dataset wds --data-dir 'shards/train-{000..099}.tar'`: the pattern is checked
# before anything runs (`rsst_tune.data.shards.find_shards`) and stored absolute item by item,
# braces kept (`absolute_pattern`), so the sweep's trials and its sweep.yaml read the same
# shards from any directory. Dry runs and plan resolution only: no Ray.


def test_a_sweep_takes_a_shard_pattern_and_stores_it_absolute(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    from rsst_tune.data.shards import find_shards
    from rsst_tune.tune import SweepOptions, resolve_plan
    from rsst_tune.tune.cli import main as tune_main

    monkeypatch.chdir(shards.parent)
    here = shards.resolve()
    rc = tune_main(
        ["--space", "vit_head_mlp", "--preset", "smoke", "--dataset", "wds", "--data_dir",
         f"{shards.name}/train-{{000..002}}.tar", "--img-size", "16", "--dry-run",
         "--storage", str(tmp_path / "experiments")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    absolute = f"{here}/train-{{000..002}}.tar"
    assert f"data-dir: {absolute}\n" in out  # the stored sweep file (sweep.yaml)
    assert f"  data_dir               {absolute!r}" in out  # the base config
    assert f"data        wds from {absolute} (60 train / 12 val / 12 test" in out
    assert not (tmp_path / "experiments").exists()  # a dry run writes nothing
    # `::`-joined patterns and globs, through the Python API's options: each item absolute
    given = f"{shards.name}/train-000.tar::./{shards.name}/train-00[12].tar"
    plan = resolve_plan(
        SweepOptions(space="resnet_rsst", preset="smoke", dataset="wds", data_dir=given)
    )
    stored = f"{here}/train-000.tar::{here}/train-00[12].tar"
    assert plan.base_config["data_dir"] == stored
    assert yaml.safe_load(plan.sweep_file)["data-dir"] == stored
    monkeypatch.chdir(tmp_path)  # the stored pattern names the same shards from elsewhere
    assert find_shards(stored) == [here / f"train-00{i}.tar" for i in range(3)]


def test_a_shard_pattern_matching_nothing_is_one_line_naming_it(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rsst_tune.cli import main as rsst_tune_main
    from rsst_tune.tune.cli import main as tune_main

    monkeypatch.chdir(shards.parent)
    pattern = f"{shards.name}/nothing-{{000..099}}.tar"
    absolute = f"{shards.resolve()}/nothing-{{000..099}}.tar"
    line = (
        f"error: data_dir {pattern}: no shard matches {absolute} "
        "(expected tar files such as train-000.tar)\n"
    )
    argv = ["--space", "vit_head_mlp", "--preset", "smoke", "--dataset", "wds", "--dry-run"]
    for flag in ("--data_dir", "--data-dir"):
        rc = tune_main([*argv, flag, pattern, "--storage", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and err == f"tune_main.py: {line}", err
    # the same from a sweep file (`data-dir:`), and `rsst-tune tune`
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"space: vit_head_mlp\npreset: smoke\ndataset: wds\ndata-dir: {pattern}\n")
    rc = rsst_tune_main(["tune", "--config", str(sweep), "--dry-run", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"rsst-tune: {line}", err
    # `rsst-tune run`: refused before the run's folder is made
    out = tmp_path / "run"
    rc = rsst_tune_main(
        ["run", "--model", "resnet20", "--dataset", "wds", "--data_dir", pattern, "--device",
         "cpu", "--img_size", "16", "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "no shard matches" in err and pattern in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def test_other_datasets_keep_the_folder_check(shards: Path, tmp_path: Path) -> None:
    from rsst_tune.tune import SweepOptions, resolve_plan

    opts = SweepOptions(space="resnet_rsst", preset="smoke", dataset="wds", data_dir=str(shards))
    assert resolve_plan(opts).base_config["data_dir"] == str(shards.resolve())  # a folder
    pattern = str(shards / "train-{000..002}.tar")
    with pytest.raises(
        ConfigError, match=r"^data_dir .*train-\{000\.\.002\}\.tar is not a folder \(resolved: "
        r".*\); a shard pattern needs --dataset wds$",
    ):  # fmt: skip
        resolve_plan(dataclasses.replace(opts, dataset="imagefolder", data_dir=pattern))
    folder = resolve_plan(dataclasses.replace(opts, dataset="imagefolder", data_dir=str(tmp_path)))
    assert folder.base_config["data_dir"] == str(tmp_path.resolve())
