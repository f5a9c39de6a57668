"""The end-to-end demo: the whole product on real data, offline, in minutes on a laptop CPU.

With the ImageNet-pretrained EfficientNet-Lite0 from PyPI and scikit-learn's 1,797 handwritten
digits, it trains three tasks (digit 0-9, parity, digit >= 5) by SubTuning with greedily selected
units, draws the finetuning profile of the first task (with its linear-probe and full-finetuning
references), fuses the three tasks into one ONNX graph beside their separate full copies,
verifies every output against PyTorch, and measures fused vs separate latency on ONNX Runtime.

Greedy selection scores candidate sets by k-fold cross-validation inside the training split, so
the validation accuracy the summary reports is of data the selection never saw (the selection's
own score is reported beside it as ``selection_score``). The chosen set is then trained on the
whole training split: a run the profile already made with the same settings is reused (its task
is kept in ``tasks/runs/``) rather than trained again.
Library code: it reports through one :data:`~subtune_edge.progress.Progress` callback (the
training, search, export and benchmark events as they come, each tagged with its task, plus a
``demo`` event per step) and never prints; ``subtune-edge demo`` renders. It sits above the
exporters and the benchmarks (see ARCHITECTURE.md): nothing but the CLI imports it.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from subtune_edge.bench import BenchConfig, Budget, run_bench, write_report
from subtune_edge.exporters import export_tasks

from .backbone import BackboneSpec, model_args_for_input
from .cost import PlanCost
from .data import DataSpec
from .errors import SubtuneError
from .io import atomic_write_bytes, staged_dir
from .progress import Event, Progress, emit
from .search import (
    Evaluator,
    GreedyConfig,
    RunLog,
    SearchSetup,
    finetuning_profile,
    greedy_select,
    make_executor,
    plot_profile,
    train_chosen,
)
from .task import load_task, save_task
from .train import TrainConfig

log = logging.getLogger(__name__)

STAGE = "demo"
# What a demo folder holds; an earlier one (and nothing else) may be replaced.
OUTPUTS = ("tasks", "profile", "export", "bench", "summary.json")

TASKS = {"digit": "digits:digit", "parity": "digits:parity", "ge5": "digits:ge5"}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and measures; :meth:`quick` is the CI-sized variant."""

    model: str = "tf_efficientnet_lite0"
    weights: str = "offline"
    input_size: tuple[int, int] = (64, 64)
    tasks: tuple[str, ...] = ("digit", "parity", "ge5")
    # greedy selection looks at the last units (where SubTuning pays off on a small dataset) and
    # keeps at most two of them; the profile shows why.
    candidates: tuple[str, ...] = ("blocks.5.2", "blocks.5.3", "blocks.6.0", "conv_head")
    max_units: int = 2
    epsilon: float = 0.005
    # greedy scores sets by k-fold inside the training split: the reported validation split stays unseen
    folds: int = 3
    epochs: int = 4
    batch_size: int = 64
    train_samples: int | None = None
    val_samples: int | None = None
    device: str = "auto"
    # training runs in parallel processes of one thread each: on a 2-core CPU two such runs get through
    # 1.3x the work of one run on two threads (small branches do not split well across threads)
    workers: int = 2
    bench_batches: tuple[int, ...] = (1, 8)
    bench_seconds: float = 1.5
    threads: int | None = None
    full_finetune_reference: bool = True
    # INT8: model.int8.onnx calibrated on the tasks' training images, gated per task on their validation
    # images; a task failing the gate keeps its branch in fp32 (recorded), so the demo never stops there
    int8: bool = True
    calibration_samples: int = 256
    int8_min_agreement: float = 0.98
    int8_max_drop: float = 0.01

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        base = cls(candidates=("blocks.6.0", "conv_head"), max_units=1, folds=2, epochs=2, train_samples=400,
                   val_samples=300, bench_batches=(1,), bench_seconds=0.5, calibration_samples=96,
                   # CI-sized tasks are undertrained (near-tie logits): their INT8 figures are recorded, not gated
                   int8_min_agreement=0.0, int8_max_drop=1.0)
        return replace(base, **overrides)


