"""SubTuning's claims measured: linear probe, fixed SubTuning rules, greedy SubTuning, Siamese SubTuning
and full finetuning at 100 / 300 / all training samples on three offline data sets, mean ± std over
seeds, with what each method cost to train.

Data (all offline, see ``--data`` in the README): ``digits:digit`` (scikit-learn's 1,797 real 8x8
digits), ``digits-c:digit`` (the same digits corrupted as in CIFAR-10-C: Gaussian noise, blur,
contrast, JPEG, seeded; the paper's corrupted-data setting) and ``skimage-textures:N`` (crops of the
photographs bundled with scikit-image: a natural-photo domain). Backbone: the ImageNet-pretrained
``tf_efficientnet_lite0`` (``--weights offline``). Each data set keeps one held-out validation split
for every sample size: the only split any reported number comes from.

Methods:

linear probe          S = {}
SubTuning (last 1)    S = {conv_head}
SubTuning (last 3)    S = {blocks.5.3, blocks.6.0, conv_head}
greedy SubTuning      the paper's Algorithm 1, forward, epsilon 0.01, no unit cap, over the last
                      ``--candidates`` units; every candidate scored by repeated k-fold *inside the
                      training samples* (folds x search seeds, see ``--cv``), ties within one standard
                      error go to the cheaper set; the chosen set is then trained on all training
                      samples with each seed and reported on the validation split
greedy (both)         forward and backward, the better kept (``--both-at`` sizes of ``--both-on`` data)
Siamese SubTuning     the last 3 units, head on [tuned, frozen] features (``--siamese-at`` sizes)
full finetuning       every unit; learning rate swept (``--ft-lrs``) on the first seed and the best one
                      *on the validation split* run with every seed: an oracle choice that favours
                      full finetuning, so a claim that SubTuning beats it is conservative

Runs go through the library (:mod:`subtune_edge.search`: run logs in ``--work``, so an interrupted
benchmark resumes where it stopped; a process executor with ``--workers`` one-thread workers).

    python -m subtune_edge.bench.train_accuracy         # writes benchmarks/results/train_accuracy.{md,json,png}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.search import Evaluator, GreedyConfig, RunLog, SearchSetup, greedy_select, make_executor
from subtune_edge.search.greedy import SetCost
from subtune_edge.train import TrainConfig, device_name, get_backbone, get_data

from .cuda_train_step import prepare, summary
from .environment import describe
from .settings import RESULTS_DIR

METHODS = ["linear probe", "SubTuning (last 1)", "SubTuning (last 3)", "greedy SubTuning", "greedy (both)",
           "Siamese SubTuning (last 3)", "full finetuning"]


def _pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _cv_plan(args, n: int) -> tuple[int, tuple[int, ...]]:
    """(folds, search seeds) of greedy's repeated k-fold at ``n`` samples: more repeats where runs are cheap."""
    for rule in args.cv.split(","):
        size, _, fs = rule.partition("=")
        folds, _, seeds = fs.partition("x")
        if int(size) == n:
            return int(folds), tuple(100 + i for i in range(int(seeds)))
    raise SystemExit(f"--cv has no rule for {n or 'all'} samples (e.g. {n}=3x1)")


