"""The steps of an export, in the order :func:`~subtune_edge.exporters.export_tasks` runs them.

Each step is one module with a :class:`~.base.Step` record (``STEP``): whether the options want it,
what it refuses before any work, and what it writes. The pipeline checks every wanted step first
(a missing TensorRT or OpenVINO costs nothing), then runs them in :data:`STEPS` order on one
:class:`~.base.ExportContext`:

1. ``fp32`` — ``model.onnx`` and the ``separate/`` copies;
2. ``branches`` — plain or grouped branches, whichever runs faster on the target (``branches="auto"``);
3. ``fp16`` — ``model.fp16.onnx``;
4. ``int8`` — ``model.int8.onnx`` (and its separate copies), calibrated and gated per task;
5. ``ort`` — the ``.ort`` twins and ``required_operators.config``;
6. ``verify`` — every file against the PyTorch task models, also on ``verify_with`` runtimes;
7. ``modular`` — ``trunk.onnx`` and ``branches/``, verified;
8. ``trt`` — ``model.plan``, verified where TensorRT runs;
9. ``manifest`` — the typed manifest, hashed, sealed and written.
"""

from .base import ExportContext, Step
from .branches import STEP as BRANCHES
from .fp16 import STEP as FP16
from .fp32 import STEP as FP32
from .int8 import STEP as INT8
from .manifest import STEP as MANIFEST
from .modular import STEP as MODULAR
from .ort import STEP as ORT
from .trt import STEP as TRT
from .verify import STEP as VERIFY

STEPS: tuple[Step, ...] = (FP32, BRANCHES, FP16, INT8, ORT, VERIFY, MODULAR, TRT, MANIFEST)

__all__ = ["STEPS", "ExportContext", "Step"]
