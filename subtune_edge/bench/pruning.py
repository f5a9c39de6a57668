"""SubTuning + pruning measured: accuracy and added latency per task at pruning ratios 0 / 0.25 / 0.5 / 0.75.

The seed paper prunes the SubTuned units (50% L1 channel pruning of ResNet-50's ``layer4``) so that
each task added to a shared backbone costs less. This benchmark asks whether that holds here:

* **accuracy**: ``tf_efficientnet_lite0`` (ImageNet weights, ``--weights offline``) at 64 px, the
  last 3 units SubTuned (``blocks.5.3, blocks.6.0, conv_head``, as ``train_accuracy``'s "SubTuning
  (last 3)"), on digits, corrupted digits and photo crops with 300 and all training samples; each
  ratio's runs train the same SubTuning (same seed), prune (``--importance``) and finetune (``--prune-epochs``),
  3 seeds, every number from the held-out validation split. Runs go through the library's search
  evaluator (run logs in ``--work``: an interrupted benchmark resumes), two one-thread workers.
* **latency**: the task's added milliseconds on ONNX Runtime CPU, the export's fused graph of a
  linear-probe task and the pruned task against the same graph cut to the probe (the trunk alone),
  all ratios round-robin in one process on one staged input; Lite0 64 px (its offline weights) and
  ResNet-50 224 px on ``layer4`` (trained-like weights: latency does not depend on their values).

Target (the issue's): at 0.5, added ms per task <= 0.6x of the unpruned task's, with at most a 1
point accuracy drop, on at least two of the three data sets.

    python -m subtune_edge.bench.pruning                 # writes benchmarks/results/pruning/
    python -m subtune_edge.bench.pruning --quick --out /tmp/pruning
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from subtune_edge.backbone import BackboneSpec, create_backbone, model_args_for_input
from subtune_edge.data import DataSpec
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_json, atomic_write_text
from subtune_edge.prune import IMPORTANCES, PruneConfig
from subtune_edge.runtime import make_runner
from subtune_edge.runtime.timing import Budget, measure_rounds, summarize
from subtune_edge.search import Evaluator, RunLog, SearchSetup, make_executor
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task
from subtune_edge.train import TrainConfig

from .export_time import load, machine, trained_like_weights
from .harness import prune_outputs
from .settings import RESULTS_DIR

log = logging.getLogger(__name__)

RATIOS = (0.0, 0.25, 0.5, 0.75)
LITE0_UNITS = ("blocks.5.3", "blocks.6.0", "conv_head")
TIMING = [("tf_efficientnet_lite0", 64, "offline", LITE0_UNITS),
          ("resnet50", 224, "trained-like", ("layer4.0", "layer4.1", "layer4.2"))]
TARGET_RATIO, TARGET_LATENCY, TARGET_DROP = 0.5, 0.6, 0.01


def accuracy_sweep(args, progress) -> list[dict]:
    """One row per (data set, samples, importance, ratio): accuracy over seeds, and each run's figures.

    Every ratio is pruned by ``--importance``; ``--also-importance`` adds rows at 0.5 ranked the other
    way (L1 by default: the paper's criterion), on the same SubTuning runs' seeds.
    """
    spec = BackboneSpec(args.model, args.weights, model_args_for_input(args.model, (args.size, args.size)))
    rows = []
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    plans = [(args.importance, list(args.ratios))]
    plans += [(imp, [TARGET_RATIO]) for imp in args.also_importance if imp != args.importance]
    with make_executor(args.workers, "cpu", kind="process" if args.workers > 1 else "local") as executor:
        for source in args.data.split(","):
            for n in [int(v) for v in args.samples.split(",")]:
                data = DataSpec(source, (args.size, args.size), train_samples=n or None)
                config = TrainConfig(epochs=args.epochs, batch_size=32, device="cpu", augment=False)
                t0 = time.perf_counter()
                for importance, ratios in plans:
                    setup = SearchSetup(spec, data, config, seeds=tuple(range(args.seeds)),
                                        prune=PruneConfig(importance=importance, epochs=args.prune_epochs))
                    tag = f"{source.replace(':', '_')}_{n or 'all'}_{importance}"
                    run_log = RunLog(work / f"pruning_{tag}.json", setup.context())
                    ev = Evaluator(setup, executor, run_log)
                    scores = ev.score_many([tuple(args.units)] * len(ratios), ratios)
                    for ratio, score in zip(ratios, scores):
                        runs = [run_log.get(s.key) for s in setup.specs(tuple(args.units), None, ratio)]
                        rows.append({"data": source, "samples": n or "all", "importance": importance,
                                     "ratio": ratio, "accuracy": score.mean, "std": score.std, "runs": score.runs,
                                     "per_seed": [r["accuracy"] for r in runs],
                                     "unpruned_per_seed": [r.get("unpruned_accuracy") for r in runs],
                                     "train_samples": runs[0]["train_samples"], "val_samples": runs[0]["val_samples"],
                                     "run_seconds": float(sum(r["seconds"] for r in runs))})
                mine = [r for r in rows if r["data"] == source and r["samples"] == (n or "all")]
                progress(f"{source} {n or 'all'}: " + ", ".join(
                    f"{r['ratio']:g} {r['importance']}: {100 * r['accuracy']:.1f}%" for r in mine)
                    + f" ({time.perf_counter() - t0:.0f} s)")
    return rows


def _acc(acc: list[dict], data: str, n, ratio: float, importance: str) -> dict | None:
    """The row of one (data set, samples, ratio); the unpruned row is every importance's."""
    return next((r for r in acc if r["data"] == data and r["samples"] == n and r["ratio"] == ratio
                 and (ratio == 0.0 or r.get("importance", importance) == importance)), None)


def latency_sweep(args, progress) -> list[dict]:
    """One row per (model, batch, ratio): the pruned task's added ms, side by side with the other ratios."""
    rows = []
    budget = Budget(warmup=5, min_runs=20, max_runs=2000, seconds=args.seconds).check()
    models = TIMING[:1] if args.quick else TIMING
    for model, size, weights, units in models:
        with tempfile.TemporaryDirectory(prefix="pruning-bench-") as tmp:
            tmp = Path(tmp)
            source = trained_like_weights(model, size, tmp / "weights.safetensors") if weights == "trained-like" \
                else weights
            backbone = create_backbone(model, source, **model_args_for_input(model, (size, size)))
            probe = synthetic_task(backbone, "probe", [], 10, seed=0, input_size=(size, size))
            graphs, files = {}, {}
            for i, ratio in enumerate(args.ratios):
                task = synthetic_task(backbone, "task", list(units), 10, seed=1, input_size=(size, size),
                                      prune=PruneConfig(ratio) if ratio else None)
                files[ratio] = save_task(task, tmp / f"task_{i}").stat().st_size
                out = tmp / f"export_{i}"
                manifest = export_tasks([probe, task], out, weights=source, input_size=(size, size),
                                        batch=(1, max(args.batches)))
                graphs[ratio] = (out / "model.onnx", manifest.info["plan"]["cost"]["branches"]["task"]["flops"])
            trunk = prune_outputs(graphs[args.ratios[0]][0], ["probe"], tmp / "trunk.onnx")
            for batch in args.batches:
                x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
                sides = {"trunk": make_runner("ort-cpu", trunk, threads=args.threads)}
                for ratio in args.ratios:
                    sides[f"{ratio:g}"] = make_runner("ort-cpu", graphs[ratio][0], threads=args.threads)
                try:
                    for r in sides.values():
                        r.stage({"input": x})
                    samples = measure_rounds({k: [r] for k, r in sides.items()}, budget)
                finally:
                    for r in sides.values():
                        r.deactivate()
                base = summarize(samples["trunk"], batch).median_ms
                added = {k: summarize(v, batch).median_ms - base for k, v in samples.items() if k != "trunk"}
                for ratio in args.ratios:
                    key = f"{ratio:g}"
                    rows.append({"model": model, "input_size": size, "units": list(units), "batch": batch,
                                 "ratio": ratio, "trunk_ms": base, "added_ms": added[key],
                                 "added_over_unpruned": added[key] / added["0"] if added["0"] > 0 else None,
                                 "branch_flops": graphs[ratio][1],
                                 "flops_over_unpruned": graphs[ratio][1] / graphs[args.ratios[0]][1],
                                 "task_file_bytes": files[ratio], "file_over_unpruned": files[ratio] / files[0.0],
                                 "rounds": len(samples["trunk"])})
                progress(f"{model} {size}px batch {batch}: " + ", ".join(
                    f"{r['ratio']:g}: +{r['added_ms']:.3f} ms" for r in rows[-len(args.ratios):]))
    return rows


def verdicts(acc: list[dict], lat: list[dict], importance: str) -> dict:
    """Per data set and sample size: does 0.5 keep accuracy within 1 point, with <= 0.6x the added latency?"""
    lite = [r for r in lat if r["model"] == "tf_efficientnet_lite0" and r["ratio"] == TARGET_RATIO]
    latency_ok = {r["batch"]: r["added_over_unpruned"] for r in lite}
    out = {}
    for (data, n) in dict.fromkeys((r["data"], r["samples"]) for r in acc):
        base = _acc(acc, data, n, 0.0, importance)
        half = _acc(acc, data, n, TARGET_RATIO, importance)
        if base is None or half is None:
            continue
        drop = base["accuracy"] - half["accuracy"]
        ratio_b1 = latency_ok.get(1)
        others = {r["importance"]: round(100 * (base["accuracy"] - r["accuracy"]), 2) for r in acc
                  if r["data"] == data and r["samples"] == n and r["ratio"] == TARGET_RATIO
                  and r.get("importance", importance) != importance}
        out[f"{data} @ {n}"] = {
            "drop_points": round(100 * drop, 2), "added_ms_ratio_batch1": ratio_b1,
            "holds": bool(drop <= TARGET_DROP and ratio_b1 is not None and ratio_b1 <= TARGET_LATENCY),
            "drop_points_by_importance": {importance: round(100 * drop, 2), **others}}
    return out


def write_report(out: Path, acc: list[dict], lat: list[dict], args, env: dict, seconds: float) -> None:
    v = verdicts(acc, lat, args.importance) if acc and lat else {}
    data = {"machine": env, "settings": {k: (list(v_) if isinstance(v_, tuple) else v_)
                                         for k, v_ in vars(args).items() if k not in ("out", "work")},
            "accuracy": acc, "latency": lat, "verdicts": v, "seconds": round(seconds, 1)}
    atomic_write_json(out / "results.json", data)
    lines = ["# SubTuning + pruning: accuracy and added latency per task", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores, no GPU; {env.get('platform')}",
             f"- {args.model} {args.size} px ({args.weights} weights), tuned units {', '.join(args.units)}; "
             f"{args.epochs} SubTuning epochs, then {args.importance} pruning of the tuned units' channels and "
             f"{args.prune_epochs} finetuning epochs; {args.seeds} seeds; accuracy on the held-out validation split",
             "- added ms = median of (fused graph with the task) - median of (the same graph cut to the trunk), "
             f"every ratio round-robin in one process, ONNX Runtime CPU, {args.threads} threads", ""]
    if acc:
        cols = [(r, args.importance) for r in args.ratios]
        cols += [(TARGET_RATIO, imp) for imp in args.also_importance if imp != args.importance]
        lines += ["## Accuracy (mean ± std over seeds, validation split)", "",
                  "| data | train samples | " + " | ".join(
                      "unpruned" if r == 0 else f"{r:g} ({imp})" for r, imp in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for (d, n) in dict.fromkeys((r["data"], r["samples"]) for r in acc):
            cells = []
            for ratio, imp in cols:
                r = _acc(acc, d, n, ratio, imp)
                cells.append("-" if r is None else f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f}")
            train_n = next(x for x in acc if x["data"] == d and x["samples"] == n)["train_samples"]
            lines.append(f"| {d} | {train_n} | " + " | ".join(cells) + " |")
        lines.append("")
    if lat:
        lines += ["## Added latency per task (ONNX Runtime CPU)", "",
                  "| model | batch | ratio | added ms | added / unpruned | branch FLOPs / unpruned | task file / "
                  "unpruned |", "|---|---|---|---|---|---|---|"]
        for r in lat:
            rel = "-" if r["added_over_unpruned"] is None else f"{r['added_over_unpruned']:.2f}"
            lines.append(f"| {r['model']} {r['input_size']} px | {r['batch']} | {r['ratio']:g} | {r['added_ms']:.3f} "
                         f"| {rel} | {r['flops_over_unpruned']:.2f} | {r['file_over_unpruned']:.2f} |")
        lines.append("")
    if v:
        lines += ["## Does the paper's pruning claim hold here?", "",
                  f"Target: at ratio {TARGET_RATIO:g}, added ms per task <= {TARGET_LATENCY:g}x of the unpruned "
                  f"task's (Lite0 64 px, batch 1) with an accuracy drop of at most {100 * TARGET_DROP:g} point.", "",
                  f"| data @ train samples | accuracy drop at 0.5, {args.importance} (points) | other rankings | "
                  "added ms / unpruned | holds |", "|---|---|---|---|---|"]
        for k, x in v.items():
            rel = "-" if x["added_ms_ratio_batch1"] is None else f"{x['added_ms_ratio_batch1']:.2f}"
            other = ", ".join(f"{imp} {d:+.2f}" for imp, d in x["drop_points_by_importance"].items()
                              if imp != args.importance) or "-"
            lines.append(f"| {k} | {x['drop_points']:+.2f} | {other} | {rel} | {'yes' if x['holds'] else 'no'} |")
        lines.append("")
    part = f"the {args.only} half only (--only {args.only})" if args.only else "accuracy and latency"
    lines.append(f"This run ({part}) took {seconds / 60:.1f} min; "
                 f"load before/after {env.get('load_before')} / {load()}.")
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    if acc and lat:
        plot_front(out / "front.png", acc, lat, args)


def plot_front(path: Path, acc: list[dict], lat: list[dict], args) -> None:
    """Accuracy vs added ms per task (Lite0, batch 1), one line per data set and size, one point per ratio."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ms = {r["ratio"]: r["added_ms"] for r in lat if r["model"] == args.model and r["batch"] == 1}
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    for (d, n) in dict.fromkeys((r["data"], r["samples"]) for r in acc):
        pts = sorted((r for r in acc if r["data"] == d and r["samples"] == n
                      and r.get("importance", args.importance) in (args.importance, None)), key=lambda r: r["ratio"])
        xs = [ms[r["ratio"]] for r in pts]
        ys = [100 * r["accuracy"] for r in pts]
        line = ax.errorbar(xs, ys, yerr=[100 * r["std"] for r in pts], marker="o", ms=4, capsize=2,
                           label=f"{d} ({n})")
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(f"{r['ratio']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                        color=line[0].get_color())
    ax.set_xlabel(f"added latency per task (ms, ORT CPU, batch 1, {args.size} px)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("SubTuning + pruning: each point a pruning ratio (0 = unpruned, right)", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="offline")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--data", default="digits:digit,digits-c:digit,skimage-textures:100")
    p.add_argument("--samples", default="300,0", help="training sample sizes; 0 = all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--prune-epochs", type=int, default=3)
    p.add_argument("--importance", choices=IMPORTANCES, default=PruneConfig.importance)
    p.add_argument("--also-importance", default="l1",
                   help="comma-separated rankings also run at 0.5 (default l1, the paper's); '' for none")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="timing budget per batch size (all ratios)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", choices=["accuracy", "latency"], default=None)
    p.add_argument("--quick", action="store_true", help="digits, 300 samples, 1 seed, 2 epochs, Lite0 timing only")
    p.add_argument("--work", default="/tmp/subtune-edge-pruning-bench", help="run logs (resumable)")
    p.add_argument("--out", default=str(RESULTS_DIR / "pruning"), help="results folder (cwd-relative)")
    args = p.parse_args(argv)
    args.units, args.ratios = LITE0_UNITS, RATIOS
    args.also_importance = [i for i in args.also_importance.split(",") if i]
    bad = [i for i in args.also_importance if i not in IMPORTANCES]
    if bad:
        p.error(f"--also-importance: {bad[0]!r} is not one of {', '.join(IMPORTANCES)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        args.data, args.samples, args.seeds, args.epochs, args.prune_epochs = "digits:digit", "300", 1, 2, 1
        args.seconds, args.batches = 1.0, [1]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = machine() | {"load_before": load()}
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    acc = accuracy_sweep(args, progress) if args.only != "latency" else _previous(out, "accuracy")
    lat = latency_sweep(args, progress) if args.only != "accuracy" else _previous(out, "latency")
    write_report(out, acc, lat, args, env, time.perf_counter() - t0)
    progress(f"wrote {out / 'README.md'}")
    return 0


def _previous(out: Path, key: str) -> list[dict]:
    """The other half of an earlier run's results (``--only`` re-measures one half)."""
    try:
        return json.loads((out / "results.json").read_text())[key]
    except (OSError, ValueError, KeyError):
        return []


if __name__ == "__main__":
    sys.exit(main())
