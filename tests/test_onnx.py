"""ONNX export (`rsst-tune export --onnx`, `rsst_tune.onnx_export`): real tickets from short
real prune runs on digits (conftest's `vit_ticket`, `resnet_ticket`), CPU, onnxruntime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rsst_tune.cli import main as cli_main
from rsst_tune.export import MODEL_FILE, REPORT_FILE, ExportReport, export_checkpoint, read_report
from rsst_tune.models import create_model
from rsst_tune.onnx_export import (
    ONNX_FILE,
    OPSET,
    OnnxMismatch,
    onnx_params,
    write_onnx,
)
from rsst_tune.pruning.exported import load_exported
from rsst_tune.pruning.slicing import export_model
from rsst_tune.pruning.structure import find_structure


def ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    """What a deployment would do: a plain onnxruntime session on the file."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.shape[0] == "batch" and inp.shape[1:] == list(x.shape[1:])  # dynamic batch axis
    out: np.ndarray = sess.run(None, {inp.name: x.numpy()})[0]
    return out


def real_batch(n: int, in_chans: int = 1, img_size: int = 8, seed: int = 3) -> torch.Tensor:
    return torch.randn(
        n, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(seed)
    )


def assert_matches_pytorch(out: Path, n: int) -> None:
    """model.onnx in onnxruntime = model.pt in PyTorch on a batch of `n` (not the export's)."""
    model = load_exported(out / MODEL_FILE)
    x = real_batch(n)
    with torch.inference_mode():
        want = model(x).numpy()
    got = ort_logits(out / ONNX_FILE, x)
    assert got.shape == want.shape == (n, 10)
    assert np.abs(got - want).max() <= 1e-4


