"""Fuse three task files into one ONNX graph (one output per task), verify it, and run it.

    python examples/fuse_and_export.py tasks/a.safetensors tasks/b.safetensors tasks/c.safetensors --out export

Every task must come from the same backbone and frozen weights. The export holds the fused
``model.onnx``, each task's standalone ``separate/<task>.onnx`` and ``manifest.json``; it is only
written when every output matches PyTorch.
"""

from __future__ import annotations

import argparse

import numpy as np

from subtune_edge import build_fused, load_export, load_tasks
from subtune_edge.exporters import export_tasks
from subtune_edge.multitask import backbone_for_tasks


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="+", help="task files (or names with --task-dir)")
    p.add_argument("--task-dir", default=None)
    p.add_argument("--out", default="export")
    args = p.parse_args(argv)

    tasks = load_tasks(args.tasks, args.task_dir)
    backbone = backbone_for_tasks(tasks)
    size = tuple(tasks[0].preprocessing["input_size"][1:])
    plan = build_fused(backbone, tasks, size).plan
    print(f"trunk: stem + {plan.trunk_end} units; ideal FLOPs ratio fused/separate "
          f"{plan.cost.ideal_ratio_flops:.3f}")
    manifest = export_tasks(tasks, args.out, separate=True).to_json()
    print(f"wrote {args.out}/model.onnx; verification passed: {manifest['verification']['passed']}")

    runner = load_export(args.out)
    batch = np.zeros((2, 3, *size), np.float32)
    for name, logits in runner.run(batch).items():
        print(f"  output {name}: shape {logits.shape}")
    return manifest


if __name__ == "__main__":
    main()
