"""`tune` and `profile`: train tasks, and see which units are worth training."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import SubtuneError
from ..io import atomic_write_bytes, check_replaceable, staged_dir
from ..progress import Event
from ..prune import IMPORTANCES, PruneConfig, check_ratio
from ..search.chosen import final_setup, train_chosen
from ..search.evaluator import SearchSetup
from ..search.factory import check_executor_kind, make_executor
from ..search.greedy import GreedyConfig, SetCost, greedy_select
from ..search.latency import LatencyTable, front_report, plot_front
from ..search.profile import finetuning_profile, plot_profile, profile_sets
from ..search.runlog import LOG_FORMAT, RunLog
from ..task import save_task
from ..train.loop import train
from ..train.record import RunRecord
from ..train.runs import get_backbone, get_data
from ._options import split_csv, task_dir_option, task_name_option, training_options, training_specs

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_count(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """'250000' / '2.5M' / '0.4G' -> an integer."""
    if value is None:
        return None
    text = value.strip().lower()
    unit = text[-1] if text and text[-1] in _SUFFIX else ""
    try:
        number = float(text[:-1] if unit else text)
        if number < 0 or not math.isfinite(number):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a count such as 250000, 2.5M or 0.4G") from None
    return int(number * _SUFFIX[unit])


def parse_prune(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    """'0.5' -> 0.5, 'auto' -> 'auto'; a ratio outside (0, 0.95] is refused in one line."""
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return check_ratio(float(value))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a ratio such as 0.5, or auto") from None
    except SubtuneError as exc:
        raise click.BadParameter(exc.render("--prune")) from None


def _check_executor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an unknown executor, or Ray where it is not installed, before any model or data is loaded."""
    try:
        return check_executor_kind(value)
    except SubtuneError as exc:
        if exc.param == "kind":
            raise click.BadParameter(f"'{value.strip()}' is not one of local, process, ray, ray:ADDRESS") from None
        raise


_SEARCH_OPTIONS = [
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Parallel training runs of a search (one process each; on CUDA spread over the GPUs). "
                      "With --executor ray: at most this many runs in flight.  [default: 1; ray: as many "
                      "as the cluster fits]"),
    click.option("--executor", "executor_kind", default=None, callback=_check_executor,
                 metavar="local|process|ray[:ADDRESS]",
                 help="Where the runs of a search (profile, --blocks auto) go: this process, local "
                      "processes (the default with --workers > 1), or a Ray cluster (ray: RAY_ADDRESS or a "
                      "local Ray instance; ray:auto, ray:HOST:PORT, ray:ray://HOST:10001). Ray needs "
                      "pip install 'subtune-edge[dist]'."),
    click.option("--progress/--no-progress", default=True, show_default=True),
]


def _training_options(f):
    """The shared training options, then where a search's runs go."""
    for option in reversed(_SEARCH_OPTIONS):
        f = option(f)
    return training_options(f)


def _setup(model, siamese=False, seeds=(0,), folds=0, prune: PruneConfig | None = None, **opts) -> SearchSetup:
    spec, data, config = training_specs(model, **opts)
    return SearchSetup(spec, data, config, siamese, tuple(seeds), folds, prune)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, param: str) -> None:
    """Refuse, before any training, a folder the results cannot be written to (made if missing)."""
    base = _nearest_existing(folder)
    problem = None
    if not base.is_dir():
        problem = f"{base} is a file"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".subtune-write-check.", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
    if problem:
        raise SubtuneError(f"cannot write to {{param}} {folder} ({problem}); choose a writable folder", param=param)


