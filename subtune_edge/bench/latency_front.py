"""Accuracy vs added latency per task: budgeted greedy SubTuning beside the unbudgeted choice.

    python -m subtune_edge.bench.latency_front --out benchmarks/results/latency_front

1. measures the device cost table of ``tf_efficientnet_lite0`` on ``ort-cpu`` (the added latency of
   a task branching at each unit, as the fused graph runs it);
2. runs the paper's greedy selection on the digits data without a budget, then with a latency
   budget (a fraction of what the unbudgeted choice adds);
3. writes every evaluated unit set with its accuracy and added latency, the Pareto front, both
   choices (JSON, Markdown, PNG), and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from subtune_edge.backbone import BackboneSpec, model_args_for_input
from subtune_edge.bench import environment
from subtune_edge.bench.device_costs import measure_device_costs
from subtune_edge.bench.harness import Budget
from subtune_edge.data import DataSpec
from subtune_edge.io import atomic_write_bytes
from subtune_edge.search import GreedyConfig, RunLog, SearchSetup, greedy_select
from subtune_edge.search.latency import LatencyTable, front_report, plot_front
from subtune_edge.train import TrainConfig

MODEL = "tf_efficientnet_lite0"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/latency_front")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--candidates", default="blocks.4.2,blocks.5.0,blocks.5.1,blocks.5.2,blocks.5.3,blocks.6.0,"
                                           "conv_head")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-units", type=int, default=3)
    p.add_argument("--budget-fraction", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (args.input_size, args.input_size)
    candidates = tuple(c for c in args.candidates.split(",") if c)

    t0 = time.perf_counter()
    costs = measure_device_costs(MODEL, backend="ort-cpu", input_size=size, threads=args.threads,
                                 budget=Budget(warmup=3, min_runs=20, max_runs=2000, seconds=args.seconds),
                                 units=list(candidates))
    atomic_write_bytes(out / "costs.json", (json.dumps(costs, indent=2) + "\n").encode())
    table = LatencyTable.from_json(costs)
    cost_seconds = time.perf_counter() - t0

    setup = SearchSetup(BackboneSpec(MODEL, "offline", model_args_for_input(MODEL, size)),
                        DataSpec("digits:digit", size), TrainConfig(epochs=args.epochs, batch_size=64, seed=0))
    log = RunLog(out / "runs.json", setup.context())
    t1 = time.perf_counter()
    free = greedy_select(setup, GreedyConfig("forward", 0.005, args.max_units, candidates=candidates), log=log)
    free_ms = table.latency(free.units)
    budget = round(args.budget_fraction * free_ms, 3) if free_ms > 0 else 0.0
    capped = greedy_select(setup, GreedyConfig("forward", 0.005, args.max_units, candidates=candidates,
                                               max_latency_ms=budget, latency_table=table), log=log)
    search_seconds = time.perf_counter() - t1

    searches = {f"unbudgeted-{k}": v for k, v in free.searches.items()}
    searches.update({f"budget-{k}": v for k, v in capped.searches.items()})
    report = front_report(searches, capped.units, table.latency)
    free_point = {"label": "unbudgeted greedy", "units": free.units, "accuracy": free.accuracy, "added_ms": free_ms}
    plot = plot_front(report, out / "front.png",
                      f"{MODEL} on digits ({size[0]}px), ort-cpu: accuracy vs added latency per task",
                      budget=budget, other_choice=free_point)
    env = environment.describe()
    result = {
        "model": MODEL, "data": "digits:digit", "input_size": list(size), "backend": "ort-cpu", "threads": args.threads,
        "epochs": args.epochs, "candidates": list(candidates), "max_units": args.max_units,
        "unbudgeted": {"units": free.units, "accuracy": free.accuracy, "added_ms": free_ms},
        "budget_ms": budget,
        "budgeted": {"units": capped.units, "accuracy": capped.accuracy, "added_ms": table.latency(capped.units)},
        "front": report, "costs_file": "costs.json", "environment": env,
        "seconds": {"cost_table": round(cost_seconds, 1), "searches": round(search_seconds, 1)},
    }
    atomic_write_bytes(out / "latency_front.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / "README.md", _markdown(result).encode())
    print(_markdown(result))
    print(f"plot: {plot}")
    return result


def _markdown(r: dict) -> str:
    env = r["environment"]
    lines = [f"# Accuracy vs added latency: {r['model']} on {r['data']} ({r['input_size'][0]}px)", "",
             f"- measured on: {env['cpu']} ({env['cpu_count']} cores), {env['platform']}; backend {r['backend']}, "
             f"{r['threads']} threads, batch 1",
             f"- greedy (forward, epsilon 0.005, at most {r['max_units']} units) over {', '.join(r['candidates'])}; "
             f"{r['epochs']} epochs per run, 1 seed",
             f"- unbudgeted choice: {', '.join(r['unbudgeted']['units']) or 'linear probe'} -> "
             f"{100 * r['unbudgeted']['accuracy']:.1f}% at +{r['unbudgeted']['added_ms']:.3f} ms",
             f"- budget {r['budget_ms']:.3f} ms: {', '.join(r['budgeted']['units']) or 'linear probe'} -> "
             f"{100 * r['budgeted']['accuracy']:.1f}% at +{r['budgeted']['added_ms']:.3f} ms", "",
             "| unit set | val accuracy | added ms (ort-cpu) | on front |", "|---|---|---|---|"]
    for p in r["front"]["points"]:
        lines.append(f"| {', '.join(p['units']) or '(linear probe)'} | {100 * p['accuracy']:.1f}% | "
                     f"{p['added_ms']:.3f} | {'yes' if p['on_front'] else ''} |")
    lines += ["", "Added latency of a set = the measured cost of a branch at its first tuned unit (costs.json); "
              "see front.png.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
