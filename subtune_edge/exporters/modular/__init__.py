"""Modular exports: ``trunk.onnx`` (the shared units once, one output per branch point) and
``branches/<task>.onnx`` (a tap in, the task's logits out), so that a task can be added, replaced or
removed without re-shipping the others, and an app can run only the tasks a frame needs.

The cut follows the fused module's sharing plan (:class:`subtune_edge.multitask.SharingPlan`): a
task leaves the trunk at its first tuned unit ``f_t``; the trunk outputs the activation *before*
each such unit as ``tap.<unit>`` (tasks with the same first tuned unit share it). Linear probes
and Siamese tasks read the frozen backbone's pooled features, ``tap.features`` (the trunk then
runs to the end, neck and pool included, as :func:`~subtune_edge.multitask.trunk_end` says); a
linear-probe branch is its head alone, a Siamese branch reads its own tap *and* ``tap.features``
(two inputs), so the frozen tail runs once in the trunk, as it does in the fused graph.

Each branch file holds the frozen units after its tuned ones (a standalone graph cannot share
weights with another file): on disk a modular export is larger than the fused graph by those units.

:func:`export_modular` writes the files into a staged export; :func:`add_tasks` and
:func:`remove_tasks` change a published export in place, atomically (the folder is copied into
a staging sibling, changed, verified and published by :func:`subtune_edge.io.staged_dir`); the
fused ``model.onnx`` is then rebuilt from trunk and branches (:func:`compose_fused`) and verified,
so it is never silently out of date.

The package: :mod:`.modules` (the trunk and branch modules, the plan of the cut), :mod:`.graphs`
(each file exported and checked, the manifest's ``modular`` record), :mod:`.build`
(:func:`export_modular`, :func:`verify_modular`), :mod:`.compose` (:func:`compose_fused`) and
:mod:`.edit` (:func:`add_tasks`, :func:`remove_tasks`).
"""

from .build import MODULAR_FILE, STAGE, export_modular, verify_modular
from .compose import compose_fused
from .edit import STALE_ON_ADD, add_tasks, remove_tasks
from .graphs import GRAPH_BYTES, export_branch, export_graph, export_trunk, layout_record, weight_hashes
from .modules import BranchModule, TrunkModule, branch_taps, ordered_taps, tap_depth

__all__ = [
    "GRAPH_BYTES", "MODULAR_FILE", "STAGE", "STALE_ON_ADD", "BranchModule", "TrunkModule", "add_tasks",
    "branch_taps", "compose_fused", "export_branch", "export_graph", "export_modular", "export_trunk",
    "layout_record", "ordered_taps", "remove_tasks", "tap_depth", "verify_modular", "weight_hashes",
]
