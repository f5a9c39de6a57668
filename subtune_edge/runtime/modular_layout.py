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
from .schema import BATCH_DIM, HEX64, MANIFEST, FieldCheck, batch_dim, safe_relpath

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
    def from_json(cls, data: Any, where: str, name: str) -> TapRecord:
        c = FieldCheck(where)
        data = c.obj(data, name)
        shape = c.key(data, "shape", f"{name}.shape")
        if not isinstance(shape, list) or len(shape) < 2:
            raise c.fail(f"{name}.shape", "[batch, ...] (at least 2 dims)", shape)
        unit = data.get("unit")
        tap = c.string(c.key(data, "name", f"{name}.name"), f"{name}.name")
        if tap != tap_name(None if unit is None else c.string(unit, f"{name}.unit")):
            raise c.fail(f"{name}.name", f"'{tap_name(unit)}' (named after its unit)", tap)
        return cls(name=tap, unit=unit, depth=c.integer(c.key(data, "depth", f"{name}.depth"), f"{name}.depth", 0),
                   shape=(batch_dim(c, shape[0], f"{name}.shape[0]"),
                          *(c.integer(d, f"{name}.shape[{i + 1}]", 1) for i, d in enumerate(shape[1:]))),
                   dtype=c.choice(data.get("dtype", "float32"), f"{name}.dtype", ("float32",)))


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
    def from_json(cls, data: Any, where: str, name: str) -> BranchRecord:
        c = FieldCheck(where)
        data = c.obj(data, name)
        taps = c.strings(c.key(data, "taps", f"{name}.taps"), f"{name}.taps")
        if not taps:
            raise c.fail(f"{name}.taps", "a non-empty list of tap names", list(taps))
        return cls(task=c.string(c.key(data, "task", f"{name}.task"), f"{name}.task"),
                   output=c.string(c.key(data, "output", f"{name}.output"), f"{name}.output"),
                   file=safe_relpath(c.string(c.key(data, "file", f"{name}.file"), f"{name}.file"), where),
                   taps=taps)


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
    def from_json(cls, data: Any, where: str) -> TrunkRecord:
        c = FieldCheck(where)
        data = c.obj(data, "modular.trunk")
        digest = c.key(data, "sha256", "modular.trunk.sha256")
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise c.fail("modular.trunk.sha256", "a sha256 hex digest", digest)
        history = data.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise c.fail("modular.trunk.history", "a list of objects", history)
        return cls(file=safe_relpath(c.string(data.get("file", TRUNK_FILE), "modular.trunk.file"), where),
                   sha256=digest,
                   fingerprint=c.string(c.key(data, "fingerprint", "modular.trunk.fingerprint"),
                                        "modular.trunk.fingerprint", nonempty=False),
                   version=c.integer(c.key(data, "version", "modular.trunk.version"), "modular.trunk.version", 1),
                   units=c.integer(c.key(data, "units", "modular.trunk.units"), "modular.trunk.units", 0),
                   history=tuple(history))


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
        """Check ``modular``; with ``task_outputs`` every task needs exactly one branch, in order.

        Raises:
            ExportError: one line naming the field and what was expected.
        """
        c = FieldCheck(where)
        data = c.obj(data, "modular")
        trunk = TrunkRecord.from_json(c.key(data, "trunk", "modular.trunk"), where)
        raw_taps = c.key(data, "taps", "modular.taps")
        if not isinstance(raw_taps, list) or not raw_taps:
            raise c.fail("modular.taps", "a non-empty list of taps", raw_taps)
        taps = tuple(TapRecord.from_json(t, where, f"modular.taps[{i}]") for i, t in enumerate(raw_taps))
        raw_branches = c.key(data, "branches", "modular.branches")
        if not isinstance(raw_branches, list) or not raw_branches:
            raise c.fail("modular.branches", "a non-empty list of branches", raw_branches)
        branches = tuple(BranchRecord.from_json(b, where, f"modular.branches[{i}]")
                         for i, b in enumerate(raw_branches))
        names = {t.name for t in taps}
        if len(names) != len(taps):
            raise c.fail("modular.taps", "taps with distinct names", [t.name for t in taps])
        for i, b in enumerate(branches):
            unknown = [t for t in b.taps if t not in names]
            if unknown:
                raise c.fail(f"modular.branches[{i}].taps", "taps the trunk outputs", unknown)
        if task_outputs is not None and [b.output for b in branches] != list(task_outputs):
            raise c.fail("modular.branches", f"one branch per task, in task order ({task_outputs})",
                         [b.output for b in branches])
        if files is not None:
            for rel in [trunk.file, *(b.file for b in branches)]:
                if rel not in files:
                    raise c.fail("modular", "files listed in 'files'", rel)
            if files[trunk.file].sha256 != trunk.sha256:
                raise c.fail("modular.trunk.sha256", f"the sha256 of {trunk.file} in 'files'", trunk.sha256)
        return cls(trunk=trunk, taps=taps, branches=branches,
                   fused=c.choice(data.get("fused", "exported"), "modular.fused", FUSED_STATES))


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
