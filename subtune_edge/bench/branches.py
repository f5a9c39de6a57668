"""Plain vs grouped branches, and what ``export --branches auto`` chooses, on ONNX Runtime CPU.

For each model and k (synthetic tasks on trained-like weights, all tuning the same units so that
they can share one grouped branch): the export with ``--branches auto`` for batch 1..8 (which times
both layouts at batch 1 and 8 on ``ort-cpu`` and keeps the least worst slowdown), the other layout
exported explicitly, then both timed round by round in one process at batch 1 and 8 (2 threads). A
row says which was faster there, how much slower auto's choice was (1.0: not at all), and the same
for the earlier rule (the faster at batch 1 alone). Writes
``benchmarks/results/branches/{results.json, README.md}``.

    python -m subtune_edge.bench.branches                              # 2 runs, about 8 minutes on 2 cores
    python -m subtune_edge.bench.branches --quick --out /tmp/br     # resnet18 64 px, k = 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_bytes, atomic_write_json
from subtune_edge.runtime import make_runner
from subtune_edge.runtime.timing import Budget, measure_files, summarize
from subtune_edge.synthetic import synthetic_task

from .export_time import load, machine, trained_like_weights
from .settings import RESULTS_DIR
from .tables import section

MODELS = [("resnet34", 64, "layer4.1,layer4.2"), ("resnet50", 224, "layer4"),
          ("tf_efficientnet_lite0", 224, "blocks.6.0,conv_head")]
BATCH_RANGE = (1, 1, 8)
BATCHES = (1, 8)
THREADS = 2


def _time_both(files: dict[str, Path], batch: int, size: int, seconds: float) -> tuple[float, float, int, list]:
    """Median ms of plain and grouped at ``batch``, alternated round by round, and the load before."""
    x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
    before = load()
    got = measure_files({v: make_runner("ort-cpu", files[v], threads=THREADS) for v in ("plain", "grouped")},
                        {"input": x}, Budget(warmup=3, min_runs=10, max_runs=2000, seconds=seconds))
    median = {v: summarize(samples, batch).median_ms for v, samples in got.items()}
    return median["plain"], median["grouped"], len(got["plain"]), before


def run_model(model: str, size: int, units: str, ks: list[int], seconds: float, work: Path, bar: tqdm,
              run: int = 1) -> list[dict]:
    weights = trained_like_weights(model, size, work / f"{model}.safetensors")
    backbone = create_backbone(model, weights, **model_args_for_input(model, (size, size)))
    chosen = backbone.parse_units(units)
    rows = []
    for k in ks:
        bar.set_postfix_str(f"run {run}: {model} {size} px, k = {k}")
        tasks = [synthetic_task(backbone, f"t{i}", chosen, 10, seed=i, input_size=(size, size)) for i in range(k)]
        auto = export_tasks(tasks, work / f"{model}-{k}-auto", weights=weights, batch=BATCH_RANGE, verify=False,
                            threads=THREADS)
        record = auto.info["branches"]
        other = "grouped" if record["chosen"] == "plain" else "plain"
        export_tasks(tasks, work / f"{model}-{k}-{other}", weights=weights, batch=BATCH_RANGE, verify=False,
                     branches=other)
        files = {record["chosen"]: work / f"{model}-{k}-auto" / "model.onnx",
                 other: work / f"{model}-{k}-{other}" / "model.onnx"}
        timed = {batch: _time_both(files, batch, size, seconds) for batch in BATCHES}
        # what choosing at batch 1 alone (the rule before this one) would have shipped, from the same timings
        at_first = "grouped" if timed[BATCHES[0]][1] < timed[BATCHES[0]][0] else "plain"
        for batch, (pm, gm, rounds, before) in timed.items():
            best = min(pm, gm)
            ms = {"plain": pm, "grouped": gm}
            rows.append({"run": run, "model": model, "size": size, "units": units, "k": k, "batch": batch,
                         "plain_ms": pm, "grouped_ms": gm, "grouped_over_plain": gm / pm,
                         "faster": "grouped" if gm < pm else "plain",
                         "auto": record["chosen"], "auto_slowdown": ms[record["chosen"]] / best,
                         "auto_record": {key: record.get(key) for key in ("timed", "worst_slowdown", "rule")},
                         "batch1_rule": at_first, "batch1_rule_slowdown": ms[at_first] / best,
                         "rounds": rounds, "load": before})
            bar.write(f"run {run}: {model} {size} px k={k} batch {batch}: grouped / plain {gm / pm:.3f}, auto chose "
                      f"{record['chosen']}")
        bar.update(1)
    return rows


def markdown(results: dict) -> str:
    env = results["machine"]
    rows = results["rows"]
    runs = sorted({r["run"] for r in rows})
    lines = ["# Plain vs grouped branches, and `export --branches auto`, ONNX Runtime CPU, 2 threads", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores; {env.get('platform')}",
             f"- k synthetic tasks on trained-like weights, all tuning the same units, exported for batch "
             f"{BATCH_RANGE[0]}..{BATCH_RANGE[2]}; auto times both layouts at each batch of that range during the "
             "export (a few seconds each) and keeps the one with the least worst slowdown against the faster; "
             "the table re-times both, alternated round by round, in one process.",
             f"- {len(runs)} independent run(s), one after the other: each exports anew (auto decides again) and "
             "re-times, so the spread between runs is this machine's noise.",
             "- auto slowdown: auto's layout / the faster one at that batch (1.000: it shipped the faster). "
             "batch-1 rule: what choosing by batch 1 alone (the rule before) ships, from the same timings.", ""]
    models = dict.fromkeys((r["model"], r["size"], r["units"]) for r in rows)
    for model, size, units in models:
        lines += section(f"{model} {size} px, tasks tuning {units}", "plain and grouped alternate round by round",
                         ["k", "batch", "run", "plain ms", "grouped ms", "grouped / plain", "faster", "auto chose",
                          "auto slowdown", "batch-1 rule", "its slowdown"], "l" * 11)
        for r in sorted((r for r in rows if (r["model"], r["size"]) == (model, size)),
                        key=lambda r: (r["k"], r["batch"], r["run"])):
            lines.append(f"| {r['k']} | {r['batch']} | {r['run']} | {r['plain_ms']:.2f} | {r['grouped_ms']:.2f} | "
                         f"{r['grouped_over_plain']:.3f} | {r['faster']} | {r['auto']} | "
                         f"{r['auto_slowdown']:.3f} | {r['batch1_rule']} | {r['batch1_rule_slowdown']:.3f} |")
        lines.append("")
    for run in runs:
        part = [r for r in rows if r["run"] == run]
        right = sum(r["auto"] == r["faster"] for r in part)
        old_right = sum(r["batch1_rule"] == r["faster"] for r in part)
        grouped = sum(r["auto"] == "grouped" for r in part) // len(BATCHES)
        lines += [f"- run {run}: auto shipped the faster layout in {right} of {len(part)} rows (the batch-1 rule: "
                  f"{old_right}); its worst slowdown against the faster was "
                  f"{max(r['auto_slowdown'] for r in part):.3f} (the batch-1 rule's: "
                  f"{max(r['batch1_rule_slowdown'] for r in part):.3f}); it kept grouped for {grouped} of "
                  f"{len(part) // len(BATCHES)} exports."]
    if len(runs) > 1:
        choices: dict[tuple, set] = {}
        for r in rows:
            choices.setdefault((r["model"], r["k"]), set()).add(r["auto"])
        same = sum(len(c) == 1 for c in choices.values())
        lines.append(f"- auto made the same choice in every run for {same} of {len(choices)} (model, k) exports.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subtune_edge.bench.branches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 64 px, k = 2 only (a check that it runs)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per batch per k")
    parser.add_argument("--repeats", type=int, default=2, help="independent runs, one after the other")
    parser.add_argument("--out", default=str(RESULTS_DIR / "branches"), help="results folder (cwd-relative)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    models = [("resnet18", 64, "layer4.1")] if args.quick else MODELS
    ks = [2] if args.quick else [2, 4, 8]
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tqdm(total=repeats * len(models) * len(ks), desc="branches", unit="export") as bar:
        for run in range(1, repeats + 1):
            for model, size, units in models:
                with tempfile.TemporaryDirectory(prefix=f"branches-{model}-") as tmp:
                    rows += run_model(model, size, units, ks, args.seconds, Path(tmp), bar, run)
    results = {"machine": machine(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "README.md", markdown(results).encode())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
