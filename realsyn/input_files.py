"""The data files of the ingest inputs: listed once (folders recursively), handed to Spark so that it reads each
exactly once, and found again in the error of a read that failed on one of them."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from realsyn.config import ConfigError
from realsyn.config_sections import IngestInput

# Local files are read without Hadoop's checksum layer: it names a file's checksum ".<name>.crc", which is not a
# valid path when the name holds ":" (read as a URI scheme), and input dumps have no checksum files anyway.
READ_OPTIONS = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem", "fs.file.impl.disable.cache": "true"}


def list_input_files(spark: SparkSession, inputs: Sequence[IngestInput]) -> list[list[str]]:
    """The data files of every input (folders listed recursively, hidden and ``_`` files skipped); fail before
    any work when an input path does not exist."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    listed: list[list[str]] = []
    for i, inp in enumerate(inputs):
        path = jvm.org.apache.hadoop.fs.Path(inp.path)
        fs = path.getFileSystem(hadoop_conf)
        matches = fs.globStatus(path)
        if matches is None or len(matches) == 0:
            raise ConfigError(f"ingest.inputs[{i}].path: no such file or folder: {inp.path}")
        files: list[str] = []
        for status in matches:
            folder = str(status.getPath().toString())
            if status.isFile():
                files.append(folder)
            elif status.getPath().toUri().getScheme() == "file":
                files.extend(f"{folder}/{name}" for name in _local_files(str(status.getPath().toUri().getPath())))
            else:
                found = fs.listFiles(status.getPath(), True)
                while found.hasNext():
                    child = str(found.next().getPath().toString())
                    if not any(part.startswith((".", "_")) for part in child[len(folder) :].split("/") if part):
                        files.append(child)
        listed.append(sorted(set(files)))
    return listed


def _local_files(root: str) -> list[str]:
    """The files under local folder ``root`` (hidden and ``_`` ones skipped), relative to it. Links are followed,
    but not into a folder already listed or one holding ``root``: a link such as ``loop -> ..`` would list the
    input again, once per level (and two of them without end)."""
    top = Path(root).resolve()
    seen = {top}
    files: list[str] = []

    def fail(error: OSError) -> None:
        raise error

    for folder, dirs, names in os.walk(root, onerror=fail, followlinks=True):
        relative = Path(folder).relative_to(root)
        files += [(relative / n).as_posix() for n in names if not n.startswith((".", "_"))]
        kept = []
        for d in sorted(dirs):
            real = (Path(folder) / d).resolve()
            if not d.startswith((".", "_")) and real not in seen and real not in top.parents:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
    return files


def failed_file(error: Exception, files: list[str]) -> str | None:
    """The input file an error of a Spark read names (the longest match), or None. Spark may name a file by its URI
    (``file:///a%20b.jsonl`` for ``file:/a b.jsonl``), so the error is searched with percent-escapes decoded too."""
    texts = (str(error), urllib.parse.unquote(str(error)))
    named = [f for f in files if any(f.split(":", 1)[-1] in text for text in texts)]
    return max(named, key=len) if named else None


_GLOB_CHARACTERS = re.compile(r"[{}\[\]*?\\]")


def path_groups(files: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """``files`` as groups of paths that Spark reads each file of once, with the reader options of each group.

    Spark reads a path holding any of ``{}[]*?\\`` as a glob pattern: a name with ``{}`` or ``[]`` would match no
    file (or another one), one with ``*`` or ``?`` other files too. Those characters are escaped. Hadoop's glob
    cannot give back a name that also holds ":" (it parses the name as a URI), so such a file is read alone with
    globbing off (Spark's ``__globPaths__``, right for one path only: with several it repeats them).
    """
    together: list[str] = []
    alone: list[tuple[list[str], dict[str, str]]] = []
    for path in files:
        scheme, colon, rest = path.partition(":")
        if not _GLOB_CHARACTERS.search(rest):
            together.append(path)
        elif ":" in rest:
            alone.append(([path], {"__globPaths__": "false"}))
        else:
            together.append(scheme + colon + _GLOB_CHARACTERS.sub(r"\\\g<0>", rest))
    return ([(together, {})] if together else []) + alone
