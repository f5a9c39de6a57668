"""Which ONNX Runtime CPU session settings pay on an edge CPU: each one on and off, batch 1 and 8.

For each export (the demo's EfficientNet-Lite0 at 64 px, fp32 and INT8; resnet50 at 224 px, fp32),
every :class:`~subtune_edge.runtime.onnxruntime.OrtSettings` field is flipped against the defaults
and timed against them, 2 intra-op threads. Sessions are measured in alternating blocks of runs
(one session at a time is active): a spinning session would otherwise spin through the other's
runs. Reported as variant / default median latency; below 1 the variant is faster. Writes
``benchmarks/results/session-settings/{results.json, README.md}``.

    python -m subtune_edge.bench.session_settings
    python -m subtune_edge.bench.session_settings --only lite0 --seconds 1 --out /tmp/ss
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from subtune_edge.exporters import export_tasks
from subtune_edge.io import atomic_write_bytes, atomic_write_json
from subtune_edge.runtime import OrtRunner
from subtune_edge.runtime.onnxruntime import OrtSettings
from subtune_edge.runtime.timing import summarize

from .export_time import load, machine
from .int8 import lite0_tasks, resnet50_tasks
from .settings import RESULTS_DIR
from .tables import section

VARIANTS = {"spinning on": {"spinning": True}, "optimization extended": {"optimization": "extended"},
            "optimization basic": {"optimization": "basic"}, "mem_pattern off": {"mem_pattern": False},
            "cpu_arena off": {"cpu_arena": False}, "denormal_as_zero on": {"denormal_as_zero": True},
            "pin_threads on": {"pin_threads": True}}
BLOCK = 10  # runs per block: one session active at a time


def _blocks(runners: dict[str, OrtRunner], seconds: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():  # warm-up
        for _ in range(3):
            r.run_staged()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(v) for v in samples.values()) < 3 * BLOCK:
        for name, r in runners.items():
            samples[name] += [r.run_staged() for _ in range(BLOCK)]
            time.sleep(0.05)  # a spinning session's workers go quiet before the other session's block
    return samples


def measure(model: Path, size: int, seconds: float, threads: int = 2) -> list[dict]:
    rows = []
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        for name, change in VARIANTS.items():
            pair = {"default": OrtRunner(model, threads=threads),
                    name: OrtRunner(model, threads=threads, settings=dataclasses.replace(OrtSettings(), **change))}
            for r in pair.values():
                r.stage({"input": x})
            got = _blocks(pair, seconds)
            for r in pair.values():
                r.deactivate()
            base, var = summarize(got["default"], batch).median_ms, summarize(got[name], batch).median_ms
            rows.append({"batch": batch, "variant": name, "default_ms": base, "variant_ms": var, "ratio": var / base,
                         "runs": len(got[name])})
    return rows


def run(name: str, seconds: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix=f"ss-{name}-") as tmp:
        tmp = Path(tmp)
        tasks, weights, extra, size = resnet50_tasks(tmp) if name == "resnet50" else lite0_tasks(tmp)
        int8 = name == "lite0"
        export_tasks(tasks, tmp / "export", weights=weights, batch=(1, 8), verify=False, branches="plain",
                     **({"int8": True, **extra} if int8 else {}))
        out = []
        for file in ["model.onnx"] + (["model.int8.onnx"] if int8 else []):
            before = load()
            rows = measure(tmp / "export" / file, size, seconds)
            out.append({"setup": name, "model": tasks[0].backbone.model_name, "size": size, "file": file,
                        "rows": rows, "load": {"before": before, "after": load()}})
        return out


def markdown(results: list[dict], env: dict) -> str:
    lines = ["# ONNX Runtime CPU session settings, each against the defaults", "",
             f"- machine: {env.get('cpu')}, {env.get('cpus_usable')} usable cores; {env.get('platform')}",
             f"- defaults: {OrtSettings().to_json()}; 2 intra-op threads",
             "- variant / default = median latency with the one setting flipped / with the defaults, measured in "
             f"alternating blocks of {BLOCK} runs of one session at a time; below 1: the variant is faster.",
             "- optimization extended = all of ORT's graph optimisations but its layout ones: the CPU's "
             "channels-last forms (NCHWc blocked convolutions, NHWC for quantized ones) are what `all` adds.", ""]
    for r in results:
        lines += section(f"{r['model']} {r['size']} px, {r['file']}",
                         f"load before {r['load']['before']}, after {r['load']['after']}",
                         ["variant", "batch 1 default ms", "batch 1 variant / default", "batch 8 default ms",
                          "batch 8 variant / default"], "lllll")
        for name in VARIANTS:
            b = {row["batch"]: row for row in r["rows"] if row["variant"] == name}
            lines.append(f"| {name} | {b[1]['default_ms']:.2f} | {b[1]['ratio']:.3f} | {b[8]['default_ms']:.2f} | "
                         f"{b[8]['ratio']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m subtune_edge.bench.session_settings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["resnet50", "lite0"], default=None)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per side per point")
    parser.add_argument("--out", default=str(RESULTS_DIR / "session-settings"), help="results folder (cwd-relative)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    env = machine()
    results = [r for name in ("lite0", "resnet50") if args.only in (None, name) for r in run(name, args.seconds)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"machine": env, "defaults": OrtSettings().to_json(), "results": results})
    atomic_write_bytes(out / "README.md", markdown(results, env).encode())
    print(markdown(results, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
