"""`export`, `inspect` and `predict`: ship tasks as one verified graph, look at it, try it on images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from subtune_edge.exporters import ExportOptions, export_tasks
from subtune_edge.exporters.tensorrt import require_tensorrt

from ..errors import ExportError
from ..progress import Event
from ..runtime import Manifest, load_export, runtime_names
from ..runtime.manifest import check_files, check_graph, raise_for_status, read_manifest
from ..runtime.registry import families
from ..task import load_tasks
from ._options import apply_options, dataclass_options, option_values, split_csv, task_dir_option
from .model import render_plan


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}"


def _runtime(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A registered runtime or family, at parse time (plug-ins registered since import count too)."""
    if value not in runtime_names() and value not in families():
        raise click.BadParameter(f"'{value}' is neither a runtime ({', '.join(runtime_names())}) nor a family "
                                 f"({', '.join(families())})")
    return value


@click.command()
@click.option("--tasks", "task_list", required=True, metavar="A,B,C",
              help="Comma-separated task names (in --task-dir) or paths to task files; outputs keep this order.")
@task_dir_option
@click.option("--out", required=True, type=click.Path(), help="Export folder to write (replaced atomically).")
@apply_options(dataclass_options(ExportOptions))
@click.option("--grouped", is_flag=True, help="Shorthand for --branches grouped.")
@click.option("--stacked", is_flag=True, help="Shorthand for --branches stacked.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of a summary.")
def export(task_list: str, task_dir: str, out: str, as_json: bool, grouped: bool, stacked: bool, **values) -> None:
    """Export tasks that share one backbone as ONE verified ONNX graph (+ fp16, INT8, TensorRT, separate copies).

    The frozen trunk runs once and each task adds only its own branch. Every output is checked
    against the PyTorch task model in ONNX Runtime; past tolerance nothing is written. Every option
    is a field of subtune_edge.ExportOptions (the same names, defaults and help).

    \b
    Example:
      subtune-edge export --tasks digit,parity,ge5 --task-dir demo-out/tasks --out demo-out/export --separate
    """
    if grouped and stacked:
        raise click.BadParameter("--grouped and --stacked are two branch layouts; pass one", param_hint="--branches")
    keywords = option_values(ExportOptions, values)
    if grouped or stacked:
        keywords["branches"] = "grouped" if grouped else "stacked"
    opts = ExportOptions.build(**keywords)
    if opts.trt is not None:
        require_tensorrt()  # before anything else: a missing TensorRT costs nothing
    names = split_csv(task_list)
    if not names:
        raise click.BadParameter("give at least one task", param_hint="--tasks")
    console = Console(stderr=True)
    start = time.perf_counter()
    tasks = load_tasks(names, task_dir)
    with console.status("exporting", spinner="dots") as status:
        manifest = export_tasks(tasks, out, opts, progress=lambda event: _show(status, event)).to_json()
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    console = Console()
    console.print(f"[bold green]exported[/] {len(tasks)} task(s) to [bold]{out}[/] in "
                  f"{time.perf_counter() - start:.1f} s")
    _render_files(console, manifest)
    _render_verification(console, manifest)
    _render_branches(console, manifest)
    _render_int8(console, manifest)
    _render_sizes(console, manifest)


def _render_branches(console: Console, manifest: dict) -> None:
    """Which branch layout ``model.onnx`` has, and why: auto's timings, a bench's results, or no choice to make."""
    record = manifest.get("branches")
    if not record:
        layout = ("grouped" if manifest.get("grouped_branches") else
                  "stacked" if manifest.get("stacked_branches") else "plain")
        console.print(f"branches: {layout}")
        return
    chosen = record["chosen"]
    if record.get("reason"):
        console.print(f"branches: {chosen} ({record['reason']})")
        return
    timed = record.get("timed") or ([record] if "plain_ms" in record else [])  # manifests before per-batch timing
    if timed:
        table = Table(title=f"branch layouts timed on {record.get('runtime')} (--branches auto)")
        for col in ("batch", "plain ms", "grouped ms", "grouped / plain"):
            table.add_column(col, justify="right")
        for t in timed:
            table.add_row(str(t.get("batch")), f"{t['plain_ms']:.3f}", f"{t['grouped_ms']:.3f}",
                          f"{t['grouped_ms'] / t['plain_ms']:.3f}")
        console.print(table)
    why = [f"from {record['from']}"] if record.get("from") else []
    if record.get("worst_slowdown"):
        why.append("least worst slowdown: " + ", ".join(f"{k} {v:.3f}" for k, v in record["worst_slowdown"].items()))
    console.print(f"branches: {chosen} ({'; '.join(why) or record.get('mode')})")


