"""A measured latency model of one model on one device: predicts a ticket's forward time.

    table = build_latency_table("vit_tiny", device="cpu", batch=1, img_size=32)
    table.predict_ms({"blocks.0.attn": 2, "blocks.0.mlp": 384, ...})   # alive units per group
    table.predict_result_ms(state_result)     # from a state's heads/neurons/filters per layer
    table.save(path); LatencyTable.load(path)

How it is built. Each removable unit group (a block's heads, its MLP neurons, a conv's filters)
lives in the smallest module holding its parameters and the layers that read them (the
attention, the MLP, a residual block). That module is timed alone on the input it receives in
a dense forward, once with every unit and once at each kept width of a grid (every head count;
neurons and filters in steps of `step`, at most `max_points` widths, always 1 and all), after
slicing the units out as the export does (`pruning.slicing.export_model`). Blocks with the same
shapes share one set of timings. The dense model is timed whole.

A ticket's predicted time is the dense time plus, for each group, the change its module showed
when cut to the ticket's width (linear between grid widths), times a factor per unit kind. The
factors are fitted (least squares) to `calibrate` random tickets, spanning sparse to dense,
exported and timed whole: a block timed alone misses what a cut saves around it (caches, memory
traffic). The dense time is the fastest of all the dense model's timed runs, those beside the
calibration tickets included; each calibration ticket counts as its ratio to the dense run timed
alternately with it, so that a spell of load slowing both leaves it unchanged. `margin` is the
largest under-prediction over the calibration tickets after the fit: a latency budget holds a
ticket to its prediction times (1 + margin) (`upper_ms`), so that a ticket chosen under a budget
also measures within it. The part of the
model that is never pruned (patch embedding, norms, the head) is in the dense time and never
changes. The report shows the export's measured time beside the prediction, and
`benchmarks/bench_latency.py` measures the error on other random tickets.

Every timing is the fastest of `repeats` timed runs, each at least `min_run_s` long, after a
warm-up, in eval mode under `torch.inference_mode()` in the table's dtype; on the CPU with the
process's freed memory held for reuse (`rsst_tune.latency.hold_freed_memory`, recorded as
`memory_held`): otherwise a forward's time depends on what the process allocated before, and
the table's build (which exports a model per width) ran up to 1.9x slower than the same
tickets timed later. The fastest, not the
median: other work on the machine (another process, another core's memory traffic) only ever
adds time to a run, so the fastest run is the closest to the model's own cost and the least
moved by load (on this project's 2-core CI machine under load, medians gave tables whose
predictions ranked tickets no better than chance, benchmarks/bench_latency.py). A change at a
width is the fastest cut run minus the fastest whole run, the two timed alternately. The table
records the device, batch, dtype and torch threads it was measured with, and is valid only for
those; the export step times a sweep's best tickets with the table's threads and batch, and the
report compares the prediction with the export's fastest run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsst_tune.errors import ConfigError
from rsst_tune.units import UNIT_KINDS

log = logging.getLogger(__name__)

TABLE_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BlockTimes:
    """One module's forward time (s) at each kept width of one unit group."""

    widths: tuple[int, ...]  # ascending; the last is every unit
    seconds: tuple[float, ...]

    def at(self, width: int) -> float:
        """Linear between the grid's widths; clamped to its ends."""
        w = self.widths
        if width <= w[0]:
            return self.seconds[0]
        if width >= w[-1]:
            return self.seconds[-1]
        for i in range(1, len(w)):
            if width <= w[i]:
                t = (width - w[i - 1]) / (w[i] - w[i - 1])
                return self.seconds[i - 1] + t * (self.seconds[i] - self.seconds[i - 1])
        return self.seconds[-1]  # pragma: no cover - unreachable

    @property
    def full(self) -> float:
        return self.seconds[-1]