class Cell:
    """One (data set, sample size): its setup, its run logs and the rows it adds to the report."""

    def __init__(self, args, spec: BackboneSpec, source: str, n: int, work: Path, executor, counts: dict):
        self.args, self.spec, self.source, self.n, self.executor, self.counts = args, spec, source, n, executor, counts
        backbone = get_backbone(spec)
        self.names = backbone.unit_names
        self.data = DataSpec(source, (args.size, args.size), train_samples=n or None)
        self.n_train = len(get_data(self.data, backbone.data_config).train)
        self.n_val = len(get_data(self.data, backbone.data_config).val)
        # at least --min-steps optimisation steps per run: small sets get more epochs
        self.epochs = max(args.epochs, math.ceil(args.min_steps / math.ceil(self.n_train / args.batch)))
        self.config = TrainConfig(epochs=self.epochs, batch_size=args.batch, device="cpu", augment=False,
                                  cache_whole_set=1e9)
        self.seeds = tuple(range(args.seeds))
        self.setup = SearchSetup(spec, self.data, self.config, seeds=self.seeds)
        self.prefix = work / f"{_slug(source)}_n{n}"
        self.evaluators: list[Evaluator] = []
        self.val = self.evaluator(self.setup, "val")
        self.cost = SetCost(backbone, (args.size, args.size))

    def evaluator(self, setup: SearchSetup, name: str) -> Evaluator:
        ev = Evaluator(setup, self.executor, RunLog(f"{self.prefix}_{name}.json", setup.context()))
        self.evaluators.append(ev)
        return ev

    def count(self) -> None:
        """Add the cell's runs to the invocation's counts, once per evaluator (their counters are cumulative)."""
        for ev in self.evaluators:
            self.counts["trained"] += ev.new_runs
            self.counts["from_log"] += ev.reused_runs

    def _row(self, ev: Evaluator, units, extra: dict | None = None) -> dict:
        score = ev.score(tuple(units))
        per_seed = [ev.log.get(sp.key)["accuracy"] for sp in ev.setup.specs(tuple(ev.order(units)))]
        return {"mean": score.mean, "std": score.std, "per_seed": per_seed, "runs": score.runs,
                "units": list(ev.order(units)), "train_seconds": score.seconds / score.runs,
                "branch_mflops": self.cost.flops(units) / 1e6, "params_m": self.cost.params(units) / 1e6,
                **(extra or {})}

    def fixed(self) -> dict:
        sets = {"linear probe": (), "SubTuning (last 1)": tuple(self.names[-1:]),
                "SubTuning (last 3)": tuple(self.names[-3:])}
        self.val.score_many(list(sets.values()))  # together: the executor runs them side by side
        return {name: self._row(self.val, units) for name, units in sets.items()}

    def siamese(self) -> dict:
        ev = self.evaluator(replace(self.setup, siamese=True), "siamese")
        return {"Siamese SubTuning (last 3)": self._row(ev, tuple(self.names[-3:]))}

    def full_finetune(self) -> dict:
        sweep = {}
        evs = {lr: self.evaluator(replace(self.setup, config=replace(self.config, lr=lr), seeds=self.seeds[:1]),
                                  f"ft_lr{lr:g}") for lr in self.args.ft_lrs}
        for lr, ev in evs.items():
            sweep[f"{lr:g}"] = ev.score(tuple(self.names)).mean
        best = max(sweep, key=sweep.get)
        ev = self.evaluator(replace(self.setup, config=replace(self.config, lr=float(best))), f"ft_lr{best}")
        return {"full finetuning": self._row(ev, self.names, {"lr": float(best), "lr_sweep_seed0": sweep})}

    def greedy(self, direction: str) -> dict:
        folds, search_seeds = _cv_plan(self.args, self.n)
        cv = SearchSetup(self.spec, self.data, self.config, seeds=search_seeds, folds=folds)
        log = RunLog(f"{self.prefix}_greedy.json", cv.context())
        g = greedy_select(cv, GreedyConfig(direction, self.args.epsilon,
                                           candidates=tuple(self.names[-self.args.candidates:])),
                          executor=self.executor, log=log)
        self.counts["trained"] += g.new_runs
        self.counts["from_log"] += g.reused_runs
        name = "greedy SubTuning" if direction == "forward" else "greedy (both)"
        search = {"direction": g.direction, "cv_accuracy": g.accuracy, "cv_std": g.std, "folds": folds,
                  "search_seeds": len(search_seeds), "search_runs": g.runs, "search_run_seconds": g.run_seconds,
                  "rounds": {d: len(s["rounds"]) for d, s in g.searches.items()},
                  "ties_to_cheaper": sum(r["best"] != r["top"] for s in g.searches.values() for r in s["rounds"]
                                         if r["accepted"])}
        row = self._row(self.val, g.units, search)
        # what the method cost: the whole search plus the final training (one seed's)
        row["train_seconds"] = g.run_seconds + row["train_seconds"]
        return {name: row}


def accuracy_table(args, spec: BackboneSpec, work: Path, log, counts: dict) -> dict:
    cells = [(source, n) for source in args.data for n in args.samples]
    report: dict = {}
    with make_executor(args.workers, "cpu", kind="process" if args.workers > 1 else "local") as executor:
        bar = tqdm(cells, desc="train_accuracy", unit="cell", disable=args.quiet)
        for source, n in bar:
            t0 = time.perf_counter()
            bar.set_postfix_str(f"{source} n={n or 'all'}")
            cell = Cell(args, spec, source, n, work, executor, counts)
            row = {}
            row.update(cell.fixed())
            row.update(cell.greedy("forward"))
            if n in args.both_at and source in args.both_on:
                row.update(cell.greedy("both"))
            if n in args.siamese_at:
                row.update(cell.siamese())
            row.update(cell.full_finetune())
            cell.count()
            row.update(data=source, train_samples=n or "all", train_samples_count=cell.n_train,
                       val_samples=cell.n_val, epochs=cell.epochs, seconds=time.perf_counter() - t0)
            report.setdefault(source, {})[str(n or "all")] = row
            log(f"{source} n={n or 'all'}: " + ", ".join(f"{k} {_pct(v['mean'], v['std'])}" for k, v in row.items()
                                                         if isinstance(v, dict)) + f" ({row['seconds']:.0f} s)")
    return report


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


