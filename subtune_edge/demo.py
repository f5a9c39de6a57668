"""The end-to-end demo: the whole product on real data, offline, in minutes on a laptop CPU.

With the ImageNet-pretrained EfficientNet-Lite0 from PyPI and scikit-learn's 1,797 handwritten
digits, it trains three tasks (digit 0-9, parity, digit >= 5) by SubTuning with greedily selected
units, draws the finetuning profile of the first task (with its linear-probe and full-finetuning
references), fuses the three tasks into one ONNX graph beside their separate full copies,
verifies every output against PyTorch, and measures fused vs separate latency on ONNX Runtime.
Library code: it reports through ``on_event`` and never prints; ``subtune-edge demo`` renders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .backbone import BackboneSpec, model_args_for_input
from .cost import PlanCost
from .data import DataSpec
from .io import atomic_write_bytes
from .search import GreedyConfig, RunLog, SearchSetup, finetuning_profile, greedy_select, make_executor, plot_profile
from .task import save_task
from .train import TrainConfig, get_backbone, get_data, train

# event name, details; events: "step" (title), "run" (a training run finished), "epoch", "bench" (label, done, total)
OnEvent = Callable[[str, dict], None]

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
    epochs: int = 4
    batch_size: int = 64
    train_samples: int | None = None
    val_samples: int | None = None
    device: str = "auto"
    bench_batches: tuple[int, ...] = (1, 8)
    bench_seconds: float = 3.0
    threads: int | None = None
    full_finetune_reference: bool = True

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        base = cls(candidates=("blocks.6.0", "conv_head"), max_units=1, epochs=2, train_samples=400,
                   val_samples=300, bench_batches=(1,), bench_seconds=0.5)
        return replace(base, **overrides)


@dataclass
class DemoTask:
    name: str
    units: list[str]
    accuracy: float
    linear_probe: float | None = None
    full_finetune: float | None = None
    path: str = ""
    greedy: dict = field(default_factory=dict)


def _setup(cfg: DemoConfig, source: str) -> SearchSetup:
    spec = BackboneSpec(cfg.model, cfg.weights, model_args_for_input(cfg.model, cfg.input_size))
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, device=cfg.device, seed=0)
    data = DataSpec(source, tuple(cfg.input_size), 0.2, 0, cfg.train_samples, val_samples=cfg.val_samples)
    return SearchSetup(spec, data, train_cfg)


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), on_event: OnEvent | None = None) -> dict:
    """Run the whole pipeline into ``out``; returns the summary (also written as summary.json)."""
    emit = on_event or (lambda event, info: None)
    out = Path(out)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    executor = make_executor(1, cfg.device)
    tasks: list[DemoTask] = []
    profile_path = None
    for i, name in enumerate(cfg.tasks):
        setup = _setup(cfg, TASKS[name])
        log = RunLog(out / "tasks" / f"{name}.runs.json", setup.context())
        forward = _forward_events(emit, name)
        t0 = time.perf_counter()
        lp = ft = None
        if i == 0:
            emit("step", {"title": f"finetuning profile of '{name}' (each candidate unit alone, linear probe, "
                                   f"{'full finetuning' if cfg.full_finetune_reference else ''})"})
            prof = finetuning_profile(setup, (1,), list(cfg.candidates), executor=executor, log=log,
                                      progress=forward) if cfg.full_finetune_reference else None
            if prof is not None:
                profile_path = plot_profile(prof, out / "profile" / "profile.png")
                atomic_write_bytes(out / "profile" / "profile.json", json.dumps(prof.to_json(), indent=2).encode())
                lp, ft = prof.linear_probe["mean"], prof.full_finetune["mean"]
        emit("step", {"title": f"greedy selection for '{name}' over {', '.join(cfg.candidates)}"})
        greedy = greedy_select(setup, GreedyConfig("forward", cfg.epsilon, cfg.max_units, candidates=cfg.candidates),
                               executor=executor, log=log, progress=forward)
        if lp is None:
            lp = _linear_probe_score(greedy)
        emit("step", {"title": f"training '{name}' on {', '.join(greedy.units) or '(linear probe)'}"})
        backbone = get_backbone(setup.backbone)
        data = get_data(setup.data, backbone.data_config)
        result = train(backbone, data, greedy.units, setup.config, name=name, progress=forward)
        path = save_task(result.task, out / "tasks" / name)
        tasks.append(DemoTask(name, greedy.units, result.accuracy, lp, ft, str(path),
                              {"direction": greedy.direction, "accuracy": greedy.accuracy,
                               "new_runs": greedy.new_runs, "reused_runs": greedy.reused_runs}))
        timings[f"train_{name}"] = round(time.perf_counter() - t0, 1)

    emit("step", {"title": "exporting the fused graph and the separate copies, verifying against PyTorch"})
    t0 = time.perf_counter()
    from exporters import export_tasks

    from .task import load_task

    loaded = [load_task(t.path) for t in tasks]
    manifest = export_tasks(loaded, out / "export", weights=cfg.weights, batch=(1, max(max(cfg.bench_batches), 8)),
                            separate=True, progress=lambda msg: emit("export", {"message": msg}))
    timings["export"] = round(time.perf_counter() - t0, 1)

    emit("step", {"title": "benchmarking fused vs separate on ONNX Runtime (CPU)"})
    t0 = time.perf_counter()
    from benchmarks import BenchConfig, Budget, run_bench, write_report

    bench_cfg = BenchConfig(backends=["ort-cpu"], batch_sizes=list(cfg.bench_batches), threads=cfg.threads,
                            budget=Budget(warmup=2, min_runs=5, max_runs=200, seconds=cfg.bench_seconds))
    results = run_bench(out / "export", bench_cfg, title="demo: digit, parity, ge5 on tf_efficientnet_lite0",
                        progress=lambda e: emit("bench", {"label": e.message, "done": e.done, "total": e.total}))
    report = write_report(results, out / "bench")
    timings["bench"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(time.perf_counter() - start, 1)

    summary = _summary(cfg, tasks, manifest, results, timings, out, profile_path, report)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _forward_events(emit: OnEvent, task: str):
    def forward(event) -> None:
        info = dict(event.data)
        kind = info.pop("event", None)
        if event.stage == "search" and kind == "run":
            emit("run", {"task": task, **info["result"], "reused": info["reused"]})
        elif event.stage == "train":
            emit("epoch", {"task": task, "event": kind, **info})

    return forward


def _linear_probe_score(greedy) -> float | None:
    """The linear probe is the forward search's starting point, so its score comes for free."""
    forward = greedy.searches.get("forward") or {}
    rounds = forward.get("rounds") or []
    return rounds[0]["from_accuracy"] if rounds else forward.get("accuracy")