def test_vit_ticket_exports_to_onnx_that_onnxruntime_runs(vit_ticket: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = export_checkpoint(
        vit_ticket, out, device="cpu", batch_sizes=(1, 5), repeats=2, warmup=0, onnx=True
    )
    check = report.onnx
    assert check is not None and check.ok and report.onnx_error is None
    assert report.onnx_file == str(out / ONNX_FILE) == check.file
    assert check.opset == OPSET >= 17
    assert check.export_batch == 2 and check.check_batch == 64  # another batch size than exported
    assert check.max_abs_diff <= check.atol == 1e-4
    assert_matches_pytorch(out, 3)  # and a third batch size, through a plain session
    # the pruned graph holds fewer weights than the dense one (1 of 4 heads, half the MLP)
    assert report.onnx_dense_params is not None
    assert onnx_params(out / ONNX_FILE) == check.params < report.onnx_dense_params
    # onnxruntime's CPU latency, dense vs pruned ONNX, beside PyTorch's at the same batches
    assert [(lat.device, lat.batch, lat.repeats) for lat in report.onnx_latency] == [
        ("cpu", 1, 2),
        ("cpu", 5, 2),
    ]
    assert all(lat.dense_ms > 0 and lat.pruned_ms > 0 for lat in report.onnx_latency)
    assert report.onnx_threads == torch.get_num_threads()
    # export.json holds it as data, and reads back unchanged
    recorded = json.loads((out / REPORT_FILE).read_text())
    assert recorded == report.to_dict() and read_report(out / REPORT_FILE) == report
    onnx = recorded["onnx"]
    assert onnx["file"] == str(out / ONNX_FILE) and onnx["ok"] is True and onnx["error"] is None
    assert onnx["check"]["max_abs_diff"] == check.max_abs_diff
    assert onnx["params"] == {"dense": report.onnx_dense_params, "pruned": check.params}
    assert [row["runtime"] for row in onnx["latency"]] == ["onnxruntime"] * 2
    assert all(row["vs_torch"] > 0 for row in onnx["latency"])
    table = report.table()
    assert f"ONNX: {out / ONNX_FILE}" in table and "onnxruntime vs PyTorch" in table
    assert "vs torch" in table


def test_no_onnx_means_none_and_old_records_still_read(vit_ticket: Path, tmp_path: Path) -> None:
    report = export_checkpoint(vit_ticket, tmp_path / "e", device="cpu", measure=False)
    assert report.onnx is None and report.onnx_error is None and report.onnx_latency == ()
    assert report.to_dict()["onnx"] is None and "ONNX" not in report.table()
    assert not (tmp_path / "e" / ONNX_FILE).exists()
    old = report.to_dict()
    del old["onnx"]  # export.json written before ONNX export existed
    assert ExportReport.from_dict(old) == report
    # ONNX without timing: the file and its check, no onnxruntime latency
    quick = export_checkpoint(vit_ticket, tmp_path / "q", device="cpu", measure=False, onnx=True)
    assert quick.onnx_file is not None and quick.onnx_latency == ()
    assert quick.onnx_dense_params is None
    assert "onnxruntime latency not measured" in quick.table()


def test_resnet_ticket_through_the_command(
    resnet_ticket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    argv = ["export", str(resnet_ticket), "--out", str(out), "--device", "cpu", "--onnx"]
    assert cli_main([*argv, "--repeats", "2"]) == 0
    printed = capsys.readouterr()
    report = read_report(out / REPORT_FILE)
    assert printed.out.strip() == report.table() and printed.err == ""
    assert "onnxruntime" in printed.out and "max abs difference" in printed.out
    assert report.onnx is not None and report.onnx.ok
    assert report.params_pruned < report.params_dense  # filters were sliced out
    assert report.onnx_dense_params is not None and report.onnx.params < report.onnx_dense_params
    assert {(lat.device, lat.batch) for lat in report.onnx_latency} == {("cpu", 1), ("cpu", 64)}
    assert_matches_pytorch(out, 7)

    def one_line_error(args: list[str], words: str) -> None:
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rsst-tune: error:") and len(err.splitlines()) == 1, err
        assert words in err, err

    # an existing model.onnx is not replaced without --overwrite, even alone in the directory
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / ONNX_FILE).write_bytes(b"someone else's model")
    one_line_error([*argv[:3], str(alone), "--onnx", "--no-measure"], "model.onnx")
    assert (alone / ONNX_FILE).read_bytes() == b"someone else's model"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error([*argv[:3], str(a_file), "--onnx"], "is a file, not a directory")
    # --overwrite without --onnx replaces the export and drops the stale model.onnx
    assert cli_main([*argv[:4], "--no-measure", "--overwrite"]) == 0
    assert not (out / ONNX_FILE).exists() and read_report(out / REPORT_FILE).onnx is None


@pytest.mark.parametrize("name", ["vit_tiny", "timm:deit_tiny_patch16_224"])
def test_sliced_vits_export_with_a_dynamic_batch(name: str, tmp_path: Path) -> None:
    """A ViT with heads and neurons sliced out (num_heads shrinks) runs in onnxruntime at any
    batch size: registry and timm ViTs at 3x32x32."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, img_size=32).eval()
    structure = find_structure(model, target="both")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for g in structure.groups:
            keep = torch.ones(g.num_units, dtype=torch.bool)
            keep[[0] if g.kind == "head" else slice(0, None, 2)] = False
            for m in g.members:
                params[m.param].mul_(m.expand(keep, params[m.param].shape))
    x = real_batch(6, 3, 32)
    pruned = export_model(model, structure, "cpu", example=x).model
    check = write_onnx(pruned, x[:2], tmp_path / ONNX_FILE, check=x)
    assert check.ok and check.check_batch == 6
    got = ort_logits(tmp_path / ONNX_FILE, x[:3])
    with torch.inference_mode():
        assert np.abs(got - pruned(x[:3]).numpy()).max() <= 1e-4


def test_a_mismatch_is_refused_and_recorded(vit_ticket: Path, tmp_path: Path) -> None:
    """Outputs that differ by more than the tolerance leave no file and say so."""
    model = load_exported(export_checkpoint(vit_ticket, tmp_path / "e", measure=False).file)
    x = 1e3 * real_batch(8)  # large logits: float rounding differs between the runtimes
    path = tmp_path / "strict" / ONNX_FILE
    with pytest.raises(OnnxMismatch, match="differ from PyTorch's") as info:
        write_onnx(model, x[:2], path, check=x, atol=0.0)
    assert not path.exists() and info.value.check.max_abs_diff > 0
    # as export.json records it: no file, the reason, the numbers; the table says so
    report = dataclasses.replace(
        read_report(tmp_path / "e" / REPORT_FILE),
        onnx=info.value.check,
        onnx_error=str(info.value),
        onnx_threads=1,
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["onnx"]["file"] is None and data["onnx"]["ok"] is False
    assert ExportReport.from_dict(data) == report and report.onnx_file is None
    assert "ONNX not written: onnxruntime's outputs differ" in report.table()


def test_report_links_each_best_tickets_onnx(vit_ticket: Path, tmp_path: Path) -> None:
    from rsst_tune.best_exports import export_best
    from rsst_tune.experiment.exports import export_dir
    from rsst_tune.experiment.tickets import Ticket
    from rsst_tune.report.document import to_html, to_markdown
    from rsst_tune.report.exports import export_blocks, fmt_latency

    ticket = Ticket("t0", 1, "complete", None, checkpoint=str(vit_ticket.parent))
    export_best({0.5: ticket, None: ticket}, tmp_path)  # ONNX by default
    dest = export_dir(tmp_path, ticket)
    record = read_report(dest / REPORT_FILE)
    assert (dest / ONNX_FILE).is_file() and record.onnx is not None and record.onnx.ok
    blocks = export_blocks({0.5: ticket, None: ticket}, tmp_path)
    md = to_markdown(blocks)
    link = "best_exports/t0_s1/model.onnx"
    assert f"[model.onnx]({link})" in md
    assert f'<a href="{link}">model.onnx</a>' in to_html(blocks, "r")
    rows = [line for line in md.splitlines() if line.startswith("| t0/s1 |")]
    assert len(rows) == len(record.latency) == 2  # one row per ticket and batch size
    for row, lat in zip(rows, record.onnx_latency):
        assert fmt_latency(lat.dense_ms, lat.dense_iqr_ms) in row
        assert fmt_latency(lat.pruned_ms, lat.pruned_iqr_ms) in row
        assert f"max abs diff {record.onnx.max_abs_diff:.1e}" in row
    # the opt-out: no ONNX file, and the table says nothing about one
    export_best({0.5: ticket}, tmp_path / "off", onnx=False)
    assert not (export_dir(tmp_path / "off", ticket) / ONNX_FILE).exists()