@dataclass(frozen=True)
class LatencyTable:
    """What the latency of a ticket of `model` is predicted from (see the module)."""

    model: str
    img_size: int
    batch: int
    device: str  # as measured, e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    dtype: str
    threads: int
    dense_s: float
    blocks: dict[str, BlockTimes]  # shape signature -> times
    groups: dict[str, str]  # unit group name -> its shape signature
    num_units: dict[str, int]  # unit group name -> its units
    order: dict[str, list[str]] = field(default_factory=dict)  # kind -> group names in order
    # per unit kind, the factor on its blocks' changes fitted to tickets timed whole (1: none)
    scale: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # tickets, median errors
    # the largest under-prediction over the calibration tickets, as a fraction of the
    # prediction: a latency budget holds a ticket to predicted * (1 + margin) (`upper_s`)
    margin: float = 0.0
    # timed with the freed memory held (`rsst_tune.latency.hold_freed_memory`; False: another
    # C library, a device with its own allocator, or a table from before 2026-12-08)
    memory_held: bool = False
    built_s: float = 0.0
    version: int = TABLE_VERSION

    # ------------------------------------------------------------------ prediction
    def predict_s(self, alive: Mapping[str, int]) -> float:
        """Seconds per forward of a ticket with `alive[group]` units (a group left out: all)."""
        kind_of = {n: k for k, names in self.order.items() for n in names}
        total = self.dense_s
        for name, sig in self.groups.items():
            times = self.blocks[sig]
            width = int(alive.get(name, self.num_units[name]))
            factor = self.scale.get(kind_of.get(name, ""), 1.0)
            total += factor * (times.at(max(width, 1)) - times.full)
        return max(total, 0.0)

    def predict_ms(self, alive: Mapping[str, int]) -> float:
        return 1000.0 * self.predict_s(alive)

    def upper_s(self, alive: Mapping[str, int]) -> float:
        """The prediction raised by the table's `margin`: what a latency budget is held to,
        so that a ticket chosen under a budget also measures within it."""
        return self.predict_s(alive) * (1.0 + self.margin)

    def upper_ms(self, alive: Mapping[str, int]) -> float:
        return 1000.0 * self.upper_s(alive)

    def alive_from_result(self, result: Any) -> dict[str, int]:
        """A state's alive units per group, from its `<kind>_per_layer` counts."""
        alive: dict[str, int] = {}
        for kind in UNIT_KINDS:
            counts = getattr(result, kind.per_layer, None)
            names = self.order.get(kind.name, [])
            if counts is None or not names:
                continue
            if len(counts) != len(names):
                raise ConfigError(
                    f"latency table of {self.model}: {len(names)} {kind.name} groups, the "
                    f"result has {len(counts)}"
                )
            alive.update(zip(names, (int(c) for c in counts), strict=True))
        return alive

    def predict_result_ms(self, result: Any) -> float:
        return self.predict_ms(self.alive_from_result(result))

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        data = asdict(self)
        data["blocks"] = {k: asdict(v) for k, v in self.blocks.items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)
        if data.get("version") != TABLE_VERSION:
            raise ConfigError(f"latency table version {data.get('version')} is not {TABLE_VERSION}")
        data["blocks"] = {
            k: BlockTimes(tuple(int(w) for w in v["widths"]), tuple(float(s) for s in v["seconds"]))
            for k, v in data["blocks"].items()
        }
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        from rsst_tune import fileio

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a readable latency table: {exc}") from None

    def describe(self) -> str:
        return (
            f"{self.model} at {self.img_size}px, batch {self.batch}, {self.dtype}, "
            f"{self.threads} threads on {self.device}: dense {1000 * self.dense_s:.3f} ms"
        )