class _Progress:
    """Progress bars over runs and over the epochs of the current run (on stderr)."""

    def __init__(self, enabled: bool):
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                            disable=not enabled, transient=True)
        self.runs = None
        self.epochs = None

    @contextmanager
    def running(self, runs_total: int | None = None, runs: bool = True):
        with self.bar:
            if runs:
                self.runs = self.bar.add_task("runs", total=runs_total, info="")
            self.epochs = self.bar.add_task("epochs", total=None, info="")
            yield self

    def __call__(self, event: Event) -> None:
        """Render a library progress event: a run starting or finishing an epoch, a search run done."""
        kind = event.data.get("event")
        if event.stage == "train" and self.epochs is not None:
            info = event.data
            if kind == "start":
                units = info["units"]
                label = ",".join(units) if len(units) <= 3 else f"{units[0]}..{units[-1]} ({len(units)})"
                self.bar.reset(self.epochs, total=info["epochs"],
                               description=f"{info['mode']} {label or ''}".strip(), info="")
            elif kind == "epoch":
                self.bar.update(self.epochs, advance=1, info=f"val acc {100 * info['val_accuracy']:.1f}%")
        elif event.stage == "search" and kind == "run" and self.runs is not None:
            result = event.data["result"]
            units = ",".join(result["units"]) or "(linear probe)"
            tag = " (from log)" if event.data["reused"] else ""
            self.bar.update(self.runs, advance=1, info=f"last: {units[:40]} {100 * result['accuracy']:.1f}%{tag}")


def _units_label(units: list[str], all_units: list[str]) -> str:
    if not units:
        return "(none: linear probe)"
    if units == all_units:
        return f"(all {len(units)} units)"
    return ",".join(units)


@click.command()
@click.argument("model")
@task_name_option("Task name; the task is written to TASK_DIR/NAME.safetensors.")
@click.option("--blocks", default="auto", show_default=True, metavar="auto|none|all|UNITS",
              help="Units to tune: auto = greedy selection, none = linear probe, all = full finetuning, or "
                   "comma-separated unit names / prefixes (layer4 = every unit of layer4).")
@click.option("--siamese", is_flag=True, help="Head on concat(tuned features, frozen features).")
@_training_options
@task_dir_option
@click.option("--direction", type=click.Choice(["forward", "backward", "both"]), default="forward",
              show_default=True, help="Greedy: add units from none, remove from all, or both and keep the better.")
@click.option("--epsilon", type=float, default=0.01, show_default=True,
              help="Greedy: stop when the best candidate gains less accuracy than this.")
@click.option("--candidates", default=None, metavar="UNITS", help="Greedy: units it may choose from (default all).")
@click.option("--max-units", type=click.IntRange(min=0), default=None, help="Greedy: at most this many units.")
@click.option("--max-params", callback=parse_count, default=None, metavar="N",
              help="Greedy: at most this many tuned parameters (e.g. 2.5M).")
@click.option("--max-flops", callback=parse_count, default=None, metavar="N",
              help="Greedy: at most this many branch FLOPs per image (e.g. 0.3G).")
@click.option("--latency-budget", type=click.FloatRange(min=0), default=None, metavar="MS",
              help="Greedy: at most this added latency per task, from the --costs table of the target device.")
@click.option("--costs", "costs_path", type=click.Path(dir_okay=False), default=None,
              help="Device cost table from `subtune-edge profile-device` (for --latency-budget and the front plot).")
@click.option("--folds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Greedy: score sets by k-fold validation over the training split (for small data).")
@click.option("--search-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Greedy: seeds averaged per candidate set (with --folds: repeated k-fold).")
@click.option("--prefer-cheaper/--argmax", default=True, show_default=True,
              help="Greedy: of candidates within one standard error of the best, take the one with the fewest "
                   "branch FLOPs (--argmax: the best score, as the paper's code).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Greedy run log (resumable). Default: TASK_DIR/NAME.runs.json.")
@click.option("--prune", callback=parse_prune, default=None, metavar="RATIO|auto",
              help="After SubTuning, prune this share of the tuned units' channels (where only the task's own "
                   "tensors carry them) and finetune the narrower branch; auto (with --blocks auto and a budget): "
                   "each candidate set is pruned by the least of 0.25 / 0.5 / 0.75 that fits the budget.")
@click.option("--prune-importance", type=click.Choice(IMPORTANCES), default=PruneConfig.importance, show_default=True,
              help="How channels are ranked: first-order Taylor (|weight x gradient| over a few training batches), "
                   "filter L1 norm (the paper's code), BatchNorm scale.")
