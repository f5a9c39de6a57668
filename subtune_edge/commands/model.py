"""`blocks` and `plan`: look at a backbone's units and at how tasks would share it."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from ..backbone import create_backbone, model_args_for_input
from ..cost import build_fused, plan_from_json, unit_costs
from ..multitask import SharingPlan, backbone_for_tasks
from ..task import load_tasks
from ._options import input_size_option, split_csv, task_dir_option, weights_option


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


@click.command()
@click.argument("model")
@weights_option
@input_size_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def blocks(model: str, weights: str | None, input_size, as_json: bool) -> None:
    """List the tunable units of MODEL with parameters and share of FLOPs.

    \b
    Example:
      subtune-edge blocks resnet50 --weights random
    """
    backbone = create_backbone(model, weights or "random", **model_args_for_input(model, input_size))
    costs = unit_costs(backbone, input_size)
    total = sum(c.flops for c in costs) or 1
    if as_json:
        click.echo(json.dumps({"model": model, "family": backbone.family, "num_features": backbone.num_features,
                               "units": [asdict(c) for c in costs]}, indent=2))
        return
    size = input_size or backbone.data_config["input_size"][1:]
    table = Table(title=f"{model} ({backbone.family}), {len(backbone.units)} units at {size[0]}x{size[1]}")
    for col in ("#", "unit", "params (M)", "GFLOPs", "FLOPs share"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for i, c in enumerate(costs):
        idx = str(i - 1) if c.name in backbone.units else ""
        table.add_row(idx, c.name, _mb(c.params), f"{c.flops / 1e9:.3f}", f"{100 * c.flops / total:.1f}%")
    Console().print(table)


@click.command()
@click.option("--tasks", "task_list", required=True, help="Comma-separated task names or task files.")
@task_dir_option
@weights_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(task_list: str, task_dir: str, weights: str | None, as_json: bool) -> None:
    """Show how tasks share one trunk: where each branches, and what fusing saves.

    \b
    Example:
      subtune-edge plan --tasks digit,parity,ge5 --task-dir demo-out/tasks
    """
    names = split_csv(task_list)
    if not names:
        raise click.BadParameter("give at least one task", param_hint="--tasks")
    tasks = load_tasks(names, task_dir)
    backbone = backbone_for_tasks(tasks, weights)
    size = tuple(tasks[0].preprocessing.get("input_size", backbone.data_config["input_size"]))[1:]
    fused = build_fused(backbone, tasks, size)
    if as_json:
        click.echo(json.dumps(fused.plan.to_json(), indent=2))
        return
    render_plan(fused.plan)


def render_plan(plan: SharingPlan | dict, console: Console | None = None) -> None:
    """Print a plan with its cost as a table; a dict is a manifest's ``plan`` (read by :func:`plan_from_json`)."""
    console = console or Console()
    if isinstance(plan, dict):
        plan = plan_from_json(plan)
    cost = plan.cost
    table = Table(title=f"sharing plan: {plan.backbone}, trunk = stem + {plan.trunk_end} units")
    for col in ("part", "branches at", "tuned units", "params (M)", "MB", "GFLOPs"):
        table.add_column(col, justify="left" if col in ("part", "branches at", "tuned units") else "right")
    if cost is None:
        console.print(table)
        return
    t = cost.trunk
    table.add_row("trunk", "", "", _mb(t.params), _mb(t.bytes), f"{t.flops / 1e9:.3f}")
    for name, b in cost.branches.items():
        tuned = ",".join(b.tuned_units) or "(linear probe)"
        table.add_row(f"task {name}", b.start_unit or "end", tuned if len(tuned) < 40 else tuned[:37] + "...",
                      _mb(b.params), _mb(b.bytes), f"{b.flops / 1e9:.3f}")
    f, s = cost.fused, cost.separate
    table.add_row("fused total", "", "", _mb(f.params), _mb(f.bytes), f"{f.flops / 1e9:.3f}")
    table.add_row("separate copies", "", "", _mb(s.params), _mb(s.bytes), f"{s.flops / 1e9:.3f}")
    console.print(table)
    if cost.ideal_ratio_flops is not None and cost.ratio_bytes is not None:
        console.print(f"ideal ratio fused/separate: FLOPs {cost.ideal_ratio_flops:.3f}, bytes {cost.ratio_bytes:.3f}")
