"""`amp`/`compile` auto: which numerics a trial trains with, decided by a short probe.

With neither `amp` nor `compile` given (both None, the default: `TrialConfig.numerics_auto`),
a trial on CUDA runs a few timed training steps of each candidate, simplest first:

* `fp32`: fp32, eager;
* `bf16`: bf16 autocast, eager;
* `bf16+cudagraphs`: bf16 autocast, `torch.compile(mode="reduce-overhead")` (CUDA graphs),

and trains with the fastest whose loss stayed finite (`choose`, a pure function). The
choice and the probe's images/s are cached on disk per (model, dataset, image size, batch,
GPU name, torch version) in `numerics.json` (`NumericsCache`): a sweep keeps it beside its
shared dense states (`<experiment>/dense_cache/numerics.json`), so the trials of a sweep
probe once per key; one file lock (`rsst_tune.locks`) lets one trial probe at a time, and
the file is written atomically (`rsst_tune.fileio`). A trial without a dense cache (`rsst-tune
run`, the Python API) keeps the choice in memory, for the process.

On CPU and MPS auto is what the fixed default is there (amp on, which those devices run as
fp32; no compile): no probe. An `amp` or `compile` given by the user always wins: no probe,
the other one at its fixed default (`TrialConfig.fixed_numerics`).

The result's `numerics` reads e.g. `auto: bf16+cudagraphs (probe fp32 1,203 img/s, bf16
1,180, bf16+graphs 3,040)`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsst_tune import fileio
from rsst_tune.config import TrialConfig
from rsst_tune.locks import HEARTBEAT_S, MISSED_BEATS, OwnerLock, Staleness, break_lock

log = logging.getLogger(__name__)

FP32, BF16, BF16_GRAPHS = "fp32", "bf16", "bf16+cudagraphs"
CANDIDATES = (FP32, BF16, BF16_GRAPHS)  # simplest first: ties go to the earlier one
# (amp, compile) of each candidate; the compiled one uses GRAPHS_MODE
SETTINGS: dict[str, tuple[bool, bool]] = {
    FP32: (False, False),
    BF16: (True, False),
    BF16_GRAPHS: (True, True),
}
GRAPHS_MODE = "reduce-overhead"
SHORT = {FP32: "fp32", BF16: "bf16", BF16_GRAPHS: "bf16+graphs"}
TIE = 0.03
"""A more complex candidate must be more than this much faster (relative) than a simpler one
to be chosen: timings of a few steps vary by a few per cent."""

CACHE_FILE = "numerics.json"
CACHE_VERSION = 1
# the probe: per candidate WARMUP_STEPS untimed (the compile and CUDA graph capture happen
# there), then at least MIN_STEPS timed, and more up to MAX_STEPS while under STEP_SECONDS
WARMUP_STEPS = 3
MIN_STEPS = 5
MAX_STEPS = 50
STEP_SECONDS = 5.0
PROBE_BATCHES = 4  # distinct training batches the probe cycles through


@dataclass(frozen=True)
class Probe:
    """One candidate's probe: its training images/s and whether its loss stayed finite;
    `failed` when it raised instead (a compile error, out of memory)."""

    images_per_s: float
    finite: bool
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"images_per_s": self.images_per_s, "finite": self.finite, "failed": self.failed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        failed = bool(data.get("failed", False))  # absent in caches written before
        return cls(float(data["images_per_s"]), bool(data["finite"]), failed)


def choose(timings: Mapping[str, Probe]) -> str:
    """The candidate to train with: the fastest whose loss stayed finite, where a simpler one
    (earlier in CANDIDATES) within TIE of the fastest wins; `fp32` when none is usable.
    A candidate with a non-finite loss, or no positive finite rate, is never chosen."""
    usable = [
        (name, timings[name].images_per_s)
        for name in CANDIDATES
        if name in timings
        and timings[name].finite
        and math.isfinite(timings[name].images_per_s)
        and timings[name].images_per_s > 0
    ]
    if not usable:
        return FP32
    best = max(rate for _, rate in usable)
    return next(name for name, rate in usable if rate * (1.0 + TIE) >= best)


@dataclass(frozen=True)
class Decision:
    """What a trial trains with: amp, compile (and its mode), and how that was decided."""

    amp: bool
    compile: bool
    compile_mode: str
    choice: str | None = None  # the auto choice (a CANDIDATES name); None: fixed, no probe
    probes: Mapping[str, Probe] = field(default_factory=dict)

    def label(self, fixed_text: str) -> str:
        """For `StateResult.numerics`: `fixed_text` (`describe_numerics`'s) when not probed,
        else `auto: CHOICE (probe fp32 N img/s, bf16 N, bf16+graphs N)`."""
        if self.choice is None:
            return fixed_text
        parts = []
        for i, name in enumerate(n for n in CANDIDATES if n in self.probes):
            p = self.probes[name]
            rate = (
                f"{p.images_per_s:,.0f}"
                if p.finite
                else ("failed" if p.failed else "non-finite loss")
            )
            unit = " img/s" if i == 0 and p.finite else ""
            parts.append(f"{SHORT[name]} {rate}{unit}")
        return (
            f"auto: {self.choice} (probe {', '.join(parts)})" if parts else f"auto: {self.choice}"
        )


def fixed(cfg: TrialConfig) -> Decision:
    """The numerics of a trial that does not probe (given amp/compile, or not CUDA)."""
    amp, compiled = cfg.fixed_numerics()
    return Decision(amp, compiled, cfg.compile_mode)


def from_choice(choice: str, probes: Mapping[str, Probe]) -> Decision:
    amp, compiled = SETTINGS[choice]
    return Decision(amp, compiled, GRAPHS_MODE, choice, dict(probes))


def probe_key(
    cfg: TrialConfig, img_size: int, device_name: str, torch_version: str | None = None
) -> str:
    """The cache key of a probe: model, dataset, image size, batch, GPU name, torch version
    (readable: the JSON file is meant to be read)."""
    version = torch.__version__ if torch_version is None else torch_version
    return (
        f"{cfg.model} on {cfg.dataset} at {img_size}px, batch {cfg.batch_size}, "
        f"{device_name}, torch {version}"
    )


def decide(
    cfg: TrialConfig,
    device: torch.device,
    *,
    key: Callable[[], str],
    probe: Callable[[], Mapping[str, Probe]],
    cache: NumericsCache | None = None,
) -> Decision:
    """The trial's numerics: fixed when amp or compile was given or the device is not CUDA;
    else the cached choice for `key()`, probing with `probe()` (candidate -> Probe) when
    there is none yet."""
    if not cfg.numerics_auto or device.type != "cuda":
        return fixed(cfg)
    cache = cache if cache is not None else IN_MEMORY
    choice, probes, probed = cache.get_or_probe(key(), probe)
    decision = from_choice(choice, probes)
    log.info(
        "numerics %s%s",
        decision.label(""),
        "" if probed else f" (cached in {cache.describe()})",
    )
    return decision


class NumericsCache:
    """Probe results by key, in `root/numerics.json` (None: in this process's memory only).

    `get_or_probe` returns a key's choice, probing once per key: the first trial to need a
    key takes `numerics.json.lock` (an owner lock with a heartbeat, taken over when its owner
    is gone, as the dense cache's) and probes while holding it, so only one trial probes at
    a time and the others wait and read its answer."""

    def __init__(
        self, root: str | Path | None, *, poll_s: float = 0.5, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self._memory: dict[str, tuple[str, dict[str, Probe]]] = {}

    @property
    def path(self) -> Path | None:
        return self.root / CACHE_FILE if self.root is not None else None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "memory"

    def entries(self) -> dict[str, tuple[str, dict[str, Probe]]]:
        """Every cached key's (choice, probes); an unreadable file reads as empty."""
        if self.path is None:
            return dict(self._memory)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("numerics cache %s is unreadable (%s); probing again", self.path, exc)
            return {}
        out: dict[str, tuple[str, dict[str, Probe]]] = {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return out
        for key, entry in (data.get("entries") or {}).items():
            try:
                probes = {n: Probe.from_dict(p) for n, p in entry["probes"].items()}
                choice = str(entry["choice"])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if choice in SETTINGS:
                out[str(key)] = (choice, probes)
        return out

    def _write(self, entries: Mapping[str, tuple[str, Mapping[str, Probe]]]) -> None:
        assert self.path is not None
        data = {
            "version": CACHE_VERSION,
            "entries": {
                key: {"choice": choice, "probes": {n: p.to_dict() for n, p in probes.items()}}
                for key, (choice, probes) in sorted(entries.items())
            },
        }
        fileio.write_text(self.path, json.dumps(data, indent=2) + "\n")

    def get_or_probe(
        self, key: str, probe: Callable[[], Mapping[str, Probe]]
    ) -> tuple[str, dict[str, Probe], bool]:
        """(choice, probes, probed here) for `key`, calling `probe()` only when no one has."""
        if self.path is None or self.root is None:
            if key not in self._memory:
                probes = dict(probe())
                self._memory[key] = (choose(probes), probes)
                return (*self._memory[key], True)
            return (*self._memory[key], False)
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f"{CACHE_FILE}.lock"
        judge = Staleness(MISSED_BEATS * self.heartbeat_s)
        while True:
            found = self.entries().get(key)
            if found is not None:
                return (*found, False)
            lock = OwnerLock(lock_path, heartbeat_s=self.heartbeat_s, info={"what": "probe"})
            if lock.acquire():
                with lock:
                    entries = self.entries()
                    if key in entries:  # written between our read and the lock
                        return (*entries[key], False)
                    probes = dict(probe())
                    entries[key] = (choose(probes), probes)
                    self._write(entries)
                    return (*entries[key], True)
            stale, judged = judge.is_stale(lock_path)
            if stale:
                log.warning("numerics cache %s: a stale probe lock; taking over", self.root)
                break_lock(lock_path, judged)
                continue
            time.sleep(self.poll_s)


IN_MEMORY = NumericsCache(None)
"""The cache of trials without a dense cache: one process's choices."""


# ---------------------------------------------------------------------- the probe (CUDA)
def probe_training(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    cfg: TrialConfig,
    maskable: Iterable[str],
    candidates: Sequence[str] = CANDIDATES,
) -> dict[str, Probe]:
    """Time each candidate's training steps on a copy of `model` (its weights, the trial's
    optimizer, loss and mask enforcement; `batches` cycled): the trial's model, RNG-free
    state and weights are left as they were. A candidate that fails (a compile error, out of
    memory) is recorded with 0 img/s and never chosen."""
    names = tuple(maskable)
    out: dict[str, Probe] = {}
    for name in candidates:
        try:
            out[name] = _probe_one(model, batches, cfg, names, name)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("numerics probe: %s failed (%s); not a candidate", name, first)
            out[name] = Probe(0.0, False, failed=True)
        finally:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        log.info("numerics probe: %s %.0f img/s", name, out[name].images_per_s)
    return out


def _probe_one(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    cfg: TrialConfig,
    maskable: Sequence[str],
    name: str,
) -> Probe:
    from rsst_tune.device import amp_dtype, compile_forward
    from rsst_tune.pruning.masks import MaskEnforcer, full_masks
    from rsst_tune.train import build_optimizer, train_step, weights_finite

    amp, compiled = SETTINGS[name]
    twin = copy.deepcopy(model)
    twin.train()
    device = next(twin.parameters()).device
    dtype = amp_dtype(device, amp)
    forward: Callable[[Tensor], Tensor] = twin
    if compiled:
        forward = compile_forward(twin, GRAPHS_MODE)
    opt = build_optimizer(twin, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    enforcer = MaskEnforcer(twin, full_masks(twin, list(maskable)))

    def step(i: int) -> Tensor:
        x, y = batches[i % len(batches)]
        return train_step(
            forward,
            x,
            y,
            opt=opt,
            loss_fn=loss_fn,
            enforcer=enforcer,
            pull=None,
            lam_value=0.0,
            amp=dtype,
        )

    for i in range(WARMUP_STEPS):
        step(i)
    torch.cuda.synchronize(device)
    loss_sum = torch.zeros((), device=device)
    images = 0
    t0 = time.perf_counter()
    n = 0
    while n < MAX_STEPS and (n < MIN_STEPS or time.perf_counter() - t0 < STEP_SECONDS):
        loss_sum += step(WARMUP_STEPS + n)
        images += int(batches[(WARMUP_STEPS + n) % len(batches)][0].shape[0])
        n += 1
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    finite = math.isfinite(float(loss_sum)) and weights_finite(twin)
    return Probe(images / seconds if seconds > 0 else 0.0, finite)
