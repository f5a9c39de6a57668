"""Shared fixtures; the builders live in helpers.py so test modules can import them."""

from __future__ import annotations

import pytest

from subtune_edge.backbone import Backbone

from .helpers import FAMILY_MODELS, backbone_for, schema_failures


@pytest.fixture(params=FAMILY_MODELS)
def family_backbone(request) -> Backbone:
    return backbone_for(request.param)


@pytest.fixture
def resnet() -> Backbone:
    return backbone_for("resnet18")


@pytest.fixture(scope="session", autouse=True)
def files_written_follow_their_schemas(tmp_path_factory):
    """Every task file, manifest, run log, cost table and results.json the suite writes validates against its
    schema in ``subtune_edge/schema/`` (files a hardening test broke on purpose are marked ``tampered``)."""
    yield
    counts, failures = schema_failures(tmp_path_factory.getbasetemp())
    assert not failures, f"{len(failures)} written file(s) break their schema:\n" + "\n".join(failures[:20])


@pytest.fixture(scope="session")
def binaries():
    """The C++ runner, built once per session (release and sanitizer builds; see tests/cpp.py)."""
    from .cpp import build

    return build()
