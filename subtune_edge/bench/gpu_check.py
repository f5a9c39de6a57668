"""One prepared GPU check: training steps, fused / separate / grouped / stacked latency, GPU memory.

One command, under 8 minutes on one data-centre GPU, needing only PyTorch, timm and this repository
(no TensorRT, no onnxruntime-gpu). Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``:

1. **Training step**, SubTuning (``layer4``) vs full finetuning: resnet50 224 px, batch 64, AMP
   and channels_last (the trainer's CUDA defaults), with and without the prefix cache
   (:mod:`subtune_edge.bench.cuda_train_step`, the trainer's own :class:`~subtune_edge.train.TrainStep`);
   median step time and peak GPU memory per variant.
2. **Inference latency**, resnet50 224 px, 4 tasks, in two settings: every task tuning ``layer4``
   (nothing for ``stacked`` to share) and every task tuning ``layer4.0`` (``layer4.1``/``4.2`` frozen
   after the branch point: ``stacked`` runs them once on the stacked batch). Fused
   (:class:`~subtune_edge.multitask.MultiTaskModel`), separate (4 full models one after another),
   grouped and stacked, at batch 1 and 8, eager and replayed as CUDA graphs, fp32 with TF32 off;
   median of CUDA-event timed runs, and the peak GPU memory of each side (its weights plus what a
   forward pass allocates).

``--cpu-fallback`` runs the same code on the CPU at tiny sizes (resnet18, 32 px, batch 1 and 2,
2 tasks, one step; no CUDA graphs), so the script is known to run end to end before it meets a
GPU; its figures mean nothing.

    python -m subtune_edge.bench.gpu_check --out benchmarks/results/gpu-check          # on the GPU machine
    python -m subtune_edge.bench.gpu_check --out /tmp/gpu-check --cpu-fallback          # anywhere
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.io import atomic_write_json, atomic_write_text
from subtune_edge.multitask import GroupedMultiTaskModel, MultiTaskModel, StackedMultiTaskModel, TaskModel
from subtune_edge.synthetic import synthetic_task
from subtune_edge.train import device_name

from . import cuda_train_step
from .environment import describe

FULL = {"model": "resnet50", "size": 224, "train_batch": 64, "train_steps": 20, "train_warmup": 5, "tasks": 4,
        "batches": [1, 8], "runs": 50, "warmup": 10, "settings": ["layer4", "layer4.0"]}
TINY = {"model": "resnet18", "size": 32, "train_batch": 2, "train_steps": 1, "train_warmup": 0, "tasks": 2,
        "batches": [1, 2], "runs": 2, "warmup": 1, "settings": ["layer4", "layer4.0"]}
SIDES = ("fused", "separate", "grouped", "stacked")


class _Separate(torch.nn.Module):
    """k full models run one after another: the baseline of shipping one model per task."""

    def __init__(self, models: list[TaskModel]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m in self.models)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphed(fn, x: torch.Tensor, device: torch.device):
    """``fn`` captured once as a CUDA graph on a static input; returns a replay function."""
    static_x = x.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up on a side stream before capture (cuDNN picks its algorithms)
            fn(static_x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(static_x)

    def replay(_: torch.Tensor):
        graph.replay()

    return replay


def time_module(module: torch.nn.Module, x: torch.Tensor, device: torch.device, runs: int, warmup: int,
                graphs: bool) -> dict:
    """Median latency of ``module(x)`` and the peak memory one forward allocates beyond its weights."""
    run = _graphed(module, x, device) if graphs else module
    for _ in range(warmup):
        run(x)
    _sync(device)
    times = []
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            start.record()
            run(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            run(x)
            times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def _peak_memory(build, x: torch.Tensor, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Build a side on the device and run it once; its weights and the peak a forward allocates."""
    if device.type != "cuda":
        module = build().to(device).eval()
        with torch.inference_mode():
            module(x)
        return module, {"weights_bytes": None, "peak_bytes": None}
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    module = build().to(device).eval()
    weights = torch.cuda.memory_allocated(device) - before
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        module(x)
    _sync(device)
    return module, {"weights_bytes": int(weights), "peak_bytes": int(torch.cuda.max_memory_allocated(device) - before)}


