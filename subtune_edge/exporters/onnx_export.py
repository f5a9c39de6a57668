"""torch -> ONNX for fused and standalone task models, with the checks that make a file shippable.

:func:`export_onnx` exports any module whose ``forward(images)`` returns a tensor or a tuple of
tensors, with one input ``input`` (NCHW float32, dynamic batch unless the batch range is fixed)
and the given output names. Then it:

1. tidies the graph with onnx-ir's passes: initializers with equal bytes become one, Identity
   nodes are removed, unused nodes and per-node debug metadata dropped. (The TorchScript exporter
   folds BatchNorm into each *use* of a shared frozen conv, so a frozen unit that several branches
   run comes out once per branch; torch merges those equal results itself and leaves Identity
   nodes behind. The pass makes "each weight once" hold whatever the exporter did.)
2. saves it, with external data (``<name>.data``) when the weights pass 2 GB (protobuf's limit);
3. runs ``onnx.checker`` with ``full_check`` (shape inference included);
4. checks, as hard errors, that no two initializers hold the same bytes and that the file is not
   larger than the unique weights of the module (2% slack for graph structure): a frozen weight
   that is stored twice can only make it larger. A *smaller* file is fine and recorded: folding
   BatchNorm drops its running statistics, and equal folded values are merged (timm's random init
   zeroes the last BatchNorm scale of every residual block, so those folded convs are all zeros).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from onnx import numpy_helper
from onnx_ir.passes import PassManager
from onnx_ir.passes.common import (
    ClearMetadataAndDocStringPass,
    DeduplicateHashedInitializersPass,
    IdentityEliminationPass,
    RemoveUnusedNodesPass,
)
from torch import nn

from subtune_edge.errors import ExportError

from .shapes import BATCH_DIM, INPUT_NAME, check_batch

PROTOBUF_LIMIT = 2 * 1024**3          # a ModelProto above this cannot be serialized in one file
SIZE_SLACK = 0.02                     # file may exceed the unique weight bytes by this much
DYNAMO_MIN_OPSET = 18


@dataclass
class OnnxReport:
    """What one exported file holds, for the manifest."""

    file: str
    exporter: str
    opset: int
    bytes: int                       # the .onnx plus its external data, if any
    external_data: str | None        # file name of the external data, if any
    initializers: int
    initializer_bytes: int
    module_weight_bytes: int         # unique parameters + float buffers of the torch module
    size_ratio: float                # bytes / module_weight_bytes
    merged_initializers: int         # equal initializers merged by the tidy pass
    removed_identities: int
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# -- sizes ----------------------------------------------------------------------------------------
def module_weight_bytes(module: nn.Module) -> int:
    """Bytes of the unique (by storage) parameters and floating-point buffers of ``module``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if not t.is_floating_point():
            continue  # BatchNorm's num_batches_tracked never reaches an inference graph
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def file_bytes(path: Path) -> tuple[int, str | None]:
    """Size of an ONNX file plus its external data file (named ``<file>.data``), if present."""
    data = path.with_name(path.name + ".data")
    if data.is_file():
        return path.stat().st_size + data.stat().st_size, data.name
    return path.stat().st_size, None


def _tensor_key(init: onnx.TensorProto) -> str:
    h = hashlib.sha256()
    h.update(f"{init.data_type}|{tuple(init.dims)}|".encode())
    h.update(init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes())
    return h.hexdigest()


