"""INT8 vs fp32 on ONNX Runtime CPU: latency, file sizes and per-task accuracy of ``model.int8.onnx``.

Two setups, each 3 tasks, ONNX Runtime CPU with 2 threads, batch 1 and 8, fused and separate,
fp32 and INT8 measured side by side (the harness alternates fused and separate in one process):

* ``resnet50`` at 224x224: trained-like weights (timm's random init with trained-like BatchNorm
  statistics, as ``subtune_edge.bench.export_time``), 3 synthetic tasks tuning layer4, calibrated on
  ``skimage-textures`` crops (their labels are not the tasks', so its gate has agreement only);
* the demo's ``tf_efficientnet_lite0`` (offline ImageNet weights) at 64x64: digit / parity / ge5
  SubTuned on the bundled digits, so the gate reports accuracy fp32 vs INT8 on their validation split.

Reported: INT8 fused / fp32 fused latency (target <= 0.6), INT8 fused / INT8 separate beside the
FLOPs ideal, file sizes, the per-task gate figures. Writes ``benchmarks/results/int8/{results.json,
README.md}`` with the machine and its load.

    flock /tmp/bench.lock python -m subtune_edge.bench.int8                 # both setups
    python -m subtune_edge.bench.int8 --only lite0 --seconds 1 --out /tmp/i8   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.data import DataSpec, load_data
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_bytes
from subtune_edge.synthetic import synthetic_task
from subtune_edge.train import TrainConfig, train

from .export_time import load, machine, trained_like_weights
from .harness import BenchConfig, Budget, Harness
from .settings import RESULTS_DIR
from .tables import section, table_head

DEMO_TASKS = {"digit": ("digits:digit", ["blocks.6.0", "conv_head"]), "parity": ("digits:parity", ["conv_head"]),
              "ge5": ("digits:ge5", ["conv_head"])}


def resnet50_tasks(tmp: Path, size: int = 224):
    weights = trained_like_weights("resnet50", size, tmp / "resnet50.safetensors")
    backbone = create_backbone("resnet50", weights, **model_args_for_input("resnet50", (size, size)))
    units = backbone.parse_units("layer4")
    tasks = [synthetic_task(backbone, f"task{i}", units, c, seed=i, input_size=(size, size))
             for i, c in enumerate((10, 2, 5))]
    return tasks, weights, {"calibration": ("skimage-textures",), "calibration_samples": 96,
                            "int8_gate_samples": 64, "int8_min_agreement": 0.0, "int8_max_drop": 1.0}


def lite0_tasks(tmp: Path, size: int = 64, epochs: int = 4):
    backbone = create_backbone("tf_efficientnet_lite0", "offline",
                               **model_args_for_input("tf_efficientnet_lite0", (size, size)))
    tasks = []
    for name, (source, units) in DEMO_TASKS.items():
        data = load_data(DataSpec(source, input_size=(size, size)), backbone.data_config)
        tasks.append(train(backbone, data, units, TrainConfig(epochs=epochs, batch_size=64, device="cpu", seed=0),
                           name=name).task)
    return tasks, "offline", {"int8_fallback": True}


def run(name: str, seconds: float, threads: int = 2, activations: tuple[str, ...] = ("int8",)) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix=f"int8-{name}-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        tasks, weights, extra = resnet50_tasks(tmp) if name == "resnet50" else lite0_tasks(tmp)
        prepared = time.perf_counter() - start
        return [_run_one(name, tasks, weights, extra, tmp / f"export-{act}", seconds, threads, act, prepared)
                for act in activations]


def _run_one(name, tasks, weights, extra, out, seconds, threads, activations, prepared) -> dict:
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as scratch:
        start = time.perf_counter()
        manifest = export_tasks(tasks, out, weights=weights, batch=(1, 8), separate=True, int8=True,
                                int8_activations=activations, **extra).to_json()
        export_s = time.perf_counter() - start
        load_before = load()
        config = BenchConfig(backends=["ort-cpu"], batch_sizes=[1, 8], threads=threads, precisions=["fp32", "int8"],
                             budget=Budget(warmup=2, min_runs=5, max_runs=400, seconds=seconds))
        bench = Harness(out, config, work_dir=scratch, memory_probe=False).run()
        load_after = load()
    files = {f: r["bytes"] for f, r in manifest["files"].items()}
    k = len(tasks)
    summary = []
    for batch in (1, 8):
        row = {p: next(r for r in bench["rows"] if r["batch"] == batch and r["k"] == k and r.get("precision") == p)
               for p in ("fp32", "int8")}
        summary.append({"batch": batch, "fp32_fused_ms": row["fp32"]["fused"]["median_ms"],
                        "fp32_separate_ms": row["fp32"]["separate"]["median_ms"],
                        "int8_fused_ms": row["int8"]["fused"]["median_ms"],
                        "int8_separate_ms": row["int8"]["separate"]["median_ms"],
                        "int8_fused_vs_fp32_fused": row["int8"]["fused_vs_fp32_fused"],
                        "int8_fused_vs_int8_separate": row["int8"]["ratio"],
                        "fp32_fused_vs_fp32_separate": row["fp32"]["ratio"],
                        "ideal_ratio_flops": row["int8"]["ideal_ratio_flops"]})
    return {"setup": name if activations == "int8" else f"{name}-{activations}", "activations": activations,
            "model": manifest["backbone"]["model_name"], "input": manifest["input"]["shape"],
            "tasks": [{"name": t["name"], "tuned_units": t["tuned_units"], **(t.get("int8") or {})}
                      for t in manifest["tasks"]],
            "int8": manifest["int8"], "files": files,
            "sizes": {"fp32_fused": files["model.onnx"], "int8_fused": files["model.int8.onnx"],
                      "fp32_separate": sum(b for f, b in files.items() if f.startswith("separate/")
                                           and not f.endswith(".int8.onnx")),
                      "int8_separate": sum(b for f, b in files.items() if f.endswith(".int8.onnx")
                                           and f.startswith("separate/"))},
            "summary": summary, "rows": bench["rows"], "skipped": bench["skipped"],
            "seconds": {"prepare": round(prepared, 1), "export": round(export_s, 1)},
            "timings_s": manifest["timings_s"], "load": {"before": load_before, "after": load_after}}


def markdown(results: list[dict], env: dict) -> str:
    def mb(n):
        return f"{n / 1e6:.1f}"

    lines = ["# INT8 (QDQ, ONNX Runtime CPU) vs fp32: fused and separate, 3 tasks", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores; {env.get('platform')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in (env.get('versions') or {}).items() if v)}",
             "- ORT CPU, 2 intra-op threads, fused and separate alternated in one process, random input; the "
             "machine was shared with other jobs (load below), so read the ratios, not the absolute ms.", ""]
    for r in results:
        acts = r.get("activations", "int8")
        kind = "symmetric int8 activations (TensorRT's)" if acts == "int8" else \
            "asymmetric uint8 activations (ONNX Runtime's x86 recommendation)"
        lines += section(f"{r['model']} {r['input'][2]}x{r['input'][3]}, {kind}",
                         f"load (1/5/15 min) before {r['load']['before']}, after {r['load']['after']}",
                         ["batch", "fp32 fused ms", "INT8 fused ms", "**INT8 / fp32 fused**", "INT8 separate ms",
                          "INT8 fused / INT8 separate", "fp32 fused / fp32 separate", "FLOPs ideal"], "l" * 8)
        for s in r["summary"]:
            lines.append(f"| {s['batch']} | {s['fp32_fused_ms']:.2f} | {s['int8_fused_ms']:.2f} | "
                         f"**{s['int8_fused_vs_fp32_fused']:.3f}** | {s['int8_separate_ms']:.2f} | "
                         f"{s['int8_fused_vs_int8_separate']:.3f} | {s['fp32_fused_vs_fp32_separate']:.3f} | "
                         f"{s['ideal_ratio_flops']:.3f} |")
        z = r["sizes"]
        lines += ["", f"files: model.onnx {mb(z['fp32_fused'])} MB, model.int8.onnx {mb(z['int8_fused'])} MB "
                      f"({z['int8_fused'] / z['fp32_fused']:.3f}); separate fp32 {mb(z['fp32_separate'])} MB, "
                      f"separate INT8 {mb(z['int8_separate'])} MB", "",
                  *table_head(["task", "branch", "agreement INT8 vs fp32", "accuracy fp32", "accuracy INT8",
                               "held-out", "calibration"], "l" * 7)]
        for t in r["tasks"]:
            acc = ("-" if t.get("accuracy_fp32") is None else f"{100 * t['accuracy_fp32']:.1f}%",
                   "-" if t.get("accuracy_int8") is None else f"{100 * t['accuracy_int8']:.1f}%")
            lines.append(f"| {t['name']} | {t['precision']} | {100 * t['agreement']:.1f}% | {acc[0]} | {acc[1]} | "
                         f"{t['samples']} ({t['held_out']}) | {', '.join(t['calibration'])} "
                         f"({t['calibration_samples']}) |")
        lines.append("")
    lines += ["INT8 / fp32 fused = median latency of model.int8.onnx / model.onnx, same batch, all 3 tasks. "
              "INT8 fused / INT8 separate = model.int8.onnx vs the 3 separate/<task>.int8.onnx run one after "
              "the other; FLOPs ideal = the same ratio for FLOPs from the export's sharing plan.",
              "Symmetric int8 activations (the default: what TensorRT's explicit quantization reads) run on ONNX "
              "Runtime's x86 CPU through its S8S8 path; asymmetric uint8 activations (`--int8-activations uint8`, "
              "ORT's own x86 recommendation) use its U8S8 VNNI kernels. Compare the two setups of each model.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subtune_edge.bench.int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["resnet50", "lite0"], default=None, help="run one setup only")
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement point")
    parser.add_argument("--activations", default="int8", help="comma-separated: int8 (symmetric), uint8")
    parser.add_argument("--out", default=str(RESULTS_DIR / "int8"), help="results folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    env = machine()
    acts = tuple(a for a in args.activations.split(",") if a)
    results = [r for name in ("resnet50", "lite0") if args.only in (None, name) for r in run(name, args.seconds,
                                                                                          activations=acts)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "results.json"
    if args.only and previous.is_file():  # keep the other setup's figures
        done = {r["setup"] for r in results}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["setup"] not in done]
        results = kept + results
    text = json.dumps({"machine": env, "results": results}, indent=2) + "\n"
    atomic_write_bytes(out / "results.json", text.encode())
    atomic_write_bytes(out / "README.md", markdown(results, env).encode())
    print(markdown(results, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
