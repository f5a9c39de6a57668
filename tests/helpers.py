"""Small real timm models at 64x64 with seeded random weights, and tasks on them."""

from __future__ import annotations

import functools

import torch

from subtune_edge.backbone import Backbone, create_backbone, model_args_for_input
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import Task

torch.set_num_threads(2)

SIZE = 64
# One model per family, small enough to run at 64x64 in well under a second.
FAMILY_MODELS = ["resnet18", "tf_efficientnet_lite0", "mobilenetv3_large_100", "convnext_atto",
                 "vit_tiny_patch16_224"]


@functools.cache
def backbone_for(name: str, weights: str = "random") -> Backbone:
    return create_backbone(name, weights, **model_args_for_input(name, (SIZE, SIZE)))


def three_depth_tasks(backbone: Backbone, seed: int = 0) -> list[Task]:
    """Three tasks leaving the trunk at three different depths, one with non-contiguous units."""
    names = backbone.unit_names
    n = len(names)
    return [
        synthetic_task(backbone, "late", [names[-1]], 3, seed=seed, input_size=(SIZE, SIZE)),
        synthetic_task(backbone, "middle", [names[n // 2], names[n - 2]], 4, seed=seed + 1, input_size=(SIZE, SIZE)),
        synthetic_task(backbone, "early", [names[1], names[-1]], 5, seed=seed + 2, input_size=(SIZE, SIZE)),
    ]
