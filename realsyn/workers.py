"""What every model stage's Python worker does before its first batch: pick the task's device, keep zip caches.

Shared by the embed and generate stages, and by clustering and retrieval for their vector products: the device
comes from the GPU Spark assigned to the running task (``TaskContext.resources()["gpu"]``), mapped through
CUDA_VISIBLE_DEVICES (udfs.models.pick_device); on a CPU the task uses as many torch threads as it has cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark import TaskContext

from udfs.models import DevicePolicy


def task_device(policy: DevicePolicy, key: str = "embed.device") -> str:
    """The device of the running task: the GPU Spark assigned to it, else CPU (see udfs.models.pick_device);
    ``key`` is the config key named when ``policy`` is "cuda" and the task has no CUDA device."""
    import torch

    from udfs.models import pick_device

    ctx = TaskContext.get()
    resources = ctx.resources() if ctx is not None else {}
    gpu = resources.get("gpu")
    addresses = list(gpu.addresses) if gpu is not None else []
    try:
        device = pick_device(policy, addresses, torch.cuda.is_available(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    except RuntimeError as e:
        raise RuntimeError(f"{key}: {e}") from None
    if device == "cpu" and ctx is not None:
        torch.set_num_threads(max(1, ctx.cpus()))
    return device


def array_device(policy: DevicePolicy, key: str) -> str | None:
    """Where the running task's vector products go (k-means, retrieval): its GPU as a torch device, or None for
    numpy on its CPU. "cpu" never imports torch; "auto" and "cuda" resolve as :func:`task_device` does."""
    if policy == "cpu":
        return None
    device = task_device(policy, key)
    return None if device == "cpu" else device


_ZIP_STAMPS: dict[str, tuple[int, int]] = {}


def keep_zip_directories() -> None:
    """Stop a Python worker from re-reading every zip and jar on ``sys.path`` before each task (idempotent).

    PySpark's worker calls ``importlib.invalidate_caches()`` at the start of every task, and on Python 3.11 each
    ``zipimporter`` then re-parses its whole archive directory: pyspark.zip, the spark-core jar and every
    ``--packages`` jar (Delta), about 9,000 entries and 35-60 ms of one core per task before its first row (a
    few percent of a GPU task). Here an archive whose size and modification time are unchanged keeps the
    directory it already has; a changed or new archive is re-read as before.
    """
    import zipimport

    original = zipimport.zipimporter.invalidate_caches
    if getattr(original, "_keeps_unchanged", False):
        return

    def stamp(archive: str) -> tuple[int, int] | None:
        try:
            st = Path(archive).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def invalidate_caches(self: zipimport.zipimporter) -> None:
        now = stamp(self.archive)
        if now is not None and _ZIP_STAMPS.get(self.archive) == now:
            return
        original(self)
        if now is not None:
            _ZIP_STAMPS[self.archive] = now

    invalidate_caches._keeps_unchanged = True  # type: ignore[attr-defined]
    for finder in list(sys.path_importer_cache.values()):
        if isinstance(finder, zipimport.zipimporter):  # just re-read by this task's invalidation
            now = stamp(finder.archive)
            if now is not None:
                _ZIP_STAMPS[finder.archive] = now
    zipimport.zipimporter.invalidate_caches = invalidate_caches  # type: ignore[method-assign]
