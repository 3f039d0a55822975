"""What a model stage's Python worker does before its first batch (realsyn.workers): the task's device from the GPU
Spark gave it, its torch threads on a CPU, and zip directories kept while their archives are unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyspark import TaskContext

from realsyn.workers import array_device, task_device
from tests.support.tasks import FakeTask


def test_a_task_runs_on_the_gpu_spark_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spark gave the task physical GPU 3; the process sees GPUs 1 and 3, so GPU 3 is its cuda:1
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: FakeTask("3")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert task_device("auto") == task_device("cuda") == "cuda:1"
    assert array_device("auto", "retrieve.device") == "cuda:1"
    assert array_device("cpu", "retrieve.device") is None  # numpy on the CPU, whatever the task holds


def test_a_cpu_task_uses_a_torch_thread_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: FakeTask(None, cores=3)))
    assert task_device("auto") == "cpu"
    assert array_device("auto", "cluster_sentences.device") is None  # numpy (and faiss) on the CPU
    assert threads == [3, 3]
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: None))  # the driver: no task, threads untouched
    assert task_device("auto") == "cpu"
    assert threads == [3, 3]


def test_device_cuda_without_a_gpu_names_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: FakeTask(None)))
    with pytest.raises(RuntimeError, match=r"^cluster_images\.device: device is 'cuda' but no CUDA device"):
        array_device("cuda", "cluster_images.device")
    with pytest.raises(RuntimeError, match=r"^embed\.device: device is 'cuda' but no CUDA device"):
        task_device("cuda")


ZIP_CHECK = """
import importlib, sys, time, zipfile, zipimport
from realsyn.workers import keep_zip_directories

archive = sys.argv[1]
with zipfile.ZipFile(archive, "w") as z:
    z.writestr("first_mod.py", "X = 1")
sys.path.insert(0, archive)
import first_mod

reads = []
read_directory = zipimport._read_directory
zipimport._read_directory = lambda path: reads.append(path) or read_directory(path)
importlib.invalidate_caches()
keep_zip_directories()
keep_zip_directories()
importlib.invalidate_caches()
importlib.invalidate_caches()
unchanged = len(reads)
time.sleep(0.01)
with zipfile.ZipFile(archive, "a") as z:
    z.writestr("second_mod.py", "Y = 2")
importlib.invalidate_caches()
import second_mod

print(unchanged, len(reads), first_mod.X, second_mod.Y)
"""


def test_zip_directories_are_reread_only_when_the_archive_changes(tmp_path: Path) -> None:
    # In a fresh interpreter: the patch is process-wide, as it is in a Spark Python worker.
    out = subprocess.run(
        [sys.executable, "-c", ZIP_CHECK, str(tmp_path / "lib.zip")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    # One read before the patch; none while the archive is unchanged; one after it changed.
    assert out.stdout.split() == ["1", "2", "1", "2"]