def latency(sizes: dict, device: torch.device) -> list[dict]:
    """Every (setting, side, batch, graphs) point of part 2."""
    backbone = create_backbone(sizes["model"], "random", **model_args_for_input(sizes["model"],
                                                                                (sizes["size"], sizes["size"])))
    rows = []
    for setting in sizes["settings"]:
        units = backbone.parse_units(setting)
        tasks = [synthetic_task(backbone, f"t{i}", units, 10, seed=i, input_size=(sizes["size"], sizes["size"]))
                 for i in range(sizes["tasks"])]
        builders = {
            "fused": lambda tasks=tasks: MultiTaskModel(backbone, tasks),
            # each separate copy owns all its weights, as shipped full models would
            "separate": lambda tasks=tasks: _Separate([copy.deepcopy(TaskModel.from_task(backbone, t)) for t in tasks]),
            "grouped": lambda tasks=tasks: GroupedMultiTaskModel(backbone, tasks),
            "stacked": lambda tasks=tasks: StackedMultiTaskModel(backbone, tasks),
        }
        for batch in sizes["batches"]:
            x = torch.randn(batch, 3, sizes["size"], sizes["size"], generator=torch.Generator().manual_seed(0))
            x = x.to(device)
            for side in SIDES:
                module, memory = _peak_memory(builders[side], x, device)
                for graphs in ([False, True] if device.type == "cuda" else [False]):
                    with torch.inference_mode(mode=not graphs), torch.no_grad():
                        t = time_module(module, x, device, sizes["runs"], sizes["warmup"], graphs)
                    rows.append({"setting": f"{sizes['tasks']} tasks tuning {setting}", "side": side, "batch": batch,
                                 "cuda_graphs": graphs, **t, **memory})
                del module
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for r in rows:
        base = next(b for b in rows if b["setting"] == r["setting"] and b["batch"] == r["batch"]
                    and b["cuda_graphs"] == r["cuda_graphs"] and b["side"] == "separate")
        r["ratio_vs_separate"] = r["median_ms"] / base["median_ms"]
    return rows


def training(sizes: dict, device: torch.device) -> dict:
    """Part 1 through :mod:`subtune_edge.bench.cuda_train_step` (the trainer's own step)."""
    args = argparse.Namespace(device=str(device), batch=sizes["train_batch"], size=sizes["size"],
                              steps=sizes["train_steps"], warmup=sizes["train_warmup"], classes=100, no_amp=False,
                              no_channels_last=False)
    backbone = create_backbone(sizes["model"], "random", **model_args_for_input(sizes["model"],
                                                                                (sizes["size"], sizes["size"])))
    sub = backbone.parse_units("layer4")
    variants = {"full": (backbone.unit_names, False), "subtune": (sub, False), "subtune+cache": (sub, True)}
    results = {name: cuda_train_step.measure(backbone, units, cached, args, device)
               for name, (units, cached) in variants.items()}
    full = results["full"]["step_ms_median"]
    for r in results.values():
        r["ratio_vs_full"] = r["step_ms_median"] / full
    return results


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def markdown(report: dict) -> str:
    """The report as Markdown."""
    lines = [f"# GPU check on {report['device']}", "",
             "CPU fallback run (tiny sizes): these figures only show the script runs." if report["cpu_fallback"]
             else "", f"torch {report['versions']['torch']}, CUDA {report['versions']['cuda']}; "
             f"{report['seconds']:.0f} s in all.", "", "## Training step: SubTuning (layer4) vs full finetuning", "",
             "| variant | ms / step | vs full | AMP | channels_last | peak GPU MiB |", "|---|---:|---:|---|---|---:|"]
    for name, r in report["training"].items():
        lines.append(f"| {name} | {r['step_ms_median']:.1f} | {r['ratio_vs_full']:.2f} | {r['amp']} | "
                     f"{r['channels_last']} | {_mib(r['peak_gpu_mem_bytes'])} |")
    lines += ["", "## Inference latency: fused vs separate vs grouped vs stacked", "",
              "| setting | batch | CUDA graphs | side | median ms | vs separate | weights MiB | peak MiB |",
              "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in report["latency"]:
        lines.append(f"| {r['setting']} | {r['batch']} | {r['cuda_graphs']} | {r['side']} | {r['median_ms']:.2f} | "
                     f"{r['ratio_vs_separate']:.3f} | {_mib(r['weights_bytes'])} | {_mib(r['peak_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results folder (gpu_check.json, gpu_check.md)")
    p.add_argument("--cpu-fallback", action="store_true", help="run on the CPU at tiny sizes (a smoke run)")
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    args = p.parse_args(argv)
    if not args.cpu_fallback and not torch.cuda.is_available():
        p.error("no CUDA device here; pass --cpu-fallback for the tiny CPU smoke run")
    device = torch.device("cpu" if args.cpu_fallback else args.device)
    sizes = TINY if args.cpu_fallback else FULL
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    report = {"benchmark": "gpu_check", "device": device_name(str(device)), "cpu_fallback": args.cpu_fallback,
              "sizes": sizes, "environment": describe(),
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda}}
    report["training"] = training(sizes, device)
    report["latency"] = latency(sizes, device)
    report["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", report)
    atomic_write_text(out / "gpu_check.md", markdown(report))
    print(json.dumps({"out": str(out), "seconds": report["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
