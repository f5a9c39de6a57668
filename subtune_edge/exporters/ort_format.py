"""ONNX Runtime's mobile format: ``model.ort`` (+ ``model.fp16.ort``, ``model.int8.ort``) and the
``required_operators.config`` a reduced-size ONNX Runtime build is compiled with.

The conversion is ONNX Runtime's own converter
(``python -m onnxruntime.tools.convert_onnx_models_to_ort``, here its Python entry
``convert_onnx_models_to_ort``) with the *Fixed* optimization style at level ``all``: the graph
is optimized once, at export, and saved as a FlatBuffers ``.ort`` file that the minimal build
loads without the ONNX protobuf parser. With no target platform given the converter leaves out
the x86-only NCHWc layout, so one file runs on ARM phones and x86 alike. The operator config
covers every converted file (one build runs them all): pass it to ONNX Runtime's
``build.sh --minimal_build --include_ops_by_config required_operators.config``.

Each ``.ort`` file is verified like its ``.onnx`` source (same tolerance, same inputs) by the
export; the manifest's ``ort_format`` record maps each source to its twin
(:class:`subtune_edge.runtime.ort_layout.OrtFormat`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import tempfile
from pathlib import Path

import onnxruntime

from subtune_edge.errors import ExportError
from subtune_edge.io import atomic_write_bytes, atomic_write_text
from subtune_edge.runtime.ort_layout import CONFIG, ort_name

log = logging.getLogger(__name__)

# ONNX Runtime's tools call logging.basicConfig() when imported; a library must not configure the
# root logger of the application that imports it, so the handler they add is taken off again.
_root_handlers = list(logging.getLogger().handlers)
_converter = importlib.import_module("onnxruntime.tools.convert_onnx_models_to_ort")
_ort_model = importlib.import_module("onnxruntime.tools.ort_format_model")
for _handler in [h for h in logging.getLogger().handlers if h not in _root_handlers]:
    logging.getLogger().removeHandler(_handler)
# ... and its config writer logs every file it writes at INFO, with its logger set to DEBUG: quiet it
logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
#: the export's ONNX files that get an .ort twin, when present (separate copies are a benchmark baseline)
SOURCES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx")


def parse_config(text: str) -> dict[str, dict[str, list[str]]]:
    """A ``required_operators.config`` as ``{domain: {opset: [operators]}}`` (comment lines skipped).

    Args:
        text: the config file's text (``domain;opset;op1,op2`` lines).

    Returns:
        The operators by domain and opset, for the manifest.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, ops = (line.split(";") + ["", ""])[:3]
        out.setdefault(domain, {})[opset] = sorted(o.split("{")[0] for o in ops.split(",") if o)
    return out


def convert_to_ort(staging: Path) -> dict:
    """Write the ``.ort`` twin of every fused ONNX file in ``staging`` and the operator config.

    Args:
        staging: the export folder being built (``model.onnx`` and, when written, the fp16 / int8 files).

    Returns:
        The manifest's ``ort_format`` record: ``files`` (ONNX file -> ``.ort`` file), ``config``,
        ``operators`` (by domain and opset), the optimization style and level, and the converter.

    Raises:
        ExportError: a graph with external data (over 2 GB, which the .ort format cannot hold), or a
            conversion that ONNX Runtime refuses.
    """
    staging = Path(staging)
    sources = [name for name in SOURCES if (staging / name).is_file()]
    with_data = [name for name in sources if (staging / f"{name}.data").exists()]
    if with_data:
        raise ExportError(f"{with_data[0]} keeps its weights in external data (over 2 GB); the .ort format holds "
                          "at most 2 GB: export without {param}", param="ort_format")
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="subtune-ort-") as tmp:
        out_dir = Path(tmp)
        for name in sources:
            chatter = io.StringIO()  # the converter prints its progress; a library does not
            try:
                with contextlib.redirect_stdout(chatter):
                    _converter.convert_onnx_models_to_ort(staging / name, output_dir=out_dir,
                                                          optimization_styles=[_converter.OptimizationStyle.Fixed])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types (Fail, InvalidGraph, ...)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ExportError(f"ONNX Runtime's converter cannot write the .ort format of {name} ({first}); "
                                  "export without {param}", param="ort_format") from None
            log.debug("convert_onnx_models_to_ort %s: %s", name, chatter.getvalue().strip())
            files[name] = ort_name(name)
            atomic_write_bytes(staging / files[name], (out_dir / files[name]).read_bytes())
        ort_paths = [staging / f for f in files.values()]
        with contextlib.redirect_stdout(io.StringIO()):
            _ort_model.create_config_from_models(ort_paths, out_dir / CONFIG, False)
        # the converter names the models by path: keep the names, not the build folder's location
        text = (out_dir / CONFIG).read_text(encoding="utf-8").replace(f"{staging}/", "")
        atomic_write_text(staging / CONFIG, text)
    return {"files": files, "config": CONFIG, "operators": parse_config(text), "optimization_style": "Fixed",
            "optimization_level": "all", "target_platform": None, "type_reduction": False,
            "converter": CONVERTER, "onnxruntime": onnxruntime.__version__}