DATA_LABELS = {"digits": "digits (real 8x8 handwritten digits)", "digits-c": "corrupted digits (CIFAR-10-C recipe)",
               "skimage-textures": "photo crops (scikit-image photographs)"}


def _label(source: str) -> str:
    return DATA_LABELS.get(source.split(":")[0], source) + f" `{source}`"


def claims(report: dict) -> list[dict]:
    """The paper's claims, each with the numbers that decide it here (differences in accuracy points)."""
    acc = report["accuracy"]
    out = []

    def diff(row, a, b):
        return 100 * (row[a]["mean"] - row[b]["mean"])

    smallest = {src: rows[min(rows, key=lambda k: rows[k]["train_samples_count"])] for src, rows in acc.items()}
    largest = {src: rows[max(rows, key=lambda k: rows[k]["train_samples_count"])] for src, rows in acc.items()}
    scarce = {src: diff(r, "greedy SubTuning", "full finetuning") for src, r in smallest.items()}
    out.append({"claim": "SubTuning beats full finetuning when data is scarce (fewest samples)",
                "figures": {src: round(v, 1) for src, v in scarce.items()},
                "holds": all(v > 0 for v in scarce.values())})
    close = {src: diff(r, "greedy SubTuning", "full finetuning") for src, r in largest.items()}
    out.append({"claim": "SubTuning is close to full finetuning with all the data (within 1 point)",
                "figures": {src: round(v, 1) for src, v in close.items()},
                "holds": all(v > -1.0 for v in close.values())})
    corrupted = {f"{src} n={k}": diff(r, "greedy SubTuning", "full finetuning")
                 for src, rows in acc.items() if src.startswith("digits-c") for k, r in rows.items()}
    if corrupted:
        out.append({"claim": "SubTuning beats full finetuning on corrupted data",
                    "figures": {k: round(v, 1) for k, v in corrupted.items()},
                    "holds": all(v > 0 for v in corrupted.values())})
    fixed = {f"{src} n={k}": 100 * (r["greedy SubTuning"]["mean"]
                                    - max(r["SubTuning (last 1)"]["mean"], r["SubTuning (last 3)"]["mean"]))
             for src, rows in acc.items() for k, r in rows.items()}
    out.append({"claim": "greedy selection is at least as good as any fixed rule (last 1, last 3)",
                "figures": {k: round(v, 1) for k, v in fixed.items()},
                "holds": all(v >= 0 for v in fixed.values())})
    both = {f"{src} n={k}": 100 * (r["greedy (both)"]["mean"] - r["greedy SubTuning"]["mean"])
            for src, rows in acc.items() for k, r in rows.items() if "greedy (both)" in r}
    if both:
        out.append({"claim": "greedy 'both' (forward and backward) beats forward alone",
                    "figures": {k: round(v, 1) for k, v in both.items()},
                    "holds": all(v > 0 for v in both.values())})
    return out


