"""`rsst-tune run`: one trial from the command line, with a progress bar and a per-state table.

Writes, under the output directory: `config.json` (the resolved config), one checkpoint per
state (`state_XX.pt`, plus `theta0.pt`), and `results.json` / `results.csv` rewritten after
every state, so an interrupted run loses at most the state in progress (`--resume`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rsst_tune.config import TrialConfig
from rsst_tune.errors import ConfigError
from rsst_tune.loop import THETA0_FILE, PruneLoop, latest_checkpoint

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "results.csv", "config.json", THETA0_FILE)


def default_out(cfg: TrialConfig) -> Path:
    model = cfg.model.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{model}_{cfg.method}_{cfg.dataset}_s{cfg.seed}"


def run_command(
    cfg: TrialConfig | None,
    out: str | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    if cfg is None and not resume:
        cfg = TrialConfig()
    if out is None:
        if cfg is None:
            raise ConfigError("--resume needs --out DIR (the directory of the run to continue)")
        out_dir = default_out(cfg)
    else:
        out_dir = Path(out)
    bar = _EpochBar(enabled=progress)
    if resume:
        loop = PruneLoop.resume(out_dir, cfg, on_epoch=bar.update)
        log.info("resuming %s at state %d of %d", out_dir, loop.next_state, loop.cfg.pruning_times)
    else:
        assert cfg is not None
        _check_fresh(out_dir, overwrite)
        loop = PruneLoop(cfg, out_dir, on_epoch=bar.update)  # validates before writing anything
        _clear(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "config.json", loop.cfg.to_json() + "\n")
    log.info(
        "run %s: %s on %s, %s, %d states x %d epochs, device %s",
        out_dir,
        loop.cfg.model,
        loop.cfg.dataset,
        loop.cfg.method,
        loop.cfg.pruning_times,
        loop.cfg.epochs,
        loop.device,
    )
    table = StateTable(loop.results)
    for row in loop.results:
        table.print_row(row)
    try:
        for result in loop.states():
            bar.close()
            table.print_row(result)
            write_results(out_dir, loop.results)
    finally:
        bar.close()
    write_results(out_dir, loop.results)
    log.info("results: %s", out_dir / "results.json")
    return 0


def _check_fresh(out_dir: Path, overwrite: bool) -> None:
    if overwrite or not out_dir.exists():
        return
    if latest_checkpoint(out_dir) is not None or (out_dir / "results.json").exists():
        raise ConfigError(
            f"{out_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to replace it"
        )


def _clear(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    for path in out_dir.glob("state_[0-9][0-9].pt"):
        path.unlink()
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_results(out_dir: Path, results: Sequence[dict[str, Any]]) -> None:
    write_atomic(out_dir / "results.json", json.dumps(list(results), indent=2) + "\n")
    write_atomic(out_dir / "results.csv", results_csv(results))


def results_csv(results: Sequence[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in results:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in results:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


class StateTable:
    """The per-state table printed to stdout as states finish."""

    def __init__(self, results: Iterable[dict[str, Any]]) -> None:
        rows = list(results)
        self.units = [k for k in ("heads", "neurons", "filters") if any(k in r for r in rows)]
        self._header_done = False

    def print_row(self, r: dict[str, Any]) -> None:
        if not self.units:
            self.units = [k for k in ("heads", "neurons", "filters") if k in r]
        if not self._header_done:
            cols = [
                "state",
                "sparsity",
                *self.units,
                "val_acc",
                "test_acc",
                "MACs",
                "params",
                "time",
            ]
            print(" ".join(f"{c:>9}" for c in cols))
            self._header_done = True
        cells = [
            f"{r['state']:>9d}",
            f"{100 * r['sparsity']:>8.1f}%",
            *[f"{r.get(u, ''):>9}" for u in self.units],
            f"{100 * r['val_acc']:>8.2f}%",
            f"{100 * r['test_acc']:>8.2f}%",
            f"{100 * r['macs_frac']:>8.1f}%",
            f"{100 * r['params_frac']:>8.1f}%",
            f"{r['wall_time_s']:>8.1f}s",
        ]
        print(" ".join(cells), flush=True)


class _EpochBar:
    """A tqdm bar over the epochs of the state in progress (on stderr)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def update(self, state: int, epoch: int, epochs: int, loss: float) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=epochs,
                desc=f"state {state}",
                unit="ep",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if epoch > 0:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