def table_for_config(cfg: Any, *, batch: int, device: str) -> LatencyTable:
    """The table of a trial config's model as its trials build it (the dataset's classes,
    channels and image size; `cfg.threads` torch threads), timed on `device`."""
    import torch

    from rsst_tune.data import load_dataset
    from rsst_tune.models import default_img_size

    asked = cfg.img_size or default_img_size(cfg.model)
    spec = load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, download=cfg.download,
        img_size=asked,
    ).spec  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.threads or 1)))
    try:
        return build_latency_table(
            cfg.model, device=device, batch=batch, img_size=asked or spec.img_size,
            num_classes=spec.num_classes, in_chans=spec.in_chans, step=max(1, cfg.round_to),
            prune_stem=cfg.prune_stem,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def table_name(model: str, img_size: int, batch: int, device: str, dtype: str, threads: int) -> str:
    """The cache file name of a table (one per model, size, batch, device, dtype, threads)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    dev = "".join(c if c.isalnum() else "_" for c in device)
    return f"latency_{safe}_{img_size}px_b{batch}_{dev}_{dtype}_t{threads}.json"


# ---------------------------------------------------------------------- building
def build_latency_table(
    model_name: str,
    *,
    device: str = "cpu",
    batch: int = 1,
    img_size: int | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    dtype: str = "float32",
    step: int = 1,
    max_points: int = 16,
    repeats: int = 7,
    min_run_s: float = 0.01,
    prune_stem: bool = False,
    calibrate: int = 12,
) -> LatencyTable:
    """Time `model_name` (a registered model or `timm:NAME`, random weights) on `device`;
    `calibrate` random tickets are then timed whole to fit one factor per unit kind."""
    import torch

    from rsst_tune.device import resolve_device
    from rsst_tune.models import create_model, default_img_size

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if batch < 1 or step < 1 or max_points < 2 or repeats < 1:
        raise ConfigError("batch, step and repeats must be >= 1 and max_points >= 2")
    dev = resolve_device(device)
    size = img_size or default_img_size(model_name) or 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, img_size=size)
    chans = in_chans or _in_chans(model)
    t0 = time.perf_counter()
    table = _build(
        model, model_name, dev, torch.zeros(batch, chans, size, size), size, dtype, step,
        max_points, repeats, min_run_s, prune_stem, calibrate,
    )  # fmt: skip
    table = dataclasses.replace(table, built_s=round(time.perf_counter() - t0, 3))
    log.info("latency table: %s (built in %.1fs)", table.describe(), table.built_s)
    return table


def _in_chans(model: Any) -> int:
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


def _build(
    model: Any,
    model_name: str,
    device: Any,
    example: Any,
    img_size: int,
    dtype: str,
    step: int,
    max_points: int,
    repeats: int,
    min_run_s: float,
    prune_stem: bool = False,
    calibrate: int = 0,
) -> LatencyTable:
    import torch

    from rsst_tune.device import describe_device
    from rsst_tune.latency import hold_freed_memory
    from rsst_tune.pruning.slicing import export_model
    from rsst_tune.pruning.structure import Structure, find_structure

    torch_dtype = getattr(torch, dtype)
    model = model.eval()
    structure = find_structure(
        model, target="both", prune_stem=prune_stem, example_input=example[:1]
    )
    groups = [g for g in structure.groups if g.removable]
    modules = dict(model.named_modules())
    home = {g.name: _home_module(g, modules) for g in groups}
    inputs = _capture_inputs(model, example, set(home.values()))

    def runner(module: Any, args: tuple[Any, ...]) -> Any:
        module = module.to(device=device, dtype=torch_dtype).eval()
        moved = tuple(
            a.to(device=device, dtype=torch_dtype) if torch.is_tensor(a) else a for a in args
        )

        def run() -> Any:
            with torch.inference_mode():
                return module(*moved)

        return run

    blocks: dict[str, BlockTimes] = {}
    sig_of: dict[str, str] = {}
    for g in groups:
        path = home[g.name]
        module = modules[path] if path else model
        sig = _signature(g, path, module, inputs[path])
        sig_of[g.name] = sig
        if sig in blocks:
            continue
        widths = _widths(g.num_units, 1 if g.kind == "head" else step, max_points)
        full = runner(copy.deepcopy(module), inputs[path])
        fulls: list[float] = []
        deltas: dict[int, float] = {}
        for w in widths[:-1]:
            pruned = export_model(_zeroed(model, g, w), Structure((g,)), "cpu").model
            cut = runner(pruned.get_submodule(path) if path else pruned, inputs[path])
            # alternating runs: a spell of load on the machine reaches the cut module and the
            # whole one alike
            t_full, t_cut = _paired_times(full, cut, device, repeats, min_run_s)
            fulls += t_full
            deltas[w] = min(t_cut) - min(t_full)
        base = min(fulls) if fulls else fastest_time(full, device, repeats, min_run_s)
        seconds = [max(base + deltas[w], 0.0) for w in widths[:-1]] + [base]
        blocks[sig] = BlockTimes(tuple(widths), tuple(seconds))
        log.debug("latency %s %s: %s", g.name, g.kind, blocks[sig])
    dense_run = runner(copy.deepcopy(model), (example,))
    dense_s = fastest_time(dense_run, device, repeats, min_run_s)
    table = LatencyTable(
        model=model_name,
        img_size=int(img_size),
        batch=int(example.shape[0]),
        device=describe_device(device),
        dtype=dtype,
        threads=torch.get_num_threads(),
        dense_s=dense_s,
        memory_held=device.type == "cpu" and hold_freed_memory(),
        blocks=blocks,
        groups=sig_of,
        num_units={g.name: g.num_units for g in groups},
        # every group of a kind, timed or not: a state's per-layer counts list them all (a
        # unit a coupling keeps is never removed, so its group is not timed)
        order={k.name: [g.name for g in structure.groups if g.kind == k.name] for k in UNIT_KINDS},
    )
    if calibrate <= 0 or not groups:
        return table

    def whole(alive: Mapping[str, int]) -> tuple[float, float]:
        """The fastest run of a ticket with `alive` units, and of the dense model timed
        alternately with it."""
        ticket = model
        for g in groups:
            if alive[g.name] < g.num_units:
                ticket = _zeroed(ticket, g, alive[g.name])
        pruned = export_model(ticket, Structure(tuple(groups)), "cpu").model
        t_dense, t_cut = _paired_times(
            dense_run, runner(pruned, (example,)), device, repeats, min_run_s
        )
        return min(t_cut), min(t_dense)

    return _calibrated(table, groups, whole, calibrate)


def _calibrated(table: LatencyTable, groups: list[Any], whole: Any, n: int) -> LatencyTable:
    """The table with one factor per unit kind on its blocks' changes, fitted (least squares,
    kept in [0, 3]) to `n` random tickets timed whole: blocks timed alone miss what a cut saves
    around them (caches, memory traffic), differently for heads, neurons and filters. The
    dense time becomes the fastest of all the dense model's timed runs, the table's own and
    those beside each ticket: other work on the machine only adds time, and one spell of it
    during a single timing would shift every prediction alike. Each ticket's time counts as
    its ratio to the dense run beside it, times that fastest dense time: a spell of load that
    slows both alike then leaves it unchanged. `margin` is the largest under-prediction over
    the tickets after the fit."""
    import random

    import numpy as np

    rng = random.Random(0)
    kinds = sorted({g.kind for g in groups})
    rows: list[list[float]] = []
    targets: list[float] = []
    denses: list[float] = []
    for alive in spread_tickets({g.name: g.num_units for g in groups}, n, rng):
        per_kind = {k: 0.0 for k in kinds}
        for g in groups:
            times = table.blocks[table.groups[g.name]]
            per_kind[g.kind] += times.at(alive[g.name]) - times.full
        rows.append([per_kind[k] for k in kinds])
        ticket_s, dense = whole(alive)
        targets.append(ticket_s / dense)  # a ratio until the fastest dense time is known
        denses.append(dense)
    dense_s = min([table.dense_s, *denses])
    targets = [dense_s * (ratio - 1.0) for ratio in targets]  # seconds saved
    raw = [dense_s + sum(r) for r in rows]
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    scale = {k: float(min(max(a, 0.0), 3.0)) for k, a in zip(kinds, solution, strict=True)}
    fitted = dataclasses.replace(table, scale=scale, dense_s=dense_s)
    measured = [dense_s + t for t in targets]
    predicted = [
        fitted.dense_s + sum(scale[k] * v for k, v in zip(kinds, r, strict=True)) for r in rows
    ]
    under = max((m / p - 1.0 for p, m in zip(predicted, measured, strict=True) if p > 0), default=0)
    fitted = dataclasses.replace(
        fitted,
        calibration={
            "tickets": n,
            "median_error_raw": _median_rel_error(raw, measured),
            "median_error": _median_rel_error(predicted, measured),
        },
        margin=max(0.0, float(under)),
    )
    log.info("latency table calibrated on %d tickets: scale %s, margin %.3f", n, scale, under)
    return fitted


def spread_tickets(num_units: Mapping[str, int], n: int, rng: Any) -> list[dict[str, int]]:
    """`n` random tickets over the groups of `num_units` (name -> units) spanning sparse to
    dense: ticket i keeps a level of its units (evenly spaced from 10 % to 100 % over the
    tickets, in a shuffled order), each group that level of its units times a factor of its
    own in [0.7, 1.3], in [1, units]. (Widths drawn independently per group keep about half
    of everything in every ticket, which fits the factors on one narrow band of latencies.)
    `benchmarks/bench_latency.py` draws its tickets with it too."""
    levels = [0.1 + 0.9 * i / max(1, n - 1) for i in range(n)]
    rng.shuffle(levels)
    return [
        {
            name: max(1, min(units, round(level * units * rng.uniform(0.7, 1.3))))
            for name, units in num_units.items()
        }
        for level in levels
    ]


def _median_rel_error(predicted: list[float], measured: list[float]) -> float:
    return float(
        statistics.median(abs(p - m) / m for p, m in zip(predicted, measured, strict=True) if m > 0)
    )


def _widths(units: int, step: int, max_points: int) -> list[int]:
    """Kept widths to time: multiples of `step` (coarser when there would be more than
    `max_points`), with 1 and `units` always in."""
    stride = step * max(1, math.ceil(units / step / max_points))
    out = {1, units, *range(stride, units, stride)}
    return sorted(out)


def _home_module(group: Any, modules: Mapping[str, Any]) -> str:
    """The deepest module holding every parameter the group's units own or feed."""
    owners = [m.param.rsplit(".", 1)[0] for m in (*group.members, *group.consumers)]
    common = owners[0].split(".")
    for o in owners[1:]:
        parts = o.split(".")
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    path = ".".join(common)
    # a group's own layer alone is not a runnable unit of work (its consumer is elsewhere):
    # go up to a module that is in the model's module tree
    while path and path not in modules:
        path = path.rpartition(".")[0]
    return path


