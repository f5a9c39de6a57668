"""OpenVINO: an ONNX file compiled for Intel CPUs (and iGPU / NPU where OpenVINO sees one).

``openvino.Core().compile_model(path, device, config)`` reads the ``.onnx`` file directly (no
conversion step, no IR files next to the export) and keeps the dynamic batch dimension; outputs
are looked up by their ONNX names, so an export's task names work unchanged::

    with OpenVinoRunner("out/model.onnx", threads=2) as runner:
        logits = runner.infer({"input": batch})      # {"digit": array[N, 10], ...}

The compile config is stated, never left implicit, so results say how they were taken
(:meth:`OpenVinoRunner.settings`): ``PERFORMANCE_HINT`` ``LATENCY`` (one stream, a batch at a
time: what an app that answers one request at a time wants), ``INFERENCE_NUM_THREADS`` when
``threads`` is given, and ``INFERENCE_PRECISION_HINT`` ``f32`` by default: on CPUs with AMX or
on ARM, OpenVINO's default would run an fp32 file in bf16 / fp16 and its outputs would no longer
match the file's precision. A missing OpenVINO is a
:class:`~subtune_edge.errors.RuntimeMissingError` naming ``pip install 'subtune-edge[openvino]'``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from .base import ListedRunner
from .registry import RuntimeSpec, needs_module, package_version, require

#: the install line for OpenVINO, in the message of every place that needs it
OPENVINO_INSTALL = "pip install 'subtune-edge[openvino]'"
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class OpenVinoRunner(ListedRunner):
    """One ``.onnx`` file compiled by OpenVINO and run with one infer request.

    Args:
        path: the ``.onnx`` file (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``, ``separate/*.onnx``).
        device: OpenVINO's device name: ``CPU`` (default), ``GPU``, ``NPU`` or ``AUTO``.
        threads: ``INFERENCE_NUM_THREADS``; ``None`` lets OpenVINO choose (all physical cores).
        hint: ``PERFORMANCE_HINT``: ``LATENCY`` (default), ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT``.
        precision: ``INFERENCE_PRECISION_HINT``: ``f32`` (default: compute at the file's precision, fp16
            files keep their fp16 weights), or ``None`` for the device's default (bf16 on AMX, f16 on ARM).
        config: further compile properties, passed to ``compile_model`` as given.

    Raises:
        ValueError: an unknown ``hint``.
    """

    name = "openvino"
    _handles = ("_request", "compiled")

    def __init__(self, path: str | Path, device: str = "CPU", threads: int | None = None, hint: str = "LATENCY",
                 precision: str | None = "f32", config: dict | None = None):
        super().__init__()
        if hint not in HINTS:
            raise ValueError(f"unknown OpenVINO performance hint '{hint}'; choose from {', '.join(HINTS)}")
        self.path, self.device, self.threads, self.hint = Path(path), device, threads, hint
        self.precision, self.extra = precision, dict(config or {})
        self.compiled = None
        self._request = None

    def config(self) -> dict[str, str]:
        """The properties given to ``compile_model`` (all as strings, as OpenVINO documents them)."""
        out = {"PERFORMANCE_HINT": self.hint}
        if self.threads:
            out["INFERENCE_NUM_THREADS"] = str(int(self.threads))
        if self.precision:
            out["INFERENCE_PRECISION_HINT"] = self.precision
        out.update({str(k): str(v) for k, v in self.extra.items()})
        return out

    def settings(self) -> dict:
        """What the compiled model runs with, as OpenVINO reports it (for benchmark reports).

        Returns:
            ``{"device", "openvino", "config", "reported": {property: value}}``; ``reported`` is
            empty until the runner is active.
        """
        reported = {}
        if self.compiled is not None:
            for key in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT"):
                try:
                    value = self.compiled.get_property(key)
                    reported[key] = value.to_string() if hasattr(value, "to_string") else str(value)
                except Exception:  # noqa: BLE001 - a device may not report every property
                    continue
        return {"device": self.device, "openvino": _version(), "config": self.config(), "reported": reported}

    def _activate(self) -> None:
        require("openvino")
        import openvino as ov  # optional: OpenVINO installs only with the 'openvino' extra

        self._ov = ov
        core = ov.Core()
        self.compiled = core.compile_model(str(self.path), self.device, self.config())
        self._request = self.compiled.create_infer_request()
        # a port carries every name its tensor had; the ONNX graph's own output names are the ones apps use
        graph = onnx.load(str(self.path), load_external_data=False).graph
        self._inputs = [_onnx_name(p, [i.name for i in graph.input]) for p in self.compiled.inputs]
        self._outputs = [_onnx_name(p, [o.name for o in graph.output]) for p in self.compiled.outputs]

    def _stage(self, feed):
        # the request reads the caller's arrays in place (shared memory), as an app would hand them over
        for name, array in feed.items():
            self._request.set_tensor(name, self._ov.Tensor(array, shared_memory=True))
        return feed  # keep the arrays alive while the request refers to them

    def _run(self, staged) -> float:
        start = time.perf_counter()
        self._request.infer()
        return (time.perf_counter() - start) * 1e3

    def _fetch(self) -> dict[str, np.ndarray]:
        return {name: np.array(self._request.get_tensor(name).data, copy=True) for name in self._outputs}


def _onnx_name(port, names: list[str]) -> str:
    """The ONNX name among a port's tensor names (an fp16 graph's Cast output also carries the cast's name)."""
    own = port.get_names()
    return next((n for n in names if n in own), port.get_any_name())


_version = package_version("openvino")


def _factory(source, threads: int | None = None, **options) -> OpenVinoRunner:
    return OpenVinoRunner(source, threads=threads, **options)


RUNTIMES = (
    RuntimeSpec("openvino", "openvino", "onnx", _factory, needs_module("openvino", OPENVINO_INSTALL,
                                                                       "OpenVINO's Python package"),
                install=OPENVINO_INSTALL, version=_version,
                description="OpenVINO, CPU device, latency hint, f32 inference precision"),
)
