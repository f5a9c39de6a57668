"""Cost as the work grows: k = 1, 2, 4, 8, 16 tasks, plain vs grouped vs stacked branches, ORT CPU.

Reads the ``[k_scaling]`` table of ``subtune_edge/bench/suites/k-scaling.toml``: for each model (resnet50
224 on ``layer4``, EfficientNet-Lite0 224 on its last two units), ``k`` synthetic tasks tuning the
same units on trained-like weights (BatchNorm statistics like a trained network's, so no folded
convolution is all zeros and weight dedup cannot flatter the fused file). For each ``k`` it exports
the plain fused graph and the grouped one (``export --grouped``; one export per ``k``, since a
16-task grouped branch pruned to 4 outputs would still compute 16 groups), and measures them
alternately in one process on the same staged input (the harness's ``measure_pair``); at ``k = 1``
the fused graph is timed against the separate full model. Resident memory of each ONNX Runtime
session is measured in a fresh process (``subtune_edge.bench.memprobe``). The FLOPs-ideal latency is
``L_plain(1) * FLOPs(k) / FLOPs(1)`` from the export's sharing plan.

``stacked`` (``export --stacked``) batches frozen units that several branches share after their
branch points; tasks that tune every unit from their branch point on share none, so its graph is
the plain graph: the sweep checks that (same ops, same weights) and reports plain's figures for it.

    python -m subtune_edge.bench.k_scaling --out benchmarks/results/k-scaling
    python -m subtune_edge.bench.k_scaling --quick --out /tmp/ks     # resnet18 / lite0 at 64 px, k <= 4
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_json, atomic_write_text
from subtune_edge.runtime import make_runner
from subtune_edge.runtime.timing import summarize
from subtune_edge.synthetic import synthetic_task

from .export_time import load, machine, trained_like_weights
from .harness import Budget, measure_pair
from .memprobe import probe
from .settings import RESULTS_DIR
from .suites import SUITES_DIR, tomllib
from .tables import section

log = logging.getLogger(__name__)


def _config(quick: bool) -> dict:
    data = tomllib.loads((SUITES_DIR / "k-scaling.toml").read_text())
    ks = data["k_scaling"]
    cfg = {"ks": list(ks["ks"]), "batches": list(data["batch_sizes"]), "threads": int(data["threads"]),
           "budget": Budget(**data["budget"]).check(), "models": list(ks["models"]), "max_k": ks.get("max_k", {})}
    if quick:
        cfg.update(ks=[1, 2, 4], budget=Budget(warmup=1, min_runs=3, max_runs=10, seconds=0.3), max_k={},
                   models=[{"backbone": "resnet18", "units": "layer4", "input_size": [64, 64]},
                           {"backbone": "tf_efficientnet_lite0", "units": "blocks.6.0,conv_head",
                            "input_size": [64, 64]}])
    return cfg


def _graph_signature(path: Path) -> tuple:
    """What a graph computes, up to node order: its op counts and its initializers' shapes."""
    model = onnx.load(str(path), load_external_data=False)
    return (sorted(Counter(n.op_type for n in model.graph.node).items()),
            sorted(tuple(i.dims) for i in model.graph.initializer))


def _export(tasks, out: Path, weights: str, size, batch_max: int, **kw) -> dict:
    return export_tasks(tasks, out, weights=weights, input_size=size, batch=(1, batch_max), **kw)


def _rss(batch: int, shape, path: Path, threads: int) -> int | None:
    if batch != 1:
        return None  # fresh-process probes at batch 1 only: each loads the model again (time budget)
    probed = probe("ort-cpu", batch, shape, [path], threads)
    return None if probed is None else max(int(probed["growth"]), 0)


def _time_pair(a_path: Path, b_path: Path, feed: dict, threads: int, budget: Budget) -> tuple[list, list]:
    a, b = make_runner("ort-cpu", a_path, threads=threads), make_runner("ort-cpu", b_path, threads=threads)
    try:
        for r in (a, b):
            r.stage(feed)
            r.run_staged()
        return measure_pair([a], [b], budget)
    finally:
        a.deactivate()
        b.deactivate()