@dataclass
class DemoTask:
    name: str
    units: list[str]
    accuracy: float                      # validation split: never seen by the selection
    selection_score: float               # greedy's k-fold score inside the training split
    linear_probe: float | None = None
    full_finetune: float | None = None
    path: str = ""
    reused_run: bool = False             # the final model is a run the profile had already trained
    greedy: dict = field(default_factory=dict)
    seconds: float = 0.0                 # wall time of its selection and training (tasks may overlap)


def _setup(cfg: DemoConfig, source: str) -> SearchSetup:
    spec = BackboneSpec(cfg.model, cfg.weights, model_args_for_input(cfg.model, cfg.input_size))
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, device=cfg.device, seed=0)
    data = DataSpec(source, tuple(cfg.input_size), 0.2, 0, cfg.train_samples, val_samples=cfg.val_samples)
    return SearchSetup(spec, data, train_cfg)


def is_demo_dir(path: str | Path) -> bool:
    """True for an earlier demo's output folder holding nothing else (the ``owns`` rule of ``out``)."""
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "config" in summary and "tasks" in summary \
        and all(entry.name in OUTPUTS for entry in path.iterdir())


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), progress: Progress | None = None) -> dict:
    """Run the whole pipeline into ``out``; returns the summary (also written as ``summary.json``).

    The folder is built beside ``out`` and published when complete, so an interrupted demo leaves
    the previous one intact; the run logs of a previous demo in ``out`` are reused (a rerun resumes).

    Args:
        out: the output folder: new, empty, or an earlier demo's (which is replaced).
        cfg: what to train and measure; :meth:`DemoConfig.quick` is the CI-sized run.
        progress: called with every :class:`~subtune_edge.progress.Event` (see the module docstring).

    Returns:
        The summary: per task its units and accuracies, the export's sizes, the latency rows.

    Raises:
        SubtuneError: ``out`` is a foreign folder, or any step fails (training, export
            verification, benchmark).
    """
    final = Path(out).absolute()
    with staged_dir(final, owns=is_demo_dir, what="a demo's output", param="out") as staging:
        _reuse_run_logs(final, staging)
        summary = _run(staging, final, cfg, progress)
    return summary


def _reuse_run_logs(previous: Path, staging: Path) -> None:
    """An earlier demo's run logs and stored runs, so that a rerun resumes instead of training again."""
    if not is_demo_dir(previous):
        return
    for log in sorted((previous / "tasks").glob("*.json")):
        if log.name.endswith((".runs.json", ".search.json")):
            (staging / "tasks").mkdir(exist_ok=True)
            shutil.copy2(log, staging / "tasks" / log.name)
    if (previous / "tasks" / "runs").is_dir():
        shutil.copytree(previous / "tasks" / "runs", staging / "tasks" / "runs")


def _open_log(path: Path, setup: SearchSetup) -> RunLog:
    """The run log at ``path``, or a new one where an earlier demo's was written for other settings."""
    try:
        return RunLog(path, setup.context())
    except SubtuneError as exc:
        log.warning("not reusing %s: %s", path.name, exc)
        path.unlink()
        return RunLog(path, setup.context())