def _render_int8(console: Console, manifest: dict) -> None:
    """Per task: its precision in model.int8.onnx and the gate's figures; what stayed fp32, and where."""
    summary = manifest.get("int8")
    if not summary:
        return
    files = ", ".join(f"{v['file']} for {t} ({v['activations']} activations)"
                      for t, v in (summary.get("targets") or {}).items())
    table = Table(title=f"INT8 ({files or summary.get('file')}; {summary.get('method')} calibration on "
                        f"{summary.get('calibration_samples')} images)")
    for col in ("task", "precision", "agreement", "acc. fp32", "acc. int8", "drop (upper bound)", "held-out", "ok"):
        table.add_column(col, justify="left" if col in ("task", "precision") else "right")

    def pct(v):
        return "" if v is None else f"{v:.1%}"

    for t in manifest["tasks"]:
        g = t.get("int8")
        if g:
            drop = "" if g.get("drop") is None else f"{100 * g['drop']:+.1f} ({100 * g['drop_upper']:+.1f})"
            table.add_row(t["name"], g["precision"], pct(g["agreement"]), pct(g.get("accuracy_fp32")),
                          pct(g.get("accuracy_int8")), drop, str(g["samples"]),
                          "[green]yes[/]" if g.get("passed", True) else "[red]no[/]")
    console.print(table)
    kept = summary.get("fp32_nodes") or []
    if kept:
        where = sorted({k["where"] for k in kept})
        console.print(f"kept in fp32 (mixed precision): {len(kept)} node(s) in {', '.join(where)}")
    if summary.get("fp32_branches"):
        console.print(f"kept in fp32: the branch of {', '.join(summary['fp32_branches'])}")


def _show(status, event: Event) -> None:
    status.update(event.message)


def _render_files(console: Console, manifest: dict, status: dict[str, str] | None = None) -> None:
    table = Table(title="files")
    for col in ("file", "MB", "what", *(["sha256"] if status else [])):
        table.add_column(col, justify="right" if col == "MB" else "left")
    onnx = manifest.get("onnx") or {}
    for rel, rec in manifest["files"].items():
        what = {"model.onnx": "fused, fp32", "model.fp16.onnx": "fused, fp16", "model.plan": "TensorRT engine",
                "model.ort": "fused, fp32, ORT format", "model.fp16.ort": "fused, fp16, ORT format",
                "model.int8.ort": "fused, int8, ORT format", "required_operators.config": "ORT minimal-build ops"}.get(
            rel, "one task, full model, int8" if rel.endswith(".int8.onnx") and rel.startswith("separate/")
            else "fused, int8 QDQ" if rel == "model.int8.onnx" else
            "one task, full model" if rel.startswith("separate/") else "weights" if rel.endswith(".data") else
            "shared trunk" if rel == "trunk.onnx" else "one task's branch" if rel.startswith("branches/") else "")
        if rel in onnx and "initializers" in onnx[rel]:
            what += f"{', ' if what else ''}{onnx[rel]['initializers']} tensors"
        row = [rel, _mb(rec["bytes"]), what]
        if status:
            st = status.get(rel, "?")
            row.append("[green]ok[/]" if st == "ok" else f"[red]{st}[/]")
        table.add_row(*row)
    for rel, st in (status or {}).items():
        if rel not in manifest["files"]:
            table.add_row(rel, "", "", f"[yellow]{st}[/]")
    console.print(table)


