"""Physical export: pruned vs dense latency beside the analytic MAC ratio (docs/methods.md §7).

vit_tiny at 3x32x32 with 1 of 3 heads and half the MLP neurons of every block masked is
exported with `rsst_tune.pruning.slicing.export_model` (outputs checked against the masked
model), then both run alternately (dense, pruned, dense, ...) under inference mode
(`rsst_tune.latency.compare_latency`); the median times give the speed-up, printed beside the
MAC ratio of `CostModel`, with the interquartile range of the timed runs.
Goal: speed-up ≥ 0.9 × MAC ratio at batch 64 on CPU.

Then both are written as ONNX (`rsst_tune.onnx_export.write_onnx`: onnxruntime's outputs
checked against PyTorch's) and timed in onnxruntime on CPU the same way; the ONNX rows print
onnxruntime's pruned time over PyTorch's (`ort/torch`, < 1 means onnxruntime is faster).
`--no-onnx` skips them; `--tiny` skips them unless `--onnx` (the two exports take 5-10 s).

    python benchmarks/bench_export.py            # batch 1 and 64, CPU (and --device cuda)
    python benchmarks/bench_export.py --tiny     # seconds, for CI (no timing asserted)

On a machine whose cores are busy with other work, torch's intra-op threads stall each other
(10x slower small ops were seen on the shared 2-core CI machine): pass `--threads 1` there.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from rsst_tune.device import resolve_device
from rsst_tune.latency import compare_latency
from rsst_tune.models import create_model
from rsst_tune.onnx_export import onnx_latency, write_onnx
from rsst_tune.pruning.cost import CostModel, count_params
from rsst_tune.pruning.slicing import export_model
from rsst_tune.pruning.structure import Structure, find_structure

GOAL = 0.9


@torch.no_grad()
def masked_vit_tiny() -> tuple[nn.Module, Structure]:
    """vit_tiny with head 0 of 3 and every other MLP neuron of each block set to zero."""
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, in_chans=3, img_size=32).eval()
    structure = find_structure(model, target="both")
    params = dict(model.named_parameters())
    for g in structure.groups:
        keep = torch.ones(g.num_units, dtype=torch.bool)
        keep[[0] if g.kind == "head" else slice(0, None, 2)] = False
        for m in g.members:
            params[m.param].mul_(m.expand(keep, params[m.param].shape))
    return model, structure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long CI setting")
    parser.add_argument("--device", default="cpu", help="cpu (the goal's setting), cuda, auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="onnxruntime rows (default: on, off with --tiny: two exports cost ~5-10 s)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    model, structure = masked_vit_tiny()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = export_model(model, structure, device, example=x)
    cost = CostModel(model, structure, x)
    pruned_cost = cost.cost(result.kept_counts)
    mac_ratio = cost.dense.macs / pruned_cost.macs
    print(
        f"vit_tiny: params {count_params(model):,} -> {count_params(result.model):,}, "
        f"MACs {cost.dense.macs:,} -> {pruned_cost.macs:,} (ratio {mac_ratio:.2f}x), "
        f"heads/block {result.num_heads['blocks.0.attn']}, "
        f"max abs diff {result.max_abs_diff:.1e}"
    )

    batches, repeats, min_run = ((1, 4), 3, 0.0) if args.tiny else ((1, 64), args.repeats, 0.05)
    lats = compare_latency(
        model.to(device),
        result.model,
        (3, 32, 32),
        device,
        batches,
        repeats=repeats,
        warmup=1 if args.tiny else 3,
        min_run_s=min_run,
    )
    print(f"median (IQR) of {repeats} timed runs per model, dense and pruned alternating")
    for lat in lats:
        print(
            f"{lat.device:>6} batch {lat.batch:>3}: "
            f"dense {lat.dense_ms:8.2f} ({lat.dense_iqr_ms:.2f}) ms  "
            f"pruned {lat.pruned_ms:8.2f} ({lat.pruned_iqr_ms:.2f}) ms  "
            f"speed-up {lat.speedup:.2f}x  MAC ratio {mac_ratio:.2f}x  "
            f"speed-up/MAC ratio {lat.speedup / mac_ratio:.2f} "
            f"(goal >= {GOAL} at batch 64 on CPU)"
        )

    if not (args.onnx if args.onnx is not None else not args.tiny):
        return
    with tempfile.TemporaryDirectory() as tmp:
        checks = {
            name: write_onnx(m, x[:2], Path(tmp) / f"{name}.onnx", check=x)
            for name, m in (("dense", model), ("pruned", result.model))
        }
        ort_lats = onnx_latency(
            Path(tmp) / "dense.onnx",
            Path(tmp) / "pruned.onnx",
            (3, 32, 32),
            batches,
            repeats=repeats,
            warmup=1 if args.tiny else 3,
            min_run_s=min_run,
        )
    print(
        f"onnxruntime (CPU, {torch.get_num_threads()} threads): ONNX weights "
        f"{checks['dense'].params:,} -> {checks['pruned'].params:,}, exported in "
        f"{checks['dense'].export_s:.1f}s / {checks['pruned'].export_s:.1f}s, max abs diff vs "
        f"PyTorch {checks['dense'].max_abs_diff:.1e} / {checks['pruned'].max_abs_diff:.1e}"
    )
    torch_cpu = {lat.batch: lat for lat in lats if lat.device == "cpu"}
    for lat in ort_lats:
        ref = torch_cpu.get(lat.batch)
        vs = "" if ref is None else f"  ort/torch pruned {lat.pruned_ms / ref.pruned_ms:.2f}x"
        print(
            f"  ort batch {lat.batch:>3}: "
            f"dense {lat.dense_ms:8.2f} ({lat.dense_iqr_ms:.2f}) ms  "
            f"pruned {lat.pruned_ms:8.2f} ({lat.pruned_iqr_ms:.2f}) ms  "
            f"speed-up {lat.speedup:.2f}x  MAC ratio {mac_ratio:.2f}x{vs}"
        )


if __name__ == "__main__":
    main()
