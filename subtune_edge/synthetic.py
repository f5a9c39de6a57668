"""Tasks that were never trained, for latency benchmarks and tests.

What a task costs at inference depends only on which units it tunes (and how wide: pruned or not)
and its head, not on what it learned, so benchmark suites build tasks like these instead of
training; the tuned copies are perturbed so that no exporter can mistake them for the frozen
originals.
"""

from __future__ import annotations

import dataclasses

import torch

from .backbone import Backbone
from .multitask import TaskModel
from .prune import PruneConfig, prune_task_model
from .task import Task, make_task


def synthetic_task(backbone: Backbone, name: str, units: list[str], num_classes: int = 10, *, seed: int = 0,
                   siamese: bool = False, input_size: tuple[int, int] | None = None,
                   prune: PruneConfig | None = None) -> Task:
    """A task tuning ``units`` with seeded random changes to their weights and a random head.

    Args:
        backbone: the frozen backbone.
        name: the task name (:func:`~subtune_edge.task.validate_task_name`).
        units: the units it tunes (empty: a linear probe).
        num_classes: outputs of its head.
        seed: the same seed gives the same tensors.
        siamese: a Siamese head (twice the features).
        input_size: (height, width) recorded as its preprocessing; None for the backbone's default.
        prune: prune the units as a trained task would be (:func:`~subtune_edge.prune.prune_task_model`);
            never trained, the task has no gradients to rank channels by, so a Taylor request ranks
            them by L1 (the record says so): the widths, and so the costs, are the same.

    Returns:
        The task, as :func:`~subtune_edge.task.make_task` builds it (``training.mode`` is ``synthetic``).

    Raises:
        BackboneError: a unit the backbone does not have.
        TaskFileError: a bad name.
        PruneError: ``prune`` asked of units that cannot be narrowed.
    """
    backbone.check_units(units)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TaskModel.for_training(backbone, units, num_classes, siamese=siamese)
    with torch.no_grad():
        for module in model.trainable_modules().values():
            for p in module.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen) * (p.std() if p.numel() > 1 else 1.0))
        model.head.weight.normal_(0, 0.05, generator=gen)
    preprocessing = backbone.data_config
    if input_size is not None:
        preprocessing["input_size"] = (3, int(input_size[0]), int(input_size[1]))
    pruned = None
    if prune is not None:
        x = torch.randn(1, *preprocessing["input_size"], generator=gen)
        if prune.importance == "taylor":
            prune = dataclasses.replace(prune, importance="l1")
        pruned = prune_task_model(model, prune, x, backbone.family).to_json()
    tuned = {u: model.units[backbone.unit_index(u)] for u in units}
    return make_task(name, backbone, tuned, model.head, labels=[f"class_{i}" for i in range(num_classes)],
                     preprocessing=preprocessing, siamese=siamese,
                     training={"mode": "synthetic", "seed": seed}, pruned=pruned)
