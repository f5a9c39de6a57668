"""``manifest.json``: the one validating reader of an export directory, and its typed record.

The manifest is the contract with apps (the C++ runner reads it too); its fields are documented
in ``exporters/FORMAT.md``. Everything that reads an export (``inspect``, ``predict``,
``load_export``, the benchmark) goes through :func:`read_manifest`, which checks it once, whole:
the type and range of every field an app relies on (``subtune_edge/schema/manifest.schema.json``,
then the cross-field rules of :mod:`.records`), the
manifest's own content hash (``manifest_sha256``, so a hand edit of labels or shapes is refused),
that every ``files`` entry stays inside the folder (checked before anything is opened), the
sha256 of every listed file and that the ONNX graphs have the input and outputs the manifest
promises (:mod:`.integrity`). A problem is one :class:`~subtune_edge.errors.ExportError` line
naming the file, the field and what was expected.

The writing side (hashing a staged folder, building the record) is ``subtune_edge.exporters.manifest``; it
seals the record with :meth:`Manifest.sealed`, so reader and writer cannot drift.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..schema import validate
from .integrity import check_files, check_graph, inside, raise_for_status, require_intact, selected, unlisted
from .modular_layout import ModularLayout
from .ort_layout import OrtFormat
from .records import BatchRange, FileRecord, InputSpec, Preprocessing, TaskOutput
from .schema import (
    FORMAT,
    FORMAT_VERSION,
    HEX64,
    MANIFEST,
    MANIFEST_FORMAT,
    SELF_HASH,
    canonical_json,
    fail,
    manifest_digest,
    short,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "SELF_HASH", "BatchRange", "FileRecord", "InputSpec", "Manifest",
    "Preprocessing", "TaskOutput", "canonical_json", "check_files", "check_graph", "is_export_dir",
    "manifest_digest", "manifest_path", "raise_for_status", "read_manifest", "require_intact",
]


@dataclass(frozen=True)
class Manifest:
    """An export's ``manifest.json``, checked: the fields apps rely on as typed attributes.

    The fields that document how the files were made (``onnx``, ``sizes``, ``plan``,
    ``verification``, ``tensorrt``, ``timings_s``, ``versions``, ...) are in ``info`` as JSON.
    """

    backbone: dict
    input: InputSpec
    batch: BatchRange
    preprocessing: Preprocessing
    tasks: tuple[TaskOutput, ...]
    opset: int
    files: dict[str, FileRecord]
    info: dict = field(default_factory=dict)
    manifest_sha256: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # -- access -------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def outputs(self) -> list[str]:
        return [t.output for t in self.tasks]

    @property
    def modular(self) -> ModularLayout | None:
        """The modular layout (``trunk.onnx`` + ``branches/``) of a ``--modular`` export, else None."""
        data = self.info.get("modular")
        if data is None:
            return None
        cached = self.__dict__.get("_modular_cache")
        if cached is None:
            cached = ModularLayout.from_json(data, task_outputs=self.outputs, files=self.files)
            object.__setattr__(self, "_modular_cache", cached)
        return cached

    @property
    def ort_format(self) -> OrtFormat | None:
        """The ``.ort`` files (ONNX Runtime's mobile format) of an ``--ort-format`` export, else None."""
        data = self.info.get("ort_format")
        return None if data is None else OrtFormat.from_json(data, files=self.files)

    def task(self, name: str) -> TaskOutput:
        """The task called ``name`` (or whose output is ``name``)."""
        for t in self.tasks:
            if name in (t.name, t.output):
                return t
        raise ExportError(f"the export has no task '{name}'; its tasks are {', '.join(self.task_names)}")

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The manifest as written to ``manifest.json`` (with ``manifest_sha256`` when it has one)."""
        out: dict = {"format": self.format, "format_version": self.format_version}
        if "created" in self.info:
            out["created"] = self.info["created"]
        out.update({"backbone": dict(self.backbone), "input": self.input.to_json(), "batch": self.batch.to_json(),
                    "preprocessing": self.preprocessing.to_json(), "tasks": [t.to_json() for t in self.tasks],
                    "opset": self.opset})
        for key, value in self.info.items():
            if key != "created":
                out[key] = value
        out["files"] = {rel: rec.to_json() for rel, rec in self.files.items()}
        if self.manifest_sha256 is not None:
            out[SELF_HASH] = self.manifest_sha256
        return out

    def sealed(self) -> Manifest:
        """This manifest with ``manifest_sha256`` set to the hash of its content (what the writer stores)."""
        body = {k: v for k, v in self.to_json().items() if k != SELF_HASH}
        return Manifest.from_json({**body, SELF_HASH: manifest_digest(body)})

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST, *, require_hash: bool = True) -> Manifest:
        """Check a parsed manifest whole and build the record.

        Args:
            data: the parsed JSON.
            where: how to name the manifest in errors (its path).
            require_hash: refuse a manifest without ``manifest_sha256`` (every export since it was
                introduced has one; only the writer builds records without it).

        Returns:
            The checked manifest.

        Raises:
            ExportError: one line naming the field that is wrong and what was expected.
        """
        if not isinstance(data, dict):
            raise ExportError(f"{where} is not a JSON object; re-export")
        if data.get("format") != FORMAT:
            raise ExportError(f"{where} is not a subtune-edge export manifest (format {short(data.get('format'))}, "
                              f"expected '{FORMAT}')")
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where} has format version {short(data.get('format_version'))}, this subtune-edge "
                              f"reads {FORMAT_VERSION}; upgrade subtune-edge or re-export")
        digest = data.get(SELF_HASH)
        if digest is None and require_hash:
            raise ExportError(f"{where} lacks '{SELF_HASH}' (the hash of its own content); it was edited or made "
                              "by an older subtune-edge, re-export")
        if digest is not None:
            if not isinstance(digest, str) or not HEX64.match(digest):
                raise fail(where, SELF_HASH, digest, "a sha256 hex digest")
            try:
                actual = manifest_digest(data)
            except ValueError as exc:  # NaN / Infinity smuggled in
                raise ExportError(f"{where} holds a value JSON does not allow ({exc}); re-export") from None
            if actual != digest:
                raise ExportError(f"{where} was edited after export (its content no longer matches "
                                  f"'{SELF_HASH}'); re-export or restore the manifest")
        validate(data, MANIFEST_FORMAT, where)  # every field's type and range: subtune_edge/schema/manifest.schema.json

        # what a schema cannot state: fields that must agree, names that must be distinct, files that must be listed
        input_spec = InputSpec.from_json(data["input"], where)
        batch = BatchRange.from_json(data["batch"], where)
        if input_spec.shape[0] != batch.dim:
            raise fail(where, "input.shape[0]", input_spec.shape[0], short(batch.dim) +
                       f" for batch {batch.min}..{batch.max}")
        preprocessing = Preprocessing.from_json(data["preprocessing"], where)
        if preprocessing.input_size[1:] != input_spec.hw:
            h, w = input_spec.hw
            raise fail(where, "preprocessing.input_size", list(preprocessing.input_size), f"[3, {h}, {w}] like "
                       "input.shape")
        tasks = tuple(TaskOutput.from_json(t, where, f"tasks[{i}]") for i, t in enumerate(data["tasks"]))
        for i, t in enumerate(tasks):
            if t.shape[0] != batch.dim:
                raise fail(where, f"tasks[{i}].shape[0]", t.shape[0], short(batch.dim) + " like input.shape[0]")
        for attr in ("name", "output"):
            values = [getattr(t, attr) for t in tasks]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ExportError(f"{where}: two tasks share the {attr} '{dupes[0]}'; re-export")
        if input_spec.name in [t.output for t in tasks]:
            raise ExportError(f"{where}: a task output is named '{input_spec.name}' like the input; re-export")
        files = {rel: FileRecord.from_json(rel, rec, where) for rel, rec in data["files"].items()}
        if "model.onnx" not in files:
            raise ExportError(f"{where} lists no model.onnx in 'files'; re-export")
        for i, t in enumerate(tasks):
            for key in ("separate", "separate_int8"):
                rel = getattr(t, key)
                if rel is not None and rel not in files:
                    raise fail(where, f"tasks[{i}].{key}", rel, "a file listed in 'files'")

        known = {"format", "format_version", "backbone", "input", "batch", "preprocessing", "tasks", "opset",
                 "files", SELF_HASH}
        info = {k: v for k, v in data.items() if k not in known}
        if info.get("modular") is not None:  # a --modular export: its layout checked like the rest
            ModularLayout.from_json(info["modular"], where, [t.output for t in tasks], files)
        if info.get("ort_format") is not None:  # an --ort-format export: every .ort file it names is listed
            OrtFormat.from_json(info["ort_format"], where, files)
        return cls(backbone=dict(data["backbone"]), input=input_spec, batch=batch, preprocessing=preprocessing,
                   tasks=tasks, opset=data["opset"], files=files, info=info, manifest_sha256=digest)


# -- reading ----------------------------------------------------------------------------------------
def manifest_path(root: str | os.PathLike) -> Path:
    """``root/manifest.json`` (``root`` may also be the manifest itself)."""
    root = Path(root)
    return root if root.name == MANIFEST and root.is_file() else root / MANIFEST


def read_manifest(root: str | os.PathLike, *, verify_files: bool | Collection[str] = True) -> Manifest:
    """Read and check an export's manifest, and (by default) every file it lists.

    Args:
        root: the export folder (or its ``manifest.json``).
        verify_files: ``True`` re-hashes every listed file and checks each ONNX graph's input and
            outputs against the manifest; a collection of relative paths does that for those files
            only (and their ``.data``); ``False`` checks the manifest alone (schema, self-hash, paths).

    Returns:
        The checked :class:`Manifest`.

    Raises:
        ExportError: one line naming the manifest or file, the field and what was expected.
    """
    path = manifest_path(root)
    folder = path.parent
    if not path.is_file():
        hint = "it is not an export folder" if folder.is_dir() else "it does not exist"
        raise ExportError(f"no {MANIFEST} in {folder} ({hint}); write one with subtune-edge export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"),
                          parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"{name} is not JSON")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); re-export") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    manifest = Manifest.from_json(data, str(path))
    if verify_files is not False:
        only = None if verify_files is True else set(verify_files)
        for rel in selected(manifest, only):
            inside(folder, rel)
        require_intact(folder, manifest, list(manifest.files) if only is None else only)
        for rel in selected(manifest, only):
            if rel.endswith(".onnx"):
                check_graph(folder, manifest, rel)
    return manifest


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export folder that may be replaced by a new export.

    True only for a folder whose ``manifest.json`` is a valid subtune-edge export manifest and that
    holds nothing the manifest does not list: a user's folder that merely has a file called
    ``manifest.json`` (a browser extension, a web app) is never taken for an export. The rule that
    :func:`subtune_edge.io.staged_dir` is given as ``owns``. File hashes are not checked: an
    export whose files were changed is still ours to replace.

    Args:
        path: the folder to judge.

    Returns:
        True when replacing ``path`` can lose nothing but an earlier export.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() or (path / MANIFEST).is_symlink():
        return False
    try:
        manifest = read_manifest(path, verify_files=False)
    except ExportError:
        return False
    return not unlisted(path, manifest)
