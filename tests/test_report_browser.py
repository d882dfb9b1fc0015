"""report.html in a real browser: headless Chromium loads the page from disk (no network),
runs its scripts and draws every interactive plot, with no JavaScript error.

The report is that of a real tiny experiment: conftest's `tiny_runs` (three real prune runs on
digits), told to a real Optuna study as a sweep tells it, plus one errored trial. The
Chromium tests skip, saying why, where `chromium` is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection

from rsst_tune.config import TrialConfig
from rsst_tune.experiment.experiment import Experiment
from rsst_tune.experiment.objectives import trial_value
from rsst_tune.experiment.records import Objective, TrialRecord
from rsst_tune.experiment.select import MIN_IMPORTANCE_TRIALS
from rsst_tune.report import write_report
from rsst_tune.report.document import Para, Plot, to_html
from rsst_tune.results import StateResult

OBJECTIVES = (Objective("val_acc", "max"), Objective("macs_frac", "min"))
SEARCHED = {
    "method": CategoricalDistribution(["refill", "rsst"]),
    "head_ratio": FloatDistribution(0.1, 0.6),
    "mlp_ratio": FloatDistribution(0.1, 0.6),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
}
# report.html's interactive plots: the two Pareto fronts, the history, the parallel
# coordinates and the importances (their div ids)
PLOTS = ("pareto-macs", "pareto-params", "history", "parallel", "importances")
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
Runs = list[tuple[TrialConfig, Path, list[StateResult]]]


@pytest.fixture(scope="module")
def report(tiny_runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of the tiny experiment: each real run a complete trial of a real
    two-objective Optuna study (told the values a sweep tells), and one trial that errored."""
    study = optuna.create_study(
        directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE], study_name="tiny"
    )
    records = []
    for i, (cfg, run, results) in enumerate(tiny_runs):
        tid = f"tiny_{i:05d}"
        params = {name: getattr(cfg, name) for name in SEARCHED}
        values = [trial_value(o, results) for o in OBJECTIVES]
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=SEARCHED,
                values=values,
                user_attrs={"ray_trial_id": tid},
            )
        )
        kept = {s.state: str(run) for s in results}
        record = TrialRecord(tid, "complete", cfg.to_dict(), params, tuple(results))
        records.append(dataclasses.replace(record, state_checkpoints=kept))
    cfg = tiny_runs[0][0]
    records.append(
        TrialRecord("tiny_99999", "error", cfg.to_dict(), {"method": "rsst"}, (), error="boom")
    )
    exp_dir = tmp_path_factory.mktemp("tiny_experiment")
    experiment = Experiment(
        "tiny", str(exp_dir), "vit_head_mlp", OBJECTIVES, tuple(records), "(test)", study
    )
    return write_report(experiment, exp_dir).parent / "report.html"


def without_scripts(page: str) -> str:
    return re.sub(r"<script\b[^>]*>.*?</script>", "<script></script>", page, flags=re.S)


def plot_divs(page: str) -> dict[str, str]:
    """Each plot's div id (without `plot-`) -> the page from its div to the next plot's."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div id="plot-([\w-]+)"', page)]
    ends = [s for s, _ in starts[1:]] + [len(page)]
    return {name: page[start:end] for (start, name), end in zip(starts, ends, strict=True)}


def test_report_html_is_self_contained_with_plotly_inlined_once(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    size = report.stat().st_size
    print(f"report.html: {size} bytes")
    assert page.count("* plotly.js v") == 1  # plotly.js's banner: the library inlined once
    assert 4_000_000 < size < 6_000_000  # plotly.js (~4.8 MB) and a few figures, no more
    assert not re.search(r"<script[^>]+src=|<link\b|<iframe\b", page)  # nothing fetched
    assert tuple(plot_divs(page)) == PLOTS
    assert page.count("Plotly.newPlot(") == len(PLOTS)
    # hover on the front: trial, state, params, MACs and the 95 % interval with its n
    pareto = plot_divs(page)["pareto-macs"]
    assert "trial tiny_00000, state 1" in pareto and "95 % interval [" in pareto
    assert "n = 96" in pareto and "MACs 63.4 % of dense" in pareto and "method = refill" in pareto
    assert '"error_y":{' in pareto and '"arrayminus":[' in pareto
    # the categorical parameter as labelled ints, the log-sampled one on a log10 axis
    parallel = plot_divs(page)["parallel"]
    assert '"ticktext":["refill","rsst"]' in parallel and "lr (log)" in parallel
    # three complete trials: the importances of both objectives, with a visible warning
    importances = plot_divs(page)["importances"]
    assert '"text":"val_acc"' in importances and '"text":"macs_frac"' in importances
    warning = f"only 3 complete trials (fewer than {MIN_IMPORTANCE_TRIALS})"
    assert f'<p class="warning">Warning: {warning}' in page and warning in importances
    # the Markdown report keeps its PNGs and points to the plots that have none
    md = report.with_name("report.md").read_text()
    assert "![validation accuracy vs MACs fraction](pareto_macs.png)" in md
    assert "*Parallel coordinates: interactive plot in `report.html`.*" in md
    assert "plotly" not in md.lower() and f"> Warning: {warning}" in md


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local file, offline, its scripts given 10 s of virtual time."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root in CI containers
            "--disable-gpu",
            "--enable-unsafe-swiftshader",  # software WebGL for the parallel coordinates
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def dumped_dom(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The page's DOM after its scripts ran (scripts' text left out), and Chromium's log."""
    done = chromium(page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    return without_scripts(done.stdout), done.stderr


def console_errors(log: str) -> list[str]:
    return [
        line for line in log.splitlines() if "CONSOLE" in line and re.search("Uncaught|rror", line)
    ]


@needs_chromium
def test_report_html_draws_every_plot_without_javascript_errors(
    report: Path, tmp_path: Path
) -> None:
    dom, log = dumped_dom(report, tmp_path)
    assert '<body data-errors="0"' in dom, re.findall(r'<pre id="report-errors">.*?</pre>', dom)
    assert '<pre id="report-errors"></pre>' in dom
    assert not console_errors(log)
    drawn = plot_divs(dom)
    assert tuple(drawn) == PLOTS
    for name, div in drawn.items():
        assert "js-plotly-plot" in div, f"{name}: plotly did not take the div"
        assert 'class="main-svg"' in div, f"{name}: no plot drawn"
        assert "WebGL is not supported" not in div, name
    assert drawn["pareto-macs"].count('class="point"') >= len(PLOTS)  # the tickets' markers
    assert 'class="errorbar"' in drawn["pareto-macs"]  # the 95 % intervals
    assert 'class="parcoords"' in drawn["parallel"] and "refill" in drawn["parallel"]
    assert drawn["importances"].count('class="point"') >= 2  # the bars
    shot = tmp_path / "report.png"
    done = chromium(report, tmp_path, "--window-size=1400,3000", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-3000:]


@needs_chromium
def test_the_page_reports_its_javascript_errors(tmp_path: Path) -> None:
    """The hook report.html installs first does see an error: the clean run above means it."""
    broken = Plot('<div id="plot-x"></div><script>null.boom();</script>', "broken")
    page = tmp_path / "broken.html"
    page.write_text(to_html([Para("a page with a failing script"), broken], "broken"))
    dom, _ = dumped_dom(page, tmp_path)
    assert '<body data-errors="1"' in dom
    assert re.search(r'<pre id="report-errors">[^<]*null[^<]*</pre>', dom)
