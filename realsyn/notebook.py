"""Run the dataset notebook headless on a lakehouse and keep the executed copy beside the report.

``notebooks/dataset.ipynb`` reads the tables with ``deltalake`` from the folder named by ``REALSYN_LAKEHOUSE``;
here it runs in a Jupyter kernel (nbclient) with that variable set, and the copy with its outputs (funnel, balance
plots, sample pairs) is written to ``<report folder>/dataset.ipynb``. Needs the ``dev`` extra (nbclient, ipykernel).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "dataset.ipynb"
LAKEHOUSE_VARIABLE = "REALSYN_LAKEHOUSE"

# nbclient's logger: its progress lines (INFO) are left out of a job's console; warnings and errors still show.
client_log = logging.getLogger(f"{__name__}.client")
client_log.setLevel(logging.WARNING)


class NotebookError(RuntimeError):
    """A cell of the notebook raised; the message names the cell and the error."""


def execute_notebook(lakehouse: Path, output: Path, notebook: Path = NOTEBOOK, timeout_s: int = 600) -> Path:
    """Execute ``notebook`` on the tables under ``lakehouse`` and write the executed copy to ``output``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    before = os.environ.get(LAKEHOUSE_VARIABLE)
    os.environ[LAKEHOUSE_VARIABLE] = str(lakehouse)  # the kernel inherits this process's environment
    try:
        resources = {"metadata": {"path": str(output.parent)}}
        client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources=resources, log=client_log)
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.execute()
        except CellExecutionError as e:
            raise NotebookError(f"{notebook.name} failed on {lakehouse}: {str(e).splitlines()[-1]}") from None
    finally:
        if before is None:
            del os.environ[LAKEHOUSE_VARIABLE]
        else:
            os.environ[LAKEHOUSE_VARIABLE] = before
    nbformat.write(nb, output)
    return output
