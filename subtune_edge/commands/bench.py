"""`bench`: measure what each task adds, fused vs separate full copies."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import SubtuneError
from ._options import split_csv


def _ints(ctx, param, value):
    try:
        return [int(v) for v in split_csv(value)] or None
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers (for example 1,8)") from None


def _progress():
    from tqdm import tqdm

    bar = tqdm(total=1, unit="point", dynamic_ncols=True)

    def update(label: str, done: int, total: int) -> None:
        bar.total = max(total, 1)
        bar.n = done
        bar.set_description(label)
        bar.refresh()
    return bar, update


@click.command()
@click.argument("export_dir", required=False, type=click.Path(file_okay=False))
@click.option("--suite", default=None, help="A suite in benchmarks/suites (cpu-quick, desktop-gpu, jetson-orin) or "
                                            "a .toml path; builds its own export from untrained tasks.")
@click.option("--backend", "backends", default=None,
              help="Comma-separated: torch-cpu, torch-cuda[+compile|+graphs], ort-cpu, ort-cuda, ort-trt, trt. "
                   "Default: the suite's, else ort-cpu.")
@click.option("--batch", "batches", default=None, callback=_ints, help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--results", "results_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for results.json, report.md and the plots.")
@click.option("--task-dir", default=None, type=click.Path(file_okay=False),
              help="Task files of the export, needed for the torch backends.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per session (recorded). Default: runtime's.")
@click.option("--seconds", type=float, default=None, help="Time budget per measurement point.")
@click.option("--max-tasks", type=int, default=None, help="Measure k = 1..N for the first N tasks only.")
def bench(export_dir, suite, backends, batches, results_dir, task_dir, threads, seconds, max_tasks) -> None:
    """Measure fused vs separate latency and memory for k = 1..N tasks.

    \b
    Examples:
      subtune-edge bench demo-out/export --backend ort-cpu --batch 1,8 --results demo-out/bench
      subtune-edge bench --suite cpu-quick --results benchmarks/results/cpu-quick
    """
    import dataclasses

    from benchmarks import BenchConfig, load_suite, run_bench, run_suite, write_report

    if bool(export_dir) == bool(suite):
        raise click.UsageError("give either EXPORT_DIR or --suite")
    backend_list = split_csv(backends) or None
    bar, progress = _progress()
    try:
        if suite:
            s = load_suite(suite)
            cfg = s.config
            budget = dataclasses.replace(cfg.budget, seconds=seconds) if seconds else cfg.budget
            s.config = dataclasses.replace(cfg, threads=threads or cfg.threads, budget=budget, max_tasks=max_tasks)
            results, paths = run_suite(s, results_dir, backends=backend_list, batch_sizes=batches, progress=progress)
        else:
            tasks = backbone = None
            if task_dir:
                from benchmarks.harness import read_manifest

                from ..multitask import backbone_for_tasks
                from ..task import load_tasks

                manifest = read_manifest(Path(export_dir))
                tasks = load_tasks([t["name"] for t in manifest["tasks"]], task_dir)
                backbone = backbone_for_tasks(tasks, manifest["backbone"].get("weights"))
            config = BenchConfig(backends=backend_list or ["ort-cpu"], batch_sizes=batches or [1], threads=threads,
                                 max_tasks=max_tasks)
            if seconds:
                config.budget.seconds = seconds
            results = run_bench(export_dir, config, tasks=tasks, backbone=backbone, progress=progress)
            paths = write_report(results, results_dir)
    finally:
        bar.close()
    render_results(results)
    for kind, path in paths.items():
        click.echo(f"wrote {kind}: {path}")
    if not results["rows"]:
        raise SubtuneError("no backend could run here: " + "; ".join(s["reason"] for s in results["skipped"]))


def render_results(results: dict, console: Console | None = None) -> None:
    console = console or Console(width=120)
    for s in results["skipped"]:
        console.print(f"[yellow]skipped {s['backend']}[/]: {s['reason']}")
    from benchmarks.report import group_rows

    for (backend, batch), rows in group_rows(results).items():
        table = Table(title=f"{backend}, batch {batch}")
        for col in ("k", "fused ms", "separate ms", "ratio", "ideal (FLOPs)", "+ms/task fused", "+ms/task separate",
                    "weights MB fused/sep"):
            table.add_column(col, justify="right")
        for r in rows:
            m = r["memory"]
            ideal = "-" if r["ideal_ratio_flops"] is None else f"{r['ideal_ratio_flops']:.3f}"
            table.add_row(str(r["k"]), f"{r['fused']['median_ms']:.2f}", f"{r['separate']['median_ms']:.2f}",
                          f"{r['ratio']:.3f}", ideal, f"{r['added_ms_fused']:.2f}", f"{r['added_ms_separate']:.2f}",
                          f"{m['fused_weight_bytes'] / 1e6:.1f}/{m['separate_weight_bytes'] / 1e6:.1f}")
        console.print(table)


@click.command("profile-device")
@click.argument("model")
@click.option("--backend", default="ort-cpu", show_default=True,
              help="Where to measure: ort-cpu, ort-cuda, ort-trt, torch-cpu, torch-cuda.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size to measure at.")
@click.option("--input-size", "input_size", default=None, metavar="H,W",
              help="Input resolution; default: the model's pretrained config.")
@click.option("--weights", default="random", show_default=True,
              help="Weights to build the graphs with (latency does not depend on their values).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (recorded).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time budget per unit.")
@click.option("--units", default=None, help="Only these units or stages (e.g. layer3,layer4); default: all.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write costs.json.")
def profile_device(model, backend, batch, input_size, weights, threads, seconds, units, out_path) -> None:
    """Measure the added latency of a task branching at each unit of MODEL on this device.

    The table feeds latency-budgeted selection (`subtune-edge tune --blocks auto --latency-budget MS
    --costs costs.json`), also on another machine: it records where it was measured.

    \b
    Example:
      subtune-edge profile-device tf_efficientnet_lite0 --backend ort-cpu --input-size 96 --out costs.json
    """
    import json

    from benchmarks.device_costs import measure_device_costs
    from benchmarks.harness import Budget

    from ..io import atomic_write_bytes
    from ._options import parse_input_size

    size = parse_input_size(None, None, input_size)
    chosen = None
    if units:
        from ..backbone import create_backbone, model_args_for_input

        chosen = create_backbone(model, "random", **model_args_for_input(model, size)).parse_units(units)
    bar, progress = _progress()
    try:
        costs = measure_device_costs(model, backend=backend, batch=batch, input_size=size, weights=weights,
                                     threads=threads, budget=Budget(warmup=2, min_runs=10, max_runs=500,
                                                                    seconds=seconds), units=chosen, progress=progress)
    finally:
        bar.close()
    atomic_write_bytes(Path(out_path), (json.dumps(costs, indent=2) + "\n").encode())
    table = Table(title=f"{model} on {backend}, batch {batch}: added latency of a branch at each unit")
    for col in ("unit", "added ms", "branch GFLOPs", "unit MB"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for r in costs["units"]:
        table.add_row(r["unit"], f"{r['added_ms']:.2f}", f"{r['branch_flops'] / 1e9:.3f}",
                      f"{r['unit_bytes'] / 1e6:.2f}")
    Console(width=120).print(table)
    click.echo(f"wrote {out_path}")
