"""The modular layout of an export: ``trunk.onnx`` with one output per branch point, ``branches/<task>.onnx``.

A modular export (``subtune-edge export --modular``) holds, beside the fused ``model.onnx``, the
shared trunk alone and one small graph per task. The manifest's ``modular`` section records the
cut points (taps), which tap(s) each branch reads, the trunk's own sha256, the backbone
fingerprint and a trunk version that grows when ``add-task`` rewrites the trunk's outputs.
This module is its typed record (:class:`ModularLayout`, checked field by field like the rest of
the manifest) and the graph check of its files; :mod:`.modular` runs it.

Taps are named ``tap.<unit>`` after the first unit of the branches reading it (the activation
*before* that unit: the trunk's stem and units up to it); ``tap.features`` is the frozen
backbone's pooled features at the end (neck and pool applied), which linear-probe branches (a
head only) and Siamese branches (their own features beside the frozen ones) read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ..errors import ExportError
from .schema import BATCH_DIM, MANIFEST, fail, safe_relpath

TRUNK_FILE = "trunk.onnx"
BRANCH_DIR = "branches"
TAP_PREFIX = "tap."
FEATURES_TAP = "tap.features"
#: how the fused model.onnx relates to the modular files
FUSED_STATES = ("exported", "composed")


def tap_name(unit: str | None) -> str:
    """The trunk output a branch starting at ``unit`` reads (``None``: the pooled frozen features)."""
    return FEATURES_TAP if unit is None else TAP_PREFIX + unit


def branch_file(output: str) -> str:
    """The relative path of a task's branch graph."""
    return f"{BRANCH_DIR}/{output}.onnx"


@dataclass(frozen=True)
class TapRecord:
    """One cut point: a trunk output. ``depth`` is the number of units before it (L + 1 for the features)."""

    name: str
    unit: str | None
    depth: int
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "depth": self.depth, "shape": list(self.shape),
                "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict, where: str, name: str) -> TapRecord:
        """One tap (schema-checked); its name must be its unit's."""
        unit = data.get("unit")
        if data["name"] != tap_name(unit):
            raise fail(where, f"{name}.name", data["name"], f"'{tap_name(unit)}' (named after its unit)")
        return cls(name=data["name"], unit=unit, depth=data["depth"], shape=tuple(data["shape"]),
                   dtype=data.get("dtype", "float32"))


@dataclass(frozen=True)
class BranchRecord:
    """One task's branch graph: the tap(s) it reads (a Siamese branch also reads ``tap.features``)."""

    task: str
    output: str
    file: str
    taps: tuple[str, ...]

    def to_json(self) -> dict:
        return {"task": self.task, "output": self.output, "file": self.file, "taps": list(self.taps)}

    @classmethod
    def from_json(cls, data: dict, where: str, name: str) -> BranchRecord:
        return cls(task=data["task"], output=data["output"], file=safe_relpath(data["file"], where),
                   taps=tuple(data["taps"]))


@dataclass(frozen=True)
class TrunkRecord:
    """``trunk.onnx``: its sha256, the frozen weights it holds, its version (bumped when its outputs change)."""

    file: str
    sha256: str
    fingerprint: str
    version: int
    units: int
    history: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "fingerprint": self.fingerprint, "version": self.version,
                "units": self.units, "history": [dict(h) for h in self.history]}

    @classmethod
    def from_json(cls, data: dict, where: str) -> TrunkRecord:
        return cls(file=safe_relpath(data.get("file", TRUNK_FILE), where), sha256=data["sha256"],
                   fingerprint=data["fingerprint"], version=data["version"], units=data["units"],
                   history=tuple(data.get("history", [])))


