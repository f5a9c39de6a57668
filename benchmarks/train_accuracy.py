"""Validation accuracy of linear probe, SubTuning and full finetuning at 100 / 300 / all training
samples, and training step time of SubTuning vs full finetuning with and without the prefix cache.

The setting is the one 2 CPU cores can run in about 15 minutes: the ImageNet-pretrained
``tf_efficientnet_lite0`` (``--weights offline``, no network) on scikit-learn's real 8x8 digits
(10 classes, upscaled to 64 px), 5 epochs (more for small sets, so that every run takes at least 60
optimisation steps), 3 seeds. Every run goes through the library
(:mod:`subtune_edge.search` over a :class:`~subtune_edge.search.LocalExecutor`, run logs in
``--work``, so an interrupted benchmark resumes).

Methods (the held-out validation split, 359 images, is the same for every sample size):

linear probe        S = {}
SubTuning(last 1)   S = {conv_head}
SubTuning(last 3)   S = {blocks.5.3, blocks.6.0, conv_head}
greedy SubTuning    forward greedy (epsilon 0.01) over the last 4 units, at most 2, each candidate
                    scored by 3-fold cross-validation *inside the training samples*; the chosen set is
                    then trained on all of them and reported on the validation split (so the
                    selection never sees the numbers it is reported with)
full finetuning     every unit (the stem stays frozen)

    python -m benchmarks.train_accuracy            # writes benchmarks/results/train_accuracy.{md,json}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.search import Evaluator, GreedyConfig, LocalExecutor, RunLog, SearchSetup, greedy_select
from subtune_edge.train import TrainConfig, device_name, get_backbone, get_data

from .cuda_train_step import prepare, summary
from .environment import describe

ROOT = Path(__file__).resolve().parents[1]  # default output: the checkout's benchmarks/results/

ALL = 0  # "all training samples" in --samples


def _pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_table(args, spec: BackboneSpec, work: Path, log, counts: dict) -> dict:
    backbone = get_backbone(spec)
    names = backbone.unit_names
    fixed = {"linear probe": (), "SubTuning (last 1)": tuple(names[-1:]),
             "SubTuning (last 3)": tuple(names[-3:]), "full finetuning": tuple(names)}
    seeds = tuple(range(args.seeds))
    rows = {}
    for n in args.samples:
        t0 = time.perf_counter()
        data = DataSpec("digits:digit", (args.size, args.size), train_samples=n or None)
        n_train = len(get_data(data, backbone.data_config).train)
        # at least --min-steps optimisation steps per run: small sets get more epochs
        epochs = max(args.epochs, math.ceil(args.min_steps / math.ceil(n_train / args.batch)))
        config = TrainConfig(epochs=epochs, batch_size=args.batch, device="cpu", augment=False,
                             cache_whole_set=1e9)
        setup = SearchSetup(spec, data, config, seeds=seeds)
        ev = Evaluator(setup, LocalExecutor("cpu"), RunLog(work / f"fixed_n{n}.json", setup.context()))
        scores = dict(zip(fixed, ev.score_many(list(fixed.values()))))
        counts["trained"] += ev.new_runs
        counts["from_log"] += ev.reused_runs
        row = {name: {"mean": s.mean, "std": s.std, "runs": s.runs, "seconds": s.seconds,
                      "per_seed": None} for name, s in scores.items()}
        for name, units in fixed.items():
            keys = [sp.key for sp in setup.specs(tuple(ev.order(units)))]
            row[name]["per_seed"] = [ev.log.get(k)["accuracy"] for k in keys]
        # greedy, selected per seed by k-fold CV inside the training samples
        greedy_runs = []
        for seed in seeds:
            cv = SearchSetup(spec, data, replace(config, seed=seed), seeds=(seed,), folds=args.folds)
            cv_log = RunLog(work / f"greedy_n{n}_s{seed}.json", cv.context())
            g = greedy_select(cv, GreedyConfig("forward", args.epsilon, args.max_units,
                                               candidates=tuple(names[-args.candidates:])),
                              executor=LocalExecutor("cpu"), log=cv_log)
            # retrain the chosen set on all training samples with this seed (from the log if a fixed set)
            final_ev = Evaluator(replace(setup, seeds=(seed,)), LocalExecutor("cpu"), ev.log)
            final = final_ev.score(tuple(g.units))
            counts["trained"] += g.new_runs + final_ev.new_runs
            counts["from_log"] += g.reused_runs + final_ev.reused_runs
            greedy_runs.append({"seed": seed, "units": g.units, "cv_accuracy": g.accuracy,
                                "val_accuracy": final.mean, "search_runs": g.new_runs + g.reused_runs,
                                "rounds": len(g.searches["forward"]["rounds"])})
        m, s = _mean_std([r["val_accuracy"] for r in greedy_runs])
        row["greedy SubTuning"] = {"mean": m, "std": s, "runs": len(greedy_runs), "per_seed":
                                   [r["val_accuracy"] for r in greedy_runs], "selections": greedy_runs}
        row["train_samples"] = n or "all"
        row["epochs"] = epochs
        row["train_samples_count"] = ev.log.get(setup.specs(())[0].key)["train_samples"]
        row["seconds"] = time.perf_counter() - t0
        rows[str(n or "all")] = row
        log(f"n={n or 'all'}: " + ", ".join(f"{k} {_pct(v['mean'], v['std'])}" for k, v in row.items()
                                             if isinstance(v, dict)) + f" ({row['seconds']:.0f} s)")
    return rows


def step_times(args, spec: BackboneSpec, log) -> dict:
    """ms per training step (median) of each variant at the benchmark's input size and batch.

    The variants take turns, one step each per round, so a change in the machine's load during the
    measurement hits them all alike.
    """
    backbone = get_backbone(spec)
    names = backbone.unit_names
    ns = SimpleNamespace(batch=args.batch, size=args.size, classes=10, no_amp=True, no_channels_last=True,
                         device="cpu")
    variants = {"full finetuning": (names, False),
                "SubTuning (last 3)": (names[-3:], False), "SubTuning (last 3) + prefix cache": (names[-3:], True),
                "SubTuning (last 1)": (names[-1:], False), "SubTuning (last 1) + prefix cache": (names[-1:], True)}
    prepared = {name: prepare(backbone, list(units), cached, ns, torch.device("cpu"))
                for name, (units, cached) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(2 + args.time_steps):
        for name, (timed, *_) in prepared.items():
            t = timed()
            if r >= 2:  # two warm-up rounds
                times[name].append(t)
    out = {}
    for name, (_, model, cfg, h) in prepared.items():
        r = summary(times[name], model, cfg, h)
        out[name] = {k: r[k] for k in ("step_ms_median", "step_ms_min", "trainable_params", "steps")}
    # other jobs on a shared machine only ever add time: the fastest step is the best estimate of the cost
    full = out["full finetuning"]["step_ms_min"]
    for r in out.values():
        r["vs_full"] = r["step_ms_min"] / full
        r["vs_full_median"] = r["step_ms_median"] / out["full finetuning"]["step_ms_median"]
    log("step times (min): " + ", ".join(f"{k} {v['step_ms_min']:.0f} ms" for k, v in out.items()))
    return out


def markdown(report: dict) -> str:
    s = report["settings"]
    methods = ["linear probe", "SubTuning (last 1)", "SubTuning (last 3)", "greedy SubTuning", "full finetuning"]
    lines = [
        "# SubTuning accuracy and training step time on 2 CPU cores",
        "",
        f"Machine: {report['machine']['cpu']} ({report['machine']['cpu_count']} cores), no GPU; "
        f"torch {report['machine']['versions']['torch']}, timm {report['machine']['versions']['timm']}. "
        f"Created {report['machine']['created']}; this invocation: wall time {report['seconds'] / 60:.1f} min, "
        f"{report['runs']['trained']} training runs made, {report['runs']['from_log']} taken from the run logs of "
        f"an earlier invocation; all {report['runs']['trained'] + report['runs']['from_log']} training runs' own "
        f"times add up to {report['training_run_seconds'] / 60:.1f} min; 1-minute load average "
        f"{report['load_average']['start'][0]:.1f} at the start, {report['load_average']['end'][0]:.1f} at the end "
        "(other jobs shared the 2 cores)." + (f" {report['note']}" if report.get("note") else ""),
        "",
        f"Settings: `{s['model']}` with ImageNet weights (`--weights offline`), `digits:digit` (scikit-learn's "
        f"1,797 real 8x8 handwritten digits, 10 classes, upscaled to {s['input_size']} px, no augmentation), "
        f"validation on the same held-out {s['val_samples']} images for every sample size; AdamW, cosine schedule "
        f"with {int(100 * s['warmup'])}% warm-up, lr 1e-3 (1e-2 linear probe), weight decay 1e-2, batch {s['batch']}, "
        f"{s['epochs']} epochs or more (at least {s['min_steps']} steps per run: see the epochs column), "
        f"seeds {s['seeds']}; accuracy = after the last epoch, mean ± std over seeds.",
        f"Greedy: forward, epsilon {s['epsilon']}, candidates = the last {s['candidates']} units, at most "
        f"{s['max_units']} units, each candidate scored by {s['folds']}-fold cross-validation inside the training "
        "samples; the chosen set is retrained on all of them and reported on the validation split.",
        "",
        "## Validation accuracy (%)",
        "",
        "| training samples | epochs | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for row in report["accuracy"].values():
        label = f"{row['train_samples']} ({row['train_samples_count']})" if row["train_samples"] == "all" \
            else str(row["train_samples"])
        lines.append(f"| {label} | {row['epochs']} | "
                     + " | ".join(_pct(row[m]["mean"], row[m]["std"]) for m in methods) + " |")
    lines += ["", "Units greedy chose (per seed; CV accuracy inside the training samples → validation accuracy):", ""]
    for row in report["accuracy"].values():
        picks = "; ".join(f"seed {g['seed']}: {','.join(g['units']) or '(none)'} "
                          f"({_pct(g['cv_accuracy'])} → {_pct(g['val_accuracy'])}, {g['search_runs']} runs)"
                          for g in row["greedy SubTuning"]["selections"])
        lines.append(f"- {row['train_samples']} samples: {picks}")
    st = report["step_time"]
    lines += [
        "",
        f"## Training step time (batch {s['batch']}, {s['input_size']} px, fp32, {s['time_steps']} steps each, "
        "variants taking turns)",
        "",
        "| variant | trainable params (M) | ms / step (min) | ms / step (median) | vs full finetuning (min) | "
        "(median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in st.items():
        lines.append(f"| {name} | {r['trainable_params'] / 1e6:.2f} | {r['step_ms_min']:.1f} | "
                     f"{r['step_ms_median']:.1f} | {100 * r['vs_full']:.0f}% | {100 * r['vs_full_median']:.0f}% |")
    lines += [
        "",
        "The prefix cache computes the frozen prefix once per branch point for all 1,797 images and serves "
        "every split, sample size, fold and seed from it; a cached step runs only the branch. "
        "The CPU was shared with other work while this ran: timings are noisy, the minimum is the better "
        "estimate of a step's cost (accuracies are not noisy in that way: the runs are seeded).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="offline")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", default="100,300,0", help="training sample sizes; 0 = all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--min-steps", type=int, default=60, help="more epochs for small sets, up to this many steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=4, help="greedy chooses among the last N units")
    p.add_argument("--max-units", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--time-steps", type=int, default=20)
    p.add_argument("--note", default=None, help="a sentence to print with the results (e.g. about the machine)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/subtune-edge-train-bench", help="run logs (resumable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_accuracy"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.samples = [int(v) for v in args.samples.split(",")]
    torch.set_num_threads(args.threads)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    spec = BackboneSpec(args.model, args.weights)
    steps = step_times(args, spec, log)  # first, in a fresh process: after hundreds of runs timings drift
    counts = {"trained": 0, "from_log": 0}
    accuracy = accuracy_table(args, spec, work, log, counts)
    machine = describe()
    machine["torch_threads"] = args.threads
    machine["device"] = device_name("cpu")
    report = {
        "benchmark": "train_accuracy",
        "settings": {"model": args.model, "weights": args.weights, "data": "digits:digit", "input_size": args.size,
                     "epochs": args.epochs, "min_steps": args.min_steps, "batch": args.batch,
                     "seeds": list(range(args.seeds)),
                     "samples": [n or "all" for n in args.samples], "val_samples": 359, "augment": False,
                     "lr": {"subtune": 1e-3, "linear probe": 1e-2}, "weight_decay": 1e-2,
                     "warmup": TrainConfig().warmup, "folds": args.folds, "candidates": args.candidates,
                     "max_units": args.max_units, "epsilon": args.epsilon, "time_steps": args.time_steps},
        "accuracy": accuracy,
        "step_time": steps,
        "machine": machine,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        # every training run as logged when it ran (an interrupted benchmark resumes from the logs)
        "training_run_seconds": sum(r["seconds"] for f in work.glob("*.json")
                                    for r in json.loads(f.read_text())["runs"].values()),
        "load_average": {"start": list(load0), "end": list(os.getloadavg())},
        "runs": counts,
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} ({report['seconds'] / 60:.1f} min)")
    return report


if __name__ == "__main__":
    main()
