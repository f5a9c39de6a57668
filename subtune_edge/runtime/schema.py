"""The manifest's format: its constants, the canonical JSON its self-hash covers, safe paths, the one-line errors.

The field rules are ``subtune_edge/schema/manifest.schema.json`` (:data:`MANIFEST_FORMAT`); this
module holds what a schema cannot say and is shared by the typed records (:mod:`.records`), the
reader (:mod:`.manifest`) and the writer (``subtune_edge.exporters.manifest``), so that what is
written and what is accepted cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import ExportError
from ..schema import FileFormat, message

FORMAT = "subtune-edge.export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SELF_HASH = "manifest_sha256"
BATCH_DIM = "batch"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: the manifest's schema and how its errors read
MANIFEST_FORMAT = FileFormat("manifest.schema.json", ExportError, "re-export (or restore the file)")


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


# -- one-line errors ---------------------------------------------------------------------------------
def fail(where: str, name: str, value: Any, expected: str) -> ExportError:
    """The error for a field that breaks a rule the schema cannot state (it agrees with another field, ...)."""
    return ExportError(message(MANIFEST_FORMAT, where, name, value, expected))


def short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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


