"""Wall time of a 6-run finetuning profile on 1 vs 2 Ray workers (one CPU thread each).

The profile: ``resnet18`` (random weights), digits, 48x48 px, every single unit of ``--units`` plus
the linear probe and full finetuning references, ``--seeds`` seeds: 6 runs with the defaults (4
units + 2 references, 1 seed). Each configuration starts a fresh local Ray instance
(``ray.init(num_cpus=W)``) and is timed end to end as a user waits for it: Ray start-up, workers
building the backbone and data, the runs, results streamed into a fresh run log. Configurations
alternate (1, 2, 1, 2, ...) so a change in the machine's background load hits both. As a reference
it also times the same profile in this process with the local executor on all cores' threads.

    python -m subtune_edge.bench.ray_scaling                      # writes benchmarks/results/ray_scaling.{json,md}
    python -m subtune_edge.bench.ray_scaling --repeats 1 --epochs 1 --out /tmp/rs   # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from subtune_edge.backbone import BackboneSpec
from subtune_edge.data import DataSpec
from subtune_edge.search import LocalExecutor, RayExecutor, RunLog, SearchSetup, finetuning_profile
from subtune_edge.train import TrainConfig, get_backbone, get_data

from .environment import cpu_name
from .settings import RESULTS_DIR


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    return {"machine": platform.machine(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "ray": _version("ray"), "timm": _version("timm")}}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _setup(args):
    return SearchSetup(BackboneSpec(args.model, "random"),
                       DataSpec(args.data, (args.size, args.size), train_samples=args.train_samples,
                                val_samples=args.val_samples),
                       TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device="cpu",
                                   prefix_cache=args.prefix_cache),
                       seeds=tuple(range(args.seeds)))


def time_profile(args, workers: int | None, log_dir: Path) -> dict:
    """One profile; ``workers`` None: the local executor in this process."""
    setup = _setup(args)
    units = args.units.split(",")
    log = RunLog(log_dir / f"runs-{workers}-{time.monotonic_ns()}.json", setup.context())
    load_before = _load()
    t0 = time.perf_counter()
    init_s = 0.0
    if workers is None:
        executor = LocalExecutor("cpu")
    else:
        import ray  # optional: the [dist] extra

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        executor = RayExecutor(cpus_per_run=1)
        init_s = time.perf_counter() - t0
        # start every worker and let it build the backbone and the data (what its first run would do), so the
        # profile phase below times the runs themselves; both phases are in the wall time
        warm = ray.remote(_warm_worker).options(num_cpus=1)
        ray.get([warm.remote(setup.backbone, setup.data) for _ in range(workers)])
    warm_s = time.perf_counter() - t0 - init_s
    t_profile = time.perf_counter()
    try:
        prof = finetuning_profile(setup, (1,), units, executor=executor, log=log)
    finally:
        if workers is not None:
            ray.shutdown()
    wall = time.perf_counter() - t0
    profile_s = time.perf_counter() - t_profile
    runs = list(log.runs.values())
    return {"executor": "local (this process)" if workers is None else f"ray, {workers} worker(s)",
            "workers": workers, "wall_s": wall, "ray_init_s": init_s,
            "warm_s": warm_s, "profile_s": profile_s, "runs": len(runs), "new_runs": prof.new_runs,
            "run_seconds_sum": sum(r["seconds"] for r in runs),
            "run_seconds": {r["key"]: round(r["seconds"], 3) for r in runs},
            "accuracy": {r["key"]: r["accuracy"] for r in runs},
            "load_before": load_before, "load_after": _load()}


def _spin(seconds: float, barrier, results) -> None:
    torch.set_num_threads(1)
    a = torch.randn(192, 192)
    barrier.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a = torch.tanh(a @ a)
        n += 1
    results.put(n)


def headroom(seconds: float = 5.0) -> dict:
    """What the machine gives two CPU-bound processes right now: the throughput of 2 one-thread processes
    spinning on matmuls together, over 1 alone (2.0 on 2 idle cores; lower when other jobs hold the cores)."""
    ctx = mp.get_context("spawn")
    out = {}
    for procs in (1, 2):
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_spin, args=(seconds, barrier, results)) for _ in range(procs)]
        for pr in ps:
            pr.start()
        out[procs] = sum(results.get() for _ in ps)
        for pr in ps:
            pr.join()
    return {"iterations_1": out[1], "iterations_2": out[2], "ratio": out[2] / out[1], "seconds": seconds,
            "load": _load()}


def _warm_worker(backbone_spec, data_spec) -> int:
    torch.set_num_threads(1)
    get_data(data_spec, get_backbone(backbone_spec).data_config)
    return os.getpid()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--data", default="digits:digit")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--units", default="layer3.0,layer3.1,layer4.0,layer4.1")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=512)
    p.add_argument("--val-samples", type=int, default=200)
    p.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=False,
                   help="Off by default: every run then pays its whole forward pass (CPU-bound runs).")
    p.add_argument("--repeats", type=int, default=2, help="Alternating rounds of (1 worker, 2 workers).")
    p.add_argument("--local", action="store_true",
                   help="Also time the profile in this process (local executor, all cores' threads).")
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    get_backbone(_setup(args).backbone)  # the driver's own copy (unit names), before any timing
    rows = []
    probes = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            probes.append(headroom())
            print(f"headroom: 2 processes get {probes[-1]['ratio']:.2f}x one process's throughput", flush=True)
            for workers in (1, 2):
                row = time_profile(args, workers, Path(tmp)) | {"round": r + 1}
                rows.append(row)
                print(f"round {r + 1}: {row['executor']}: {row['wall_s']:.1f} s, runs phase "
                      f"{row['profile_s']:.1f} s ({row['runs']} runs)", flush=True)
        if args.local:
            row = time_profile(args, None, Path(tmp)) | {"round": 1, "torch_threads": torch.get_num_threads()}
            rows.append(row)
            print(f"reference: {row['executor']}, {row['torch_threads']} threads: {row['wall_s']:.1f} s", flush=True)

    def stat(f, key):
        return {w: f(r[key] for r in rows if r["workers"] == w) for w in (1, 2)}

    probes.append(headroom())
    best, med = stat(min, "wall_s"), stat(statistics.median, "wall_s")
    pbest, pmed = stat(min, "profile_s"), stat(statistics.median, "profile_s")
    accs = [r["accuracy"] for r in rows]
    result = {
        "benchmark": "ray_scaling", "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"windows": [1], "cpus_per_run": 1},
        "rows": rows, "headroom": probes,
        "summary": {"best_wall_s": best, "median_wall_s": med, "speedup_best": best[1] / best[2],
                    "speedup_median": med[1] / med[2], "best_profile_s": pbest, "median_profile_s": pmed,
                    "profile_speedup_best": pbest[1] / pbest[2], "profile_speedup_median": pmed[1] / pmed[2],
                    "same_accuracies": all(a == accs[0] for a in accs)},
        "note": "The 2 cores are shared with other jobs running at the same time (see the load averages); "
                "each configuration starts its own Ray instance, and the times include Ray start-up.",
    }
    (out / "ray_scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ray_scaling.md").write_text(_markdown(json.loads(json.dumps(result))))
    sm = result["summary"]
    print(f"speed-up 2 vs 1 worker: wall {sm['speedup_best']:.2f}x (best) {sm['speedup_median']:.2f}x (median); "
          f"runs phase {sm['profile_speedup_best']:.2f}x (best) {sm['profile_speedup_median']:.2f}x (median); "
          f"wrote {out / 'ray_scaling.md'}")
    return result


def _markdown(res: dict) -> str:
    m, s, sm = res["machine"], res["settings"], res["summary"]
    n_runs = res["rows"][0]["runs"]
    lines = [
        "# A profile on 1 vs 2 Ray workers",
        "",
        f"A {n_runs}-run finetuning profile: `{s['model']}` (random weights) on `{s['data']}` at "
        f"{s['size']}x{s['size']} px, units {s['units']} one at a time plus the linear probe and full "
        f"finetuning, {s['seeds']} seed(s), {s['epochs']} epochs, batch {s['batch_size']}, "
        f"{s['train_samples']} train / {s['val_samples']} val samples, prefix cache "
        f"{'on' if s['prefix_cache'] else 'off (every run pays its whole forward pass)'}. One CPU thread per run; each "
        "configuration starts a fresh local Ray instance (`ray.init(num_cpus=W)`), and its wall time covers "
        "Ray start-up, starting the workers (each builds the backbone and data once, timed as its own phase), "
        "and the runs phase: every run, streamed into a fresh run log.",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']} usable cores, {m['machine']}, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; torch {m['versions']['torch']}, "
        f"Ray {m['versions']['ray']}. The load averages below and the headroom probe show how busy the "
        "cores were: on a shared machine the absolute times and the speed-up are noisy.",
        "",
        "| round | executor | wall time | `ray.init` | workers start + load model, data | runs phase | "
        "sum of run times | load before -> after |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        ex = r["executor"] + (f", {r['torch_threads']} torch threads" if r.get("torch_threads") else "")
        lines.append(f"| {r['round']} | {ex} | {r['wall_s']:.1f} s | {r['ray_init_s']:.1f} s | {r['warm_s']:.1f} s | "
                     f"**{r['profile_s']:.1f} s** | {r['run_seconds_sum']:.1f} s | "
                     f"{r['load_before']} -> {r['load_after']} |")
    lines += [
        "",
        f"Speed-up, 2 workers vs 1, runs phase: **{sm['profile_speedup_best']:.2f}x** on the best times "
        f"({sm['best_profile_s']['1']:.1f} s -> {sm['best_profile_s']['2']:.1f} s), "
        f"{sm['profile_speedup_median']:.2f}x on the medians. End to end (with Ray start-up and worker "
        f"start): {sm['speedup_best']:.2f}x best ({sm['best_wall_s']['1']:.1f} s -> "
        f"{sm['best_wall_s']['2']:.1f} s), {sm['speedup_median']:.2f}x median. Same accuracies in every "
        f"configuration: {'yes' if sm['same_accuracies'] else 'no'}.",
        "",
        "The machine's headroom, measured before each round and at the end: the throughput of two one-thread "
        "processes spinning on matmuls together, over one alone (2.0 on 2 idle cores): "
        + ", ".join(f"**{p['ratio']:.2f}x** (load {p['load']})" for p in res["headroom"])
        + ". That is the most any 2-worker speed-up could be at the time.",
        "",
        "Runs are independent, so the ideal is 2x on 2 idle cores; what keeps it below: Ray start-up and each "
        "worker building the backbone and data once (serial costs), the runs not being equally long (full "
        "finetuning is the longest; the last run can leave a worker idle), and the other jobs on the cores.",
        "",
        "Written by `python -m subtune_edge.bench.ray_scaling`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