@click.option("--prune-epochs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Finetuning epochs after pruning.")
def tune(model, name, blocks, siamese, task_dir, direction, epsilon, candidates, max_units, max_params, max_flops,
         latency_budget, costs_path, folds, search_seeds, prefer_cheaper, log_path, prune, prune_importance,
         prune_epochs, workers, executor_kind, progress, **opts) -> None:
    """Train a task on MODEL: SubTune the chosen units (or let greedy selection choose) and a new head.

    \b
    Examples:
      subtune-edge tune tf_efficientnet_lite0 --weights offline --data digits:parity --name parity \\
          --blocks blocks.6.0,conv_head --input-size 64 --epochs 3
      subtune-edge tune resnet50 --data ./flowers --name flowers --blocks auto --device cuda
      subtune-edge tune tf_efficientnet_lite0 --weights offline --data digits:digit --name digit \\
          --input-size 64 --latency-budget 1.5 --costs jetson-costs.json
      subtune-edge tune resnet18 --data ./flowers --name flowers --blocks layer4 --prune 0.5
    """
    auto = blocks.strip() == "auto"
    if prune == "auto" and not auto:
        raise click.BadParameter("auto picks a ratio per candidate set inside greedy selection; with --blocks "
                                 "UNITS give a ratio such as 0.5", param_hint="--prune")
    pruning = PruneConfig(prune if isinstance(prune, float) else 0.5, prune_importance, epochs=prune_epochs) \
        if prune is not None else None
    setup = _setup(model, siamese=siamese, seeds=tuple(opts["seed"] + i for i in range(search_seeds)), folds=folds,
                   prune=pruning, **opts)
    _check_writable(Path(task_dir), "task_dir")
    if log_path and blocks.strip() == "auto":
        _check_writable(Path(log_path).parent, "log_path")
    backbone = get_backbone(setup.backbone)
    data = get_data(setup.data, backbone.data_config)
    console = Console()
    ui = _Progress(progress)
    greedy = None
    if auto:
        cands = tuple(backbone.parse_units(candidates)) if candidates else None
        table = LatencyTable.read(costs_path) if costs_path else None
        gcfg = GreedyConfig(direction, epsilon, max_units, max_params, max_flops, cands, latency_budget, table,
                            prefer_cheaper, prune)
        log = RunLog(Path(log_path) if log_path else Path(task_dir) / f"{name}.runs.json", setup.context())
        # validation-split runs keep their tasks, so the final training reuses the search's run of the winner
        stem = log.path.name.removesuffix(".json")
        store = log.path.with_name(stem + ".tasks")
        final_log = log if not folds else RunLog(log.path.with_name(stem + ".final.json"), final_setup(setup).context())
        with make_executor(workers, setup.config.device, kind=executor_kind) as executor, ui.running():
            greedy = greedy_select(setup, gcfg, executor=executor, log=log, progress=ui, store=store)
        units = greedy.units
        with ui.running(runs=False):
            chosen = train_chosen(setup, units, final_log, store, name=name, progress=ui, prune=greedy.prune)
        task, reused = chosen.task, chosen.reused
    else:
        units = backbone.parse_units(blocks)
        with ui.running(runs=False):
            task = train(backbone, data, units, setup.config, siamese=siamese, prune=pruning, name=name,
                         progress=ui).task
        reused = False
    path = save_task(task, Path(task_dir) / name)

    if greedy is not None:
        _render_greedy(console, greedy, backbone.unit_names, log.path)
        front = _write_front(greedy, gcfg, setup, backbone, Path(task_dir), name)
        console.print(f"accuracy vs added {'latency' if table else 'branch FLOPs'} of every evaluated set: "
                      f"{front['json']} and {front['png']}")
    r = RunRecord.from_json(task.training)
    table = Table(title=f"task '{name}' -> {path}")
    table.add_column("field")
    table.add_column("value")
    rows = [("backbone", f"{model} ({setup.backbone.weights})"),
            ("data", f"{data.source} ({len(data.labels)} classes)"),
            ("mode", r.mode), ("tuned units", _units_label(units, backbone.unit_names)),
            ("trainable params", f"{r.trainable_params / 1e6:.3f} M"),
            ("input size", "x".join(str(v) for v in data.input_size)),
            ("epochs / batch / lr", f"{r.epochs} / {r.batch_size} / {r.lr:g}"),
            ("train / val samples", f"{r.samples} / {r.val_samples}"),
            ("val accuracy (final)", f"{100 * r.val_accuracy:.2f}%"),
            ("val accuracy (best)", f"{100 * r.best_val_accuracy:.2f}% (epoch {r.best_epoch})"),
            ("prefix cache", "train + val" if r.prefix_cache["train"] else
             ("val only" if r.prefix_cache["val"] else "off")),
            ("device", r.device), ("time", f"{r.seconds:.1f} s" + (" (the search's run, reused)" if reused else ""))]
    if task.pruned:
        p = task.pruned
        kept = sum(k for pairs in p["channels"].values() for k, _ in pairs)
        total = sum(n for pairs in p["channels"].values() for _, n in pairs)
        flops = p.get("flops") or {}
        share = f"; branch FLOPs {flops['after'] / flops['before']:.2f}x" if flops.get("before") else ""
        rows.insert(rows.index(("val accuracy (final)", f"{100 * r.val_accuracy:.2f}%")), (
            "pruned", f"{p['ratio']:g} by {p['importance']}: {kept} of {total} channels kept in "
                      f"{len(p['channels'])} unit(s){share}; {p.get('finetune_epochs', 0)} finetuning epochs"))
        if p.get("unpruned_val_accuracy") is not None:
            rows.insert(rows.index(("val accuracy (final)", f"{100 * r.val_accuracy:.2f}%")),
                        ("val accuracy before pruning", f"{100 * p['unpruned_val_accuracy']:.2f}%"))
    if greedy is not None:
        rows.insert(rows.index(("val accuracy (final)", f"{100 * r.val_accuracy:.2f}%")) + 1, (
            "selected on", f"{folds}-fold inside the training split: the val accuracy is held out" if folds else
            "the validation split: its accuracy is optimistic (pass --folds 3 to select inside the training split)"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)


def _write_front(greedy, gcfg: GreedyConfig, setup, backbone, task_dir: Path, name: str) -> dict:
    """The accuracy / added-cost front of every set the search evaluated, as JSON and a plot."""
    cost = SetCost(backbone, setup.data.input_size, setup.prune)
    table = gcfg.latency_table

    def latency(units, ratio: float) -> float:
        return table.latency(units, ratio, cost.kept_flops(ratio))

    report = front_report(greedy.searches, greedy.units, latency if table else None, cost.flops, greedy.prune)
    report.update(budget_ms=gcfg.max_latency_ms, device=table.device if table else None,
                  backend=table.backend if table else None,
                  greedy={"units": greedy.units, "selection_score": greedy.accuracy, "selection_std": greedy.std,
                          "selected_on": f"{setup.folds}-fold" if setup.folds else "validation split",
                          "runs_per_set": greedy.runs_per_set, "direction": greedy.direction, "runs": greedy.runs,
                          "new_runs": greedy.new_runs, "run_seconds": greedy.run_seconds, "seconds": greedy.seconds})
    paths = {"json": task_dir / f"{name}.front.json", "png": task_dir / f"{name}.front.png"}
    atomic_write_bytes(paths["json"], (json.dumps(report, indent=2) + "\n").encode())
    where = f" on {table.backend} ({table.device})" if table else ""
    plot_front(report, paths["png"], f"{name}: accuracy vs added cost per task{where}",
               budget=gcfg.max_latency_ms if table else None)
    return paths


def _render_greedy(console: Console, greedy, all_units: list[str], log_path) -> None:
    table = Table(title=f"greedy selection ({greedy.direction} kept; {greedy.runs} runs of {greedy.runs_per_set} per "
                        f"set, {greedy.run_seconds:.0f} s of training; {greedy.reused_runs} from the log {log_path})")
    for col in ("search", "round", "best candidate", "accuracy", "gain", "kept"):
        table.add_column(col, justify="right" if col in ("round", "accuracy", "gain") else "left")
    for direction, s in greedy.searches.items():
        for rd in s["rounds"]:
            gain = "forced" if rd["forced"] else f"{100 * rd['gain']:+.2f}"
            pruned = f" (pruned {rd['best_prune']:g})" if rd.get("best_prune") else ""
            table.add_row(direction, str(rd["round"]), _units_label(rd["best"], all_units) + pruned,
                          f"{100 * rd['best_accuracy']:.2f}%", gain, "yes" if rd["accepted"] else "no")
    console.print(table)
    pruned = f"  pruned {greedy.prune:g}" if greedy.prune else ""
    console.print(f"chosen: {_units_label(greedy.units, all_units)}{pruned}  accuracy {100 * greedy.accuracy:.2f}%  "
                  f"params {greedy.params / 1e6:.3f} M  branch {greedy.flops / 1e9:.3f} GFLOPs")


@click.command()
@click.argument("model")
@_training_options
@click.option("--window", default="1", show_default=True, metavar="1,2,3",
              help="Window sizes: 1 = each unit alone, 2/3 = consecutive pairs / triples.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds per set.")
@click.option("--units", "unit_filter", default=None, metavar="UNITS",
              help="Profile only these units (names / prefixes); references still use all units.")
@click.option("--siamese", is_flag=True, help="Profile Siamese SubTuning.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for profile.json, profile.png and the resumable run log runs.json.")
def profile(model, window, seeds, unit_filter, siamese, out, workers, executor_kind, progress, **opts) -> None:
    """Finetuning profile of MODEL: accuracy of training each unit (or window of units) alone.

    \b
    Example:
      subtune-edge profile tf_efficientnet_lite0 --weights offline --data digits:digit \\
          --input-size 64 --epochs 3 --window 1,2 --seeds 3 --out profile-out
    """
    try:
        windows = tuple(int(w) for w in split_csv(window))
    except ValueError:
        raise click.BadParameter(f"'{window}' is not a list of window sizes such as 1,2,3", param_hint="--window") \
            from None
    if not windows or min(windows) < 1:
        raise click.BadParameter("window sizes must be positive integers", param_hint="--window")
    setup = _setup(model, siamese=siamese, seeds=tuple(opts["seed"] + i for i in range(seeds)), **opts)
    backbone = get_backbone(setup.backbone)
    get_data(setup.data, backbone.data_config)  # fail early on bad data
    units = backbone.parse_units(unit_filter) if unit_filter else None
    out = Path(out)
    check_replaceable(out, _is_profile_dir, "a profile", "out")  # before any training
    _check_writable(out, "out")
    log = RunLog(out / "runs.json", setup.context())
    n_sets = len(profile_sets(backbone.unit_names, windows, units)) + 2
    ui = _Progress(progress)
    with make_executor(workers, setup.config.device, kind=executor_kind) as executor, \
            ui.running(runs_total=n_sets * len(setup.seeds)):
        prof = finetuning_profile(setup, windows, units, executor=executor, log=log, progress=ui)
    with staged_dir(out, _is_profile_dir, what="a profile", param="out") as stage:
        atomic_write_bytes(stage / "profile.json", json.dumps(prof.to_json(), indent=1).encode())
        plot_profile(prof, stage / "profile.png")
        if log.path.exists():
            shutil.copy2(log.path, stage / "runs.json")
    png = out / "profile.png"

    console = Console()
    table = Table(title=f"finetuning profile: {model} on {setup.data.source}, {len(setup.seeds)} seed(s), "
                        f"{setup.config.epochs} epochs")
    for col in ("units", "window", "val accuracy", "spread (std)", "runs"):
        table.add_column(col, justify="left" if col == "units" else "right")
    for ref, label in ((prof.linear_probe, "linear probe"), (prof.full_finetune, "full finetuning")):
        table.add_row(f"[bold]{label}[/]", "", f"{100 * ref['mean']:.2f}%", f"{100 * ref['std']:.2f}",
                      str(ref["runs"]))
    for e in sorted(prof.entries, key=lambda e: (e["window"], e["start"])):
        table.add_row(",".join(e["units"]), str(e["window"]), f"{100 * e['mean']:.2f}%", f"{100 * e['std']:.2f}",
                      str(e["runs"]))
    console.print(table)
    console.print(f"wrote {out / 'profile.json'}, {png}, {log.path} "
                  f"({prof.new_runs} runs, {prof.reused_runs} from the log)")


PROFILE_FILES = frozenset({"profile.json", "profile.png", "runs.json"})


def _is_profile_dir(folder: Path) -> bool:
    """An earlier profile's folder and nothing else: only its files, and its run log really one."""
    names = {p.name for p in folder.iterdir()}
    if not names <= PROFILE_FILES or "runs.json" not in names:
        return False
    try:
        log_data = json.loads((folder / "runs.json").read_text())
        prof = json.loads((folder / "profile.json").read_text()) if "profile.json" in names else {"entries": []}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(log_data, dict) and log_data.get("format") == LOG_FORMAT and isinstance(prof, dict) \
        and "entries" in prof
