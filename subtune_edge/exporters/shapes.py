"""Names and shapes every file of an export shares: the input, the outputs, the batch range."""

from __future__ import annotations

import keyword
import re

from subtune_edge.errors import ExportError

INPUT_NAME = "input"
BATCH_DIM = "batch"


# -- names ----------------------------------------------------------------------------------------
def output_name(task_name: str) -> str:
    """A task name as an ONNX output name that is also an identifier in C, C++ and Python."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", task_name.strip())
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = "_" + name
    return name


def output_names(task_names: list[str]) -> list[str]:
    """Sanitised output names, refusing duplicates and the input's name (one line naming both)."""
    if not task_names:
        raise ExportError("no tasks given; give at least one task to export")
    seen: dict[str, str] = {}
    names = []
    for task in task_names:
        if not task.strip():
            raise ExportError("a task has an empty name; re-save it with a name")
        name = output_name(task)
        if task in seen.values():
            raise ExportError(f"task name '{task}' is given twice; each task in one export must have its own name")
        if name in seen:
            raise ExportError(f"tasks '{seen[name]}' and '{task}' would both be output '{name}'; rename one of them")
        if name == INPUT_NAME:
            raise ExportError(f"task '{task}' cannot be named '{INPUT_NAME}', the name of the model's input; rename it")
        seen[name] = task
        names.append(name)
    return names


# -- batch ---------------------------------------------------------------------------------------
def parse_batch(text: str) -> tuple[int, int, int]:
    """'8' (fixed), 'MIN:MAX' or 'MIN:OPT:MAX' -> (min, opt, max); opt defaults to min."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        raise ExportError(f"batch '{text}' is not N, MIN:MAX or MIN:OPT:MAX (for example 1:32)") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], parts[0], parts[1]]
    if len(parts) != 3:
        raise ExportError(f"batch '{text}' is not N, MIN:MAX or MIN:OPT:MAX (for example 1:32)")
    return check_batch(tuple(parts))


def check_batch(batch: tuple[int, ...]) -> tuple[int, int, int]:
    """(min, max) or (min, opt, max) -> (min, opt, max), refusing impossible ranges."""
    if len(batch) == 2:
        batch = (batch[0], batch[0], batch[1])
    if len(batch) != 3:
        raise ExportError(f"batch range {batch} is not (min, max) or (min, opt, max)")
    lo, opt, hi = (int(v) for v in batch)
    if not 1 <= lo <= opt <= hi:
        raise ExportError(f"batch range {lo}:{opt}:{hi} must satisfy 1 <= min <= opt <= max (for example 1:32)")
    return lo, opt, hi


def parse_size(text: str) -> tuple[int, int]:
    """'224' or '224,224' (or 224x224) -> (224, 224).

    Raises:
        ExportError: not H,W of at least 8.
    """
    try:
        parts = [int(v) for v in str(text).replace("x", ",").split(",")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) < 8:
            raise ValueError
    except ValueError:
        raise ExportError(f"'{text}' is not H,W of at least 8 (for example 224,224)") from None
    return parts[0], parts[1]
