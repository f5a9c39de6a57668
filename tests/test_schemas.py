"""One schema per file format: the schema files themselves, the committed examples, and the error lines.

Every file the suite writes is validated at the end of the session (``tests/conftest.py``); here: the
schemas are valid JSON Schema with the ``$id`` of their file, the committed results, cost tables and
run logs in ``benchmarks/results/`` validate, FORMAT.md points apps at every schema, and an error is
reported at the deepest field that says what it expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from subtune_edge.errors import ExportError, SubtuneError
from subtune_edge.schema import BASE_URI, FileFormat, load_schema, schema_names, validate

from .helpers import _format_of, schema_failures

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"task.schema.json", "manifest.schema.json", "runlog.schema.json", "device-costs.schema.json",
           "bench-results.schema.json"}


def test_each_format_has_one_valid_schema_with_its_own_id():
    assert FORMATS <= set(schema_names())
    for name in schema_names():
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == BASE_URI + name


def test_format_md_points_apps_at_every_schema():
    text = (ROOT / "exporters" / "FORMAT.md").read_text()
    for name in FORMATS:
        assert name in text, name


def test_committed_examples_validate():
    counts, failures = schema_failures(ROOT / "benchmarks" / "results")
    assert not failures, failures
    assert counts["bench"] >= 2 and counts["costs"] >= 1 and counts["runlog"] >= 1, counts


def test_examples_folder_validates():
    examples = ROOT / "exporters" / "examples"
    counts, failures = schema_failures(examples)
    assert not failures, failures
    assert counts["manifest"] >= 1 and counts["task"] >= 1, counts
    assert {_format_of(p)[0] for p in examples.iterdir() if _format_of(p)} >= {"manifest", "task"}


DEMO = FileFormat("manifest.schema.json", ExportError, "re-export")


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["input"].update(shape=["batch", 3, 0, 64]),
     "'input.shape[2]' is a number 0, expected a positive integer"),
    (lambda m: m["tasks"][0].pop("output"), "'tasks[0].output' is missing, expected a non-empty string"),
    (lambda m: m["files"]["model.onnx"].update(sha256="xyz"),
     "'files.model.onnx.sha256' is a string \"xyz\", expected a sha256 hex digest (64 characters)"),
    (lambda m: m.update(modular={"trunk": {}, "taps": [], "branches": []}),  # inside an anyOf's alternative
     "'modular.branches' is a list, expected a non-empty list of branches"),
])
def test_errors_name_the_deepest_field_that_says_what_it_expects(edit, says):
    manifest = json.loads((ROOT / "exporters" / "examples" / "manifest.json").read_text())
    edit(manifest)
    with pytest.raises(ExportError) as info:
        validate(manifest, DEMO, "m.json")
    assert str(info.value) == f"m.json: {says}; re-export"


def test_a_part_of_a_schema_validates_alone():
    from subtune_edge.train.record import RUN_RECORD

    with pytest.raises(SubtuneError, match="'units' is missing, expected a list of unit names"):
        validate({"mode": "subtune"}, RUN_RECORD, "record")
