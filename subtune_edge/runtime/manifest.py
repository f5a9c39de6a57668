"""``manifest.json``: the one validating reader of an export directory, and its typed record.

The manifest is the contract with apps (the C++ runner reads it too); its fields are documented
in ``exporters/FORMAT.md``. Everything that reads an export (``inspect``, ``predict``,
``load_export``, the benchmark) goes through :func:`read_manifest`, which checks it once, whole:
the schema and the type of every field an app relies on, the manifest's own content hash
(``manifest_sha256``, so a hand edit of labels or shapes is refused), that every ``files`` entry
stays inside the folder (checked before anything is opened), the sha256 of every listed file, and
that the ONNX graphs have the input and outputs the manifest promises. A problem is one
:class:`~subtune_edge.errors.ExportError` line naming the file, the field and what was expected.

The writing side (hashing a staged folder, building the record) is ``exporters.manifest``; it
uses the types and :func:`manifest_digest` from here, so reader and writer cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx

from ..errors import ExportError
from ..io import sha256_file

FORMAT = "subtune-edge.export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SELF_HASH = "manifest_sha256"
BATCH_DIM = "batch"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")
CROP_MODES = ("center", "squash", "border")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: top-level fields written for people and the benchmark, checked only for their JSON type
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "created": (str,), "exporter": (str,), "stacked_branches": (bool,), "onnx": (dict,), "sizes": (dict,),
    "plan": (dict,), "verification": (dict, type(None)), "tensorrt": (dict, type(None)), "timings_s": (dict,),
    "versions": (dict,),
}


# -- the canonical form the self-hash covers --------------------------------------------------------
def canonical_json(manifest: Mapping) -> bytes:
    """The bytes ``manifest_sha256`` is taken over: the manifest without that field, keys sorted.

    Args:
        manifest: the manifest as JSON types.

    Returns:
        UTF-8 JSON with sorted keys, no whitespace, non-ASCII kept, no NaN/Infinity.
    """
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def manifest_digest(manifest: Mapping) -> str:
    """sha256 hex of :func:`canonical_json`: what the writer records and the reader recomputes."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


