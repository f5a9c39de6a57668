"""Modular exports against the fused graph: all tasks, subsets, and the subsets' FLOPs ideal.

On one export (written with ``modular=True``), on the same input and machine, side by side
(every round runs every variant once, in a rotating order, so drift and the other load of the
machine hit all of them alike):

- ``fused``: ``model.onnx``, every task;
- ``modular-all``: ``trunk.onnx`` + every branch (:class:`~subtune_edge.runtime.modular.ModularRunner`);
- per subset S (1 of k, 2 of k): ``modular[S]`` (the trunk cut after the taps S needs, S's branches
  only), ``fused[S]`` (the fused graph pruned to S's outputs: what a k=|S| fused export runs, the
  fair baseline) and ``modular-pruned[S]`` (one session of the whole trunk asked for S's taps only:
  the other strategy);
- the FLOPs ideal of each subset: (stem + the trunk S needs + S's branches) / the fused graph.

Library: :func:`measure_export`; ``bench --modular`` calls it for an export; the issue's numbers::

    python -m subtune_edge.bench.modular                 # resnet50 224 (3 tasks on layer4) and the demo model
    python -m subtune_edge.bench.modular --quick         # a small look (resnet18 at 64)

Writes ``benchmarks/results/modular/modular.{json,md}`` with the machine and the load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_text
from subtune_edge.multitask import BranchPlan, trunk_end
from subtune_edge.runtime import OrtRunner, read_manifest
from subtune_edge.runtime.modular import ModularRunner
from subtune_edge.runtime.timing import summarize
from subtune_edge.synthetic import synthetic_task

from .export_time import load, machine, trained_like_weights
from .harness import prune_outputs
from .settings import RESULTS_DIR

RESULTS = RESULTS_DIR / "modular"
TARGETS = {"modular_all_over_fused": 1.03, "subset1_over_fused_subset1": 1.05}


def subset_flops(cost: dict, plan: dict, outputs_by_task: dict[str, str], subset: list[str]) -> int | None:
    """FLOPs of running only ``subset`` (task names): stem, the trunk they need, their branches."""
    units = {u["name"]: u["flops"] for u in cost.get("units", [])}
    if not units:
        return None
    names = plan["unit_names"]
    branches = [b for b in plan["branches"] if b["task"] in subset]
    from_plan = [BranchPlan(b["task"], b["start"], b["start_unit"], b["tuned_units"], b["siamese"]) for b in branches]
    end = trunk_end(len(names), from_plan)
    total = units.get("stem", 0) + sum(units[n] for n in names[:end])
    if any(b.needs_trunk_end for b in from_plan):
        total += units.get("neck", 0) + units.get("pool", 0)
    return total + sum(cost["branches"][b["task"]]["flops"] for b in branches)


def _subsets(tasks: list[str]) -> list[list[str]]:
    """Every 1 of k, and every 2 of k up to k = 4 (neighbours in task order beyond: k - 1 pairs, not k(k-1)/2)."""
    k = len(tasks)
    out = [[t] for t in tasks]
    if k > 2:
        pairs = itertools.combinations(tasks, 2) if k <= 4 else zip(tasks, tasks[1:])
        out += [list(c) for c in pairs]
    return out


def measure_export(export: str | Path, batch: int, *, seconds: float = 20.0, threads: int | None = None,
                   subsets: list[list[str]] | None = None, warmup: int = 3, max_rounds: int = 400) -> dict:
    """Latency of the fused graph, the modular export (all tasks, subsets) and the pruned fused graphs.

    Args:
        export: a modular export folder.
        batch: the batch size (within the export's range).
        seconds: time budget of the alternated rounds.
        threads: ONNX Runtime intra-op threads per session (None: its default).
        subsets: task-name subsets to measure (default: every 1 of k and 2 of k).
        warmup: untimed rounds first.
        max_rounds: stop after this many rounds even within the budget.

    Returns:
        ``{"batch", "rounds", "variants": {name: summary}, "ratios": {...}, "flops": {...}}``.
    """
    export = Path(export)
    manifest = read_manifest(export)
    layout = manifest.modular
    if layout is None:
        raise ValueError(f"{export} is not a modular export; export it with modular=True")
    names = manifest.task_names
    out_of = {t.name: t.output for t in manifest.tasks}
    subsets = subsets or _subsets(names)
    x = np.random.default_rng(0).standard_normal((batch, 3, *manifest.input.hw)).astype(np.float32)
    feed = {manifest.input.name: x}
    with tempfile.TemporaryDirectory(prefix="modular-bench-") as tmp:
        runners = {"fused": OrtRunner(export / "model.onnx", threads=threads),
                   "modular-all": ModularRunner(export, layout, manifest.input.name, threads=threads)}
        for s in subsets:
            key = ",".join(s)
            pruned = prune_outputs(export / "model.onnx", [out_of[t] for t in s], Path(tmp) / f"fused-{key}.onnx")
            runners[f"fused[{key}]"] = OrtRunner(pruned, threads=threads)
            runners[f"modular[{key}]"] = ModularRunner(export, layout, manifest.input.name, s, threads=threads)
            runners[f"modular-pruned[{key}]"] = ModularRunner(export, layout, manifest.input.name, s,
                                                              threads=threads, strategy="pruned")
        for r in runners.values():
            r.stage(feed)
        order = list(runners)
        for _ in range(warmup):
            for name in order:
                runners[name].run_staged()
        samples: dict[str, list[float]] = {n: [] for n in order}
        start = time.perf_counter()
        rounds = 0
        while rounds < max_rounds and (rounds < 10 or time.perf_counter() - start < seconds):
            shift = rounds % len(order)
            for name in order[shift:] + order[:shift]:
                samples[name].append(runners[name].run_staged())
            rounds += 1
        for r in runners.values():
            r.deactivate()
    stats = {n: summarize(v, batch).to_json() for n, v in samples.items()}
    med = {n: s["median_ms"] for n, s in stats.items()}
    best = {n: s["min_ms"] for n, s in stats.items()}  # the least-disturbed round: robust to bursts of other load
    plan = manifest.info.get("plan") or {}
    cost = plan.get("cost") or {}
    fused_flops = (cost.get("fused") or {}).get("flops")
    ratios = {"modular_all_over_fused": med["modular-all"] / med["fused"]}
    flops = {}
    for s in subsets:
        key = ",".join(s)
        ratios[f"modular[{key}]/fused[{key}]"] = med[f"modular[{key}]"] / med[f"fused[{key}]"]
        ratios[f"modular[{key}]/fused"] = med[f"modular[{key}]"] / med["fused"]
        ratios[f"modular-pruned[{key}]/modular[{key}]"] = med[f"modular-pruned[{key}]"] / med[f"modular[{key}]"]
        f = subset_flops(cost, plan, out_of, s) if plan else None
        if f and fused_flops:
            flops[key] = {"flops": f, "ideal_over_fused": f / fused_flops}
    singles = [",".join(s) for s in subsets if len(s) == 1]
    if singles:
        ratios["subset1_over_fused_subset1_worst"] = max(ratios[f"modular[{k}]/fused[{k}]"] for k in singles)
    on_min = {"modular_all_over_fused": best["modular-all"] / best["fused"]}
    for s in subsets:
        key = ",".join(s)
        on_min[f"modular[{key}]/fused[{key}]"] = best[f"modular[{key}]"] / best[f"fused[{key}]"]
        on_min[f"modular-pruned[{key}]/modular[{key}]"] = best[f"modular-pruned[{key}]"] / best[f"modular[{key}]"]
    return {"batch": batch, "rounds": rounds, "threads": threads, "variants": stats,
            "ratios": {k: round(v, 4) for k, v in ratios.items()},
            "ratios_on_min": {k: round(v, 4) for k, v in on_min.items()}, "flops": flops}


# -- the setups ---------------------------------------------------------------------------
def _resnet50(tmp: Path, quick: bool) -> tuple[list, str, tuple[int, int], str]:
    model, size = ("resnet18", 64) if quick else ("resnet50", 224)
    weights = trained_like_weights(model, size, tmp / f"{model}.safetensors")
    bb = create_backbone(model, weights, **model_args_for_input(model, (size, size)))
    last = [u for u in bb.unit_names if u.startswith("layer4.")]
    units = [last, last[1:], last[-1:]] if len(last) > 2 else [last, last, last[-1:]]
    tasks = [synthetic_task(bb, f"task{i}", u, c, seed=i, input_size=(size, size))
             for i, (u, c) in enumerate(zip(units, (10, 2, 5)))]
    return tasks, weights, (size, size), f"{model} {size}x{size}, 3 tasks on layer4 " \
        f"({'; '.join(','.join(u) for u in units)}), BatchNorm statistics trained-like"


def _demo(tmp: Path) -> tuple[list, str, tuple[int, int], str]:
    model, size = "tf_efficientnet_lite0", 64
    try:
        bb = create_backbone(model, "offline", **model_args_for_input(model, (size, size)))
        weights = "offline"
    except Exception:  # noqa: BLE001 - the offline weights package is optional; fall back to trained-like
        weights = trained_like_weights(model, size, tmp / f"{model}.safetensors")
        bb = create_backbone(model, weights, **model_args_for_input(model, (size, size)))
    units = [["blocks.5.3", "blocks.6.0"], ["blocks.6.0"], ["conv_head"]]
    tasks = [synthetic_task(bb, n, u, c, seed=i, input_size=(size, size))
             for i, (n, u, c) in enumerate(zip(("digit", "parity", "ge5"), units, (10, 2, 2)))]
    return tasks, weights, (size, size), f"the demo model: {model} {size}x{size} ({weights} weights), " \
        "tasks digit/parity/ge5 on blocks.5.3+blocks.6.0 / blocks.6.0 / conv_head (synthetic heads)"


def run(quick: bool, seconds: float, threads: int | None, batches: tuple[int, ...],
        only: tuple[str, ...] = ("resnet50", "demo"), pairs: int | None = None) -> dict:
    setups = []
    with tempfile.TemporaryDirectory(prefix="modular-bench-") as tmp:
        tmp = Path(tmp)
        makers = [("resnet50", lambda: _resnet50(tmp, quick))] + ([] if quick else [("demo", lambda: _demo(tmp))])
        for label, make in [m for m in makers if m[0] in only]:
            tasks, weights, size, what = make()
            out = tmp / f"export-{label}"
            export_tasks(tasks, out, weights=weights, modular=True, batch=(1, max(batches)))
            points = []
            names = [t.name for t in tasks]
            subsets = _subsets(names)
            if pairs is not None:  # fewer 2-of-k subsets: each round of a big model at batch 8 takes seconds
                subsets = [s for s in subsets if len(s) == 1] + [s for s in subsets if len(s) == 2][:pairs]
            for b in batches:
                before = load()
                point = measure_export(out, b, seconds=seconds, threads=threads, subsets=subsets)
                point["load_before"], point["load_after"] = before, load()
                points.append(point)
            files = read_manifest(out).files
            setups.append({"name": label, "setup": what, "points": points,
                           "bytes": {"model.onnx": files["model.onnx"].bytes,
                                     "modular": sum(r.bytes for f, r in files.items()
                                                    if f == "trunk.onnx" or f.startswith("branches/"))}})
    return {"setups": setups, "targets": TARGETS, "machine": machine(),
            "protocol": "every round runs every variant once, rotating the order; medians of the rounds",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Modular exports vs the fused graph (ONNX Runtime CPU)", "",
             f"Machine: {m.get('cpu', m.get('processor', '?'))}, {m.get('cpus_usable', '?')} cores usable; "
             f"{result['protocol']}. Targets: modular-all / fused <= {TARGETS['modular_all_over_fused']}, "
             f"1-task subset / fused graph pruned to that task <= {TARGETS['subset1_over_fused_subset1']}.", ""]
    for s in result["setups"]:
        lines += [f"## {s['setup']}", "",
                  f"Files: model.onnx {s['bytes']['model.onnx'] / 1e6:.1f} MB, trunk + branches "
                  f"{s['bytes']['modular'] / 1e6:.1f} MB (each branch file holds its frozen tail).", "",
                  "| batch | variant | median ms | p90 ms | vs fused | FLOPs ideal vs fused |",
                  "|---|---|---|---|---|---|"]
        for p in s["points"]:
            fused = p["variants"]["fused"]["median_ms"]
            for name, v in p["variants"].items():
                key = name[name.index("[") + 1:-1] if "[" in name else None
                ideal = p["flops"].get(key, {}).get("ideal_over_fused") if key and name.startswith("modular[") else None
                lines.append(f"| {p['batch']} | {name} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | "
                             f"{v['median_ms'] / fused:.3f} | {'' if ideal is None else f'{ideal:.3f}'} |")
            r = p["ratios"]
            line = (f"batch {p['batch']} ({p['rounds']} rounds, load {p['load_before']} -> {p['load_after']}): "
                    f"modular-all / fused = **{r['modular_all_over_fused']:.3f}**, worst 1-task subset / fused "
                    f"pruned to it = **{r.get('subset1_over_fused_subset1_worst', float('nan')):.3f}**")
            on_min = p.get("ratios_on_min")
            if on_min:
                line += (f"; on the fastest round (min): modular-all / fused = {on_min['modular_all_over_fused']:.3f}, "
                         "1-task subsets / fused pruned to them = " + ", ".join(
                             f"{v:.3f}" for k, v in on_min.items()
                             if k.startswith("modular[") and "," not in k.split("/")[0]))
            lines += ["", line, ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 only")
    parser.add_argument("--seconds", type=float, default=25.0, help="alternated-rounds budget per batch")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per session")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--setups", default="resnet50,demo", help="which of resnet50,demo to measure")
    parser.add_argument("--pairs", type=int, default=None, help="measure only the first N 2-of-k subsets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.quick, args.seconds, args.threads, tuple(int(b) for b in args.batches.split(",")),
                 tuple(args.setups.split(",")), args.pairs)
    write_results(result, args.out)
    print(markdown(result))
    return 0



def bench_export(export: str | Path, batches: list[int], *, seconds: float = 10.0,
                 threads: int | None = None) -> dict:
    """``bench --modular``: :func:`measure_export` at each batch, with the machine and the load."""
    points = []
    for b in batches:
        before = load()
        point = measure_export(export, b, seconds=seconds, threads=threads)
        point["load_before"], point["load_after"] = before, load()
        points.append(point)
    manifest = read_manifest(export, verify_files=False)
    what = f"{export}: {manifest.backbone['model_name']} {manifest.input.hw[0]}x{manifest.input.hw[1]}, " \
           f"tasks {', '.join(manifest.task_names)}"
    files = manifest.files
    return {"setups": [{"name": str(export), "setup": what, "points": points,
                        "bytes": {"model.onnx": files["model.onnx"].bytes,
                                  "modular": sum(r.bytes for f, r in files.items()
                                                 if f == "trunk.onnx" or f.startswith("branches/"))}}],
            "targets": TARGETS, "machine": machine(),
            "protocol": "every round runs every variant once, rotating the order; medians of the rounds",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_results(result: dict, folder: str | Path) -> dict[str, Path]:
    """``modular.json`` and ``modular.md`` in ``folder`` (written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {"json": atomic_write_text(folder / "modular.json", json.dumps(result, indent=2)),
            "markdown": atomic_write_text(folder / "modular.md", markdown(result))}


if __name__ == "__main__":
    sys.exit(main())
