"""Memory of ONNX Runtime sessions, measured in a fresh process.

Inside the benchmark process, memory freed by one measurement point is reused by the next, so
RSS growth there says little. A child process that only imports onnxruntime, creates the
sessions, runs each once and reports its RSS gives a clean number per side. This file is run as
a script (``python subtune_edge/bench/memprobe.py ...``) and imports nothing of subtune-edge, so the
child does not pay for PyTorch::

    python subtune_edge/bench/memprobe.py ort-cpu 8 3,224,224 2 fused_3.onnx
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

PROVIDERS = {"ort-cpu": ["CPUExecutionProvider"],
             "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def probe(backend: str, batch: int, input_shape: tuple[int, ...], models: list[Path],
          threads: int | None = None, timeout: float = 300) -> dict | None:
    """RSS growth (bytes) of creating and running ``models`` once; None if the probe failed."""
    if backend not in PROVIDERS:
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), backend, str(batch), ",".join(map(str, input_shape)),
           str(threads or 0), *map(str, models)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trim() -> None:
    """Hand freed heap back to the OS (glibc), so RSS counts live memory, not the model file's
    protobuf copy that was parsed and freed while the session was built."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    _trim()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _session(ort, model, backend: str, threads: int):
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=PROVIDERS[backend])


def main(argv: list[str]) -> None:
    """The child: sessions for ``models``, one run each, then print the RSS growth as JSON."""
    # imported here, in the child only: the parent (the harness) imports this module for probe()
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    backend, batch, shape, threads, *models = argv
    x = np.zeros((int(batch), *map(int, shape.split(","))), np.float32)
    # the runtime's fixed cost (libraries, thread pools) is not the model's: pay it before the baseline
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "warmup",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    warm = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _session(ort, warm.SerializeToString(), backend, int(threads)).run(None, {"input": x})
    baseline = _rss()
    sessions = [_session(ort, m, backend, int(threads)) for m in models]
    for s in sessions:
        s.run(None, {"input": x})
    print(json.dumps({"baseline_rss": baseline, "rss": _rss(), "growth": _rss() - baseline}))


if __name__ == "__main__":
    main(sys.argv[1:])