def _run(out: Path, final: Path, cfg: DemoConfig, progress: Progress | None) -> dict:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    executor = make_executor(cfg.workers, cfg.device)
    try:
        t0 = time.perf_counter()
        if executor.concurrent:  # the three tasks' searches share the workers: none waits for another's last run
            with ThreadPoolExecutor(len(cfg.tasks), thread_name_prefix="task") as pool:
                trained = list(pool.map(lambda i: _train_task(cfg.tasks[i], cfg, out, final, executor, progress,
                                                              with_profile=i == 0), range(len(cfg.tasks))))
        else:
            trained = [_train_task(name, cfg, out, final, executor, progress, with_profile=i == 0)
                       for i, name in enumerate(cfg.tasks)]
        timings["train"] = round(time.perf_counter() - t0, 1)
    finally:
        executor.close()  # the training workers go before the export and the benchmark run
    tasks = [task for task, _ in trained]
    profile = next((plot for _, plot in trained if plot is not None), None)
    for task in tasks:
        timings[f"train_{task.name}"] = task.seconds

    emit(progress, STAGE, "exporting the fused graph and the separate copies, verifying against PyTorch")
    t0 = time.perf_counter()
    loaded = [load_task(out / "tasks" / f"{t.name}.safetensors") for t in tasks]
    manifest = export_tasks(loaded, out / "export", weights=cfg.weights, batch=(1, max(max(cfg.bench_batches), 8)),
                            separate=True, progress=progress, int8=cfg.int8, int8_fallback=True,
                            calibration_samples=cfg.calibration_samples, int8_min_agreement=cfg.int8_min_agreement,
                            int8_max_drop=cfg.int8_max_drop).to_json()
    timings["export"] = round(time.perf_counter() - t0, 1)

    emit(progress, STAGE, "benchmarking fused vs separate on ONNX Runtime (CPU)")
    t0 = time.perf_counter()
    bench_cfg = BenchConfig(backends=["ort-cpu"], batch_sizes=list(cfg.bench_batches), threads=cfg.threads,
                            precisions=["fp32", "int8"] if cfg.int8 else ["fp32"],
                            budget=Budget(warmup=2, min_runs=5, max_runs=200, seconds=cfg.bench_seconds))
    # memory is measured in-process (the fresh-process probe costs a process per point; the summary shows latency)
    results = run_bench(out / "export", bench_cfg, title="demo: digit, parity, ge5 on tf_efficientnet_lite0",
                        progress=progress, memory_probe=False)
    report = write_report(results, out / "bench")
    timings["bench"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - start, 1)

    report = {k: final / Path(v).relative_to(out) for k, v in report.items()}
    summary = _summary(cfg, tasks, manifest, results, timings, final, profile, report)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _train_task(name: str, cfg: DemoConfig, out: Path, final: Path, executor, progress: Progress | None,
                with_profile: bool) -> tuple[DemoTask, Path | None]:
    """One task: its finetuning profile (the first task), greedy selection by k-fold, the final training.

    With a parallel executor the profile's runs (full finetuning first: the longest) run beside the
    greedy search's, which does not need them; the final training waits for both.
    """
    start = time.perf_counter()
    setup = _setup(cfg, TASKS[name])
    # validation-split runs (profile, final training) and the search's k-fold runs: two contexts, two logs
    val_log = _open_log(out / "tasks" / f"{name}.runs.json", setup)
    search_setup = replace(setup, folds=cfg.folds)
    search_log = _open_log(out / "tasks" / f"{name}.search.json", search_setup)
    store = out / "tasks" / "runs"
    forward = _tagged(progress, name)
    prof, pending, plot, ft = None, None, None, None
    if with_profile and cfg.full_finetune_reference:
        emit(progress, STAGE, f"finetuning profile of '{name}' (each candidate unit alone, linear probe, "
                              "full finetuning)")
        run_profile = functools.partial(finetuning_profile, setup, (1,), list(cfg.candidates), executor=executor,
                                        log=val_log, progress=forward, store=store)
        if executor.concurrent:  # the profile's runs share the workers with the greedy search below
            background = ThreadPoolExecutor(1, thread_name_prefix="profile")
            pending = background.submit(run_profile)
            background.shutdown(wait=False)
        else:
            prof = run_profile()
    emit(progress, STAGE, f"greedy selection for '{name}' over {', '.join(cfg.candidates)} "
                          f"({cfg.folds}-fold inside the training split)")
    greedy = greedy_select(search_setup, GreedyConfig("forward", cfg.epsilon, cfg.max_units, candidates=cfg.candidates),
                           executor=executor, log=search_log, progress=forward)
    if pending is not None:
        prof = pending.result()
    if prof is not None:
        plot_profile(prof, out / "profile" / "profile.png")
        atomic_write_bytes(out / "profile" / "profile.json", json.dumps(prof.to_json(), indent=2).encode())
        plot, ft = final / "profile" / "profile.png", prof.full_finetune["mean"]
    # the linear-probe reference on the validation split (from the profile's log when it ran)
    lp = Evaluator(setup, executor, val_log, forward, store).score(()).mean
    emit(progress, STAGE, f"training '{name}' on {', '.join(greedy.units) or '(linear probe)'}")
    chosen = train_chosen(setup, greedy.units, val_log, store, name=name, executor=executor, progress=forward)
    path = save_task(chosen.task, out / "tasks" / name)
    return DemoTask(name, greedy.units, chosen.result["accuracy"], greedy.accuracy, lp, ft,
                    str(final / "tasks" / path.name), chosen.reused,
                    {"direction": greedy.direction, "selection": f"{cfg.folds}-fold inside the training split",
                     "selection_score": greedy.accuracy, "selection_std": greedy.std, "runs": greedy.runs,
                     "new_runs": greedy.new_runs, "reused_runs": greedy.reused_runs,
                     "run_seconds": round(greedy.run_seconds, 1), "seconds": round(greedy.seconds, 1)},
                    round(time.perf_counter() - start, 1)), plot


