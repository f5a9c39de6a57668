"""The fused graph rebuilt from a modular export's trunk and branches (:func:`compose_fused`)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.compose

from subtune_edge.runtime.modular_layout import ModularLayout

from ..onnx_export import check_onnx, file_bytes, save_onnx, tidy


def compose_fused(root: Path, layout: ModularLayout, path: Path) -> dict:
    """Rebuild the fused graph from ``trunk.onnx`` and the branches: one input, one output per task.

    ``onnx.compose`` does the wiring: each branch gets its output name as a prefix on its nodes,
    edges and weights (:func:`onnx.compose.add_prefix`, inputs and output kept), then is merged onto
    the graph so far with its taps connected to the trunk's tap outputs (:func:`onnx.compose.merge_models`,
    the taps kept as outputs until the last branch is in). The tidy pass then stores equal weights
    once and drops trunk nodes no branch reads.

    Returns:
        The file's report.
    """
    trunk = onnx.load(str(root / layout.trunk.file))
    taps = [o.name for o in trunk.graph.output]
    model, done = trunk, []
    for b in layout.branches:
        branch = onnx.compose.add_prefix(onnx.load(str(root / b.file)), f"{b.output}/", rename_inputs=False,
                                         rename_outputs=False)
        done.append(b.output)
        model = onnx.compose.merge_models(model, branch, io_map=[(t, t) for t in b.taps],
                                          outputs=[*taps, *done] if len(done) < len(layout.branches) else done,
                                          producer_name="subtune-edge")
    model, merged, _ = tidy(model)
    save_onnx(model, path)
    check_onnx(path, [b.output for b in layout.branches])
    size, _ = file_bytes(path)
    return {"file": path.name, "composed_from": [layout.trunk.file, *(b.file for b in layout.branches)],
            "opset": int(trunk.opset_import[0].version), "bytes": size, "initializers": len(model.graph.initializer),
            "merged_initializers": merged}
