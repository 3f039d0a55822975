"""What a run shows and keeps: the console (a progress bar of Spark's tasks, summaries wrapped to the terminal's
width, rows per table by layer) and the log files (Python's and Spark's log of a run in one file)."""

from __future__ import annotations

import logging
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from pyspark import SparkContext

from realsyn.config_sections import Config
from realsyn.lock import lock_path

log = logging.getLogger(__name__)

CONSOLE_WIDTH = 120  # what the pipeline prints fits a terminal this wide


def task_time_share(sc: SparkContext, start: datetime, end: datetime) -> float | None:
    """The task time of the Spark stages submitted between ``start`` and ``end`` (their executorRunTime, from
    Spark's status store, which the UI shows and which is kept with the UI off) over the time of the task slots in
    that span: (end - start) x the tasks the active executors run at once (their ``maxTasks`` at the end). None when
    the store cannot be read; stages beyond its retention (``spark.ui.retainedStages``, 1,000) are not counted."""
    try:
        store = sc._jsc.sc().statusStore()
        gateway: Any = sc._gateway
        no_quantiles = gateway.new_array(gateway.jvm.double, 0)
        stages = store.stageList(None, False, False, no_quantiles, getattr(store, "stageList$default$5")())
        lo, hi = start.timestamp() * 1000, end.timestamp() * 1000
        task_ms = 0
        it = stages.iterator()
        while it.hasNext():
            stage = it.next()
            submitted = stage.submissionTime()
            if submitted.isDefined() and lo <= submitted.get().getTime() <= hi:
                task_ms += stage.executorRunTime()
        slots = 0
        executors = store.executorList(True).iterator()
        while executors.hasNext():
            slots += executors.next().maxTasks()
    except Exception:  # a Spark without this (private) API, or the JVM going away
        log.debug("Spark's status store could not be read", exc_info=True)
        return None
    slots_ms = (hi - lo) * slots
    return task_ms / slots_ms if slots_ms > 0 else None


class SparkProgress:
    """Polls Spark's status tracker while a stage runs: a progress bar of its tasks (tqdm, on ``stream`` when it is
    a terminal), counting the tasks of every Spark stage seen since the start."""

    def __init__(self, sc: SparkContext, label: str, stream: TextIO, interval_s: float = 0.25) -> None:
        self.sc = sc
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self._tasks: dict[int, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="spark-progress", daemon=True)
        self._bar: Any = None

    def _poll(self) -> None:
        tracker = self.sc.statusTracker()
        while not self._stop.wait(self.interval_s):
            try:
                active = tracker.getActiveStageIds()
                for sid in active:
                    info = tracker.getStageInfo(sid)
                    if info is not None:
                        self._tasks[sid] = (info.numTasks, info.numCompletedTasks)
                for sid, (total, _) in list(self._tasks.items()):
                    if sid not in active:
                        self._tasks[sid] = (total, total)
            except Exception:  # the JVM is going away (a failing stage, the end of the run)
                log.debug("status tracker poll failed", exc_info=True)
                continue
            if self._bar is not None and self._tasks:
                self._bar.total = sum(t for t, _ in self._tasks.values())
                self._bar.n = sum(d for _, d in self._tasks.values())
                self._bar.refresh()

    def __enter__(self) -> SparkProgress:
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=self.label, total=0, unit=" tasks", file=self.stream, leave=False, dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.close()


def log_dir(cfg: Config) -> Path:
    """Where run logs go: ``pipeline.log_dir``, else ``<storage.root>/_logs`` for a local root, else ./realsyn-logs."""
    if cfg.pipeline.log_dir is not None:
        return Path(cfg.pipeline.log_dir)
    lock = lock_path(cfg.storage)
    return lock.parent / "_logs" if lock is not None else Path("realsyn-logs")


@contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Send Python logging (INFO and up) and warnings to ``path`` only, for the duration."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers, root.level = saved[0], saved[1]
        handler.close()


def table_lines(tables: dict[str, int], width: int = CONSOLE_WIDTH) -> list[str]:
    """Rows per table, a line (wrapped at ``width``) per layer in pipeline order, the empty tables on one more."""
    lines = ["rows per table:"]
    for layer in ("bronze", "silver", "gold"):
        items = [f"{t.partition('.')[2]} {n:,}" for t, n in tables.items() if t.startswith(f"{layer}.") and n]
        if items:
            lines += wrap(", ".join(items), width, f"  {layer:<8}", 10)
    empty = [t for t, n in tables.items() if not n]
    if empty:
        lines += wrap(", ".join(empty), width, "  empty:  ", 10)
    return lines


def indent(text: str, width: int = CONSOLE_WIDTH) -> str:
    """A stage's summary under its line, wrapped to the console's width (paths are not broken)."""
    return "\n".join(part for line in text.splitlines() for part in wrap(line, width, 6, 8))


def wrap(text: str, width: int, indent: int | str, hang: int) -> list[str]:
    first = indent if isinstance(indent, str) else " " * indent
    return textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=" " * hang, break_long_words=False, break_on_hyphens=False
    )


def say(console: TextIO, text: str) -> None:
    console.write(text + "\n")
    console.flush()
    log.info("console: %s", text)