def _render_verification(console: Console, manifest: dict) -> None:
    ver = manifest.get("verification") or {}
    if not ver.get("results"):
        console.print(f"verification: [yellow]skipped[/] ({ver.get('skipped', 'not run')})")
        return
    inputs = ", ".join(f"{i['kind']} x{i['batch']}" for i in ver.get("inputs", []))
    table = Table(title=f"verification against PyTorch ({inputs})")
    for col in ("file", "task", "max abs", "rel. to scale", "top-1 agree", "tolerance", "ok"):
        table.add_column(col, justify="left" if col in ("file", "task", "tolerance") else "right")
    for r in ver["results"]:
        file = r["file"] + (f" ({r['runtime']})" if r.get("runtime") else "")
        table.add_row(file, r["task"], f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}",
                      f"{r['top1_agreement']:.0%}", r["tolerance"], "[green]yes[/]" if r["passed"] else "[red]NO[/]")
    console.print(table)
    tols = ver.get("tolerances") or {}
    used = {r["tolerance"] for r in ver["results"]}
    for name in sorted(used):
        if name in tols:
            t = tols[name]
            console.print(f"  {name}: |error| <= {t['rel']:g} x output scale; top-1 must agree unless the "
                          f"reference's top-2 margin is under {t['tie']:g} x scale")


def _render_sizes(console: Console, manifest: dict) -> None:
    sizes = manifest.get("sizes") or {}
    cost = (manifest.get("plan") or {}).get("cost") or {}
    line = f"fused model.onnx {_mb(sizes.get('fused_bytes'))} MB"
    if "separate_bytes" in sizes:
        line += f" vs {_mb(sizes['separate_bytes'])} MB for separate copies (ratio {sizes['ratio']:.3f})"
    if cost.get("ideal_ratio_flops") is not None:
        line += f"; ideal FLOPs ratio fused/separate {cost['ideal_ratio_flops']:.3f}"
    console.print(line)
    trt = manifest.get("tensorrt")
    if trt:
        console.print(f"TensorRT {trt['version']} {trt['precision']} engine from {trt['onnx_file']}: weights "
                      f"{_mb(trt.get('weights_bytes'))} MB, activations {_mb(trt.get('activation_bytes'))} MB, "
                      f"profile {trt['profile']['min'][0]}/{trt['profile']['opt'][0]}/{trt['profile']['max'][0]}")