@dataclass(frozen=True)
class ModularLayout:
    """The manifest's ``modular`` section, checked.

    Attributes:
        trunk: the trunk file's record.
        taps: the trunk's outputs, shallowest first (the trunk's output order).
        branches: one per task, in the manifest's task order.
        fused: how ``model.onnx`` relates to these files: ``exported`` (from PyTorch, with these
            tasks) or ``composed`` (rebuilt from trunk and branches by ``add-task`` / ``remove-task``).
    """

    trunk: TrunkRecord
    taps: tuple[TapRecord, ...]
    branches: tuple[BranchRecord, ...]
    fused: str = "exported"

    def tap(self, name: str) -> TapRecord:
        for t in self.taps:
            if t.name == name:
                return t
        raise ExportError(f"the export's trunk has no tap '{name}'; its taps are "
                          f"{', '.join(t.name for t in self.taps)}")

    def branch(self, task: str) -> BranchRecord:
        """The branch of task ``task`` (its name or output name)."""
        for b in self.branches:
            if task in (b.task, b.output):
                return b
        raise ExportError(f"the export has no task '{task}'; its tasks are "
                          f"{', '.join(b.task for b in self.branches)}", param="tasks")

    def to_json(self) -> dict:
        return {"trunk": self.trunk.to_json(), "taps": [t.to_json() for t in self.taps],
                "branches": [b.to_json() for b in self.branches], "fused": self.fused}

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST, task_outputs: list[str] | None = None,
                  files: Any = None) -> ModularLayout:
        """Build ``modular`` (schema-checked); with ``task_outputs`` every task needs exactly one branch, in order.

        Raises:
            ExportError: one line naming the field and what was expected.
        """
        if not isinstance(data, dict):  # a layout outside a manifest (tests, tools): the schema's first rule
            raise fail(where, "modular", data, "a JSON object")
        trunk = TrunkRecord.from_json(data["trunk"], where)
        taps = tuple(TapRecord.from_json(t, where, f"modular.taps[{i}]") for i, t in enumerate(data["taps"]))
        branches = tuple(BranchRecord.from_json(b, where, f"modular.branches[{i}]")
                         for i, b in enumerate(data["branches"]))
        names = {t.name for t in taps}
        if len(names) != len(taps):
            raise fail(where, "modular.taps", [t.name for t in taps], "taps with distinct names")
        for i, b in enumerate(branches):
            unknown = [t for t in b.taps if t not in names]
            if unknown:
                raise fail(where, f"modular.branches[{i}].taps", unknown, "taps the trunk outputs")
        if task_outputs is not None and [b.output for b in branches] != list(task_outputs):
            raise fail(where, "modular.branches", [b.output for b in branches],
                       f"one branch per task, in task order ({task_outputs})")
        if files is not None:
            for rel in [trunk.file, *(b.file for b in branches)]:
                if rel not in files:
                    raise fail(where, "modular", rel, "files listed in 'files'")
            if files[trunk.file].sha256 != trunk.sha256:
                raise fail(where, "modular.trunk.sha256", trunk.sha256, f"the sha256 of {trunk.file} in 'files'")
        return cls(trunk=trunk, taps=taps, branches=branches, fused=data.get("fused", "exported"))


# -- the graphs -------------------------------------------------------------------------------------
def graph_dims(value_info) -> list[int | str | None]:
    """A graph input's / output's dims: an int, a symbolic name, or None when unknown."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None)
    return out


def read_graph(path: Path) -> tuple[onnx.GraphProto, list]:
    """The graph of the ONNX file ``path`` (weights not loaded) and its inputs that are not initializers.

    Raises:
        ExportError: the file is not a readable ONNX file.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means an unusable file
        raise ExportError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    return graph, [i for i in graph.input if i.name not in inits]


def _same_shape(dims: list, shape: tuple) -> bool:
    if len(dims) != len(shape):
        return False
    return all(isinstance(s, str) or d in (None, s) or isinstance(d, str) and s == BATCH_DIM
               for d, s in zip(dims, shape))


def check_modular_graph(path: Path, rel: str, layout: ModularLayout, input_name: str,
                        num_classes: dict[str, int]) -> None:
    """Check that a trunk or branch file has the inputs and outputs the layout states.

    Args:
        path: the file.
        rel: its path in the export (``trunk.onnx`` or a branch's ``file``).
        layout: the manifest's modular layout.
        input_name: the export's image input name (the trunk's input).
        num_classes: classes per task output.

    Raises:
        ExportError: the graph's inputs or outputs disagree with the manifest.
    """
    graph, graph_inputs = read_graph(path)
    inputs = {i.name: i for i in graph_inputs}
    outputs = {o.name: o for o in graph.output}
    if rel == layout.trunk.file:
        want_in, want_out = [input_name], [t.name for t in layout.taps]
        shapes = {t.name: t.shape for t in layout.taps}
    else:
        branch = next((b for b in layout.branches if b.file == rel), None)
        if branch is None:
            return
        want_in, want_out = list(branch.taps), [branch.output]
        shapes = {t: layout.tap(t).shape for t in branch.taps}
    if list(inputs) != want_in or list(outputs) != want_out:
        raise ExportError(f"{path} has inputs {list(inputs)} and outputs {list(outputs)} but the manifest says "
                          f"{want_in} -> {want_out}; re-export")
    for name, shape in shapes.items():
        value = outputs.get(name) if rel == layout.trunk.file else inputs.get(name)
        if not _same_shape(graph_dims(value), shape):
            raise ExportError(f"{path}: '{name}' has shape {graph_dims(value)} but the manifest says {list(shape)}; "
                              "re-export")
    if rel != layout.trunk.file:
        classes = graph_dims(outputs[want_out[0]])[-1:]
        expected = num_classes.get(want_out[0])
        if classes and isinstance(classes[0], int) and classes[0] > 0 and expected and classes[0] != expected:
            raise ExportError(f"{path}: output '{want_out[0]}' has {classes[0]} classes but the manifest says "
                              f"{expected}; re-export")