def duplicate_initializers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Pairs (kept, duplicate) of initializers of the main graph that hold the same bytes."""
    seen: dict[str, str] = {}
    dups = []
    for init in model.graph.initializer:
        key = _tensor_key(init)
        if key in seen:
            dups.append((seen[key], init.name))
        else:
            seen[key] = init.name
    return dups


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        if init.HasField("raw_data"):
            total += len(init.raw_data)
        else:
            total += numpy_helper.to_array(init).nbytes
    return total


# -- export ---------------------------------------------------------------------------------------
def _dummy_batch(batch: tuple[int, int]) -> int:
    # 2 (not 1) where the range allows, so that no size-1 broadcast is baked into the trace
    return batch[0] if batch[0] == batch[1] else min(max(2, batch[0]), batch[1])


def _torch_export(module: nn.Module, path: Path, names: list[str], args: tuple[torch.Tensor, ...],
                  input_names: list[str], dynamic: bool, batch: tuple[int, int], opset: int, exporter: str) -> None:
    module = module.eval()
    # the dynamo exporter prints its progress; library code must not print
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer and deprecation chatter: the checks below are what count
        if exporter == "torchscript":
            axes = {n: {0: BATCH_DIM} for n in [*input_names, *names]} if dynamic else None
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False, export_params=True,
                              do_constant_folding=True)
        else:
            dim = torch.export.Dim(BATCH_DIM, min=batch[0], max=batch[1])
            shapes = tuple({0: dim} for _ in args) if dynamic else None
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=names,
                              dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
                              optimize=True, verify=False, report=False, verbose=False)


def tidy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """Merge equal initializers, drop Identity nodes, dead code and per-node debug metadata (the dynamo
    exporter stores a stack trace per node: ~2% of a small model) with onnx-ir's maintained passes."""
    before_inits = len(model.graph.initializer)
    before_ids = sum(n.op_type == "Identity" for n in model.graph.node)
    irm = ir.from_proto(model)
    PassManager([DeduplicateHashedInitializersPass(size_limit=1 << 62), IdentityEliminationPass(),
                 RemoveUnusedNodesPass(), ClearMetadataAndDocStringPass()])(irm)
    out = ir.to_proto(irm)
    ids = before_ids - sum(n.op_type == "Identity" for n in out.graph.node)
    return out, before_inits - len(out.graph.initializer), ids


