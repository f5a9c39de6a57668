"""Is an export folder what its manifest says: file hashes, paths that stay inside, ONNX graph IO."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

import onnx

from ..errors import ExportError
from ..io import sha256_file
from .modular_layout import BRANCH_DIR, check_modular_graph, graph_dims, read_graph
from .records import InputSpec, TaskOutput
from .schema import MANIFEST, safe_relpath


class GraphContract(Protocol):
    """What a graph is checked against: a :class:`~subtune_edge.runtime.manifest.Manifest` has it."""

    input: InputSpec
    tasks: tuple[TaskOutput, ...]


def inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing one that leaves ``root`` through a symlink.

    Raises:
        ExportError: the resolved path is outside ``root``.
    """
    path = root / rel
    try:
        real = path.resolve()
        base = root.resolve()
    except OSError:
        return path
    if real != base and base not in real.parents:
        raise ExportError(f"{path} points outside the export folder (a symlink?); re-export or re-copy the folder")
    return path


def listed_files(manifest) -> dict[str, dict]:
    """The manifest's ``files`` as JSON (path -> {sha256, bytes}), each path checked to stay inside.

    Takes a :class:`Manifest` or its JSON form, so that a manifest held as a dict is checked the same way.
    """
    files = manifest.files if hasattr(manifest, "files") else manifest["files"]
    out = {}
    for rel, rec in files.items():
        safe_relpath(rel)
        out[rel] = rec.to_json() if hasattr(rec, "to_json") else rec
    return out


def selected(manifest: Mapping, only: Collection[str] | None) -> list[str]:
    """The listed files to check: all, or those in ``only`` and their ``.data`` external-data files."""
    files = listed_files(manifest)
    if only is None:
        return list(files)
    return [rel for rel in files if rel in only or any(rel == f + ".data" for f in only)]


def check_files(root: str | os.PathLike, manifest: Mapping,
                only: Collection[str] | None = None) -> dict[str, str]:
    """Re-hash the files the manifest lists.

    Args:
        root: the export folder.
        manifest: its manifest, from :func:`~subtune_edge.runtime.manifest.read_manifest` (or as JSON).
        only: check just these files (and their ``.data``); ``None``: all, and report unlisted files too.

    Returns:
        Relative path -> ``ok``, ``missing``, ``size differs``, ``changed`` or ``not in manifest``.

    Raises:
        ExportError: the manifest is invalid, or a listed path leaves the folder.
    """
    root = Path(root)
    files = listed_files(manifest)
    status = {}
    for rel in selected(manifest, only):
        rec = files[rel]
        path = inside(root, rel)
        if not path.is_file():
            status[rel] = "missing"
        elif path.stat().st_size != rec.get("bytes"):
            status[rel] = "size differs"
        else:
            status[rel] = "ok" if sha256_file(path) == rec.get("sha256") else "changed"
    if only is None:
        for rel in unlisted(root, manifest):
            status[rel] = "not in manifest"
    return status


def unlisted(root: str | os.PathLike, manifest: Mapping) -> list[str]:
    """Entries of the folder (files, links, empty folders) that are neither the manifest nor listed in it."""
    root = Path(root)
    listed = set(listed_files(manifest)) | {MANIFEST}
    parents = {str(PurePosixPath(rel).parent) for rel in listed} - {"."}
    parents |= {str(p) for rel in parents for p in PurePosixPath(rel).parents if str(p) != "."}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = name if base == "." else f"{base}/{name}"
            if rel not in listed:
                out.append(rel)
        for d in list(dirnames):
            rel = d if base == "." else f"{base}/{d}"
            if rel not in parents and not (Path(dirpath) / d).is_symlink():
                out.append(rel + "/")
                dirnames.remove(d)
    return sorted(out)


def require_intact(root: str | os.PathLike, manifest: Mapping, only: Collection[str] | None = None) -> None:
    """Raise naming the first listed file that does not match its recorded hash.

    Raises:
        ExportError: a file is missing, changed or of another size since export.
    """
    raise_for_status(root, check_files(root, manifest, only))


def raise_for_status(root: str | os.PathLike, status: Mapping[str, str]) -> None:
    """Raise naming the first file of a :func:`check_files` result that is not ``ok`` (unlisted files pass).

    Raises:
        ExportError: a file is missing, changed or of another size since export.
    """
    bad = {k: v for k, v in status.items() if v not in ("ok", "not in manifest")}
    if bad:
        name, what = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ExportError(f"{Path(root) / name} is {what} since export{more}; re-export or re-copy the directory")


# -- the graphs -------------------------------------------------------------------------------------
def check_graph(root: str | os.PathLike, manifest: GraphContract, rel: str) -> None:
    """Check that ``rel`` (an ONNX file of the export) has the input and outputs the manifest states.

    Raises:
        ExportError: the graph's input name/shape/type or its output names/classes disagree.
    """
    path = inside(Path(root), rel)
    layout = getattr(manifest, "modular", None)  # trunk.onnx / branches/*.onnx have their own inputs
    if layout is not None and (rel == layout.trunk.file or rel.startswith(BRANCH_DIR + "/")):
        check_modular_graph(path, rel, layout, manifest.input.name, {t.output: t.num_classes for t in manifest.tasks})
        return
    graph, inputs = read_graph(path)
    where = f"{path}"
    spec = manifest.input
    if [i.name for i in inputs] != [spec.name]:
        raise ExportError(f"{where} has input(s) {[i.name for i in inputs]} but the manifest says '{spec.name}'; "
                          "re-export")
    dims = graph_dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{where}: input '{spec.name}' is not float32 as the manifest says; re-export")
    fixed = [None if isinstance(d, str) else d for d in spec.shape]
    graph_fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(dims) != 4 or graph_fixed != fixed:
        shown = ["batch" if isinstance(d, str) else d for d in dims]
        raise ExportError(f"{where}: input '{spec.name}' has shape {shown} but the manifest says "
                          f"{list(spec.shape)}; re-export")
    if rel.startswith("separate/"):
        tasks = [t for t in manifest.tasks if rel in (t.separate, getattr(t, "separate_int8", None))] or \
                [t for t in manifest.tasks if rel in (f"separate/{t.output}.onnx", f"separate/{t.output}.int8.onnx")]
    else:
        tasks = list(manifest.tasks)
    outputs = {o.name: o for o in graph.output}
    for t in tasks:
        if t.output not in outputs:
            raise ExportError(f"{where} has no output '{t.output}' (task '{t.name}' in the manifest); its outputs "
                              f"are {', '.join(outputs) or 'none'}; re-export")
        classes = graph_dims(outputs[t.output])[-1:]
        if classes and isinstance(classes[0], int) and classes[0] > 0 and classes[0] != t.num_classes:
            raise ExportError(f"{where}: output '{t.output}' has {classes[0]} classes but the manifest says "
                              f"{t.num_classes}; re-export")
