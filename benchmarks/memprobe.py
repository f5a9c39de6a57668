"""Memory of ONNX Runtime sessions, measured in a fresh process.

Inside the benchmark process, memory freed by one measurement point is reused by the next, so
RSS growth there says little. A child process that only imports onnxruntime, creates the
sessions, runs each once and reports its peak RSS gives a clean number per side::

    python -m benchmarks.memprobe ort-cpu 8 3,224,224 fused_3.onnx
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def probe(backend: str, batch: int, input_shape: tuple[int, ...], models: list[Path],
          threads: int | None = None, timeout: float = 300) -> dict | None:
    """Peak RSS growth (bytes) of creating and running ``models`` once; None if the probe failed."""
    script = "import sys; from benchmarks.memprobe import main; main(sys.argv[1:])"
    cmd = [sys.executable, "-c", script, backend, str(batch), ",".join(map(str, input_shape)),
           str(threads or 0), *map(str, models)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _warm_up_runtime(x) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "warmup",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
                         providers=["CPUExecutionProvider"]).run(None, {"input": x})


def main(argv: list[str]) -> None:
    import numpy as np

    from subtune_edge.runners import make_runner

    from .memory import peak_rss_bytes, rss_bytes

    backend, batch, shape, threads, *models = argv
    x = np.zeros((int(batch), *map(int, shape.split(","))), np.float32)
    _warm_up_runtime(x)  # libraries, thread pools: the runtime's fixed cost is not the model's
    baseline = rss_bytes()
    baseline_peak = peak_rss_bytes()
    runners = [make_runner(backend, m, threads=int(threads) or None) for m in models]
    for r in runners:
        r.infer({"input": x})
    print(json.dumps({"baseline_rss": baseline, "rss": rss_bytes(), "peak_rss": peak_rss_bytes(),
                      "growth": rss_bytes() - baseline, "peak_growth": peak_rss_bytes() - baseline_peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
