"""Screenshot a sweep's report.html into docs/report.png (the README's picture).

    python docs/make_screenshot.py                          # the newest experiments/*/report.html
    python docs/make_screenshot.py experiments/NAME         # that experiment's report
    python docs/make_screenshot.py experiments/NAME --out /tmp/report.png --size 1280,1580

Headless Chromium (`chromium`, else `chromium-browser` or `google-chrome` on PATH) opens the
report offline, gives its scripts 5 s of virtual time to draw the plotly plots, and saves the
top of the page at the window size. A PNG over 400 KB is re-encoded with 256 colours (Pillow)
to stay small in the repository. With no report to take, it says so in one line and exits 2;
`make smoke` writes one.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "report.png"
MAX_BYTES = 400_000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def newest_report(storage: Path) -> Path | None:
    """The report.html of the most recently written experiment under `storage`, or None."""
    reports = [p for p in storage.glob("*/report.html") if p.is_file()]
    return max(reports, key=lambda p: p.stat().st_mtime, default=None)


def find_report(experiment: str | None) -> Path | None:
    if experiment is None:
        return newest_report(REPO / "experiments")
    path = Path(experiment)
    report = path if path.name == "report.html" else path / "report.html"
    return report if report.is_file() else None


def screenshot(browser: str, report: Path, out: Path, width: int, height: int) -> None:
    """Chromium's own screenshot of `report` at width x height pixels, into `out`."""
    with tempfile.TemporaryDirectory(prefix="rsst-shot-") as profile:
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # as root in containers
                "--disable-gpu",
                "--enable-unsafe-swiftshader",  # software WebGL for the parallel coordinates
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",  # the plots draw before the shot
                f"--window-size={width},{height}",
                f"--screenshot={out}",
                report.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    if done.returncode != 0 or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"make_screenshot: {browser} failed (exit {done.returncode}): {last}")


def shrink(out: Path) -> None:
    """Re-encode a PNG over MAX_BYTES with a 256-colour palette, when Pillow is installed."""
    if out.stat().st_size <= MAX_BYTES:
        return
    try:
        from PIL import Image
    except ImportError:
        print(f"make_screenshot: {out} is {out.stat().st_size:,} bytes (no Pillow to shrink it)")
        return
    with Image.open(out) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:
        print(f"make_screenshot: {out} is still {out.stat().st_size:,} bytes: try a smaller --size")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiment",
        nargs="?",
        help="experiment directory (or its report.html); "
        "default: the newest under experiments/ with a report.html",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: docs/report.png")
    parser.add_argument("--size", default="1280,1580", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)

    report = find_report(args.experiment)
    if report is None:
        where = args.experiment or "experiments/*/"
        print(
            f"make_screenshot: no report.html in {where}; run `make smoke` first", file=sys.stderr
        )
        return 2
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        print(
            "make_screenshot: no chromium on PATH (Debian: apt-get install chromium)",
            file=sys.stderr,
        )
        return 2
    width, height = (int(v) for v in args.size.split(","))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    screenshot(browser, report, args.out, width, height)
    shrink(args.out)
    print(f"{args.out} ({args.out.stat().st_size:,} bytes) from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