def _tagged(progress: Progress | None, task: str) -> Progress | None:
    """``progress`` with the task's name added to each event's data (three tasks share one bar)."""
    if progress is None:
        return None

    def forward(event: Event) -> None:
        progress(replace(event, data={**event.data, "task": task}))

    return forward


def _summary(cfg, tasks: list[DemoTask], manifest: dict, results: dict, timings: dict, out: Path, profile_path,
             report: dict) -> dict:
    cost = PlanCost.from_json(manifest["plan"]["cost"])
    total_flops = cost.total_unit_flops
    rows = [r for r in results["rows"] if r["k"] == len(tasks) and r.get("precision", "fp32") == "fp32"]
    int8_rows = {r["batch"]: r for r in results["rows"] if r["k"] == len(tasks) and r.get("precision") == "int8"}
    int8 = {t["name"]: t.get("int8") or {} for t in manifest["tasks"]}
    verification = manifest.get("verification", {})
    return {
        "config": asdict(cfg),
        "tasks": [dict(asdict(t), branch_flops=cost.branches[t.name].flops,
                       branch_flops_share=cost.branches[t.name].flops / total_flops,
                       int8_precision=int8[t.name].get("precision"), int8_agreement=int8[t.name].get("agreement"),
                       accuracy_fp32=int8[t.name].get("accuracy_fp32"),
                       accuracy_int8=int8[t.name].get("accuracy_int8")) for t in tasks],
        "verification_passed": verification.get("passed"),
        "fused_bytes": manifest["files"]["model.onnx"]["bytes"],
        "separate_bytes": sum(v["bytes"] for k, v in manifest["files"].items()
                              if k.startswith("separate/") and not k.endswith(".int8.onnx")),
        "int8_bytes": (manifest["files"].get("model.int8.onnx") or {}).get("bytes"),
        "int8": {k: (manifest.get("int8") or {}).get(k) for k in ("target", "activations", "quantizer")}
        if manifest.get("int8") else None,
        "ideal_ratio_flops": cost.ideal_ratio_flops,
        "latency": [{"batch": r["batch"], "fused_ms": r["fused"]["median_ms"],
                     "separate_ms": r["separate"]["median_ms"], "ratio": r["ratio"],
                     "ideal_ratio_flops": r["ideal_ratio_flops"],
                     "int8_fused_ms": int8_rows[r["batch"]]["fused"]["median_ms"] if r["batch"] in int8_rows else None,
                     "int8_separate_ms": int8_rows[r["batch"]]["separate"]["median_ms"]
                     if r["batch"] in int8_rows else None} for r in rows],
        "timings_s": timings,
        "files": {"tasks": str(out / "tasks"), "export": str(out / "export"),
                  "profile_plot": str(profile_path) if profile_path else None,
                  **{f"bench_{k}": str(v) for k, v in report.items()}},
        "device": results["environment"]["cpu"],
    }
