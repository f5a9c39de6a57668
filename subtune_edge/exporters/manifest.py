"""Writing ``manifest.json``: hash the staged files, record versions, seal and write atomically.

The reading side, the typed :class:`~subtune_edge.runtime.manifest.Manifest` and its validator
live in :mod:`subtune_edge.runtime.manifest`; the record built here goes through that same
validator before it is written, so an export that its own reader would refuse is never published.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
from datetime import datetime, timezone
from pathlib import Path

from subtune_edge.io import atomic_write_json, jsonable, sha256_file
from subtune_edge.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, FileRecord, Manifest

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "file_records", "versions", "now", "write_manifest"]


def file_records(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``root`` except the manifest, by POSIX relative path."""
    records = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        records[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return records


def versions() -> dict:
    """Versions of everything that shaped the files (recorded so a mismatch can be explained)."""
    out = {"python": platform.python_version()}
    for name in ("subtune_edge", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common",
                 "tensorrt"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", "?"))
    return out


def now() -> str:
    """UTC now as ISO 8601 with a ``Z``, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Hash every file in ``root`` into ``files``, seal with ``manifest_sha256``, write ``manifest.json``.

    Args:
        root: the staged export folder.
        manifest: the record, without ``files`` (they are what is in ``root`` now).

    Returns:
        The manifest as written, sealed.

    Raises:
        ExportError: the record would not pass :meth:`Manifest.from_json` (a bug, caught before publishing).
    """
    files = {rel: FileRecord(**rec) for rel, rec in file_records(root).items()}
    body = jsonable(dataclasses.replace(manifest, files=files, manifest_sha256=None).to_json())
    sealed = Manifest.from_json(body, str(Path(root) / MANIFEST), require_hash=False).sealed()
    atomic_write_json(Path(root) / MANIFEST, sealed.to_json())
    return sealed
