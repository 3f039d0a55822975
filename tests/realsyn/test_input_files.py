"""Listing the ingest inputs' files, handing them to Spark, and finding a file again in a read's error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from realsyn.config import ConfigError
from realsyn.config_sections import IngestInput
from realsyn.input_files import failed_file, list_input_files, path_groups


def test_folders_are_listed_recursively_without_hidden_files_and_links_back_up(
    spark: SparkSession, tmp_path: Path
) -> None:
    dump = tmp_path / "dump"
    for name in ("a.jsonl", ".hidden.jsonl", "_SUCCESS", "sub/b.jsonl", "_temporary/c.jsonl", ".git/d.jsonl"):
        (dump / name).parent.mkdir(parents=True, exist_ok=True)
        (dump / name).write_text("{}\n")
    (dump / "sub" / "loop").symlink_to("..")  # back to the input: listed once, not once per level
    (dump / "up").symlink_to("..")  # to the folder holding the input
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "e.jsonl").write_text("{}\n")
    (dump / "linked").symlink_to(tmp_path / "elsewhere")  # a link to another folder is followed
    single = tmp_path / "one file.jsonl"
    single.write_text("{}\n")
    inputs = [
        IngestInput(path=str(dump), layout="mmc4", source="m"),
        IngestInput(path=str(single), layout="mmc4", source="s"),
    ]
    assert list_input_files(spark, inputs) == [
        [f"file:{dump}/a.jsonl", f"file:{dump}/linked/e.jsonl", f"file:{dump}/sub/b.jsonl"],
        [f"file:{single}"],
    ]


def test_a_missing_input_fails_naming_its_key(spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    inputs = [
        IngestInput(path=str(tmp_path / "a.jsonl"), layout="mmc4", source="m"),
        IngestInput(path=str(tmp_path / "nowhere"), layout="obelics", source="o"),
    ]
    with pytest.raises(ConfigError, match=r"ingest\.inputs\[1\]\.path: no such file or folder: .*nowhere"):
        list_input_files(spark, inputs)


def test_glob_characters_are_escaped_and_a_name_with_a_colon_among_them_is_read_alone() -> None:
    files = [
        "file:/d/plain.jsonl",
        "file:/d/{a}.jsonl",
        "file:/d/c:d.jsonl",
        "file:/d/[p]:q.jsonl",
        "file:/d/x*?.jsonl",
    ]
    assert path_groups(files) == [
        (["file:/d/plain.jsonl", r"file:/d/\{a\}.jsonl", "file:/d/c:d.jsonl", r"file:/d/x\*\?.jsonl"], {}),
        (["file:/d/[p]:q.jsonl"], {"__globPaths__": "false"}),
    ]
    assert path_groups(["file:/d/[p]:q.jsonl"]) == [(["file:/d/[p]:q.jsonl"], {"__globPaths__": "false"})]
    assert path_groups([]) == []


def test_the_file_a_read_error_names_is_found_by_path_or_uri_the_longest_first() -> None:
    files = ["file:/in/a b.jsonl", "file:/in/a.jsonl", "file:/in/a.jsonl.gz"]
    assert failed_file(RuntimeError("EOFException reading file:///in/a%20b.jsonl"), files) == "file:/in/a b.jsonl"
    assert failed_file(RuntimeError("Caused by: /in/a.jsonl.gz is truncated"), files) == "file:/in/a.jsonl.gz"
    assert failed_file(RuntimeError("Executor lost"), files) is None
