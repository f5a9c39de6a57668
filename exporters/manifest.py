"""``manifest.json``: write, read, validate, and re-check the hashes of an export directory.

The manifest is the contract with apps (the C++ runner reads it); its fields are documented in
``exporters/FORMAT.md``, and :func:`validate` checks the ones an app relies on, so a hand-edited
or truncated manifest is refused with the field that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from subtune_edge.errors import ExportError

FORMAT = "subtune-edge.export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "format_version", "backbone", "input", "batch", "preprocessing", "tasks", "opset", "files")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_records(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``root`` except the manifest, by POSIX relative path."""
    records = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        records[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return records


def versions() -> dict:
    """Versions of everything that shaped the files (recorded so a mismatch can be explained)."""
    out = {"python": platform.python_version()}
    for name, module in (("subtune_edge", "subtune_edge"), ("torch", "torch"), ("timm", "timm"), ("onnx", "onnx"),
                         ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"),
                         ("onnxconverter_common", "onnxconverter_common"), ("tensorrt", "tensorrt")):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", "?"))
    return out


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_manifest(root: Path, manifest: dict) -> dict:
    """Hash every file in ``root`` into ``manifest['files']``, write ``root/manifest.json``; returns
    the manifest as written (JSON types: lists, not tuples)."""
    manifest["files"] = file_records(root)
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / MANIFEST)
    return json.loads(text)


def validate(manifest: dict, where: str = MANIFEST) -> dict:
    """Refuse, in one line naming the field, a manifest an app could not use."""
    if not isinstance(manifest, dict):
        raise ExportError(f"{where} is not a JSON object; re-export")
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{where} is not a subtune-edge export manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{where} has format version {manifest.get('format_version')}, this subtune-edge reads "
                          f"{FORMAT_VERSION}; upgrade subtune-edge or re-export")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ExportError(f"{where} lacks field(s) {', '.join(missing)}; it was edited or truncated, re-export")
    tasks = manifest["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise ExportError(f"{where}: 'tasks' must be a non-empty list; re-export")
    for i, task in enumerate(tasks):
        for key in ("name", "output", "shape", "labels"):
            if key not in task:
                raise ExportError(f"{where}: tasks[{i}] lacks '{key}'; re-export")
        classes = task["shape"][-1]
        if task["labels"] and len(task["labels"]) != classes:
            raise ExportError(f"{where}: task '{task['name']}' has {len(task['labels'])} labels for {classes} classes")
    outputs = [t["output"] for t in tasks]
    if len(set(outputs)) != len(outputs):
        raise ExportError(f"{where}: two tasks share an output name; re-export")
    batch = manifest["batch"]
    if not 1 <= batch.get("min", 0) <= batch.get("max", 0):
        raise ExportError(f"{where}: batch range {batch} is invalid; re-export")
    shape = manifest["input"].get("shape", [])
    if len(shape) != 4 or shape[1] != 3:
        raise ExportError(f"{where}: input shape {shape} is not [batch, 3, H, W]; re-export")
    if "model.onnx" not in manifest["files"]:
        raise ExportError(f"{where} lists no model.onnx; re-export")
    return manifest


def read_manifest(root: str | Path) -> dict:
    """Read and validate ``root/manifest.json`` (``root`` may also be the manifest itself)."""
    root = Path(root)
    path = root if root.name == MANIFEST and root.is_file() else root / MANIFEST
    if not path.is_file():
        hint = "it is not an export directory" if root.is_dir() else "it does not exist"
        raise ExportError(f"no {MANIFEST} in {path.parent} ({hint}); run `subtune-edge export --out {path.parent}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); re-export") from exc
    return validate(manifest, str(path))


def check_files(root: str | Path, manifest: dict | None = None, only: list[str] | None = None) -> dict[str, str]:
    """Re-hash the files the manifest lists: name -> 'ok' | 'missing' | 'changed' | 'size differs'.

    Files present in the folder but not in the manifest are reported as 'not in manifest'.
    """
    root = Path(root)
    manifest = manifest or read_manifest(root)
    status = {}
    for rel, rec in manifest["files"].items():
        if only is not None and rel not in only:
            continue
        path = root / rel
        if not path.is_file():
            status[rel] = "missing"
        elif path.stat().st_size != rec.get("bytes"):
            status[rel] = "size differs"
        else:
            status[rel] = "ok" if sha256_file(path) == rec.get("sha256") else "changed"
    if only is None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST and rel not in manifest["files"]:
                status[rel] = "not in manifest"
    return status


def require_intact(root: str | Path, manifest: dict | None = None, only: list[str] | None = None) -> None:
    """Raise naming the first file that does not match its recorded hash."""
    bad = {k: v for k, v in check_files(root, manifest, only).items() if v not in ("ok", "not in manifest")}
    if bad:
        name, what = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ExportError(f"{Path(root) / name} is {what} since export{more}; re-export or re-copy the directory")