def _set_io_shapes(model: onnx.ModelProto, dynamic: bool, shapes: dict[str, tuple] | None = None) -> None:
    """Graph inputs and outputs get their first dim named 'batch' when the batch is dynamic; with ``shapes``
    (name -> the module's real shape) every other dim is set too (the TorchScript exporter's symbolic
    inference may mislabel spatial dims of intermediate tensors a modular trunk outputs)."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if shapes and value.name in shapes:
            del dims[:]
            for d in shapes[value.name]:
                dims.add().dim_value = int(d)
        if dims and dynamic:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM


def save_onnx(model: onnx.ModelProto, path: Path, external: bool | None = None) -> str | None:
    """Save ``model``; weights go to ``<name>.data`` when they pass 2 GB (or when ``external``)."""
    if external is None:
        external = initializer_bytes(model) > PROTOBUF_LIMIT - (64 << 20)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return data.name
    onnx.save_model(model, str(path))
    return None


def check_onnx(path: Path, names: list[str] | None = None, module_bytes: int | None = None,
               inputs: list[str] | None = None, slack_bytes: int = 0) -> None:
    """The hard checks on a written file: checker, I/O names, no duplicate weights, size.

    Args:
        path: the ONNX file.
        names: the outputs it must have, in order (None: not checked).
        module_bytes: the unique weight bytes of the module it came from; the file may be at most
            2% (plus ``slack_bytes`` of graph structure) larger.
        inputs: the inputs it must have (default: the one image input).
        slack_bytes: graph bytes allowed beyond the weights (a tiny branch is mostly structure).
    """
    inputs = inputs or [INPUT_NAME]
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ExportError(f"{path.name} fails onnx.checker ({first}); report this with the model name") from exc
    model = onnx.load(str(path), load_external_data=True)
    got = [i.name for i in model.graph.input]
    if got != inputs:
        raise ExportError(f"{path.name} has inputs {got}, expected {inputs}")
    if names is not None and [o.name for o in model.graph.output] != names:
        raise ExportError(f"{path.name} has outputs {[o.name for o in model.graph.output]}, expected {names}")
    dups = duplicate_initializers(model)
    if dups:
        raise ExportError(f"{path.name} stores {len(dups)} weight(s) twice (e.g. '{dups[0][1]}' = '{dups[0][0]}'); "
                          "shared frozen weights must appear once")
    if module_bytes:
        size, _ = file_bytes(path)
        if size > module_bytes * (1 + SIZE_SLACK) + slack_bytes:
            raise ExportError(f"{path.name} is {size / 1e6:.1f} MB but the model's unique weights are "
                              f"{module_bytes / 1e6:.1f} MB (more than {SIZE_SLACK:.0%} over): weights are duplicated")


def export_onnx(module: nn.Module, path: str | Path, output_names: list[str], input_size: tuple[int, int],
                batch: tuple[int, int] = (1, 32), opset: int = 17, dynamo: bool = False, *,
                external_data: bool | None = None, example: tuple[torch.Tensor, ...] | None = None,
                input_names: list[str] | None = None, slack_bytes: int = 0) -> OnnxReport:
    """Export ``module`` to ``path`` and run every check; returns what the file holds.

    ``batch`` is the (min, max) batch range: dynamic unless min == max. The TorchScript exporter is
    the default (timm's own scripts use it); ``dynamo=True`` uses torch.export and opset >= 18.

    Args:
        module: the model; ``forward(*inputs)`` returns a tensor or a tuple of tensors.
        path: the file to write.
        output_names: its outputs' names, in order.
        input_size: (H, W) of the image input.
        batch: the (min, max) batch range.
        opset: the ONNX opset.
        dynamo: use the torch.export-based exporter.
        external_data: weights in ``<file>.data`` (None: only past protobuf's 2 GB).
        example: the inputs to trace with, for modules that take something else than one image batch (a
            modular branch takes trunk taps); every input and output shape is then written as traced.
        input_names: the names of ``example``'s inputs (default: the one image input).
        slack_bytes: graph bytes allowed beyond the unique weights (a tiny branch is mostly structure).
    """
    start = time.perf_counter()
    path = Path(path)
    lo, _, hi = check_batch(tuple(batch))
    batch = (lo, hi)
    exporter = "dynamo" if dynamo else "torchscript"
    if dynamo and opset < DYNAMO_MIN_OPSET:
        opset = DYNAMO_MIN_OPSET
    h, w = input_size
    args = example if example is not None else (torch.zeros(_dummy_batch(batch), 3, h, w),)
    names_in = list(input_names or [INPUT_NAME])
    shapes = None
    if example is not None:
        with torch.no_grad():
            values = module.eval()(*args)
        values = values if isinstance(values, tuple) else (values,)
        shapes = {**dict(zip(names_in, (a.shape for a in args))), **dict(zip(output_names, (v.shape for v in values)))}
    # a private folder: past 2 GB the TorchScript exporter writes one file per tensor beside the model
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            _torch_export(module, raw, list(output_names), args, names_in, lo != hi, batch, opset, exporter)
        except Exception as exc:  # the exporters raise many types; all mean "this model did not export"
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            other = "the dynamo exporter" if not dynamo else "the default TorchScript exporter"
            raise ExportError(f"the {exporter} exporter failed on this model ({msg}); try {other}") from exc
        model = onnx.load(str(raw), load_external_data=True)
    model, merged, identities = tidy(model)
    _set_io_shapes(model, lo != hi, shapes)
    model.producer_name, model.producer_version = "subtune-edge", _version()
    count, init_bytes = len(model.graph.initializer), initializer_bytes(model)  # saving may move them out
    external = save_onnx(model, path, external_data)
    weight_bytes = module_weight_bytes(module)
    check_onnx(path, list(output_names), weight_bytes, names_in, slack_bytes)
    size, _ = file_bytes(path)
    return OnnxReport(file=path.name, exporter=exporter, opset=opset, bytes=size, external_data=external,
                      initializers=count, initializer_bytes=init_bytes,
                      module_weight_bytes=weight_bytes, size_ratio=round(size / max(weight_bytes, 1), 4),
                      merged_initializers=merged, removed_identities=identities,
                      seconds=round(time.perf_counter() - start, 3))


def _version() -> str:
    try:
        return importlib.metadata.version("subtune-edge")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        return "0"