def plot(report: dict, path: Path) -> Path:
    """Accuracy vs training samples per method, one panel per data set (mean ± std over seeds)."""
    import matplotlib  # plotting only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # as above

    acc = report["accuracy"]
    fig, axes = plt.subplots(1, len(acc), figsize=(5 * len(acc), 4), squeeze=False)
    for ax, (src, rows) in zip(axes[0], acc.items()):
        ordered = sorted(rows.values(), key=lambda r: r["train_samples_count"])
        for method in METHODS:
            pts = [(r["train_samples_count"], r[method]) for r in ordered if method in r]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [100 * m["mean"] for _, m in pts]
            es = [100 * m["std"] for _, m in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method,
                        linestyle="--" if method == "full finetuning" else "-")
        ax.set_xscale("log")
        ax.set_title(src)
        ax.set_xlabel("training samples")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{report['settings']['model']} ({report['settings']['weights']} ImageNet weights), "
                 f"{report['settings']['input_size']} px, mean ± std over {len(report['settings']['seeds'])} seeds")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def markdown(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [
        "# SubTuning's claims on three offline data sets, 2 CPU cores",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), no GPU; torch {m['versions']['torch']}, "
        f"timm {m['versions']['timm']}; {s['workers']} one-thread worker process(es). Created {m['created']}; this "
        f"invocation: wall time {report['seconds'] / 60:.1f} min, {report['runs']['trained']} training runs made, "
        f"{report['runs']['from_log']} taken from run logs; all runs' own training times add up to "
        f"{report['training_run_seconds'] / 60:.1f} min; 1-minute load average "
        f"{report['load_average']['start'][0]:.1f} at the start, {report['load_average']['end'][0]:.1f} at the end."
        + (f" {report['note']}" if report.get("note") else ""),
        "",
        f"Settings: `{s['model']}` with ImageNet weights (`--weights {s['weights']}`), images at {s['input_size']} px, "
        f"no augmentation; AdamW, cosine schedule with warm-up, lr 1e-3 for SubTuning (1e-2 linear probe), "
        f"full finetuning lr swept over {s['ft_lrs']} (best on the validation split with the first seed: an oracle "
        f"that favours it), batch {s['batch']}, {s['epochs']} epochs or more (at least {s['min_steps']} steps per "
        f"run), seeds {s['seeds']}; accuracy after the last epoch on each data set's held-out validation split, "
        "mean ± std over seeds.",
        f"Greedy: forward, epsilon {s['epsilon']}, no unit cap, candidates = the last {s['candidates']} units, "
        f"scored by repeated k-fold inside the training samples ({s['cv']}: samples=folds x search seeds), ties "
        "within one standard error to the set with fewer branch FLOPs; the chosen set trained on all training "
        "samples with each seed and reported on the validation split, which the search never saw.",
        "",
        "![accuracy vs training samples](train_accuracy.png)",
        "",
    ]
    for src, rows in report["accuracy"].items():
        methods = [mm for mm in METHODS if any(mm in r for r in rows.values())]
        lines += [f"## {_label(src)}", "",
                  "Validation accuracy (%), mean ± std over seeds; below it the training time per seed (s).", "",
                  "| training samples (val) | epochs | " + " | ".join(methods) + " |",
                  "|---|---:|" + "---:|" * len(methods)]
        for r in rows.values():
            cells = [_pct(r[mm]["mean"], r[mm]["std"]) if mm in r else "" for mm in methods]
            lines.append(f"| {r['train_samples']} ({r['train_samples_count']} / {r['val_samples']}) | {r['epochs']} | "
                         + " | ".join(cells) + " |")
        lines += ["", "| training samples | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for r in rows.values():
            cells = [f"{r[mm]['train_seconds']:.1f}" if mm in r else "" for mm in methods]
            lines.append(f"| {r['train_samples']} | " + " | ".join(cells) + " |")
        lines += ["", "Greedy's choice (CV score inside the training samples → validation accuracy), its search cost:",
                  ""]
        for r in rows.values():
            for name in ("greedy SubTuning", "greedy (both)"):
                if name in r:
                    g = r[name]
                    lines.append(
                        f"- {r['train_samples']} samples, {name}: {','.join(g['units']) or '(none: linear probe)'} "
                        f"({g['direction']} kept; CV {_pct(g['cv_accuracy'], g['cv_std'])} → "
                        f"{_pct(g['mean'], g['std'])}); {g['search_runs']} runs "
                        f"({g['folds']} folds x {g['search_seeds']} seeds per set), "
                        f"{g['search_run_seconds']:.0f} s of training, rounds {g['rounds']}, "
                        f"{g['ties_to_cheaper']} round(s) where the cheaper tie won; branch {g['branch_mflops']:.1f} "
                        f"MFLOPs, {g['params_m']:.2f} M tuned params")
            ft = r["full finetuning"]
            lines.append(f"- {r['train_samples']} samples, full finetuning lr sweep (seed 0): "
                         + ", ".join(f"{lr}: {_pct(a)}" for lr, a in ft["lr_sweep_seed0"].items())
                         + f" → lr {ft['lr']:g}")
        lines.append("")
    lines += ["## The paper's claims, here", "",
              "| claim | figures (accuracy points) | holds here |", "|---|---|---|"]
    for c in report["claims"]:
        figs = ", ".join(f"{k}: {v:+.1f}" for k, v in c["figures"].items())
        lines.append(f"| {c['claim']} | {figs} | {'yes' if c['holds'] else 'no'} |")
    if report.get("step_time"):
        st = report["step_time"]
        lines += ["", f"## Training step time (batch {s['batch']}, {s['input_size']} px, fp32, variants taking turns)",
                  "", "| variant | trainable params (M) | ms / step (min) | ms / step (median) | vs full (min) |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in st.items():
            lines.append(f"| {name} | {r['trainable_params'] / 1e6:.2f} | {r['step_ms_min']:.1f} | "
                         f"{r['step_ms_median']:.1f} | {100 * r['vs_full']:.0f}% |")
    lines.append("")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="offline")
    p.add_argument("--data", default="digits:digit,digits-c:digit,skimage-textures:100",
                   help="data sets, comma-separated")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", default="100,300,0", help="training sample sizes; 0 = all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--min-steps", type=int, default=48, help="more epochs for small sets, up to this many steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cv", default="100=3x2,300=3x1,0=2x1",
                   help="greedy's repeated k-fold per sample size: SAMPLES=FOLDSxSEEDS,...")
    p.add_argument("--candidates", type=int, default=6, help="greedy chooses among the last N units")
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--both-at", default="100", help="sample sizes where greedy also runs 'both'")
    p.add_argument("--both-on", default="digits:digit", help="data sets where greedy also runs 'both' (backward "
                   "searches start from every candidate: the costliest runs)")
    p.add_argument("--siamese-at", default="100", help="sample sizes with Siamese SubTuning")
    p.add_argument("--ft-lrs", default="3e-4,1e-3,3e-3", help="full finetuning's learning-rate sweep")
    p.add_argument("--workers", type=int, default=2, help="one-thread worker processes (1: this process)")
    p.add_argument("--time-steps", type=int, default=0, help="also time N training steps per variant (0: skip)")
    p.add_argument("--note", default=None, help="a sentence to print with the results (e.g. about the machine)")
    p.add_argument("--work", default="/tmp/subtune-edge-train-bench", help="run logs (resumable)")
    p.add_argument("--out", default=str(RESULTS_DIR / "train_accuracy"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    args.samples = _sizes(args.samples)
    args.both_at, args.siamese_at = _sizes(args.both_at), _sizes(args.siamese_at)
    args.both_on = [d.strip() for d in args.both_on.split(",") if d.strip()]
    args.ft_lrs = [float(v) for v in args.ft_lrs.split(",")]
    threads = 1 if args.workers > 1 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    log = (lambda msg: None) if args.quiet else (lambda msg: tqdm.write(msg))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()
    spec = BackboneSpec(args.model, args.weights)
    steps = step_times(args, spec, log) if args.time_steps else None
    counts = {"trained": 0, "from_log": 0}
    accuracy = accuracy_table(args, spec, work, log, counts)
    machine = describe()
    machine["device"] = device_name("cpu")
    report = {
        "benchmark": "train_accuracy",
        "settings": {"model": args.model, "weights": args.weights, "data": args.data, "input_size": args.size,
                     "epochs": args.epochs, "min_steps": args.min_steps, "batch": args.batch,
                     "seeds": list(range(args.seeds)), "samples": [n or "all" for n in args.samples],
                     "augment": False, "lr": {"subtune": 1e-3, "linear probe": 1e-2}, "ft_lrs": args.ft_lrs,
                     "cv": args.cv, "candidates": args.candidates, "epsilon": args.epsilon,
                     "both_at": args.both_at, "both_on": args.both_on, "siamese_at": args.siamese_at,
                     "workers": args.workers},
        "accuracy": accuracy,
        "step_time": steps,
        "machine": machine,
        "seconds": time.perf_counter() - t0,
        "load_average": {"start": list(load0), "end": list(os.getloadavg())},
        "runs": counts,
        # every run as logged when it ran, this invocation's and earlier ones' (the benchmark resumes)
        "training_run_seconds": sum(r["seconds"] for f in work.glob("*.json")
                                    for r in json.loads(f.read_text())["runs"].values()),
        "note": args.note,
    }
    report["claims"] = claims(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(report, out.with_suffix(".png"))
    for suffix, text in ((".json", json.dumps(report, indent=1) + "\n"), (".md", markdown(report))):
        tmp = out.with_name(out.name + suffix + ".partial")
        tmp.write_text(text)
        os.replace(tmp, out.with_suffix(suffix))
    log(f"wrote {out.with_suffix('.json')}, .md and .png ({report['seconds'] / 60:.1f} min)")
    return report


if __name__ == "__main__":
    main()
