"""`add-task` and `remove-task`: change a modular export without re-shipping the other tasks."""

from __future__ import annotations

import json

import click
from rich.console import Console

from subtune_edge.exporters.modular import add_tasks, remove_tasks

from ..errors import ExportError
from ..progress import Event
from ..runtime import read_manifest
from ..task import load_tasks
from ._options import split_csv, task_dir_option, weights_option


def _summary(console: Console, export: str, before: str | None) -> None:
    manifest = read_manifest(export, verify_files=False)
    layout = manifest.modular
    trunk = layout.trunk
    change = (manifest.info.get("changes") or [{}])[-1]
    console.print(f"[bold green]{export}[/]: tasks {', '.join(manifest.task_names)}")
    console.print(f"trunk.onnx version {trunk.version} ({'unchanged' if before == trunk.sha256 else 'rewritten'}, "
                  f"sha256 {trunk.sha256[:12]}…), taps {', '.join(t.name for t in layout.taps)}")
    for b in layout.branches:
        console.print(f"  {b.file} <- {', '.join(b.taps)}")
    if change.get("removed_files"):
        console.print(f"removed (stale): {', '.join(change['removed_files'])}")
    console.print("model.onnx rebuilt from trunk + branches and verified")


def _trunk_sha(export: str) -> str | None:
    try:
        layout = read_manifest(export, verify_files=False).modular
    except ExportError:
        return None
    return layout.trunk.sha256 if layout is not None else None


@click.command("add-task")
@click.argument("export", type=click.Path())
@click.option("--tasks", "task_list", required=True, metavar="D,E",
              help="Comma-separated task names (in --task-dir) or task files; a name the export has is replaced.")
@task_dir_option
@weights_option
@click.option("--json", "as_json", is_flag=True, help="Print the new manifest as JSON.")
def add_task(export: str, task_list: str, task_dir: str, weights: str | None, as_json: bool) -> None:
    """Add (or replace) tasks in a modular export (exported with --modular), atomically and verified.

    A task branching where the trunk already has a tap adds only branches/<task>.onnx: trunk.onnx
    keeps its bytes and sha256. A new branch point rewrites only the trunk's outputs (same frozen
    weights; a new trunk version in the manifest). Tasks trained on other frozen weights are
    refused. model.onnx is rebuilt from trunk and branches; model.fp16.onnx / model.plan, whose
    graphs lack the new task, are removed (re-export to get them back).

    \b
    Example:
      subtune-edge add-task demo-out/export --tasks odd --task-dir demo-out/tasks
    """
    names = split_csv(task_list)
    if not names:
        raise click.BadParameter("give at least one task", param_hint="--tasks")
    tasks = load_tasks(names, task_dir)
    before = _trunk_sha(export)
    console = Console(stderr=True)
    with console.status("adding tasks", spinner="dots") as status:
        manifest = add_tasks(export, tasks, weights=weights, progress=lambda e: _show(status, e)).to_json()
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    _summary(Console(), export, before)


@click.command("remove-task")
@click.argument("export", type=click.Path())
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the new manifest as JSON.")
def remove_task(export: str, names: tuple[str, ...], as_json: bool) -> None:
    """Remove tasks from a modular export; trunk.onnx stays as it is, the others are re-verified.

    \b
    Example:
      subtune-edge remove-task demo-out/export parity
    """
    wanted = [n for name in names for n in split_csv(name)]
    before = _trunk_sha(export)
    console = Console(stderr=True)
    with console.status("removing tasks", spinner="dots") as status:
        manifest = remove_tasks(export, wanted, progress=lambda e: _show(status, e)).to_json()
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    _summary(Console(), export, before)


def _show(status, event: Event) -> None:
    status.update(event.message)