@contextlib.contextmanager
def _locked(path: str | None):
    """Hold an exclusive ``flock`` on ``path`` (the machine's benchmark lock) while timing; no-op for None."""
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        waited = time.perf_counter()
        fcntl.flock(fh, fcntl.LOCK_EX)
        log.info("benchmark lock %s taken after %.0f s", path, time.perf_counter() - waited)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_model(spec: dict, cfg: dict, work: Path, lock: str | None = None) -> dict:
    """The sweep for one model: exports per k and variant (unlocked), then every (batch, k) point (locked)."""
    name, units, (h, w) = spec["backbone"], spec["units"], spec["input_size"]
    ks = cfg["ks"]
    weights = trained_like_weights(name, h, work / f"{name}.safetensors")
    backbone = create_backbone(name, weights, **model_args_for_input(name, (h, w)))
    tuned = backbone.parse_units(units)
    tasks = [synthetic_task(backbone, f"t{i:02d}", tuned, 10, seed=i, input_size=(h, w)) for i in range(max(ks))]
    batch_max = max(cfg["batches"])
    exports: dict[tuple[str, int], Path] = {}
    export_s: dict[str, float] = {}
    flops: dict[int, float] = {}
    stacked_same: dict[int, bool] = {}
    for k in ks:
        for variant in ("plain", "grouped", "stacked"):
            if (variant != "plain" and k == 1) or (variant == "stacked" and k != 2):
                continue  # stacked: checked once, at k = 2, to be the plain graph (see the module docstring)
            out = work / f"{name}-{variant}-{k}"
            t0 = time.perf_counter()
            manifest = _export(tasks[:k], out, weights, (h, w), batch_max, separate=(k == 1 and variant == "plain"),
                               grouped=variant == "grouped", stacked=variant == "stacked", verify=k <= 2)
            export_s[f"{variant}-{k}"] = round(time.perf_counter() - t0, 2)
            # verified against the PyTorch task models at k <= 2 (tests/test_grouped.py covers the rest)
            assert k > 2 or manifest["verification"]["passed"], f"{variant} k={k} failed verification"
            exports[(variant, k)] = out / "model.onnx"
            if variant == "plain":
                flops[k] = float(manifest["plan"]["cost"]["fused"]["flops"])
                if k == 1:
                    exports[("separate", 1)] = out / manifest["tasks"][0]["separate"]
        if ("stacked", k) in exports:
            stacked_same[k] = _graph_signature(exports[("stacked", k)]) == _graph_signature(exports[("plain", k)])
            exports[("stacked", k)].unlink()  # same graph as plain: measured once, as plain
    with _locked(lock):
        load_before = load()
        rows = _measure(name, units, (h, w), cfg, exports, flops, stacked_same)
        load_after = load()
    _derive(rows, cfg)
    return {"model": name, "units": units, "input_size": [h, w], "rows": rows, "export_seconds": export_s,
            "load_during": [load_before, load_after]}


def _measure(name, units, size, cfg, exports, flops, stacked_same) -> list[dict]:
    h, w = size
    threads, budget, ks = cfg["threads"], cfg["budget"], cfg["ks"]
    rows = []
    rng = np.random.default_rng(0)
    shape = (3, h, w)
    for batch in cfg["batches"]:
        limit = cfg["max_k"].get(name, {}).get(str(batch))
        feed = {"input": rng.standard_normal((batch, *shape)).astype(np.float32)}
        for k in ks:
            if limit is not None and k > limit:
                continue
            other = ("separate", 1) if k == 1 else ("grouped", k)
            log.info("%s batch %d k=%d: plain vs %s", name, batch, k, other[0])
            a, b = _time_pair(exports[("plain", k)], exports[other], feed, threads, budget)
            plain, second = summarize(a, batch), summarize(b, batch)
            row = {"model": name, "units": units, "input_size": [h, w], "batch": batch, "k": k,
                   "plain": plain.to_json(), "plain_weight_bytes": exports[("plain", k)].stat().st_size,
                   "plain_rss_growth_bytes": _rss(batch, shape, exports[("plain", k)], threads),
                   "fused_flops": flops[k], "stacked_same_graph_as_plain": stacked_same.get(2)}
            if k == 1:
                row["separate"] = second.to_json()
                row["separate_weight_bytes"] = exports[other].stat().st_size
                row["separate_rss_growth_bytes"] = _rss(batch, shape, exports[other], threads)
            else:
                row["grouped"] = second.to_json()
                row["grouped_weight_bytes"] = exports[other].stat().st_size
                row["grouped_rss_growth_bytes"] = _rss(batch, shape, exports[other], threads)
                row["grouped_over_plain"] = second.median_ms / plain.median_ms
            rows.append(row)
    return rows


