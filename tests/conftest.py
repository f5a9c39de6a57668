"""Shared fixtures; the builders live in helpers.py so test modules can import them."""

from __future__ import annotations

import pytest

from subtune_edge.backbone import Backbone

from .helpers import FAMILY_MODELS, backbone_for


@pytest.fixture(params=FAMILY_MODELS)
def family_backbone(request) -> Backbone:
    return backbone_for(request.param)


@pytest.fixture
def resnet() -> Backbone:
    return backbone_for("resnet18")
