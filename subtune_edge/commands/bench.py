"""`bench`: measure what each task adds, fused vs separate full copies; `profile-device`: what a
branch at each unit adds on this device."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from subtune_edge.bench import (
    BenchConfig,
    Budget,
    check_results_dir,
    load_bench_tasks,
    load_suite,
    run_bench,
    run_suite,
    write_report,
)
from subtune_edge.bench.device_costs import is_cost_table, measure_device_costs
from subtune_edge.bench.modular import bench_export as bench_modular
from subtune_edge.bench.modular import write_results as write_modular
from subtune_edge.bench.report import group_rows, worst_slowdown_line
from subtune_edge.bench.variants import bench_variants

from ..backbone import create_backbone, model_args_for_input
from ..errors import SubtuneError
from ..io import atomic_write_json
from ..progress import Event
from ..runtime import read_manifest, runtime_names, runtimes
from ._options import parse_input_size, split_csv, weights_option

POSITIVE = click.IntRange(min=1)


def _backend_names() -> list[str]:
    """Runtime names as ``--backend`` spells them, variants included (``torch-cuda[+compile|+graphs]``)."""
    return [s.name + (f"[+{'|+'.join(s.variants)}]" if s.variants else "") for s in runtimes()]
NON_NEGATIVE_SECONDS = click.FloatRange(min=0)


def _ints(ctx, param, value):
    """'1,8' -> [1, 8]; refuses anything but positive integers, at parse time."""
    try:
        sizes = [int(v) for v in split_csv(value)]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers (for example 1,8)") from None
    bad = [s for s in sizes if s < 1]
    if bad:
        raise click.BadParameter(f"batch size {bad[0]} in '{value}' is not positive; give sizes >= 1 (for example 1,8)")
    if value is not None and not sizes:
        raise click.BadParameter(f"'{value}' names no batch size; give sizes >= 1 (for example 1,8)")
    return sizes or None


def _progress():
    """A tqdm bar and the :data:`~subtune_edge.progress.Progress` callback that drives it."""
    bar = tqdm(total=1, unit="point", dynamic_ncols=True)

    def update(event: Event) -> None:
        if event.total is not None:
            bar.total = max(event.total, 1)
        if event.done is not None:
            bar.n = event.done
        bar.set_description(event.message)
        bar.refresh()
    return bar, update


@click.command()
@click.argument("export_dir", required=False, type=click.Path(file_okay=False))
@click.option("--suite", default=None, help="A bundled suite (cpu-quick, desktop-gpu, jetson-orin, k-scaling) or a "
                                            ".toml path; builds its own export from untrained tasks.")
@click.option("--backend", "backends", default=None,
              help="Comma-separated registered runtimes: " + ", ".join(_backend_names()) + " (and plug-ins'). "
                   "Default: the suite's, else ort-cpu.")
@click.option("--batch", "batches", default=None, callback=_ints, help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--results", "results_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for results.json, report.md and the plots (new, empty, or an earlier bench's results).")
@click.option("--task-dir", default=None, type=click.Path(file_okay=False),
              help="Task files of the export, needed for the torch backends.")
@weights_option
@click.option("--threads", type=POSITIVE, default=None,
              help="Intra-op threads per session (recorded). Default: runtime's.")
@click.option("--seconds", type=NON_NEGATIVE_SECONDS, default=None, help="Time budget per measurement point.")
@click.option("--max-tasks", type=POSITIVE, default=None, help="Measure k = 1..N for the first N tasks only.")
@click.option("--modular", is_flag=True, help="Modular export (--modular): fused vs trunk + all branches vs subsets "
              "(1 of k, 2 of k) vs the fused graph pruned to each subset, with each subset's FLOPs ideal (ORT CPU).")
@click.option("--precision", "precisions", default="fp32", show_default=True, metavar="P,Q",
              help="Comma-separated ONNX precisions to measure, each fused vs separate: fp32, int8 (model.int8.onnx vs "
                   "separate/<task>.int8.onnx; export with --separate --int8). INT8 rows add fused / fused fp32.")
@click.option("--variants", default=None, metavar="plain,grouped",
              help="Compare branch layouts of the export's tasks on this device instead (needs --task-dir): each "
                   "layout exported again and timed round-robin at each --batch (default: the export's min, opt "
                   "and max); the one with the least worst slowdown is results.json's variants.chosen, which "
                   "`export --branches RESULTS` ships.")
def bench(export_dir, suite, backends, batches, results_dir, task_dir, weights, threads, seconds, max_tasks,
          modular: bool = False, precisions: str = "fp32", variants: str | None = None) -> None:
    """Measure fused vs separate latency and memory for k = 1..N tasks.

    \b
    Examples:
      subtune-edge bench demo-out/export --backend ort-cpu --batch 1,8 --results demo-out/bench
      subtune-edge bench --suite cpu-quick --results benchmarks/results/cpu-quick
    """
    if bool(export_dir) == bool(suite):
        raise click.UsageError("give either EXPORT_DIR or --suite")
    if modular:
        if not export_dir:
            raise click.UsageError("--modular measures an EXPORT_DIR written with export --modular")
        check_results_dir(results_dir, export_dir)
        result = bench_modular(export_dir, batches or [1], seconds=10.0 if seconds is None else seconds,
                               threads=threads)
        render_modular(result)
        for kind, path in write_modular(result, results_dir).items():
            click.echo(f"wrote {kind}: {path}")
        return
    backend_list = split_csv(backends) or None
    # refuse a results folder that holds anything else before minutes of measuring, not after
    check_results_dir(results_dir, export_dir)
    if variants:
        if not export_dir or not task_dir:
            raise click.UsageError("--variants rebuilds the layouts of EXPORT_DIR's tasks: give it and --task-dir")
        tasks, _ = load_bench_tasks(export_dir, task_dir, weights)
        # by default the batches export --branches auto times: the export's min, opt and max
        sizes = batches or read_manifest(export_dir, verify_files=False).batch.sizes
        config = BenchConfig(backends=backend_list or ["ort-cpu"], batch_sizes=sizes, threads=threads)
        if seconds is not None:
            config.budget.seconds = seconds
        bar, progress = _progress()
        try:
            results = bench_variants(export_dir, tasks, split_csv(variants), config, progress=progress)
        finally:
            bar.close()
        for kind, path in write_report(results, results_dir, param="results_dir").items():
            click.echo(f"wrote {kind}: {path}")
        click.echo(f"layout to ship: {results['variants']['chosen']} ({worst_slowdown_line(results['variants'])})")
        return
    if suite:
        s = load_suite(suite)
        cfg = s.config
        budget = dataclasses.replace(cfg.budget, seconds=seconds) if seconds is not None else cfg.budget
        s.config = dataclasses.replace(cfg, threads=threads or cfg.threads, budget=budget, max_tasks=max_tasks)
    else:
        tasks, backbone = load_bench_tasks(export_dir, task_dir, weights) if task_dir else (None, None)
        config = BenchConfig(backends=backend_list or ["ort-cpu"], batch_sizes=batches or [1], threads=threads,
                             max_tasks=max_tasks, precisions=split_csv(precisions) or ["fp32"])
        if seconds is not None:
            config.budget.seconds = seconds
    bar, progress = _progress()
    try:
        if suite:
            results, paths = run_suite(s, results_dir, backends=backend_list, batch_sizes=batches, progress=progress)
        else:
            results = run_bench(export_dir, config, tasks=tasks, backbone=backbone, progress=progress)
    finally:
        bar.close()
    if not suite:
        paths = write_report(results, results_dir, param="results_dir")
    render_results(results)
    for kind, path in paths.items():
        click.echo(f"wrote {kind}: {path}")
    if not results["rows"]:
        raise SubtuneError("no backend could run here: " + "; ".join(s["reason"] for s in results["skipped"]))


def render_results(results: dict, console: Console | None = None) -> None:
    """Print the skipped backends and one table per (backend, batch).

    Every piece of text that comes from the library or the user (backend names, reasons such as
    ``pip install 'subtune-edge[gpu]'``) is escaped: rich would otherwise eat ``[gpu]`` as markup.
    """
    console = console or Console(width=120)
    for s in results["skipped"]:
        console.print(f"[yellow]skipped {escape(s['backend'])}[/]: {escape(s['reason'])}")
    for (backend, batch), rows in group_rows(results).items():
        table = Table(title=escape(f"{backend}, batch {batch}"))
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


def render_modular(result: dict, console: Console | None = None) -> None:
    """Print one table per batch of a ``bench --modular`` result."""
    console = console or Console(width=120)
    for setup in result["setups"]:
        for p in setup["points"]:
            table = Table(title=escape(f"modular vs fused, batch {p['batch']} ({p['rounds']} rounds)"))
            for col in ("variant", "median ms", "vs fused", "FLOPs ideal vs fused"):
                table.add_column(col, justify="left" if col == "variant" else "right")
            fused = p["variants"]["fused"]["median_ms"]
            for name, v in p["variants"].items():
                key = name[name.index("[") + 1:-1] if name.startswith("modular[") else None
                ideal = p["flops"].get(key, {}).get("ideal_over_fused") if key else None
                table.add_row(escape(name), f"{v['median_ms']:.2f}", f"{v['median_ms'] / fused:.3f}",
                              "" if ideal is None else f"{ideal:.3f}")
            console.print(table)


def render_costs(costs: dict, console: Console | None = None) -> None:
    """Print a device cost table (model and unit names escaped, as in :func:`render_results`)."""
    console = console or Console(width=120)
    table = Table(title=escape(f"{costs['model']} on {costs['backend']}, batch {costs['batch']}: "
                               "added latency of a branch at each unit"))
    for col in ("unit", "pruned", "added ms", "branch GFLOPs", "unit MB"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for r in costs["units"]:
        table.add_row(escape(r["unit"]), f"{r['ratio']:g}" if r.get("ratio") else "-", f"{r['added_ms']:.2f}",
                      f"{r['branch_flops'] / 1e9:.3f}", f"{r['unit_bytes'] / 1e6:.2f}")
    console.print(table)


@click.command("profile-device")
@click.argument("model")
@click.option("--backend", default="ort-cpu", show_default=True,
              help="Where to measure: a registered runtime that runs onnx files or modules ("
                   + ", ".join(runtime_names("onnx") + runtime_names("module")) + ").")
@click.option("--batch", type=POSITIVE, default=1, show_default=True, help="Batch size to measure at.")
@click.option("--input-size", "input_size", default=None, metavar="H,W",
              help="Input resolution; default: the model's pretrained config.")
@click.option("--weights", default="random", show_default=True,
              help="Weights to build the graphs with (latency does not depend on their values).")
@click.option("--threads", type=POSITIVE, default=None, help="Intra-op threads (recorded).")
@click.option("--seconds", type=NON_NEGATIVE_SECONDS, default=2.0, show_default=True, help="Time budget per unit.")
@click.option("--units", default=None, help="Only these units or stages (e.g. layer3,layer4); default: all.")
@click.option("--prune-ratios", default=None, metavar="0.25,0.5,...",
              help="Also measure each unit's branch with that unit channel-pruned at these ratios, for "
                   "`tune --prune auto --latency-budget` (without them pruning is priced by FLOPs).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write costs.json.")
def profile_device(model, backend, batch, input_size, weights, threads, seconds, units, prune_ratios, out_path
                   ) -> None:
    """Measure the added latency of a task branching at each unit of MODEL on this device.

    The table feeds latency-budgeted selection (`subtune-edge tune --blocks auto --latency-budget MS
    --costs costs.json`), also on another machine: it records where it was measured.

    \b
    Example:
      subtune-edge profile-device tf_efficientnet_lite0 --backend ort-cpu --input-size 96 --out costs.json
    """
    size = parse_input_size(None, None, input_size)
    try:
        ratios = tuple(float(r) for r in split_csv(prune_ratios or ""))
    except ValueError:
        raise click.BadParameter(f"'{prune_ratios}' is not a list of ratios such as 0.25,0.5",
                                 param_hint="--prune-ratios") from None
    out = Path(out_path)
    if out.exists() and not is_cost_table(out):  # replace an earlier table, never a file of the user's
        raise SubtuneError("{param} " + f"{out} exists and is not a device cost table; choose a new file name "
                           "(it is kept)", param="out_path")
    chosen = None
    if units:
        chosen = create_backbone(model, "random", **model_args_for_input(model, size)).parse_units(units)
    bar, progress = _progress()
    try:
        costs = measure_device_costs(model, backend=backend, batch=batch, input_size=size, weights=weights,
                                     threads=threads, budget=Budget(warmup=2, min_runs=10, max_runs=500,
                                                                    seconds=seconds), units=chosen,
                                     prune_ratios=ratios, progress=progress)
    finally:
        bar.close()
    atomic_write_json(out, costs)
    render_costs(costs)
    click.echo(f"wrote {out_path}")