def _capture_inputs(model: Any, example: Any, paths: set[str]) -> dict[str, tuple[Any, ...]]:
    import torch

    captured: dict[str, tuple[Any, ...]] = {"": (example,)}
    handles = []
    for path in paths:
        if not path:
            continue
        module = model.get_submodule(path)

        def hook(_m: Any, args: tuple[Any, ...], path: str = path) -> None:
            captured.setdefault(
                path, tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
            )

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(p for p in paths if p not in captured)
    if missing:
        raise ConfigError(f"latency table: no input reached {', '.join(missing)}")
    return captured


def _signature(group: Any, path: str, module: Any, args: tuple[Any, ...]) -> str:
    import torch

    shapes = [list(a.shape) for a in args if torch.is_tensor(a)]
    params = [(n, list(p.shape)) for n, p in module.named_parameters()]
    if group.name == path:
        rel = ""
    elif path and group.name.startswith(path + "."):
        rel = group.name[len(path) + 1 :]
    else:
        rel = group.name
    text = json.dumps([type(module).__name__, group.kind, rel, group.num_units, shapes, params])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _zeroed(model: Any, group: Any, width: int) -> Any:
    """A copy of `model` whose units `width..` of `group` are zero (what the export cuts)."""
    import torch

    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    keep = torch.zeros(group.num_units, dtype=torch.bool)
    keep[:width] = True
    with torch.no_grad():
        for m in group.members:
            p = params[m.param]
            p.mul_(m.expand(keep.to(p.device, p.dtype), p.shape))
    return out


