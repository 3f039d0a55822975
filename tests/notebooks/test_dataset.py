"""notebooks/dataset.ipynb runs headless (nbclient) on a tiny lakehouse written with deltalake, no Spark."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import nbformat
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from PIL import Image

from realsyn.notebook import execute_notebook


def jpeg(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
    return buf.getvalue()


def tiny_lakehouse(root: Path) -> None:
    # Written in alphabetical order of stage, as the old notebook showed it; pipeline order puts ingest first.
    write_deltalake(
        str(root / "gold" / "funnel"),
        pd.DataFrame(
            {
                "stage": ["balance", "balance", "extract_images", "ingest", "ingest"],
                "model_id": pd.array([None] * 5, "string"),
                "step_index": pd.array([0, 1, 0, 0, 1], "int32"),
                "step": ["synthetic_text", "scale[one]", "quality", "documents", "image_refs"],
                "rows_in": [4, 3, 9, 5, 12],
                "rows_out": [3, 2, 4, 5, 9],
                "rows_rejected": [1, 1, 5, 0, 3],
            }
        ),
    )
    ids = ["img_a", "img_b", "img_c"]
    write_deltalake(
        str(root / "gold" / "dataset"),
        pd.DataFrame(
            {
                "image_id": ids,
                "raw_image_url": [f"http://x/{i}.jpg" for i in ids],
                "text1": ["a dog on sand", "a kite", "a boat"],
                "text2": ["t2a", "t2b", None],
                "text3": ["t3a", None, None],
                "syn_text": ["SYNTHETIC-A", "SYNTHETIC-B", "SYNTHETIC-C"],
                "leaf_id": [0, 0, 1],
                "scale_one": [True, False, True],
            }
        ),
    )
    write_deltalake(
        str(root / "gold" / "dataset_rejects"),
        pd.DataFrame({"image_id": ["img_d"], "reason": ["no_synthetic_text"], "detail": ["none"]}),
    )
    images = pa.table({"image_id": ids, "content": pa.array([jpeg(c) for c in ("red", "green", "blue")], pa.binary())})
    write_deltalake(str(root / "silver" / "images"), images)


def test_notebook_runs_on_a_tiny_lakehouse(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny_lakehouse(tmp_path / "lake")
    with caplog.at_level(logging.INFO):  # as a job's logging is set: nbclient's progress stays off the console
        executed = execute_notebook(tmp_path / "lake", tmp_path / "report" / "dataset.ipynb")
    assert not [r for r in caplog.records if r.levelno < logging.WARNING], caplog.text
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("data", {}).get("text/html", "")
        for o in outputs
    )
    assert str(tmp_path / "lake") in text
    assert "3 rows in gold.dataset" in text
    assert "SYNTHETIC-B" in text and "no_synthetic_text" in text
    funnel = next(o["data"]["text/plain"] for o in outputs if "step_index" in o.get("data", {}).get("text/plain", ""))
    first_block = funnel.split("\n\n")[0]  # pandas wraps wide frames into blocks of columns
    steps = [line.split()[3] for line in first_block.splitlines()[1:]]  # index, stage, step_index, step, ...
    assert steps == ["documents", "image_refs", "quality", "synthetic_text", "scale[one]"], funnel
    assert "model_id" not in funnel  # a model column only where some stage names a model
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # funnel, cluster sizes, sample images