def _summary(cfg, tasks: list[DemoTask], manifest: dict, results: dict, timings: dict, out: Path, profile_path,
             report: dict) -> dict:
    cost = PlanCost.from_json(manifest["plan"]["cost"])
    total_flops = cost.total_unit_flops
    rows = [r for r in results["rows"] if r["k"] == len(tasks)]
    verification = manifest.get("verification", {})
    return {
        "config": asdict(cfg),
        "tasks": [dict(asdict(t), branch_flops=cost.branches[t.name].flops,
                       branch_flops_share=cost.branches[t.name].flops / total_flops) for t in tasks],
        "verification_passed": verification.get("passed"),
        "fused_bytes": manifest["files"]["model.onnx"]["bytes"],
        "separate_bytes": sum(v["bytes"] for k, v in manifest["files"].items() if k.startswith("separate/")),
        "ideal_ratio_flops": cost.ideal_ratio_flops,
        "latency": [{"batch": r["batch"], "fused_ms": r["fused"]["median_ms"],
                     "separate_ms": r["separate"]["median_ms"], "ratio": r["ratio"],
                     "ideal_ratio_flops": r["ideal_ratio_flops"]} for r in rows],
        "timings_s": timings,
        "files": {"tasks": str(out / "tasks"), "export": str(out / "export"),
                  "profile_plot": str(profile_path) if profile_path else None,
                  **{f"bench_{k}": str(v) for k, v in report.items()}},
        "device": results["environment"]["cpu"],
    }
