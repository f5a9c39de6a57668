"""The images INT8 calibrates and gates on: per task, a calibration share and held-out gate images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subtune_edge.data import DataSpec, load_data
from subtune_edge.errors import DataError, ExportError
from subtune_edge.runtime import preprocess
from subtune_edge.task import Task

from ..inputs import image_files
from .options import MIN_GATE_IMAGES, SEED, Int8Options


@dataclass
class ImagePool:
    """Images of one source, split into a calibration part and a held-out part (with targets if labelled)."""

    source: str
    calibration: list
    held_out: list
    targets: np.ndarray | None = None
    labels: tuple[str, ...] = ()


def _pool(source: str, preprocessing: dict, size: tuple[int, int]) -> ImagePool:
    """A data spec / class folder (train split calibrates, val split holds out) or a flat image folder."""
    path = Path(source)
    try:
        data = load_data(DataSpec(source, input_size=tuple(size)), preprocessing)
    except DataError:
        if not path.exists():
            raise ExportError(f"calibration data '{source}' is neither a folder nor a data spec (digits:TARGET, "
                              "digits-c:..., skimage-textures); check {param}", param="calibration") from None
        files = image_files([path])
        order = np.random.default_rng(SEED).permutation(len(files))
        cut = len(files) - max(1, len(files) // 4)
        return ImagePool(source, [files[i] for i in order[:cut]], [files[i] for i in order[cut:]])
    return ImagePool(source, [data.train.image(i) for i in range(len(data.train))],
                     [data.val.image(i) for i in range(len(data.val))], np.asarray(data.val.targets),
                     tuple(data.labels))


def recorded_source(task: Task) -> str | None:
    """The data source in the task's training record, when it can be rebuilt here (a named spec or a folder)."""
    data = task.training.get("data") if isinstance(task.training, dict) else None
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source:
        return None
    if ":" in source or source.startswith(("digits", "skimage-textures")) or Path(source).is_dir():
        return source
    return None


def _parse_calibration(entries, outs: list[str], tasks_by_output: dict[str, str]) -> tuple[list[str], dict]:
    shared, per_task = [], {}
    by_name = {name: out for out, name in tasks_by_output.items()} | {o: o for o in outs}
    for entry in entries:
        head, sep, rest = str(entry).partition("=")
        if sep and head in by_name:
            per_task.setdefault(by_name[head], []).append(rest)
        else:
            shared.append(str(entry))
    return shared, per_task


@dataclass
class TaskImages:
    """What one task is calibrated and gated on."""

    calibration: np.ndarray
    calibration_sources: list[str]
    held_out: np.ndarray
    targets: np.ndarray | None
    held_out_source: str


def task_images(tasks: list[Task], outs: list[str], opts: Int8Options, preprocessing: dict,
                size: tuple[int, int]) -> dict[str, TaskImages]:
    """Per output: its share of the calibration images and its held-out gate images, preprocessed.

    Raises:
        ExportError: a task without calibration data, too few calibration or held-out images.
    """
    tasks_by_output = dict(zip(outs, (t.name for t in tasks)))
    shared, per_task = _parse_calibration(opts.calibration, outs, tasks_by_output)
    pools: dict[str, ImagePool] = {}

    def pool(src: str) -> ImagePool:
        if src not in pools:
            pools[src] = _pool(src, preprocessing, size)
        return pools[src]

    k = len(tasks)
    n_total = int(opts.samples)
    out: dict[str, TaskImages] = {}
    for i, (task, name) in enumerate(zip(tasks, outs)):
        recorded = recorded_source(task)
        cal_sources = per_task.get(name) or shared or ([recorded] if recorded else [])
        if not cal_sources:
            raise ExportError(f"task '{task.name}' records no training data that can be rebuilt here; pass "
                              "{param} DATA (an image folder or a spec like digits:parity)", param="calibration")
        n = n_total // k + (1 if i < n_total % k else 0)
        candidates = [img for src in cal_sources for img in pool(src).calibration]
        if len(candidates) < n:
            raise ExportError(f"task '{task.name}' has {len(candidates)} calibration images in "
                              f"{', '.join(cal_sources)} but needs {n} ({n_total} over {k} task(s)); add images "
                              "or lower {param}", param="calibration_samples")
        rng = np.random.default_rng(SEED + i)
        chosen = [candidates[j] for j in sorted(rng.choice(len(candidates), n, replace=False))]
        gate_pool = pool(recorded) if recorded else pool(cal_sources[0])
        labelled = gate_pool.targets is not None and tuple(gate_pool.labels) == tuple(task.labels)
        held = gate_pool.held_out
        if len(held) < MIN_GATE_IMAGES:
            raise ExportError(f"task '{task.name}' has {len(held)} held-out images in {gate_pool.source} for the "
                              f"INT8 gate, fewer than {MIN_GATE_IMAGES}; pass {{param}} data with more images",
                              param="calibration")
        idx = np.arange(len(held))
        if len(held) > opts.gate_samples:
            idx = np.sort(np.random.default_rng(SEED + 100 + i).choice(len(held), int(opts.gate_samples),
                                                                       replace=False))
        split = "validation split" if gate_pool.targets is not None else "held out"
        out[name] = TaskImages(
            calibration=preprocess(chosen, preprocessing), calibration_sources=list(cal_sources),
            held_out=preprocess([held[j] for j in idx], preprocessing),
            targets=np.asarray(gate_pool.targets)[idx] if labelled else None,
            held_out_source=f"{gate_pool.source} ({split})")
    return out
