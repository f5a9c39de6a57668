"""What a benchmark run measures: the :class:`BenchConfig` (backends, batch sizes, precisions); the
:class:`~subtune_edge.runtime.timing.Budget` that says when one measurement point stops lives with the
timing loop in the runtime layer (export uses it too, to time plain against grouped branches)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from subtune_edge.errors import SubtuneError
from subtune_edge.runtime.timing import Budget, positive_int


@dataclass
class BenchConfig:
    """What to measure: which backends and batch sizes, on how many of the export's tasks.

    Recorded as ``settings`` in results.json, so a result says how it was taken.
    """

    backends: list[str] = field(default_factory=lambda: ["ort-cpu"], metadata={
        "help": "registered runtimes (subtune_edge.runtime.runtime_names(): ort-cpu, ort-cuda, ort-trt, trt, "
                "openvino, torch-cpu[+compile], torch-cuda[+compile|+graphs], a plug-in's); one missing here is "
                "skipped with the reason"})
    batch_sizes: list[int] = field(default_factory=lambda: [1], metadata={"help": "positive batch sizes"})
    threads: int | None = field(default=None, metadata={"help": "intra-op threads per session; None: runtime's"})
    budget: Budget = field(default_factory=Budget, metadata={"help": "when each measurement point stops"})
    max_tasks: int | None = field(default=None, metadata={"help": "measure k = 1..N for the first N tasks only"})
    seed: int = field(default=0, metadata={"help": "seed of the random input batch"})
    precisions: list[str] = field(default_factory=lambda: ["fp32"], metadata={
        "help": "ONNX files to measure, each fused vs separate: fp32 (model.onnx, separate/<task>.onnx), int8 "
                "(model.int8.onnx, separate/<task>.int8.onnx); ONNX backends only"})

    def check(self) -> BenchConfig:
        """Refuse settings no measurement can be taken with, naming the field.

        Returns:
            The config itself.

        Raises:
            SubtuneError: no backend, a batch size that is not a positive integer, ``threads`` or
                ``max_tasks`` below 1, or a bad :class:`Budget`.
        """
        if not self.backends or not all(isinstance(b, str) and b for b in self.backends):
            raise SubtuneError(f"{{param}} must name at least one backend, got {self.backends!r}", param="backends")
        if not self.batch_sizes or not all(positive_int(b) for b in self.batch_sizes):
            raise SubtuneError(f"{{param}} must be positive integers, got {self.batch_sizes!r}", param="batch_sizes")
        for name in ("threads", "max_tasks"):
            value = getattr(self, name)
            if value is not None and not positive_int(value):
                raise SubtuneError(f"{{param}} must be a positive integer, got {value!r}", param=name)
        if not self.precisions or any(p not in PRECISIONS for p in self.precisions):
            raise SubtuneError(f"{{param}} must be among {', '.join(PRECISIONS)}, got {self.precisions!r}",
                               param="precisions")
        self.budget.check()
        return self

    def to_json(self) -> dict:
        """The config as JSON types (results.json's ``settings``)."""
        return asdict(self)


#: per precision: the fused file, and the manifest field naming each task's separate copy
PRECISIONS = {"fp32": ("model.onnx", "separate"), "int8": ("model.int8.onnx", "separate_int8")}
#: where the measurement scripts write by default: relative to the working directory, so that a run from
#: the checkout updates the committed ``benchmarks/results/`` (and an installed package never writes into itself)
RESULTS_DIR = Path("benchmarks") / "results"
