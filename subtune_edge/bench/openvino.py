"""OpenVINO vs ONNX Runtime on CPU: fused vs separate, batch 1 and 8, resnet50 at 224x224 x 3 tasks.

Two measurements, both with the harness's side-by-side alternation (drift from other load hits
both sides of a ratio alike):

1. the benchmark protocol (:class:`subtune_edge.bench.harness.Harness`) on ``ort-cpu`` and ``openvino``:
   for k = 1..3 the fused graph against k separate full copies, per backend and batch
   (``results.json`` / ``report.md`` / plots, as ``subtune-edge bench`` writes them);
2. head to head: the same file on ONNX Runtime and on OpenVINO, alternated round by round, for
   the fused ``model.onnx`` and for the 3 separate copies, giving the OpenVINO / ONNX Runtime ratio
   directly (``head_to_head.json``, a table in ``head_to_head.md``).

The tasks are tuned on ``layer4`` with trained-like BatchNorm statistics
(:func:`subtune_edge.bench.export_time.trained_like_weights`). OpenVINO runs with ``PERFORMANCE_HINT``
``LATENCY``, ``INFERENCE_NUM_THREADS`` = ``--threads`` and ``INFERENCE_PRECISION_HINT`` ``f32``;
ONNX Runtime with ``intra_op_num_threads`` = ``--threads`` and spinning off (as the harness runs it).

    python -m subtune_edge.bench.openvino --out benchmarks/results/openvino
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_json, atomic_write_text
from subtune_edge.runtime import OpenVinoRunner, OrtRunner, read_manifest
from subtune_edge.synthetic import synthetic_task

from .export_time import load, machine, model_parser, trained_like_weights, with_note
from .harness import BenchConfig, Budget, measure_pair
from .report import write_files
from .run import run_bench
from .settings import RESULTS_DIR


def build_export(model: str, size: int, units: str, n_tasks: int, out: Path, tmp: Path) -> Path:
    weights = trained_like_weights(model, size, tmp / f"{model}.safetensors")
    backbone = create_backbone(model, weights, **model_args_for_input(model, (size, size)))
    tuned = backbone.parse_units(units)
    tasks = [synthetic_task(backbone, f"task{i}", tuned, c, seed=i, input_size=(size, size))
             for i, c in enumerate([10, 2, 5, 7][:n_tasks])]
    export_tasks(tasks, out, weights=weights, batch=(1, 8), separate=True, verify_with=("openvino",))
    return out


def head_to_head(export_dir: Path, batch: int, threads: int, budget: Budget) -> list[dict]:
    """ONNX Runtime vs OpenVINO on the same files, alternated: fused model.onnx, and the separate copies."""
    manifest = read_manifest(export_dir, verify_files=False)
    x = np.random.default_rng(batch).standard_normal((batch, *manifest.preprocessing.input_size)).astype(np.float32)
    rows = []
    for side, files in (("fused", ["model.onnx"]), ("separate", [t.separate for t in manifest.tasks])):
        ort_runners = [OrtRunner(export_dir / f, threads=threads) for f in files]
        ov_runners = [OpenVinoRunner(export_dir / f, threads=threads) for f in files]
        for r in ort_runners + ov_runners:
            r.stage({"input": x})
            r.run_staged()
        before = load()
        a, b = measure_pair(ort_runners, ov_runners, budget)
        settings = ov_runners[0].settings()
        for r in ort_runners + ov_runners:
            r.deactivate()
        ort_ms, ov_ms = statistics.median(a), statistics.median(b)
        rows.append({"side": side, "files": files, "batch": batch, "rounds": len(a),
                     "ort_median_ms": round(ort_ms, 3), "openvino_median_ms": round(ov_ms, 3),
                     "ratio_openvino_to_ort": round(ov_ms / ort_ms, 4),
                     "ort_p90_ms": round(float(np.percentile(a, 90)), 3),
                     "openvino_p90_ms": round(float(np.percentile(b, 90)), 3),
                     "load_before": before, "load_after": load(), "openvino_settings": settings})
    return rows


def markdown(h2h: dict) -> str:
    m = h2h["machine"]
    lines = ["# OpenVINO vs ONNX Runtime (CPU), head to head", "",
             f"{h2h['setup']}. Machine: {m['cpu']}, {m['cpus_usable']} usable cores, {m['platform']}, no GPU. "
             f"Threads per session: {h2h['threads']}. Each round runs the ONNX Runtime side, then the OpenVINO "
             "side, on the same staged input; medians over the rounds.", "",
             "| side | batch | rounds | ORT median ms (p90) | OpenVINO median ms (p90) | OpenVINO / ORT | "
             "load before -> after |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in h2h["rows"]:
        lines.append(f"| {r['side']} ({len(r['files'])} file{'s' if len(r['files']) > 1 else ''}) | {r['batch']} | "
                     f"{r['rounds']} | {r['ort_median_ms']:.1f} ({r['ort_p90_ms']:.1f}) | "
                     f"{r['openvino_median_ms']:.1f} ({r['openvino_p90_ms']:.1f}) | "
                     f"**{r['ratio_openvino_to_ort']:.3f}** | {r['load_before']} -> {r['load_after']} |")
    ov = h2h["rows"][0]["openvino_settings"]
    lines += ["", "OpenVINO " + ov["openvino"] + ": " + ", ".join(f"{k} {v}" for k, v in ov["reported"].items()) +
              ". ONNX Runtime: CPU provider, ORT_ENABLE_ALL, intra-op threads as above, spinning off.", ""]
    return with_note(lines, h2h)


def main(argv: list[str] | None = None) -> int:
    parser = model_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement point")
    parser.add_argument("--min-runs", type=int, default=8, help="timed rounds at least per point")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per point")
    parser.add_argument("--head-to-head-only", action="store_true",
                        help="rerun only the head-to-head measurement (the protocol's results.json stays)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "openvino")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    budget = Budget(warmup=args.warmup, min_runs=args.min_runs, max_runs=60, seconds=args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        export_dir = build_export(args.model, args.size, args.units, args.tasks, Path(tmp) / "export", Path(tmp))
        if not args.head_to_head_only:
            config = BenchConfig(backends=["ort-cpu", "openvino"], batch_sizes=batches, threads=args.threads,
                                 budget=budget)
            load_before = load()
            results = run_bench(export_dir, config, title=f"{args.model} {args.size}x{args.size}, {args.tasks} "
                                                          f"tasks ({args.units}): OpenVINO vs ONNX Runtime CPU")
            results["export"]["dir"] = "(temporary)"
            results["load"] = {"before": load_before, "after": load()}
            write_files(results, args.out)
        h2h = {"setup": f"{args.tasks} tasks on {args.model} at {args.size}x{args.size}, tuned on {args.units}, "
                        "trained-like BatchNorm statistics",
               "threads": args.threads, "budget": vars(budget), "machine": machine(), "note": args.note,
               "rows": [row for b in batches for row in head_to_head(export_dir, b, args.threads, budget)]}
    atomic_write_json(args.out / "head_to_head.json", h2h)
    atomic_write_text(args.out / "head_to_head.md", markdown(h2h))
    print(json.dumps([{k: r[k] for k in ("side", "batch", "ratio_openvino_to_ort")} for r in h2h["rows"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
