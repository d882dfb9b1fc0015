"""Tests for the physical export (docs/methods.md §7): real tiny models, CPU only, seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rsst_tune.cli import main as cli_main
from rsst_tune.errors import ConfigError
from rsst_tune.export import MODEL_FILE, REPORT_FILE, ExportReport, export_checkpoint, read_report
from rsst_tune.latency import Latency, compare_latency, iqr
from rsst_tune.models import create_model
from rsst_tune.pruning.cost import CostModel, count_params
from rsst_tune.pruning.exported import EXPORT_FORMAT, load_exported, save_exported
from rsst_tune.pruning.slicing import ExportError, check_equivalence, export_model
from rsst_tune.pruning.structure import Structure, UnitGroup, find_structure


def make(name: str, in_chans: int = 1, img_size: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size).eval()


def batch(n: int = 16, in_chans: int = 1, img_size: int = 8) -> Tensor:
    return torch.randn(n, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def zero_units(model: nn.Module, group: UnitGroup, units: list[int]) -> None:
    """Mask the given units of a group (every member slice to zero), as a structured mask does."""
    params = dict(model.named_parameters())
    keep = torch.ones(group.num_units, dtype=torch.bool)
    keep[units] = False
    for m in group.members:
        params[m.param].mul_(m.expand(keep, params[m.param].shape))


@torch.no_grad()
def randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so slicing the wrong BN channel would show."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def sub(model: nn.Module, path: str) -> Any:
    """A submodule by dotted path (typed loosely, for attribute checks)."""
    return model.get_submodule(path)


def group(structure: Structure, name: str) -> UnitGroup:
    return next(g for g in structure.groups if g.name == name)


# --------------------------------------------------------------------------- ViT
@pytest.fixture
def masked_vit() -> tuple[nn.Module, Structure]:
    """vit_digits with 1 of 4 heads and half the MLP neurons of every block masked."""
    model = make("vit_digits")
    structure = find_structure(model, target="both")
    for g in structure.groups:
        zero_units(model, g, [2] if g.kind == "head" else list(range(0, g.num_units, 2)))
    return model, structure


def test_vit_heads_and_neurons_are_removed(masked_vit: tuple[nn.Module, Structure]) -> None:
    model, structure = masked_vit
    x = batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_model(model, structure, "cpu", example=x)
    pruned = result.model
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    for blk in sub(pruned, "blocks"):
        assert blk.attn.num_heads == 3
        assert blk.attn.head_dim == 16
        assert blk.attn.attn_dim == 48
        assert tuple(blk.attn.qkv.weight.shape) == (144, 64)
        assert tuple(blk.attn.qkv.bias.shape) == (144,)
        assert tuple(blk.attn.proj.weight.shape) == (64, 48)
        assert blk.mlp.fc1.out_features == 64 and blk.mlp.fc2.in_features == 64
    assert result.num_heads == {f"blocks.{i}.attn": 3 for i in range(4)}
    assert all(r.removed == r.zero and r.zero_kept_coupled == 0 for r in result.layers)
    # the masked model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # physical params equal the analytic count of the cost model
    analytic = CostModel(model, structure, x).cost(result.kept_counts)
    assert count_params(pruned) == analytic.params
    # and the kept heads are the right ones: q of the exported head 2 is the dense head 3
    d = 16
    dense_q = sub(model, "blocks.0.attn.qkv").weight[3 * d : 4 * d]
    assert torch.equal(sub(pruned, "blocks.0.attn.qkv").weight[2 * d : 3 * d], dense_q)


def test_vit_all_units_zero_keeps_one(masked_vit: tuple[nn.Module, Structure]) -> None:
    model, structure = masked_vit
    attn = group(structure, "blocks.1.attn")
    mlp = group(structure, "blocks.1.mlp")
    zero_units(model, attn, list(range(attn.num_units)))
    zero_units(model, mlp, list(range(mlp.num_units)))
    result = export_model(model, structure, "cpu", example=batch())
    assert sub(result.model, "blocks.1.attn").num_heads == 1
    assert sub(result.model, "blocks.1.mlp").fc1.out_features == 1
    assert result.zero_kept_min == 2


def test_mismatch_fails_loudly(masked_vit: tuple[nn.Module, Structure]) -> None:
    model, structure = masked_vit
    result = export_model(model, structure, "cpu")
    with torch.no_grad():
        sub(result.model, "head").bias.add_(1.0)
    with pytest.raises(ExportError, match="max abs difference"):
        check_equivalence(model, result.model, batch())


def test_save_and_load_round_trip(masked_vit: tuple[nn.Module, Structure], tmp_path: Path) -> None:
    model, structure = masked_vit
    x = batch()
    result = export_model(model, structure, "cpu", example=x)
    path = save_exported(
        result,
        tmp_path / MODEL_FILE,
        model_name="vit_digits",
        num_classes=10,
        in_chans=1,
        img_size=8,
    )
    loaded = load_exported(path)
    assert not loaded.training
    assert count_params(loaded) == count_params(result.model)
    with torch.inference_mode():
        assert torch.equal(loaded(x), result.model(x))
    raw = torch.load(path, weights_only=True)  # the documented safe load works on the file
    assert raw["num_heads"] == result.num_heads


def test_load_rejects_other_files_and_versions(
    masked_vit: tuple[nn.Module, Structure], tmp_path: Path
) -> None:
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not an rsst-tune export"):
        load_exported(tmp_path / "other.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="corrupt"):
        load_exported(tmp_path / "bad.pt")
    model, structure = masked_vit
    path = save_exported(
        export_model(model, structure, "cpu"),
        tmp_path / MODEL_FILE,
        model_name="vit_digits",
        num_classes=10,
        in_chans=1,
        img_size=8,
    )
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == EXPORT_FORMAT
    torch.save({**blob, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ConfigError, match="version 99"):
        load_exported(tmp_path / "future.pt")
    torch.save({k: v for k, v in blob.items() if k != "state_dict"}, tmp_path / "cut.pt")
    with pytest.raises(ConfigError, match="incomplete"):
        load_exported(tmp_path / "cut.pt")


# --------------------------------------------------------------------------- CNNs
def test_resnet_removable_and_coupled_filters(tmp_path: Path) -> None:
    model = make("resnet20")
    randomise_bn(model)
    x = batch()
    structure = find_structure(model, example_input=x)
    c1, c2 = group(structure, "layer2.0.conv1"), group(structure, "layer2.0.conv2")
    assert c1.removable and not c2.removable
    zero_units(model, c1, [0, 5, 7])
    zero_units(model, group(structure, "layer1.2.conv1"), [1])
    zero_units(model, c2, [3, 4])  # feeds the residual add: stays, and is counted
    result = export_model(model, structure, "cpu", example=x)
    pruned = result.model
    assert sub(pruned, "layer2.0.conv1").out_channels == 29
    assert sub(pruned, "layer2.0.bn1").num_features == 29
    assert sub(pruned, "layer2.0.bn1").running_mean.shape == (29,)
    assert sub(pruned, "layer2.0.conv2").in_channels == 29
    assert sub(pruned, "layer2.0.conv2").out_channels == 32
    assert sub(pruned, "layer1.2.conv1").out_channels == 15
    assert result.zero_kept_coupled == 2
    report = {r.name: r for r in result.layers}
    assert report["layer2.0.conv2"].zero_kept_coupled == 2
    assert report["layer2.0.conv2"].removed == 0
    assert count_params(pruned) == CostModel(model, structure, x).cost(result.kept_counts).params
    path = save_exported(
        result, tmp_path / MODEL_FILE, model_name="resnet20", num_classes=10, in_chans=1, img_size=8
    )
    with torch.inference_mode():
        assert torch.allclose(load_exported(path)(x), pruned(x))


def test_vgg_filters_and_classifier_columns() -> None:
    model = make("vgg16_bn")
    randomise_bn(model)
    x = batch()
    structure = find_structure(model, prune_stem=True, example_input=x)
    assert all(g.removable for g in structure.groups)
    for g in structure.groups:
        zero_units(model, g, list(range(0, g.num_units, 4)))
    result = export_model(model, structure, "cpu", example=x)
    pruned = result.model
    assert sub(pruned, "features.0").out_channels == 48
    assert sub(pruned, "features.3").in_channels == 48
    assert sub(pruned, "classifier").in_features == 384
    assert result.zero_kept_coupled == 0
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert count_params(pruned) == CostModel(model, structure, x).cost(result.kept_counts).params


def test_latency_reports_median_and_spread(masked_vit: tuple[nn.Module, Structure]) -> None:
    model, structure = masked_vit
    result = export_model(model, structure, "cpu")
    lats = compare_latency(
        model,
        result.model,
        (1, 8, 8),
        torch.device("cpu"),
        (1, 4),
        repeats=5,
        warmup=1,
        min_run_s=0.0,
    )
    assert [lat.batch for lat in lats] == [1, 4]
    for lat in lats:
        assert lat.dense_ms > 0 and lat.pruned_ms > 0 and lat.repeats == 5
        assert lat.dense_iqr_ms >= 0 and lat.pruned_iqr_ms >= 0
        assert Latency.from_dict(json.loads(json.dumps(lat.to_dict()))) == lat
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    assert iqr([3.0]) == 0.0


# --------------------------------------------------------------------------- the command
@pytest.fixture
def checkpoint(vit_ticket: Path) -> Path:
    """The last state of a tiny real Refill run on digits (1 of 4 heads, half the MLP;
    conftest's `vit_ticket`, shared with tests/test_onnx.py)."""
    return vit_ticket


def test_export_checkpoint_returns_what_export_json_holds(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = export_checkpoint(checkpoint, out, device="cpu", batch_sizes=(1, 8), repeats=3)
    recorded = json.loads((out / REPORT_FILE).read_text())
    assert recorded == report.to_dict()
    assert ExportReport.from_dict(recorded) == report
    assert read_report(out / REPORT_FILE) == report
    assert report.units == {"head": (16, 12), "neuron": (512, 256)}
    assert report.max_abs_diff <= report.atol == 1e-4
    assert report.zero_kept_coupled == 0
    assert report.params_pruned == report.params_analytic < report.params_dense
    assert report.mac_ratio > 1
    assert [(lat.device, lat.batch, lat.repeats) for lat in report.latency] == [
        ("cpu", 1, 3),
        ("cpu", 8, 3),
    ]
    assert report.file == str(out / MODEL_FILE)
    assert "load_exported" in report.load and report.input_shape == (1, 8, 8)
    model = load_exported(report.file)
    assert [b.attn.num_heads for b in sub(model, "blocks")] == [3, 3, 3, 3]
    assert count_params(model) == report.params_pruned
    # measure=False: the same export without latency
    quick = export_checkpoint(checkpoint, tmp_path / "quick", device="cpu", measure=False)
    assert quick.latency == () and "latency not measured" in quick.table()
    assert quick.layers == report.layers and quick.macs_pruned == report.macs_pruned


def test_export_record_rejects_other_formats(checkpoint: Path, tmp_path: Path) -> None:
    old: dict[str, Any] = {"params": {}, "macs": {}, "latency": []}  # an earlier export.json
    with pytest.raises(ConfigError, match="not an rsst-tune export record"):
        ExportReport.from_dict(old)
    (tmp_path / REPORT_FILE).write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=REPORT_FILE):
        read_report(tmp_path / REPORT_FILE)
    report = export_checkpoint(checkpoint, tmp_path / "e", device="cpu", measure=False)
    with pytest.raises(ConfigError, match="version"):
        ExportReport.from_dict({**report.to_dict(), "version": 0})
    data = report.to_dict()
    del data["layers"]
    with pytest.raises(ConfigError, match="incomplete"):
        ExportReport.from_dict(data)


def test_export_command_on_a_real_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    argv = ["export", str(checkpoint), "--out", str(out), "--device", "cpu", "--repeats", "3"]
    assert cli_main(argv) == 0
    table = capsys.readouterr().out
    report = read_report(out / REPORT_FILE)
    assert table.strip() == report.table()
    assert "speed-up" in table and "MAC ratio" in table and "IQR" in table
    assert "load_exported" in table
    assert {(lat.device, lat.batch) for lat in report.latency} == {("cpu", 1), ("cpu", 64)}
    assert all(lat.repeats == 3 for lat in report.latency)


def test_export_command_rejects_bad_checkpoints(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "state_01.pt"
    bad.write_bytes(checkpoint.read_bytes()[:200])
    assert cli_main(["export", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsst-tune: error:") and len(err.strip().splitlines()) == 1
    assert cli_main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    torch.save({"config": {"model": "vit_digits"}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError):
        export_checkpoint(tmp_path / "other.pt", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_refuses_to_overwrite_and_bad_out_dirs(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "export"
    base = ["export", str(checkpoint), "--no-measure", "--device", "cpu"]
    assert cli_main([*base, "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def one_line_error(argv: list[str], words: str) -> None:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rsst-tune: error:") and len(err.splitlines()) == 1, err
        assert "Traceback" not in err and words in err, err

    one_line_error([*base, "--out", str(out)], "pass --overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error([*base, "--out", str(a_file)], "is a file, not a directory")
    one_line_error([*base, "--out", str(a_file / "sub")], "is a file, not a directory")
    assert a_file.read_text() == "x"
    one_line_error([*base, "--out", str(tmp_path / "o"), "--device", "gpu0"], "unknown device")
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == locked else real_access(p, m)
    )
    one_line_error([*base, "--out", str(locked / "e")], "is not writable")
    assert not (locked / "e").exists()
    monkeypatch.undo()
    # --overwrite replaces the export
    assert cli_main([*base, "--out", str(out), "--overwrite"]) == 0
    assert read_report(out / REPORT_FILE).checkpoint == str(checkpoint)


def test_report_re_exports_best_tickets_in_place(checkpoint: Path, tmp_path: Path) -> None:
    """`rsst-tune report --measure` exports a best ticket again over its earlier export."""
    from rsst_tune.best_exports import export_best
    from rsst_tune.experiment.exports import export_dir
    from rsst_tune.experiment.layout import EXPORT_ERROR_FILE
    from rsst_tune.experiment.tickets import Ticket

    ticket = Ticket("t0", 1, "complete", None, checkpoint=str(checkpoint.parent))
    for replace in (False, True):
        export_best({0.5: ticket}, tmp_path, replace=replace)
        dest = export_dir(tmp_path, ticket)
        assert (dest / REPORT_FILE).is_file() and not (dest / EXPORT_ERROR_FILE).exists()
