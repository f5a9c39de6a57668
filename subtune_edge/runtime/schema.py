"""The manifest's schema rules: constants, the canonical JSON its self-hash covers, field checkers.

Shared by the typed records (:mod:`.records`), the reader (:mod:`.manifest`) and the writer
(``subtune_edge.exporters.manifest``), so that what is written and what is accepted cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import ExportError

FORMAT = "subtune-edge.export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SELF_HASH = "manifest_sha256"
BATCH_DIM = "batch"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")
CROP_MODES = ("center", "squash", "border")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: top-level fields written for people and the benchmark, checked only for their JSON type
INFO_TYPES: dict[str, tuple[type, ...]] = {
    "created": (str,), "exporter": (str,), "stacked_branches": (bool,), "onnx": (dict,), "sizes": (dict,),
    "plan": (dict,), "verification": (dict, type(None)), "tensorrt": (dict, type(None)), "timings_s": (dict,),
    "versions": (dict,), "modular": (dict, type(None)), "ort_format": (dict, type(None)),
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
class FieldCheck:
    """Checks of one field each; a failure is one ExportError line naming the manifest and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, name: str, expected: str, value: Any = None, show: bool = True) -> ExportError:
        got = f", got {short(value)}" if show else ""
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

    def sized(self, value: Any, name: str, n: int, expected: str, channels_at: int | None = None) -> list:
        """A JSON list of exactly ``n`` items (with 3 at index ``channels_at``, for shapes), else the error."""
        if not isinstance(value, list) or len(value) != n or (channels_at is not None and value[channels_at] != 3):
            raise self.fail(name, expected, value)
        return value

    def choice(self, value: Any, name: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(name, f"one of {', '.join(choices)}", value)
        return value


def short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def batch_dim(c: FieldCheck, value: Any, name: str) -> int | str:
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
        raise ExportError(f"{where}: 'files' lists {short(rel)}, which is not a relative path inside the export "
                          "folder; the manifest was tampered with, re-export")
    return rel