def _derive(rows: list[dict], cfg: dict) -> None:
    for batch in cfg["batches"]:
        sel = [r for r in rows if r["batch"] == batch]
        base = next((r for r in sel if r["k"] == 1), None)
        for r in sel:
            if base is None:
                continue
            r["ideal_ms"] = base["plain"]["median_ms"] * r["fused_flops"] / base["fused_flops"]
            r["separate_ms_k"] = base["separate"]["median_ms"] * r["k"]  # k separate full models in turn
            r["plain_added_ms_per_task"] = (r["plain"]["median_ms"] - base["plain"]["median_ms"]) / max(r["k"] - 1, 1)
            if "grouped" in r:
                r["grouped_added_ms_per_task"] = (r["grouped"]["median_ms"] - base["plain"]["median_ms"]) / (r["k"] - 1)


def _fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def _mb(v) -> str:
    return _fmt(v / 1e6 if v is not None else None)


def report(results: dict) -> str:
    """The Markdown table: per model and batch, latency, added ms per task, weight bytes and RSS per k."""
    env = results["machine"]
    lines = [f"# k-scaling: plain vs grouped vs stacked, ONNX Runtime CPU, {results['threads']} threads", "",
             f"Machine: {env.get('cpu', env.get('processor', '?'))}, {env.get('cpus_usable')} cores usable, no GPU; "
             f"load average before {results['load_before']}, after {results['load_after']}. Trained-like weights "
             "(BatchNorm statistics ~ a trained network's). `stacked` is the plain graph here (tasks tuning every "
             "unit from their branch point share no frozen unit after it), checked at k = 2: same ops, same weights "
             f"({results['stacked_same']}). RSS: growth of a fresh process loading and running the session, "
             "batch 1 only.",
             "", f"Budget per point: {results['budget']}; plain and grouped alternate round by round.", ""]
    for m in results["models"]:
        lines += section(f"{m['model']} at {m['input_size'][0]}x{m['input_size'][1]}, each task tuning {m['units']}",
                         f"Load average while timing: {m.get('load_during')}.",
                         ["batch", "k", "plain ms", "grouped ms", "grouped / plain", "FLOPs-ideal ms", "k separate ms",
                          "added ms/task plain / grouped", "weights MB plain / grouped", "RSS MB plain / grouped"],
                         "ll" + "r" * 8)
        for r in m["rows"]:
            g = r.get("grouped")
            lines.append(
                f"| {r['batch']} | {r['k']} | {_fmt(r['plain']['median_ms'])} | "
                f"{_fmt(g['median_ms'] if g else None)} | {_fmt(r.get('grouped_over_plain'), 3)} | "
                f"{_fmt(r.get('ideal_ms'))} | {_fmt(r.get('separate_ms_k'))} | "
                f"{_fmt(r.get('plain_added_ms_per_task') if r['k'] > 1 else None, 2)} / "
                f"{_fmt(r.get('grouped_added_ms_per_task'), 2)} | {_mb(r['plain_weight_bytes'])} / "
                f"{_mb(r.get('grouped_weight_bytes'))} | {_mb(r['plain_rss_growth_bytes'])} / "
                f"{_mb(r.get('grouped_rss_growth_bytes'))} |")
        lines.append("")
    if results.get("cut"):
        lines += [f"Cut to fit the time budget: {results['cut']}.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path | None:
    """Latency (with the FLOPs ideal) and resident memory vs k, one row per model, one colour per batch."""
    try:
        import matplotlib  # optional: the benchmark extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: the benchmark extra
    except ImportError:
        return None
    models = results["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, m in zip(axes, models):
        for batch, colour in zip(sorted({r["batch"] for r in m["rows"]}), ("C0", "C1", "C2")):
            sel = [r for r in m["rows"] if r["batch"] == batch]
            ks = [r["k"] for r in sel]
            row[0].plot(ks, [r["plain"]["median_ms"] for r in sel], "o-", color=colour, label=f"plain b{batch}")
            gk = [r["k"] for r in sel if "grouped" in r]
            row[0].plot(gk, [r["grouped"]["median_ms"] for r in sel if "grouped" in r], "s--", color=colour,
                        label=f"grouped b{batch}")
            row[0].plot(ks, [r.get("ideal_ms") for r in sel], ":", color=colour, label=f"FLOPs ideal b{batch}")
            rss = [r for r in sel if r["plain_rss_growth_bytes"] is not None]
            if rss:  # probed at batch 1 only
                row[1].plot([r["k"] for r in rss], [r["plain_rss_growth_bytes"] / 1e6 for r in rss], "o-",
                            color=colour, label=f"plain RSS b{batch}")
                grss = [r for r in rss if r.get("grouped_rss_growth_bytes") is not None]
                row[1].plot([r["k"] for r in grss], [r["grouped_rss_growth_bytes"] / 1e6 for r in grss], "s--",
                            color=colour, label=f"grouped RSS b{batch}")
            if batch == min(r["batch"] for r in m["rows"]):
                row[1].plot(ks, [r["plain_weight_bytes"] / 1e6 for r in sel], "k:", label="plain weights")
        row[0].set_yscale("log")
        for ax, what in zip(row, ("median latency, ms (log)", "MB")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k tasks")
            ax.set_ylabel(what)
            ax.set_title(f"{m['model']} {m['input_size'][0]}px, tuning {m['units']}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS_DIR / "k-scaling"))
    parser.add_argument("--quick", action="store_true", help="small models at 64 px, k <= 4 (a smoke run)")
    parser.add_argument("--models", default=None, help="comma-separated backbones of the suite to run (default all)")
    parser.add_argument("--ks", default=None, help="comma-separated k values (default the suite's; keep 1: the base)")
    parser.add_argument("--lock", default=None, help="flock this file while timing (exports run unlocked)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default the suite's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _config(args.quick)
    if args.models:
        keep = set(args.models.split(","))
        cfg["models"] = [m for m in cfg["models"] if m["backbone"] in keep]
    if args.ks:
        cfg["ks"] = [int(v) for v in args.ks.split(",")]
    if args.batches:
        cfg["batches"] = [int(v) for v in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before, start = load(), time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory(prefix="k-scaling-") as tmp:
        for spec in cfg["models"]:
            models.append(run_model(spec, cfg, Path(tmp), args.lock))
    cut = "; ".join(f"{m} batch {b} only up to k = {k}" for m, lim in cfg["max_k"].items() for b, k in lim.items())
    results = {"machine": machine(), "threads": cfg["threads"], "budget": vars(cfg["budget"]), "ks": cfg["ks"],
               "load_before": before, "load_after": load(), "seconds": round(time.perf_counter() - start, 1),
               "weights": "trained-like (timm random init, BatchNorm scale ~ N(1, 0.1), shift ~ N(0, 0.1))",
               "cut": cut or None, "models": models,
               "stacked_same": {m["model"]: m["rows"][0]["stacked_same_graph_as_plain"] for m in models}}
    name = "k_scaling" + ("_quick" if args.quick else "")
    name += (f"-{args.models.replace(',', '+')}" if args.models else "") + (f"-k{args.ks.replace(',', '-')}"
                                                                            if args.ks else "")
    atomic_write_json(out / f"{name}.json", results)
    atomic_write_text(out / f"{name}.md", report(results) + "\n")
    plot(results, out / f"{name}.png")
    print(json.dumps({"out": str(out), "seconds": results["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
