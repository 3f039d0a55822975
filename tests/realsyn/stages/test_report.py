"""The report page: its plots and sample images load in headless Chromium, and it shows the tables' figures."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from realsyn.stages.balance import run_balance
from realsyn.config import Config
from realsyn.stages.report import run_report
from realsyn.tables import Lakehouse
from tests.gold_data import Img, write_inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Records, after the load event, every image's src and natural width (0: it did not load) on the <body>.
PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-images', JSON.stringify("
    "[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]))));</script>"
)


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def loaded_images(page: Path) -> list[tuple[str, int]]:
    """(src, naturalWidth) of every <img> of ``page`` as Chromium loaded it from disk."""
    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--dump-dom", probe.as_uri())
    probe.unlink()
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, "the probe did not run"
    return [(src, int(w)) for src, w in json.loads(html.unescape(found.group(1)))]


def make_cfg(lakehouse: Lakehouse) -> Config:
    scales: dict[str, Any] = {"one": {"cap": 1}}
    return Config.model_validate(
        {
            "storage": {"root": lakehouse.storage.root},
            "embed": {"model": "m"},
            "balance": {"scales": scales},
            "report": {"sample_images": 3},
        }
    )


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package `chromium`) is not installed")
def test_report_page_loads_every_image(lakehouse: Lakehouse) -> None:
    cfg = make_cfg(lakehouse)
    imgs = [
        Img(f"i{n}", [("d", n, f"http://x/{n}.jpg")], n % 2, [f"text one {n}", "two", "three"], f"syn <{n}>", seed=n)
        for n in range(5)
    ]
    write_inputs(lakehouse, cfg, imgs, leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    summary = run_report(lakehouse, cfg)
    page = Path(summary.page)
    assert page == Path(lakehouse.storage.root or "").resolve() / "report" / "index.html"
    assert summary.rows == 5 and summary.sample_images == 3 and summary.scales == (("one", 2, 1.0),)
    text = page.read_text(encoding="utf-8")
    assert "random weights" in text and "syn &lt;" in text  # texts are escaped
    assert "<td>balance</td><td>synthetic_text</td><td>5</td><td>5</td><td>0</td>" in text

    images = loaded_images(page)
    srcs = [src for src, _ in images]
    assert srcs[:3] == ["funnel.png", "texts_per_image.png", "cluster_sizes.png"]
    assert len([s for s in srcs if s.startswith("samples/")]) == 3
    assert all(width > 0 for _, width in images), images
    # The probe can fail: a missing file reports width 0.
    (page.parent / "cluster_sizes.png").rename(page.parent / "moved.png")
    assert dict(loaded_images(page))["cluster_sizes.png"] == 0
    (page.parent / "moved.png").rename(page.parent / "cluster_sizes.png")

    shot = page.parent / "screenshot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # not a blank page
