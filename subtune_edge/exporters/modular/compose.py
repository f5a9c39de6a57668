"""The fused graph rebuilt from a modular export's trunk and branches (:func:`compose_fused`)."""

from __future__ import annotations

from pathlib import Path

import onnx

from subtune_edge.runtime.modular_layout import ModularLayout

from ..onnx_export import check_onnx, file_bytes, save_onnx, tidy


def compose_fused(root: Path, layout: ModularLayout, path: Path) -> dict:
    """Rebuild the fused graph from ``trunk.onnx`` and the branches: one input, one output per task.

    Each branch's nodes and weights are prefixed by its output name and wired to the trunk's tap
    tensors; the tidy pass then stores equal weights once and drops trunk nodes no branch reads.

    Returns:
        The file's report.
    """
    trunk = onnx.load(str(root / layout.trunk.file))
    graph = trunk.graph
    nodes, inits = list(graph.node), list(graph.initializer)
    outputs = []
    for b in layout.branches:
        model = onnx.load(str(root / b.file))
        keep = set(b.taps) | {b.output}
        rename = {}
        for node in model.graph.node:
            for name in node.output:
                if name and name not in keep:
                    rename[name] = f"{b.output}/{name}"
        for init in model.graph.initializer:
            rename[init.name] = f"{b.output}/{init.name}"
        for node in model.graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = f"{b.output}/{node.name}"
            new.input[:] = [rename.get(n, n) for n in node.input]
            new.output[:] = [rename.get(n, n) for n in node.output]
            nodes.append(new)
        for init in model.graph.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(init)
            new.name = rename[init.name]
            inits.append(new)
        outputs.append(model.graph.output[0])
    fused = onnx.helper.make_graph(nodes, "fused", [graph.input[0]], outputs, inits)
    model = onnx.helper.make_model(fused, opset_imports=list(trunk.opset_import), ir_version=trunk.ir_version,
                                   producer_name="subtune-edge")
    model, merged, _ = tidy(model)
    save_onnx(model, path)
    check_onnx(path, [b.output for b in layout.branches])
    size, _ = file_bytes(path)
    return {"file": path.name, "composed_from": [layout.trunk.file, *(b.file for b in layout.branches)],
            "opset": int(trunk.opset_import[0].version), "bytes": size, "initializers": len(model.graph.initializer),
            "merged_initializers": merged}