# -- small checkers: one line naming where, what and what was expected ------------------------------
class _Check:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, name: str, expected: str, value: Any = None, show: bool = True) -> ExportError:
        got = f", got {_short(value)}" if show else ""
        return ExportError(f"{self.where}: '{name}' must be {expected}{got}; re-export (or restore the file)")

    def obj(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(name, "a JSON object", value)
        return value

    def key(self, obj: dict, key: str, name: str) -> Any:
        if key not in obj:
            raise ExportError(f"{self.where} lacks '{name}'; it was edited or truncated, re-export")
        return obj[key]

    def string(self, value: Any, name: str, nonempty: bool = True) -> str:
        if not isinstance(value, str) or (nonempty and not value):
            raise self.fail(name, "a non-empty string" if nonempty else "a string", value)
        return value

    def integer(self, value: Any, name: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self.fail(name, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
        return value

    def number(self, value: Any, name: str, positive: bool = False) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            raise self.fail(name, "a positive number" if positive else "a finite number", value)
        return float(value)

    def boolean(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        return value

    def strings(self, value: Any, name: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, "a list of strings", value)
        return tuple(value)

    def choice(self, value: Any, name: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(name, f"one of {', '.join(choices)}", value)
        return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _batch_dim(c: _Check, value: Any, name: str) -> int | str:
    if value == BATCH_DIM:
        return BATCH_DIM
    return c.integer(value, name, 1)


def safe_relpath(rel: Any, where: str = MANIFEST) -> str:
    """A ``files`` key as a POSIX path that stays inside the export folder, or an ExportError.

    Refused without touching the file system: absolute paths (POSIX or Windows), ``..`` or ``.``
    parts, backslashes, empty names and the manifest itself.
    """
    bad = not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel
    if not bad:
        posix = PurePosixPath(rel)
        bad = (posix.is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive != ""
               or any(p in ("", ".", "..") for p in rel.split("/")) or rel == MANIFEST)
    if bad:
        raise ExportError(f"{where}: 'files' lists {_short(rel)}, which is not a relative path inside the export "
                          "folder; the manifest was tampered with, re-export")
    return rel


# -- the typed record --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """One file of the export: its sha256 and size, as recorded at export."""

    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class InputSpec:
    """The graph's one input: name, dtype, layout and shape (``shape[0]`` is ``"batch"`` when dynamic)."""

    name: str
    shape: tuple[int | str, int, int, int]
    dtype: str = "float32"
    layout: str = "NCHW"

    @property
    def hw(self) -> tuple[int, int]:
        """The input's (height, width)."""
        return int(self.shape[2]), int(self.shape[3])

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "layout": self.layout, "shape": list(self.shape)}


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes the files accept; ``opt`` is the one TensorRT tuned for."""

    min: int
    opt: int
    max: int
    dynamic: bool

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max, "dynamic": self.dynamic}


@dataclass(frozen=True)
class Preprocessing:
    """timm's evaluation data config, which an app applies to turn an image into the input."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str | None = None

    def to_json(self) -> dict:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}


@dataclass(frozen=True)
class TaskOutput:
    """One task of the export: its output in the graph, its classes, and how it was trained.

    ``resized_from`` is the (H, W) the task was prepared at when it was exported at another size
    (``allow_resize``); ``None`` when it runs at its own size.
    """

    name: str
    output: str
    shape: tuple[int | str, int]
    labels: tuple[str, ...] = ()
    tuned_units: tuple[str, ...] = ()
    siamese: bool = False
    mode: str = ""
    val_accuracy: float | None = None
    separate: str | None = None
    resized_from: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.shape[-1])

    def label(self, k: int) -> str:
        """The name of class ``k`` (its index when the task has no labels)."""
        return self.labels[k] if self.labels else str(k)

    def to_json(self) -> dict:
        out = {"name": self.name, "output": self.output, "shape": list(self.shape), "num_classes": self.num_classes,
               "labels": list(self.labels), "tuned_units": list(self.tuned_units), "siamese": self.siamese,
               "mode": self.mode, "val_accuracy": self.val_accuracy}
        if self.separate is not None:
            out["separate"] = self.separate
        if self.resized_from is not None:
            out["resized_from"] = list(self.resized_from)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST, name: str = "tasks[0]") -> TaskOutput:
        """Check one ``tasks`` entry; raises ExportError naming the field."""
        c = _Check(where)
        data = c.obj(data, name)
        shape = c.key(data, "shape", f"{name}.shape")
        if not isinstance(shape, list) or len(shape) != 2:
            raise c.fail(f"{name}.shape", "[batch, num_classes]", shape)
        shape_t = (_batch_dim(c, shape[0], f"{name}.shape[0]"), c.integer(shape[1], f"{name}.shape[1]", 1))
        if "num_classes" in data and c.integer(data["num_classes"], f"{name}.num_classes", 1) != shape_t[1]:
            raise c.fail(f"{name}.num_classes", f"shape[1] = {shape_t[1]}", data["num_classes"])
        labels = c.strings(c.key(data, "labels", f"{name}.labels"), f"{name}.labels")
        if labels and len(labels) != shape_t[1]:
            raise c.fail(f"{name}.labels", f"empty or {shape_t[1]} labels (one per class)", len(labels))
        acc = data.get("val_accuracy")
        resized = data.get("resized_from")
        if resized is not None:
            if not isinstance(resized, list) or len(resized) != 2:
                raise c.fail(f"{name}.resized_from", "[H, W]", resized)
            resized = (c.integer(resized[0], f"{name}.resized_from[0]", 1),
                       c.integer(resized[1], f"{name}.resized_from[1]", 1))
        separate = data.get("separate")
        return cls(
            name=c.string(c.key(data, "name", f"{name}.name"), f"{name}.name"),
            output=c.string(c.key(data, "output", f"{name}.output"), f"{name}.output"),
            shape=shape_t, labels=labels,
            tuned_units=c.strings(data.get("tuned_units", []), f"{name}.tuned_units"),
            siamese=c.boolean(data.get("siamese", False), f"{name}.siamese"),
            mode=c.string(data.get("mode", ""), f"{name}.mode", nonempty=False),
            val_accuracy=None if acc is None else c.number(acc, f"{name}.val_accuracy"),
            separate=None if separate is None else c.string(separate, f"{name}.separate"),
            resized_from=resized,
        )


@dataclass(frozen=True)
class Manifest(Mapping):
    """An export's ``manifest.json``, checked: the fields apps rely on as typed attributes.

    The fields that document how the files were made (``onnx``, ``sizes``, ``plan``,
    ``verification``, ``tensorrt``, ``timings_s``, ``versions``, ...) are in ``info`` as JSON.
    A ``Manifest`` is also a read-only mapping over :meth:`to_json`, for code written against
    the JSON form (``manifest["tasks"][0]["labels"]``); new code should use the attributes.
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

    def task(self, name: str) -> TaskOutput:
        """The task called ``name`` (or whose output is ``name``)."""
        for t in self.tasks:
            if name in (t.name, t.output):
                return t
        raise ExportError(f"the export has no task '{name}'; its tasks are {', '.join(self.task_names)}")

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())

    def _json(self) -> dict:
        cached = self.__dict__.get("_json_cache")
        if cached is None:
            cached = self.to_json()
            object.__setattr__(self, "_json_cache", cached)
        return cached

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
        c = _Check(where)
        if not isinstance(data, dict):
            raise ExportError(f"{where} is not a JSON object; re-export")
        if data.get("format") != FORMAT:
            raise ExportError(f"{where} is not a subtune-edge export manifest (format {_short(data.get('format'))}, "
                              f"expected '{FORMAT}')")
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where} has format version {_short(data.get('format_version'))}, this subtune-edge "
                              f"reads {FORMAT_VERSION}; upgrade subtune-edge or re-export")
        digest = data.get(SELF_HASH)
        if digest is None and require_hash:
            raise ExportError(f"{where} lacks '{SELF_HASH}' (the hash of its own content); it was edited or made "
                              "by an older subtune-edge, re-export")
        if digest is not None:
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise c.fail(SELF_HASH, "a sha256 hex digest", digest)
            try:
                actual = manifest_digest(data)
            except ValueError as exc:  # NaN / Infinity smuggled in
                raise ExportError(f"{where} holds a value JSON does not allow ({exc}); re-export") from None
            if actual != digest:
                raise ExportError(f"{where} was edited after export (its content no longer matches "
                                  f"'{SELF_HASH}'); re-export or restore the manifest")

        backbone = c.obj(c.key(data, "backbone", "backbone"), "backbone")
        c.string(c.key(backbone, "model_name", "backbone.model_name"), "backbone.model_name")
        for key in ("weights", "fingerprint", "family"):
            if backbone.get(key) is not None:
                c.string(backbone[key], f"backbone.{key}", nonempty=False)

        inp = c.obj(c.key(data, "input", "input"), "input")
        shape = c.key(inp, "shape", "input.shape")
        if not isinstance(shape, list) or len(shape) != 4 or shape[1] != 3:
            raise c.fail("input.shape", "[batch, 3, H, W]", shape)
        input_spec = InputSpec(
            name=c.string(inp.get("name", "input"), "input.name"),
            shape=(_batch_dim(c, shape[0], "input.shape[0]"), 3, c.integer(shape[2], "input.shape[2]", 1),
                   c.integer(shape[3], "input.shape[3]", 1)),
            dtype=c.choice(inp.get("dtype", "float32"), "input.dtype", ("float32",)),
            layout=c.choice(inp.get("layout", "NCHW"), "input.layout", ("NCHW",)))

        batch = c.obj(c.key(data, "batch", "batch"), "batch")
        lo = c.integer(c.key(batch, "min", "batch.min"), "batch.min", 1)
        hi = c.integer(c.key(batch, "max", "batch.max"), "batch.max", lo)
        opt = c.integer(batch.get("opt", lo), "batch.opt", lo)
        if opt > hi:
            raise c.fail("batch.opt", f"between min {lo} and max {hi}", opt)
        dynamic = c.boolean(batch.get("dynamic", lo != hi), "batch.dynamic")
        if dynamic != (lo != hi):
            raise c.fail("batch.dynamic", f"{str(lo != hi).lower()} for batch {lo}..{hi}", dynamic)
        want_dim = BATCH_DIM if dynamic else lo
        if input_spec.shape[0] != want_dim:
            raise c.fail("input.shape[0]", _short(want_dim) + f" for batch {lo}..{hi}", input_spec.shape[0])
        batch_range = BatchRange(lo, opt, hi, dynamic)

        pre = c.obj(c.key(data, "preprocessing", "preprocessing"), "preprocessing")
        size = c.key(pre, "input_size", "preprocessing.input_size")
        if not isinstance(size, list) or len(size) != 3 or size[0] != 3:
            raise c.fail("preprocessing.input_size", "[3, H, W]", size)
        size_t = (3, c.integer(size[1], "preprocessing.input_size[1]", 1),
                  c.integer(size[2], "preprocessing.input_size[2]", 1))
        if size_t[1:] != input_spec.hw:
            raise c.fail("preprocessing.input_size", f"[3, {input_spec.hw[0]}, {input_spec.hw[1]}] like input.shape",
                         size)
        stats = {}
        for key in ("mean", "std"):
            value = c.key(pre, key, f"preprocessing.{key}")
            if not isinstance(value, list) or len(value) != 3:
                raise c.fail(f"preprocessing.{key}", "a list of 3 numbers (one per channel)", value)
            stats[key] = tuple(c.number(v, f"preprocessing.{key}", positive=key == "std") for v in value)
        crop_mode = pre.get("crop_mode")
        preprocessing = Preprocessing(
            input_size=size_t, mean=stats["mean"], std=stats["std"],
            interpolation=c.choice(c.key(pre, "interpolation", "preprocessing.interpolation"),
                                   "preprocessing.interpolation", INTERPOLATIONS),
            crop_pct=c.number(c.key(pre, "crop_pct", "preprocessing.crop_pct"), "preprocessing.crop_pct",
                              positive=True),
            crop_mode=None if crop_mode is None else c.choice(crop_mode, "preprocessing.crop_mode", CROP_MODES))

        raw_tasks = c.key(data, "tasks", "tasks")
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise c.fail("tasks", "a non-empty list of task objects", raw_tasks)
        tasks = tuple(TaskOutput.from_json(t, where, f"tasks[{i}]") for i, t in enumerate(raw_tasks))
        for i, t in enumerate(tasks):
            if t.shape[0] != want_dim:
                raise c.fail(f"tasks[{i}].shape[0]", _short(want_dim) + " like input.shape[0]", t.shape[0])
        for attr in ("name", "output"):
            values = [getattr(t, attr) for t in tasks]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ExportError(f"{where}: two tasks share the {attr} '{dupes[0]}'; re-export")
        if input_spec.name in [t.output for t in tasks]:
            raise ExportError(f"{where}: a task output is named '{input_spec.name}' like the input; re-export")

        opset = c.integer(c.key(data, "opset", "opset"), "opset", 1)

        raw_files = c.obj(c.key(data, "files", "files"), "files")
        files = {}
        for rel, rec in raw_files.items():
            safe_relpath(rel, where)
            rec = c.obj(rec, f"files.{rel}")
            digest_f = c.key(rec, "sha256", f"files.{rel}.sha256")
            if not isinstance(digest_f, str) or not _HEX64.match(digest_f):
                raise c.fail(f"files.{rel}.sha256", "a sha256 hex digest", digest_f)
            files[rel] = FileRecord(digest_f, c.integer(c.key(rec, "bytes", f"files.{rel}.bytes"),
                                                        f"files.{rel}.bytes", 0))
        if "model.onnx" not in files:
            raise ExportError(f"{where} lists no model.onnx in 'files'; re-export")
        for i, t in enumerate(tasks):
            if t.separate is not None and t.separate not in files:
                raise c.fail(f"tasks[{i}].separate", "a file listed in 'files'", t.separate)

        known = {"format", "format_version", "backbone", "input", "batch", "preprocessing", "tasks", "opset",
                 "files", SELF_HASH}
        info = {k: v for k, v in data.items() if k not in known}
        for key, types in _INFO_TYPES.items():
            if key in info and not isinstance(info[key], types):
                raise c.fail(key, " or ".join("null" if t is type(None) else "a JSON " + {
                    dict: "object", str: "string", bool: "boolean"}[t] for t in types), info[key])
        return cls(backbone=dict(backbone), input=input_spec, batch=batch_range, preprocessing=preprocessing,
                   tasks=tasks, opset=opset, files=files, info=info, manifest_sha256=digest)


# -- the files --------------------------------------------------------------------------------------
def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing one that leaves ``root`` through a symlink."""
    path = root / rel
    try:
        real = path.resolve()
        base = root.resolve()
    except OSError:
        return path
    if real != base and base not in real.parents:
        raise ExportError(f"{path} points outside the export folder (a symlink?); re-export or re-copy the folder")
    return path


def _selected(manifest: Manifest, only: Collection[str] | None) -> list[str]:
    if only is None:
        return list(manifest.files)
    return [rel for rel in manifest.files if rel in only or any(rel == f + ".data" for f in only)]


def check_files(root: str | os.PathLike, manifest: Manifest | None = None,
                only: Collection[str] | None = None) -> dict[str, str]:
    """Re-hash the files the manifest lists.

    Args:
        root: the export folder.
        manifest: its manifest (read without re-hashing when ``None``).
        only: check just these files (and their ``.data``); ``None``: all, and report unlisted files too.

    Returns:
        Relative path -> ``ok``, ``missing``, ``size differs``, ``changed`` or ``not in manifest``.

    Raises:
        ExportError: the manifest is invalid, or a listed path leaves the folder.
    """
    root = Path(root)
    manifest = manifest or read_manifest(root, verify_files=False)
    status = {}
    for rel in _selected(manifest, only):
        rec = manifest.files[rel]
        path = _inside(root, rel)
        if not path.is_file():
            status[rel] = "missing"
        elif path.stat().st_size != rec.bytes:
            status[rel] = "size differs"
        else:
            status[rel] = "ok" if sha256_file(path) == rec.sha256 else "changed"
    if only is None:
        for rel in unlisted(root, manifest):
            status[rel] = "not in manifest"
    return status


def unlisted(root: str | os.PathLike, manifest: Manifest) -> list[str]:
    """Entries of the folder (files, links, empty folders) that are neither the manifest nor listed in it."""
    root = Path(root)
    listed = set(manifest.files) | {MANIFEST}
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


def require_intact(root: str | os.PathLike, manifest: Manifest | None = None,
                   only: Collection[str] | None = None) -> None:
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
def _dims(value_info) -> list[int | str | None]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None)
    return dims


