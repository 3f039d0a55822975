"""A stand-in for Spark's TaskContext, for tests of what a task does with the resources Spark gave it."""

from __future__ import annotations


class FakeTask:
    """The TaskContext of a task Spark gave the GPU with physical index ``gpu`` (None: no GPU) and ``cores`` CPUs."""

    def __init__(self, gpu: str | None, cores: int = 1) -> None:
        self.gpu = gpu
        self.cores = cores

    def resources(self) -> dict[str, object]:
        return {} if self.gpu is None else {"gpu": type("Gpu", (), {"addresses": [self.gpu]})()}

    def cpus(self) -> int:
        return self.cores
