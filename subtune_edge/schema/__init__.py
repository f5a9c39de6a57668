"""One schema mechanism for every file subtune-edge writes and reads back.

Each file format has one JSON Schema (draft 2020-12) shipped in this package: the task file's
metadata (``task.schema.json``), the export manifest (``manifest.schema.json``), the run log
(``runlog.schema.json``), the device cost table (``device-costs.schema.json``) and benchmark
results (``bench-results.schema.json``), with the parts they share in ``common.schema.json``.
``exporters/FORMAT.md`` points an app (the C++ runner, your own loader) at the same files.

A reader validates with :func:`validate` (``jsonschema``), then builds its typed record; what a
schema cannot say (a self-hash, a field that must agree with another, a file that must exist) is
checked in the record's code after that. A failure is one line of the format's own error class,
naming the file, the field and what was expected, in the format's words: every schema node a user
may get wrong carries an ``x-expected`` text ("a positive integer", "[batch, 3, H, W]"), and the
error is reported at the deepest such node on the failing path::

    task file t/cat.safetensors: metadata field 'head.num_classes' is a string "two", expected a
    positive integer; re-train or re-save the task
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ..errors import SubtuneError

#: the base of every schema's ``$id``: an identifier, not an address to download from
BASE_URI = "https://subtune-edge.local/schemas/"
#: a custom keyword (ignored by validators): how an error names what the field must be
EXPECTED = "x-expected"
_MISSING = object()


@dataclass(frozen=True)
class FileFormat:
    """A file format's schema and how its errors read.

    Attributes:
        schema: the schema's file name in this package (``manifest.schema.json``), or a part of one
            (``task.schema.json#/$defs/run_record``).
        error: the error class its readers raise (a :class:`~subtune_edge.errors.SubtuneError`).
        fix: what the user should do, ending every message (``re-export (or restore the file)``).
        noun: how a field is introduced (``metadata field `` for task files; empty for the rest).
    """

    schema: str
    error: type[SubtuneError] = SubtuneError
    fix: str = ""
    noun: str = ""


def schema_names() -> list[str]:
    """The schema files shipped in this package."""
    return sorted(p.name for p in resources.files(__package__).iterdir() if p.name.endswith(".schema.json"))


@functools.cache
def load_schema(name: str) -> dict:
    """A schema shipped in this package, parsed (cached)."""
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


@functools.cache
def _registry() -> Registry:
    resources_ = [(BASE_URI + name, Resource.from_contents(load_schema(name), default_specification=DRAFT202012))
                  for name in schema_names()]
    return Registry().with_resources(resources_)


def _root(name: str) -> tuple[dict, str]:
    """The schema ``name`` names (a file, or ``file#/$defs/part``) and the file it lives in."""
    file, _, pointer = name.partition("#")
    return (load_schema(file) if not pointer else {"$ref": BASE_URI + name}), file


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema, file = _root(name)
    cls = jsonschema.validators.validator_for(load_schema(file))
    cls.check_schema(load_schema(file))
    return cls(schema, registry=_registry())


def describe(value: Any) -> str:
    """A JSON value as an error names it: ``a string "two"``, ``a number 5``, ``a list``, ``null``, ``missing``."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    text = json.dumps(value) if not isinstance(value, (list, dict)) else ""
    return f"{kind} {text[:40]}".rstrip()


def field_path(path: list) -> str:
    """``["tasks", 0, "shape", 1]`` -> ``tasks[0].shape[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _deref(node: Any, resolver) -> tuple[Any, Any]:
    while isinstance(node, dict) and "$ref" in node and EXPECTED not in node:
        resolved = resolver.lookup(node["$ref"])
        node, resolver = resolved.contents, resolved.resolver
    return node, resolver


def _child(node: Any, resolver, key) -> tuple[Any, Any]:
    node, resolver = _deref(node, resolver)
    if not isinstance(node, dict):
        return None, resolver
    for alternative in node.get("anyOf", []) + node.get("oneOf", []):  # the alternative that has the key
        sub, sub_resolver = _child(alternative, resolver, key)
        if sub is not None:
            return sub, sub_resolver
    if isinstance(key, str):
        if key in node.get("properties", {}):
            return node["properties"][key], resolver
        for pattern, sub in node.get("patternProperties", {}).items():
            if re.search(pattern, key):
                return sub, resolver
        extra = node.get("additionalProperties")
        return (extra if isinstance(extra, dict) else None), resolver
    prefix = node.get("prefixItems", [])
    if key < len(prefix):
        return prefix[key], resolver
    items = node.get("items")
    return (items if isinstance(items, dict) else None), resolver


def _expected_at(node: Any, resolver) -> str | None:
    if not isinstance(node, dict):
        return None
    if EXPECTED in node:
        return node[EXPECTED]
    node, _ = _deref(node, resolver)
    return node.get(EXPECTED) if isinstance(node, dict) else None


def _value_at(data: Any, path: list) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _failing_path(error: ValidationError) -> list:
    path = list(error.absolute_path)
    if error.validator == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = next((k for k in error.validator_value if k not in instance), None)
        if missing is not None:
            path.append(missing)
    return path


def explain(error: ValidationError, data: Any, schema: str) -> tuple[str, Any, str]:
    """The field to report for ``error`` (the deepest node on its path with an ``x-expected``), its
    value (or the missing marker) and what was expected."""
    path = _failing_path(error)
    node, file = _root(schema)
    resolver = _registry().resolver(base_uri=BASE_URI + file)
    nodes = [(node, resolver)]
    for key in path:
        node, resolver = _child(node, resolver, key)
        if node is None:
            break
        nodes.append((node, resolver))
    for depth in range(len(nodes) - 1, -1, -1):
        expected = _expected_at(*nodes[depth])
        if expected:
            return field_path(path[:depth]), _value_at(data, path[:depth]), expected
    return field_path(path), _value_at(data, path), error.message


def validate(data: Any, fmt: FileFormat, where: str) -> Any:
    """Check ``data`` against the format's schema.

    Args:
        data: the parsed JSON.
        fmt: the file format.
        where: how to name the file in the message (its path, or ``task file PATH``).

    Returns:
        ``data``, unchanged.

    Raises:
        SubtuneError: of ``fmt.error``'s class, one line naming ``where``, the field, its value and
            what was expected, then ``fmt.fix``.
    """
    error = best_match(_validator(fmt.schema).iter_errors(data))
    if error is None:
        return data
    while error.context:  # an anyOf / oneOf: the alternative that got furthest into the data says most
        error = max(error.context, key=lambda e: len(e.absolute_path))
    field, value, expected = explain(error, data, fmt.schema)
    raise fmt.error(message(fmt, where, field, value, expected))


def message(fmt: FileFormat, where: str, field: str, value: Any, expected: str) -> str:
    """The one line for a field that is not what the format says: ``where: 'field' is X, expected Y; fix``."""
    what = f"{fmt.noun}'{field}' " if field else "its content "
    fix = f"; {fmt.fix}" if fmt.fix else ""
    return f"{where}: {what}is {describe(value)}, expected {expected}{fix}"


def is_valid(data: Any, schema: str) -> bool:
    """Whether ``data`` passes ``schema`` (for rules like "is this folder one of ours")."""
    return _validator(schema).is_valid(data)


__all__ = ["BASE_URI", "EXPECTED", "FileFormat", "describe", "explain", "field_path", "is_valid", "load_schema",
           "message", "schema_names", "validate"]