def _timer(run: Any, device: Any, min_run_s: float) -> Any:
    """`one()`: seconds per call of `run()` over a timed run of at least `min_run_s` (after a
    warm-up: kernels chosen, caches filled)."""
    from rsst_tune.latency import hold_freed_memory, sync_device

    if device.type == "cpu":
        hold_freed_memory()  # timings independent of what the process allocated before

    def timed(inner: int) -> float:
        sync_device(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            run()
        sync_device(device)
        return (time.perf_counter() - t0) / inner

    for _ in range(2):
        run()
    inner = 1
    while timed(inner) * inner < min_run_s and inner < 2**16:
        inner *= 2
    return lambda: timed(inner)


def fastest_time(run: Any, device: Any, repeats: int, min_run_s: float) -> float:
    """Seconds per call of `run()` on `device` (a `torch.device`) in the fastest of `repeats`
    timed runs, each at least `min_run_s` long, after a warm-up."""
    one = _timer(run, device, min_run_s)
    return float(min(one() for _ in range(repeats)))


def _paired_times(
    a: Any, b: Any, device: Any, repeats: int, min_run_s: float
) -> tuple[list[float], list[float]]:
    """`repeats` timed runs of `a` and of `b`, alternating (a, b, a, b, ...)."""
    one_a, one_b = _timer(a, device, min_run_s), _timer(b, device, min_run_s)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(one_a())
        tb.append(one_b())
    return ta, tb
