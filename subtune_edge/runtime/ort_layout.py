"""The ``ort_format`` record of an export made with ``ort_format=True`` (``export --ort-format``).

ONNX Runtime's mobile / minimal builds load the ``.ort`` format (a FlatBuffers file, optimized
when it was written) and ship only the operator kernels a ``required_operators.config`` lists.
The record maps each ONNX file of the export to its ``.ort`` twin and names that config; every
file it names must be listed (and hashed) in the manifest's ``files``::

    "ort_format": {"files": {"model.onnx": "model.ort", "model.fp16.onnx": "model.fp16.ort"},
                   "config": "required_operators.config", "optimization_style": "Fixed",
                   "optimization_level": "all", "target_platform": null, "onnxruntime": "1.22.0",
                   "converter": "onnxruntime.tools.convert_onnx_models_to_ort", "operators": {...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ExportError
from .schema import MANIFEST

ORT_SUFFIX = ".ort"
CONFIG = "required_operators.config"


def ort_name(onnx_file: str) -> str:
    """The ``.ort`` twin of an ONNX file of the export: ``model.fp16.onnx`` -> ``model.fp16.ort``."""
    return onnx_file.removesuffix(".onnx") + ORT_SUFFIX


@dataclass(frozen=True)
class OrtFormat:
    """The checked ``ort_format`` record: ONNX file -> ``.ort`` file, and the operator config."""

    files: dict[str, str]
    config: str
    info: dict

    def file_for(self, onnx_file: str) -> str | None:
        """The ``.ort`` file converted from ``onnx_file``, or None when it was not converted."""
        return self.files.get(onnx_file)

    @classmethod
    def from_json(cls, data, where: str = MANIFEST, files: Mapping | None = None) -> OrtFormat:
        """Check the record: a JSON object whose ``files`` and ``config`` name files of the manifest.

        Args:
            data: the parsed ``ort_format`` value.
            where: how to name the manifest in errors.
            files: the manifest's ``files``, to check that each named file is listed (and so hashed).

        Returns:
            The checked record.

        Raises:
            ExportError: one line naming the field that is wrong.
        """
        if not isinstance(data, dict):
            raise ExportError(f"{where}: 'ort_format' must be a JSON object; re-export")
        mapping = data.get("files")
        if not isinstance(mapping, dict) or not mapping or not all(
                isinstance(k, str) and isinstance(v, str) and k.endswith(".onnx") and v == ort_name(k)
                for k, v in mapping.items()):
            raise ExportError(f"{where}: 'ort_format.files' must map each converted .onnx file to its .ort twin "
                              "(model.onnx -> model.ort); re-export")
        config = data.get("config")
        if not isinstance(config, str) or not config:
            raise ExportError(f"{where}: 'ort_format.config' must name the required operators config; re-export")
        if files is not None:
            for rel in [*mapping.values(), config]:
                if rel not in files:
                    raise ExportError(f"{where}: 'ort_format' names {rel}, which 'files' does not list; re-export")
        return cls(files=dict(mapping), config=config, info=dict(data))
