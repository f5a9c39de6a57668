"""fp32 ONNX -> fp16 ONNX (fp16 weights and compute, float32 input and outputs).

The conversion is onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types``, so
apps feed and read float32 exactly as with ``model.onnx``. One adjustment: the TorchScript exporter
writes small shape computations (dynamic "same" padding of TF-ported EfficientNets, the attention
scale of ViTs) as ``Cast(to=float)`` on integer shapes; the converter would relabel their outputs
fp16 while the Cast still produces float32, which ``onnx.checker`` rejects. Those Cast nodes are
passed in ``node_block_list``, so that bit of shape arithmetic stays float32 (where it is exact)
and the converter inserts the casts around it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from subtune_edge.errors import ExportError

from .onnx_export import check_onnx, file_bytes, save_onnx, tidy

CONVERTER = "onnxconverter-common convert_float_to_float16(keep_io_types=True)"


def float_casts(model: onnx.ModelProto) -> list[str]:
    """Names of Cast nodes that produce float32 (kept float32 by the conversion)."""
    names = []
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == onnx.TensorProto.FLOAT:
                names.append(node.name)
    return names


def unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the converter's block list works by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def convert_fp16(src: str | Path, dst: str | Path, output_names: list[str] | None = None) -> dict:
    """Write ``dst``, the fp16 version of ``src``; checks it like any export. Returns a report."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=True)
    unnamed_nodes(model)
    blocked = float_casts(model)
    try:
        with warnings.catch_warnings():
            # it warns once per weight it clamps into fp16's range (|x| < 1e-7 -> 1e-7): expected, and verified
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked,
                                                         disable_shape_infer=False)
    except Exception as exc:  # the converter raises bare ValueError/KeyError on graphs it cannot handle
        raise ExportError(f"fp16 conversion of {src.name} failed ({type(exc).__name__}: {str(exc)[:160]}); "
                          "export without fp16") from exc
    # two fp32 constants may round to the same fp16 bytes: merge them so that each weight is stored once
    converted, _, _ = tidy(converted)
    converted.producer_name, converted.producer_version = model.producer_name, model.producer_version
    external = save_onnx(converted, dst)
    check_onnx(dst, output_names)
    for io in [*converted.graph.input, *converted.graph.output]:
        if io.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{dst.name}: '{io.name}' is not float32 after conversion; report this")
    size, _ = file_bytes(dst)
    return {"file": dst.name, "converter": CONVERTER, "bytes": size, "external_data": external,
            "initializers": len(converted.graph.initializer),
            "float32_casts_kept": len(blocked)}
