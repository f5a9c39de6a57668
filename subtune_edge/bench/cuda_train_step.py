"""Training step time and peak GPU memory: full finetuning vs SubTuning(layer4), with and without the
prefix cache, on a 224x224 ResNet-50 at batch 64 with mixed precision and channels_last.

Every variant runs :class:`subtune_edge.train.TrainStep`, the step the trainer itself runs:

full            every unit and a new head are trained (the stem stays frozen, as in subtune-edge's
                full-finetune mode; a full finetune that also trains the 7x7 stem only costs more)
subtune         layer4's units and the head; the frozen prefix (stem .. layer3) runs under no_grad
subtune+cache   the same branch fed with cached prefix outputs: what an epoch costs once the
                prefix cache holds the dataset (training without augmentation)

Targets: SubTuning step <= 40% of full finetuning, <= 25% with the prefix cache.

    python -m subtune_edge.bench.cuda_train_step                          # on a CUDA machine
    python -m subtune_edge.bench.cuda_train_step --device cpu --batch 4 --steps 2   # smoke check anywhere

(from a checkout, or anywhere subtune-edge is installed).

Writes ``benchmarks/results/cuda_train_step.json`` (CUDA) or ``cuda_train_step_cpu_smoke.json``.
Weights are seeded random (``--weights random``): step time does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from subtune_edge.backbone import create_backbone
from subtune_edge.multitask import TaskModel
from subtune_edge.train import TrainConfig, TrainStep, amp_dtype, device_name

from .settings import RESULTS_DIR

TARGETS = {"subtune": 0.40, "subtune+cache": 0.25}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(backbone, units: list[str], cached: bool, args, device: torch.device):
    """(one timed training step as a function, its model, its config, the cached prefix or None)."""
    # AMP (bf16, else fp16 + scaler) and channels_last default on for CUDA, off for the CPU smoke check
    cfg = TrainConfig(epochs=1, batch_size=args.batch, device=args.device, amp=False if args.no_amp else None,
                      channels_last=False if args.no_channels_last else None).resolve(backbone, units)
    model = TaskModel.for_training(backbone, units, args.classes).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    step = TrainStep(model, cfg, total_steps=10**6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    if device.type == "cuda":
        x = x.pin_memory()
    h = None
    if cached:
        model.eval()
        h = step.prefix(x).detach()
    model.train()

    def timed() -> float:
        _sync(device)
        t0 = time.perf_counter()
        step(None if cached else x, y, h)
        _sync(device)
        return time.perf_counter() - t0

    return timed, model, cfg, h


def summary(times: list[float], model, cfg, h) -> dict:
    out = {
        "units": len(model.tuned_names), "trainable_params": sum(p.numel() for m in model.trainable_modules().values()
                                                                 for p in m.parameters()),
        "step_ms_median": 1000 * statistics.median(times), "step_ms_mean": 1000 * statistics.fmean(times),
        "step_ms_min": 1000 * min(times), "steps": len(times),
        "amp": str(amp_dtype(cfg)).replace("torch.", "") if amp_dtype(cfg) else None,
        "channels_last": bool(cfg.channels_last),
    }
    if h is not None:
        out["cache_bytes_per_sample"] = int(h[0].numel() * h.element_size())
    return out


def measure(backbone, units: list[str], cached: bool, args, device: torch.device) -> dict:
    """Warm-up steps, then ``args.steps`` timed steps of one variant, alone on the device (for peak memory)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated(device)
    timed, model, cfg, h = prepare(backbone, units, cached, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed() for _ in range(args.warmup + args.steps)][args.warmup:]
    out = summary(times, model, cfg, h)
    if device.type == "cuda":
        out["peak_gpu_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["peak_gpu_mem_above_weights_bytes"] = int(torch.cuda.max_memory_allocated(device) - base_mem)
    else:
        out["peak_gpu_mem_bytes"] = None
    del timed, model
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--units", default="layer4", help="units SubTuning trains (names or prefixes)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cuda_train_step*.json)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device; run with --device cpu --batch 4 --steps 2 for a smoke check")
    device = torch.device(args.device)
    if device.type == "cpu":
        args.warmup = min(args.warmup, 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    backbone = create_backbone(args.model, "random")
    sub_units = backbone.parse_units(args.units)
    variants = {"full": (backbone.unit_names, False), "subtune": (sub_units, False),
                "subtune+cache": (sub_units, True)}
    results = {name: measure(backbone, units, cached, args, device) for name, (units, cached) in variants.items()}
    full = results["full"]["step_ms_median"]
    ratios = {name: results[name]["step_ms_median"] / full for name in TARGETS}
    mem_ratios = {name: results[name]["peak_gpu_mem_bytes"] / results["full"]["peak_gpu_mem_bytes"]
                  for name in TARGETS} if device.type == "cuda" else None
    report = {
        "benchmark": "cuda_train_step", "device": device_name(args.device),
        "smoke_check_only": device.type != "cuda",
        "settings": {"model": args.model, "weights": "random", "subtune_units": sub_units, "batch": args.batch,
                     "input_size": [args.size, args.size], "timed_steps": args.steps, "warmup_steps": args.warmup,
                     "optimizer": "AdamW", "classes": args.classes},
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None},
        "results": results,
        "step_time_ratio_vs_full": ratios,
        "peak_memory_ratio_vs_full": mem_ratios,
        "targets": TARGETS,
        "meets_targets": {name: ratios[name] <= TARGETS[name] for name in TARGETS} if device.type == "cuda" else None,
    }
    default = "cuda_train_step.json" if device.type == "cuda" else "cuda_train_step_cpu_smoke.json"
    out = Path(args.out) if args.out else RESULTS_DIR / default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in results.items():
        mem = f", peak {r['peak_gpu_mem_bytes'] / 2**30:.2f} GiB" if r["peak_gpu_mem_bytes"] else ""
        ratio = f" ({100 * ratios[name]:.0f}% of full, target <= {100 * TARGETS[name]:.0f}%)" if name in ratios else ""
        print(f"{name:14s} {r['step_ms_median']:8.1f} ms/step{mem}{ratio}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
