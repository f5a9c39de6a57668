"""Plain vs grouped branches, and what ``export --branches auto`` chooses, on ONNX Runtime CPU.

For each model and k (synthetic tasks on trained-like weights, all tuning the same units so that
they can share one grouped branch): the export with ``--branches auto`` (which times both layouts at
batch 1 on ``ort-cpu`` and keeps the faster), the other layout exported explicitly, then both timed
round by round in one process at batch 1 and 8 (2 threads). A row says which was faster there and
whether auto's choice was that one. Writes ``benchmarks/results/branches/{results.json, README.md}``.

    python -m subtune_edge.bench.branches
    python -m subtune_edge.bench.branches --quick --out /tmp/br     # resnet34 64 px, k = 2 and 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_bytes, atomic_write_json
from subtune_edge.runtime import make_runner
from subtune_edge.runtime.timing import Budget, measure_pair, summarize
from subtune_edge.synthetic import synthetic_task

from .export_time import load, machine, trained_like_weights
from .settings import RESULTS_DIR
from .tables import section

MODELS = [("resnet34", 64, "layer4.1,layer4.2"), ("resnet50", 224, "layer4"),
          ("tf_efficientnet_lite0", 224, "blocks.6.0,conv_head")]


def run_model(model: str, size: int, units: str, ks: list[int], seconds: float, work: Path) -> list[dict]:
    weights = trained_like_weights(model, size, work / f"{model}.safetensors")
    backbone = create_backbone(model, weights, **model_args_for_input(model, (size, size)))
    chosen = backbone.parse_units(units)
    rows = []
    for k in ks:
        tasks = [synthetic_task(backbone, f"t{i}", chosen, 10, seed=i, input_size=(size, size)) for i in range(k)]
        auto = export_tasks(tasks, work / f"{model}-{k}-auto", weights=weights, batch=(1, 1, 8), verify=False)
        record = auto.info["branches"]
        other = "grouped" if record["chosen"] == "plain" else "plain"
        export_tasks(tasks, work / f"{model}-{k}-{other}", weights=weights, batch=(1, 1, 8), verify=False,
                     branches=other)
        files = {record["chosen"]: work / f"{model}-{k}-auto" / "model.onnx",
                 other: work / f"{model}-{k}-{other}" / "model.onnx"}
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
            plain, grouped = make_runner("ort-cpu", files["plain"], threads=2), make_runner("ort-cpu", files["grouped"],
                                                                                            threads=2)
            try:
                plain.stage({"input": x})
                grouped.stage({"input": x})
                before = load()
                a, b = measure_pair([plain], [grouped], Budget(warmup=3, min_runs=10, max_runs=2000, seconds=seconds))
            finally:
                plain.deactivate()
                grouped.deactivate()
            pm, gm = summarize(a, batch).median_ms, summarize(b, batch).median_ms
            faster = "grouped" if gm < pm else "plain"
            rows.append({"model": model, "size": size, "units": units, "k": k, "batch": batch, "plain_ms": pm,
                         "grouped_ms": gm, "grouped_over_plain": gm / pm, "faster": faster,
                         "auto": record["chosen"], "auto_timed": {key: record.get(key) for key in
                                                                  ("batch", "plain_ms", "grouped_ms", "rounds")},
                         "auto_right": record["chosen"] == faster, "rounds": len(a), "load": before})
    return rows


def markdown(results: dict) -> str:
    env = results["machine"]
    lines = ["# Plain vs grouped branches, and `export --branches auto`, ONNX Runtime CPU, 2 threads", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores; {env.get('platform')}",
             "- k synthetic tasks on trained-like weights, all tuning the same units; auto times both layouts at "
             "batch 1 during the export (a few seconds) and keeps the faster; the table re-times both, alternated "
             "round by round, at batch 1 and 8.", ""]
    models = dict.fromkeys((r["model"], r["size"], r["units"]) for r in results["rows"])
    for model, size, units in models:
        lines += section(f"{model} {size} px, tasks tuning {units}", "plain and grouped alternate round by round",
                         ["k", "batch", "plain ms", "grouped ms", "grouped / plain", "faster", "auto chose",
                          "auto right"], "l" * 8)
        for r in results["rows"]:
            if (r["model"], r["size"]) == (model, size):
                lines.append(f"| {r['k']} | {r['batch']} | {r['plain_ms']:.2f} | {r['grouped_ms']:.2f} | "
                             f"{r['grouped_over_plain']:.3f} | {r['faster']} | {r['auto']} | "
                             f"{'yes' if r['auto_right'] else 'no'} |")
        lines.append("")
    right = sum(r["auto_right"] for r in results["rows"])
    at1 = [r for r in results["rows"] if r["batch"] == 1]
    lines += [f"auto's choice (made at batch 1) was the faster layout in {right} of {len(results['rows'])} rows "
              f"({sum(r['auto_right'] for r in at1)} of {len(at1)} at batch 1, where it measured).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subtune_edge.bench.branches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet34 64 px, k = 2 and 4 only")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per batch per k")
    parser.add_argument("--out", default=str(RESULTS_DIR / "branches"), help="results folder (cwd-relative)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    models = MODELS[:1] if args.quick else MODELS
    ks = [2, 4] if args.quick else [2, 4, 8]
    rows = []
    for model, size, units in models:
        with tempfile.TemporaryDirectory(prefix=f"branches-{model}-") as tmp:
            rows += run_model(model, size, units, ks, args.seconds, Path(tmp))
    results = {"machine": machine(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "README.md", markdown(results).encode())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
