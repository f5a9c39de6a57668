"""A runner by backend name, as the command line and the benchmark suites spell backends."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import BACKENDS, Runner, missing_reason
from .onnxruntime import OrtRunner
from .openvino import OpenVinoRunner
from .tensorrt import TrtRunner
from .torch import TorchRunner


def make_runner(backend: str, onnx_path: str | Path | None = None, *, module=None, output_names=None,
                plan: str | Path | None = None, threads: int | None = None, **options) -> Runner:
    """The runner for a backend name (see :data:`BACKENDS`).

    Args:
        backend: ``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``trt``, ``torch-cpu``, ``torch-cuda`` or ``openvino``.
        onnx_path: the ONNX file, for the ``ort-*`` backends and ``openvino``.
        module: the PyTorch module, for the ``torch-*`` backends.
        output_names: names of the module's outputs, for the ``torch-*`` backends.
        plan: the TensorRT engine file, for ``trt``.
        threads: CPU threads (ONNX Runtime intra-op, OpenVINO's ``INFERENCE_NUM_THREADS``, or torch's).
        **options: passed on to the runner's constructor.

    Returns:
        An inactive runner (activate it, or use it as a context manager).

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
    """
    if backend in ("ort-cpu", "ort-cuda", "ort-trt"):
        return OrtRunner(onnx_path, backend.removeprefix("ort-"), threads=threads, **options)
    if backend == "trt":
        return TrtRunner(plan)
    if backend == "openvino":
        return OpenVinoRunner(onnx_path, threads=threads, **options)
    if backend in ("torch-cpu", "torch-cuda"):
        if threads:
            torch.set_num_threads(threads)
        return TorchRunner(module, output_names, device="cuda" if backend == "torch-cuda" else "cpu", **options)
    raise ValueError(missing_reason(backend) or f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
