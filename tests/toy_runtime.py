"""A runtime added in one module: ONNX's reference evaluator (numpy), registered as ``toy``.

Nothing else in subtune-edge changes for it: ``load_export(runtime="toy")``, ``bench --backend toy``
and ``export --verify-with toy`` read the registry. ARCHITECTURE.md shows this file as the example.
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx
from onnx.reference import ReferenceEvaluator

from subtune_edge.runtime import ListedRunner, RuntimeSpec, register_runtime


class ReferenceRunner(ListedRunner):
    """An ``.onnx`` file run by :class:`onnx.reference.ReferenceEvaluator` (slow, exact, numpy only)."""

    name = "toy"
    _handles = ("session",)

    def __init__(self, path: str | Path):
        super().__init__()
        self.path, self.session = Path(path), None

    def _activate(self) -> None:
        model = onnx.load(str(self.path))
        self.session = ReferenceEvaluator(model)
        weights = {i.name for i in model.graph.initializer}
        self._inputs = [i.name for i in model.graph.input if i.name not in weights]
        self._outputs = [o.name for o in model.graph.output]

    def _stage(self, feed):
        return feed

    def _run(self, staged) -> float:
        start = time.perf_counter()
        self._last = dict(zip(self._outputs, self.session.run(None, staged)))
        return (time.perf_counter() - start) * 1e3

    def _fetch(self):
        return dict(self._last)


SPEC = register_runtime(RuntimeSpec(
    "toy", family="toy", consumes="onnx", factory=lambda source, threads=None, **options: ReferenceRunner(source),
    install="nothing: numpy and onnx are dependencies", precisions=("fp32",),
    description="ONNX's reference evaluator (numpy): exact and slow"), replace=True)