@click.command()
@click.argument("out", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and the hash check as JSON.")
def inspect(out: str, as_json: bool) -> None:
    """Show an export's manifest readably and re-check the sha256 of every file.

    Exits with an error when a file is missing or changed since export.

    \b
    Example:
      subtune-edge inspect demo-out/export
    """
    manifest = read_manifest(out, verify_files=False)
    status = check_files(out, manifest)
    if as_json:
        click.echo(json.dumps({"manifest": manifest.to_json(), "files_check": status}, indent=2))
    else:
        _render_manifest(Console(), out, manifest, status)
    raise_for_status(out, status)
    for rel in manifest.files:
        if rel.endswith(".onnx"):
            check_graph(out, manifest, rel)


def _render_manifest(console: Console, out: str, manifest: Manifest, status: dict[str, str]) -> None:
    bb, batch, spec, pre = manifest.backbone, manifest.batch, manifest.input, manifest.preprocessing
    info = manifest.info
    console.print(f"[bold]{out}[/]: {len(manifest.tasks)} task(s) on [bold]{bb['model_name']}[/] "
                  f"(weights {bb.get('weights')}, fingerprint {(bb.get('fingerprint') or '')[:12]}…), "
                  f"created {info.get('created', '?')}")
    dims = " x ".join(map(str, spec.shape))
    console.print(f"input '{spec.name}' {spec.dtype} {dims}, batch {batch.min}..{batch.max}"
                  f"{' (dynamic)' if batch.dynamic else ' (fixed)'}; opset {manifest.opset} "
                  f"({info.get('exporter', '?')} exporter)")
    console.print(f"preprocessing: resize {pre.interpolation} (crop_pct {pre.crop_pct}, {pre.crop_mode} crop) to "
                  f"{pre.input_size[1]}x{pre.input_size[2]}, mean {list(pre.mean)}, std {list(pre.std)}")
    table = Table(title="tasks (outputs in this order)")
    pruned = any(t.pruned for t in manifest.tasks)
    for col in ("task", "output", "shape", "labels", "tuned units", "mode", *(["pruned"] if pruned else []),
                "val. acc."):
        table.add_column(col)
    for t in manifest.tasks:
        labels = ", ".join(t.labels[:4]) + (", …" if len(t.labels) > 4 else "")
        units = ",".join(t.tuned_units) or "(linear probe)"
        if t.resized_from:
            units += f" (prepared at {t.resized_from[0]}x{t.resized_from[1]})"
        width = [f"{t.pruned['ratio']:g} ({t.pruned.get('importance', '?')})" if t.pruned else "-"] if pruned else []
        table.add_row(t.name, t.output, " x ".join(map(str, t.shape)), labels or "(indices)",
                      units if len(units) < 40 else units[:37] + "...", t.mode, *width,
                      "" if t.val_accuracy is None else f"{t.val_accuracy:.3f}")
    console.print(table)
    if manifest.modular is not None:
        _render_modular(console, manifest)
    data = manifest.to_json()
    _render_files(console, data, status)
    try:
        _render_verification(console, data)
        _render_branches(console, data)
        _render_int8(console, data)
        _render_sizes(console, data)
        if (info.get("plan") or {}).get("cost"):
            render_plan(info["plan"], console)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ExportError(f"{out}: the manifest's verification / sizes / plan records are malformed "
                          f"({type(exc).__name__}: {exc}); re-export") from None
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
    console.print(f"versions: {versions}")


def _render_modular(console: Console, manifest: Manifest) -> None:
    layout = manifest.modular
    trunk = layout.trunk
    console.print(f"modular: {trunk.file} version {trunk.version} (sha256 {trunk.sha256[:12]}…), fused model.onnx "
                  f"{layout.fused}")
    table = Table(title="branches (the trunk tap each reads)")
    for col in ("task", "file", "tap(s)", "tap shape"):
        table.add_column(col)
    for b in layout.branches:
        table.add_row(b.task, b.file, ", ".join(b.taps), "; ".join(" x ".join(map(str, layout.tap(t).shape))
                                                                   for t in b.taps))
    console.print(table)


@click.command()
@click.argument("out", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--topk", default=3, show_default=True, help="Labels to show per task.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True,
              help="ONNX Runtime CPU / CUDA provider (auto: CUDA where available), or the TensorRT plan.")
@click.option("--fp16", is_flag=True, help="Run model.fp16.onnx instead of model.onnx.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which file to run: model.onnx, model.fp16.onnx or model.int8.onnx (--fp16 = --precision fp16).")
@click.option("--runtime", default="onnxruntime", show_default=True, callback=_runtime, metavar="NAME",
              help="Where to run the file: a runtime family (onnxruntime: --device picks CPU or CUDA; openvino; "
                   "tensorrt) or a registered runtime by name (" + ", ".join(runtime_names()) + ", a plug-in's).")
@click.option("--ort-format", "ort_format", is_flag=True,
              help="Run model.ort (ONNX Runtime's mobile format, exported with --ort-format) instead of model.onnx.")
@click.option("--tasks", "task_filter", default=None, metavar="A,C",
              help="Run only these tasks (a modular export runs only their branches and the trunk as deep as needed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per image.")
def predict(out: str, images: tuple[str, ...], topk: int, device: str, fp16: bool, as_json: bool,
            runtime: str = "onnxruntime", ort_format: bool = False, task_filter: str | None = None,
            precision: str | None = None) -> None:
    """Run an export on images and print each task's top-k labels with softmax scores.

    Preprocessing is the manifest's (what an app must do); this is the reference the C++ runner
    is compared against.

    \b
    Example:
      subtune-edge predict demo-out/export photo1.jpg photo2.png --topk 2
    """
    if topk < 1:
        raise click.BadParameter("must be at least 1", param_hint="--topk")
    if fp16 and precision not in (None, "fp16"):
        raise click.BadParameter(f"--fp16 contradicts --precision {precision}; pass one", param_hint="--precision")
    with load_export(out, device=device, precision=precision or ("fp16" if fp16 else "fp32"), runtime=runtime,
                     format="ort" if ort_format else "onnx", tasks=split_csv(task_filter) or None) as model:
        results = model.predict(list(images), topk=topk)
        runner = model.runner.name
    if as_json:
        payload = [{"image": str(img), "tasks": {task: [{"label": lab, "score": round(score, 6)} for lab, score in top]
                                                 for task, top in res.items()}}
                   for img, res in zip(images, results)]
        click.echo(json.dumps(payload, indent=2))
        return
    console = Console()
    for img, res in zip(images, results):
        table = Table(title=f"{Path(img).name} ({runner})", title_justify="left")
        table.add_column("task")
        for k in range(topk):
            table.add_column(f"#{k + 1}")
        for task, top in res.items():
            table.add_row(task, *[f"{lab} ({score:.3f})" for lab, score in top])
        console.print(table)
