"""The dataset notebook, executed headless on the tables; the executed copy goes beside the report page."""

from __future__ import annotations

import sys
from pathlib import Path

from realsyn.cli import job_parser, parse
from realsyn.notebook import NotebookError, execute_notebook
from realsyn.stages.report import report_root


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-notebook --conf conf/local.yaml`` (tables under a local ``storage.root``)."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    if cfg.storage.root is None or "://" in cfg.storage.root:
        print("notebook: needs tables under a local storage.root (open the notebook in Databricks instead)")
        raise SystemExit(2)
    try:
        out = execute_notebook(Path(cfg.storage.root).resolve(), report_root(cfg) / "dataset.ipynb")
    except NotebookError as e:
        print(f"notebook: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"notebook: executed copy with its outputs at {out}")


if __name__ == "__main__":
    main()
