"""INT8 vs fp32 where it runs: ONNX Runtime CPU and OpenVINO, each INT8 form, the gate's figures.

Two setups, each 3 tasks, exported once with the default ``--int8`` plus TensorRT's form
(``--int8-target ort-x86,trt``: one calibration, two files) and ``--int8-fallback`` (automatic mixed
precision where a task fails its gate):

* ``resnet50`` at 224x224: trained-like weights (timm's random init with trained-like BatchNorm
  statistics, as ``subtune_edge.bench.export_time``), 3 synthetic tasks tuning layer4, calibrated on
  ``skimage-textures`` crops (their labels are not the tasks', so the gate has agreement only);
* the demo's ``tf_efficientnet_lite0`` (offline ImageNet weights) at 64x64: digit / parity / ge5
  SubTuned on the bundled digits, so the gate tests the accuracy drop on their validation split.

For ORT CPU and OpenVINO (CPU, latency hint), 2 threads, batch 1 and 8: the fused fp32 graph, the
asymmetric-uint8 INT8 file (``model.int8.onnx``) and the symmetric-int8 one (``model.int8.trt.onnx``)
are timed round-robin in one process; reported as INT8 / fp32 fused. Writes
``benchmarks/results/int8/{results.json, README.md}`` with the machine and its load.

    python -m subtune_edge.bench.int8                     # both setups
    python -m subtune_edge.bench.int8 --only lite0 --seconds 1 --out /tmp/i8   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.data import DataSpec, load_data
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_bytes
from subtune_edge.runtime import make_runner, missing_reason
from subtune_edge.runtime.timing import Budget, measure_rounds, summarize
from subtune_edge.synthetic import synthetic_task
from subtune_edge.train import TrainConfig, train

from .export_time import load, machine, trained_like_weights
from .settings import RESULTS_DIR
from .tables import section, table_head

DEMO_TASKS = {"digit": ("digits:digit", ["blocks.6.0", "conv_head"]), "parity": ("digits:parity", ["conv_head"]),
              "ge5": ("digits:ge5", ["conv_head"])}
FILES = {"fp32": "model.onnx", "int8 uint8 (x86 form)": "model.int8.onnx",
         "int8 symmetric (TensorRT form)": "model.int8.trt.onnx"}
RUNTIMES = ("ort-cpu", "openvino")


def resnet50_tasks(tmp: Path, size: int = 224):
    weights = trained_like_weights("resnet50", size, tmp / "resnet50.safetensors")
    backbone = create_backbone("resnet50", weights, **model_args_for_input("resnet50", (size, size)))
    units = backbone.parse_units("layer4")
    tasks = [synthetic_task(backbone, f"task{i}", units, c, seed=i, input_size=(size, size))
             for i, c in enumerate((10, 2, 5))]
    return tasks, weights, {"calibration": ("skimage-textures",), "calibration_samples": 96,
                            "int8_gate_samples": 128}, size


def lite0_tasks(tmp: Path, size: int = 64, epochs: int = 4):
    backbone = create_backbone("tf_efficientnet_lite0", "offline",
                               **model_args_for_input("tf_efficientnet_lite0", (size, size)))
    tasks = []
    for name, (source, units) in DEMO_TASKS.items():
        data = load_data(DataSpec(source, input_size=(size, size)), backbone.data_config)
        tasks.append(train(backbone, data, units, TrainConfig(epochs=epochs, batch_size=64, device="cpu", seed=0),
                           name=name).task)
    return tasks, "offline", {}, size


def run(name: str, seconds: float, threads: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"int8-{name}-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        tasks, weights, extra, size = resnet50_tasks(tmp) if name == "resnet50" else lite0_tasks(tmp)
        prepared = time.perf_counter() - start
        out = tmp / "export"
        start = time.perf_counter()
        manifest = export_tasks(tasks, out, weights=weights, batch=(1, 8), int8=True, int8_target="ort-x86,trt",
                                int8_fallback=True, **extra).to_json()
        export_s = time.perf_counter() - start
        points, skipped = [], []
        load_before = load()
        for runtime in RUNTIMES:
            reason = missing_reason(runtime)
            if reason:
                skipped.append({"runtime": runtime, "reason": reason})
                continue
            for batch in (1, 8):
                x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
                sides = {k: [make_runner(runtime, out / f, threads=threads)] for k, f in FILES.items()}
                try:
                    for runners in sides.values():
                        runners[0].stage({"input": x})
                    got = measure_rounds(sides, Budget(warmup=3, min_runs=10, max_runs=2000, seconds=seconds))
                finally:
                    for runners in sides.values():
                        runners[0].deactivate()
                ms = {k: summarize(v, batch).median_ms for k, v in got.items()}
                points.append({"runtime": runtime, "batch": batch, "rounds": len(got["fp32"]), "median_ms": ms,
                               "over_fp32": {k: v / ms["fp32"] for k, v in ms.items() if k != "fp32"}})
        load_after = load()
    files = {f: r["bytes"] for f, r in manifest["files"].items()}
    return {"setup": name, "model": manifest["backbone"]["model_name"], "input": manifest["input"]["shape"],
            "tasks": [{"name": t["name"], "tuned_units": t["tuned_units"], **(t.get("int8") or {})}
                      for t in manifest["tasks"]],
            "int8": manifest["int8"], "files": files, "points": points, "skipped": skipped,
            "seconds": {"prepare": round(prepared, 1), "export": round(export_s, 1)},
            "timings_s": manifest["timings_s"], "load": {"before": load_before, "after": load_after}}


def markdown(results: list[dict], env: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = ["# INT8 vs fp32 where it runs: ONNX Runtime CPU and OpenVINO, 3 tasks", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores; {env.get('platform')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in (env.get('versions') or {}).items() if v)}",
             "- 2 threads; fused fp32, the uint8-activation INT8 file (`--int8` on x86: model.int8.onnx) and the "
             "symmetric one (TensorRT's form: model.int8.trt.onnx, written from the same calibration) timed "
             "round-robin in one process on one random batch.", ""]
    for r in results:
        lines += section(f"{r['model']} {r['input'][2]}x{r['input'][3]}",
                         f"load (1/5/15 min) before {r['load']['before']}, after {r['load']['after']}",
                         ["runtime", "batch", "fp32 fused ms", *[f"{k} ms" for k in list(FILES)[1:]],
                          *[f"**{k} / fp32**" for k in list(FILES)[1:]]], "l" * 7)
        for p in r["points"]:
            keys = list(FILES)[1:]
            lines.append(f"| {p['runtime']} | {p['batch']} | {p['median_ms']['fp32']:.2f} | "
                         + " | ".join(f"{p['median_ms'][k]:.2f}" for k in keys) + " | "
                         + " | ".join(f"**{p['over_fp32'][k]:.3f}**" for k in keys) + " |")
        for s in r["skipped"]:
            lines.append(f"\nskipped {s['runtime']}: {s['reason']}")
        f = r["files"]
        targets = r["int8"]["targets"]
        lines += ["", f"files: model.onnx {f['model.onnx'] / 1e6:.1f} MB, model.int8.onnx "
                      f"{f['model.int8.onnx'] / 1e6:.1f} MB ({f['model.int8.onnx'] / f['model.onnx']:.3f})", "",
                  "nodes kept fp32 by the mixed-precision search: " + "; ".join(
                      f"{t} {len(v['fp32_nodes'])}" + (f" ({', '.join(sorted({n['where'] for n in v['fp32_nodes']}))})"
                                                        if v["fp32_nodes"] else "") for t, v in targets.items()), "",
                  *table_head(["task", "precision", "agreement", "accuracy fp32", "accuracy INT8", "drop (one-sided "
                               "upper bound)", "gate", "held-out"], "l" * 8)]
        for t in r["tasks"]:
            drop = "-" if t.get("drop") is None else f"{100 * t['drop']:+.1f} ({100 * t['drop_upper']:+.1f}) points"
            lines.append(f"| {t['name']} | {t['precision']} | {pct(t['agreement'])} | {pct(t.get('accuracy_fp32'))} | "
                         f"{pct(t.get('accuracy_int8'))} | {drop} | {'passed' if t['passed'] else 'failed'} | "
                         f"{t['samples']} ({t['held_out']}) |")
        lines.append("")
    lines += ["INT8 / fp32 = median latency of the INT8 file / model.onnx, same runtime and batch, all 3 tasks. The "
              "gate: labelled held-out images test the paired accuracy drop (fails when it exceeds 1 point with 95% "
              "confidence); unlabelled ones the agreement on samples that are not near-ties.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subtune_edge.bench.int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["resnet50", "lite0"], default=None, help="run one setup only")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement point")
    parser.add_argument("--out", default=str(RESULTS_DIR / "int8"), help="results folder (relative to the cwd)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    env = machine()
    results = [run(name, args.seconds) for name in ("resnet50", "lite0") if args.only in (None, name)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "results.json"
    if args.only and previous.is_file():  # keep the other setup's figures
        done = {r["setup"] for r in results}
        kept = [r for r in json.loads(previous.read_text()).get("results", []) if r["setup"] not in done
                and "points" in r]
        results = kept + results
    text = json.dumps({"machine": env, "results": results}, indent=2) + "\n"
    atomic_write_bytes(out / "results.json", text.encode())
    atomic_write_bytes(out / "README.md", markdown(results, env).encode())
    print(markdown(results, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