def check_graph(root: str | os.PathLike, manifest: Manifest, rel: str) -> None:
    """Check that ``rel`` (an ONNX file of the export) has the input and outputs the manifest states.

    Raises:
        ExportError: the graph's input name/shape/type or its output names/classes disagree.
    """
    path = _inside(Path(root), rel)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means an unusable file
        raise ExportError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    where = f"{path}"
    spec = manifest.input
    if [i.name for i in inputs] != [spec.name]:
        raise ExportError(f"{where} has input(s) {[i.name for i in inputs]} but the manifest says '{spec.name}'; "
                          "re-export")
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{where}: input '{spec.name}' is not float32 as the manifest says; re-export")
    fixed = [None if isinstance(d, str) else d for d in spec.shape]
    graph_fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(dims) != 4 or graph_fixed != fixed:
        shown = ["batch" if isinstance(d, str) else d for d in dims]
        raise ExportError(f"{where}: input '{spec.name}' has shape {shown} but the manifest says "
                          f"{list(spec.shape)}; re-export")
    if rel.startswith("separate/"):
        tasks = [t for t in manifest.tasks if t.separate == rel] or \
                [t for t in manifest.tasks if rel == f"separate/{t.output}.onnx"]
    else:
        tasks = list(manifest.tasks)
    outputs = {o.name: o for o in graph.output}
    for t in tasks:
        if t.output not in outputs:
            raise ExportError(f"{where} has no output '{t.output}' (task '{t.name}' in the manifest); its outputs "
                              f"are {', '.join(outputs) or 'none'}; re-export")
        classes = _dims(outputs[t.output])[-1:]
        if classes and isinstance(classes[0], int) and classes[0] > 0 and classes[0] != t.num_classes:
            raise ExportError(f"{where}: output '{t.output}' has {classes[0]} classes but the manifest says "
                              f"{t.num_classes}; re-export")


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
        for rel in _selected(manifest, only):
            _inside(folder, rel)
        require_intact(folder, manifest, list(manifest.files) if only is None else only)
        for rel in _selected(manifest, only):
            if rel.endswith(".onnx"):
                check_graph(folder, manifest, rel)
    return manifest


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export folder that may be replaced by a new export.

    True only for a folder whose ``manifest.json`` is a valid subtune-edge export manifest and that
    holds nothing the manifest does not list: a user's folder that merely has a file called
    ``manifest.json`` (a browser extension, a web app) is never taken for an export. The rule that
    :func:`subtune_edge.io.staged_dir` is given as ``owns``.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() or (path / MANIFEST).is_symlink():
        return False
    try:
        manifest = read_manifest(path, verify_files=False)
    except ExportError:
        return False
    return not unlisted(path, manifest)
