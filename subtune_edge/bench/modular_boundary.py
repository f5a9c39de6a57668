"""What a session boundary costs: the fused graph vs trunk + branches, with and without ORT's NCHWc layout.

Same modular export, alternated rounds, four variants: ``model.onnx`` and ``trunk.onnx`` + every
branch, each at ``ORT_ENABLE_ALL`` (CPU convolutions in the blocked NCHWc layout, reordered at
every graph input / output) and at ``ORT_ENABLE_EXTENDED`` (no layout change). The extra time
of the modular side that does not depend on the level is the fixed cost of the extra ``Run`` calls;
what grows at ``ORT_ENABLE_ALL`` is the reorders at the taps.

    python -m subtune_edge.bench.modular_boundary EXPORT_DIR --batch 1 --seconds 25
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

from subtune_edge.runtime import read_manifest

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def _session(path: str, level) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def measure(export: str, batch: int, seconds: float) -> dict:
    """Median ms of fused / modular at both levels, and the modular / fused ratios."""
    manifest = read_manifest(export, verify_files=False)
    layout = manifest.modular
    x = ort.OrtValue.ortvalue_from_numpy(
        np.random.default_rng(0).standard_normal((batch, 3, *manifest.input.hw)).astype(np.float32))
    taps = [t.name for t in layout.taps]
    variants = {}
    for name, level in LEVELS.items():
        fused = _session(f"{export}/model.onnx", level)
        trunk = _session(f"{export}/{layout.trunk.file}", level)
        branches = [(b, _session(f"{export}/{b.file}", level)) for b in layout.branches]
        outs = [o.name for o in fused.get_outputs()]

        def run_fused(fused=fused, outs=outs):
            fused.run_with_ort_values(outs, {manifest.input.name: x})

        def run_modular(trunk=trunk, branches=branches):
            values = dict(zip(taps, trunk.run_with_ort_values(taps, {manifest.input.name: x})))
            for b, sess in branches:
                sess.run_with_ort_values([b.output], {t: values[t] for t in b.taps})

        variants[f"fused/{name}"], variants[f"modular/{name}"] = run_fused, run_modular
    names = list(variants)
    for fn in variants.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start, rounds = time.perf_counter(), 0
    while rounds < 10 or time.perf_counter() - start < seconds:
        for n in names[rounds % len(names):] + names[:rounds % len(names)]:
            t0 = time.perf_counter()
            variants[n]()
            samples[n].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    med = {n: float(np.median(v)) for n, v in samples.items()}
    return {"batch": batch, "rounds": rounds, "median_ms": med,
            "extra_ms": {lvl: med[f"modular/{lvl}"] - med[f"fused/{lvl}"] for lvl in LEVELS},
            "ratio": {lvl: med[f"modular/{lvl}"] / med[f"fused/{lvl}"] for lvl in LEVELS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=25.0)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.export, args.batch, args.seconds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
