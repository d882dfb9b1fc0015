"""RSST step vs plain masked step, measured side by side in one run (docs/methods.md §4).

Both steps are `rsst_tune.train.train_step` on the same model, optimizer and batch: the plain
one enforces M after the step; the RSST one also adds λ·w on the target set T (a real T from
magnitude pruning + 1 head and half the MLP neurons removed per block). Runs alternate
(plain, rsst, plain, ...) and the ratio of medians is printed. Goal: ≤ 1.02×.

    python benchmarks/bench_rsst_step.py            # vit_tiny @128 and vit_digits @128
    python benchmarks/bench_rsst_step.py --tiny     # seconds, for CI (no timing asserted)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from rsst_tune.device import resolve_device
from rsst_tune.models import create_model
from rsst_tune.pruning import masks as mk
from rsst_tune.pruning.methods import get_method
from rsst_tune.pruning.regularizer import TargetPull
from rsst_tune.pruning.select import magnitude_prune
from rsst_tune.pruning.structure import find_structure
from rsst_tune.train import train_step

SHAPES = {"vit_tiny": (3, 32), "vit_digits": (1, 8)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model_name: str, batch: int, steps: int, repeats: int, device: torch.device) -> float:
    chans, size = SHAPES[model_name]
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=chans, img_size=size).to(device)
    structure = find_structure(model, target="both")
    params = dict(model.named_parameters())
    M = mk.full_masks(model, structure.maskable_names)
    U = magnitude_prune(
        {n: params[n] for n in structure.weight_names}, M, 0.2, torch.Generator().manual_seed(0)
    )
    for n in structure.maskable_names:
        U.setdefault(n, M[n].clone())
    keep = {}
    for g in structure.groups:
        k = torch.ones(g.num_units, dtype=torch.bool, device=device)
        k[: g.num_units // 4 if g.kind == "head" else g.num_units // 2] = False
        keep[g.name] = k
    R = mk.from_units(model, structure, keep, M)
    M_next, T = get_method("rsst").policy(U, R)
    enforcer = mk.MaskEnforcer(model, M_next)
    pull = TargetPull(model, T)
    assert pull, "the target set must not be empty"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, chans, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def run(with_pull: bool) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(
                model,
                x,
                y,
                opt=opt,
                loss_fn=loss_fn,
                enforcer=enforcer,
                pull=pull if with_pull else None,
                lam_value=0.5,
                amp=None,
            )
        _sync(device)
        return (time.perf_counter() - t0) / steps

    run(False), run(True)  # warm-up
    plain: list[float] = []
    rsst: list[float] = []
    for _ in range(repeats):
        plain.append(run(False))
        rsst.append(run(True))
    p, r = statistics.median(plain), statistics.median(rsst)
    print(
        f"{model_name:>10} batch {batch:>4}: plain {1e3 * p:8.2f} ms  rsst {1e3 * r:8.2f} ms  "
        f"ratio {r / p:.3f}x (goal <= 1.02x)"
    )
    return r / p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long CI setting")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.tiny:
        bench("vit_digits", 32, steps=2, repeats=2, device=device)
        return
    bench("vit_digits", 128, steps=20, repeats=15, device=device)
    bench("vit_tiny", 128, steps=2, repeats=9, device=device)


if __name__ == "__main__":
    main()
