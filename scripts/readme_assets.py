"""Refresh what the README shows of a run: the console excerpt and the screenshot of the report page.

    .venv/bin/python scripts/readme_assets.py            # runs `make run`'s pipeline on a fresh demo lake
    .venv/bin/python scripts/readme_assets.py --console run.txt --page lakehouse/report/index.html

The excerpt is the pipeline's console (progress bars left out), placed in README.md between the markers
``<!-- console -->`` and ``<!-- /console -->``; the screenshot (headless Chromium) goes to docs/report.png. Both
come from a run of the demo corpus, whose models have random weights: the README says so beside them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCREENSHOT = REPO / "docs" / "report.png"
START, END = "<!-- console -->", "<!-- /console -->"
# Stages whose summary the excerpt keeps; the others show their line only.
KEEP = ("cluster_sentences", "retrieve", "balance", "report")


def run_demo(root: Path) -> tuple[str, Path]:
    """The console of a pipeline run of the demo corpus into ``root``, and its report page."""
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", "conf/local.yaml", "--set", f"storage.root={root}"]
    argv += ["--set", f"demo.output={root / 'raw' / 'demo'}"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout, root / "report" / "index.html"


def excerpt(console: str, root: str | None) -> str:
    """The console without progress bars and without the summaries of the stages not in KEEP, the lake's folder as
    ``lakehouse``."""
    lines = [line for line in console.replace("\r", "\n").splitlines() if line.strip() and "tasks/s" not in line]
    out: list[str] = []
    keep = True
    for line in lines:
        stage = re.match(r"\[\d+/\d+\] (\w+)", line)
        if stage:
            keep = stage.group(1) in KEEP
        if stage or keep or not line.startswith("      "):
            out.append(line)
    text = "\n".join(out)
    return text.replace(root, "lakehouse") if root else text


def screenshot(page: Path, path: Path) -> None:
    """A PNG of the top of ``page`` as headless Chromium renders it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("headless Chromium (Debian package `chromium`) is needed for the screenshot")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1500"]
    subprocess.run([*cmd, f"--screenshot={path}", page.as_uri()], capture_output=True, timeout=120, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--console", type=Path, help="a saved pipeline console (default: run the demo now)")
    ap.add_argument("--page", type=Path, help="the report page of that run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.console is None:
            console, page = run_demo(Path(tmp) / "lakehouse")
            root = str(Path(tmp) / "lakehouse")
        else:
            console, page, root = args.console.read_text(encoding="utf-8"), args.page, None
        readme = README.read_text(encoding="utf-8")
        if START not in readme or END not in readme:
            raise SystemExit(f"README.md has no {START} ... {END} block")
        head, rest = readme.split(START, 1)
        tail = rest.split(END, 1)[1]
        README.write_text(f"{head}{START}\n```\n{excerpt(console, root)}\n```\n{END}{tail}", encoding="utf-8")
        screenshot(page.resolve(), SCREENSHOT)
    print(f"README.md console excerpt and {SCREENSHOT.relative_to(REPO)} refreshed")


if __name__ == "__main__":
    main()
