"""Small real timm models at 64x64 with seeded random weights, and tasks on them."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from subtune_edge.backbone import Backbone, create_backbone, model_args_for_input
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import Task

# under pytest-xdist the cores are shared between the workers
torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

SIZE = 64
# One model per family, small enough to run at 64x64 in well under a second.
FAMILY_MODELS = ["resnet18", "tf_efficientnet_lite0", "mobilenetv3_large_100", "convnext_atto",
                 "vit_tiny_patch16_224"]


@functools.cache
def backbone_for(name: str, weights: str = "random") -> Backbone:
    return create_backbone(name, weights, **model_args_for_input(name, (SIZE, SIZE)))


def three_depth_tasks(backbone: Backbone, seed: int = 0) -> list[Task]:
    """Three tasks leaving the trunk at three different depths, one with non-contiguous units."""
    names = backbone.unit_names
    n = len(names)
    return [
        synthetic_task(backbone, "late", [names[-1]], 3, seed=seed, input_size=(SIZE, SIZE)),
        synthetic_task(backbone, "middle", [names[n // 2], names[n - 2]], 4, seed=seed + 1, input_size=(SIZE, SIZE)),
        synthetic_task(backbone, "early", [names[1], names[-1]], 5, seed=seed + 2, input_size=(SIZE, SIZE)),
    ]


# -- the files the suite writes follow their schemas (checked once, at the end of the session) ------------
#: folders and files a test broke on purpose (hardening cases): the end-of-session check leaves them out
TAMPERED: set[Path] = set()


def tampered(path: Path) -> Path:
    """Mark ``path`` (a file or a folder) as deliberately malformed, so the schema check skips it."""
    TAMPERED.add(Path(path).resolve())
    return path


def _format_of(path: Path):
    """(format name, the parsed JSON) of a file subtune-edge writes, or None for anything else."""
    from subtune_edge.task import METADATA_KEY

    if path.suffix == ".safetensors":
        try:
            header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
            return "task", json.loads(header["__metadata__"][METADATA_KEY])
        except (ValueError, KeyError, TypeError):
            return None
    if path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(data, dict):
        return None
    if path.name.endswith(".task.json"):  # a task file's metadata, as exporters/examples holds it
        return "task", data
    kind = {"subtune-edge.export": "manifest", "subtune-edge.runs": "runlog",
            "subtune-edge.device-costs": "costs"}.get(data.get("format"))
    if kind is None and data.get("schema") == "subtune-edge.bench/1":
        kind = "bench"
    return (kind, data) if kind else None


def schema_failures(root: Path) -> tuple[dict[str, int], list[str]]:
    """Validate every task file, manifest, run log, cost table and results.json under ``root``.

    Returns:
        Files checked per format, and one line per file that does not validate.
    """
    from subtune_edge.bench.report import BENCH_FORMAT
    from subtune_edge.runtime.schema import MANIFEST_FORMAT
    from subtune_edge.schema import validate
    from subtune_edge.search.latency import COSTS_SCHEMA
    from subtune_edge.search.runlog import RUNLOG_FORMAT
    from subtune_edge.task.metadata import TASK_FORMAT

    formats = {"task": TASK_FORMAT, "manifest": MANIFEST_FORMAT, "runlog": RUNLOG_FORMAT, "costs": COSTS_SCHEMA,
               "bench": BENCH_FORMAT}
    counts = dict.fromkeys(formats, 0)
    failures = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
        real = path.resolve()
        if any(t == real or t in real.parents for t in TAMPERED):
            continue
        found = _format_of(path)
        if found is None:
            continue
        kind, data = found
        counts[kind] += 1
        try:
            validate(data, formats[kind], str(path))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, whatever its class
            failures.append(f"{kind}: {exc}")
    return counts, failures
