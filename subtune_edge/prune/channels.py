"""Structured channel pruning of one task's tuned units, with torch-pruning's dependency graph.

SubTuning's branch is the task's own: its tuned units and its head. Pruning may narrow a channel
only where every tensor it touches belongs to that branch. torch-pruning traces the branch once
and groups, for each convolution or linear layer, every tensor coupled to its output channels
(BatchNorm after it, the depthwise convolution and squeeze-excite that act on the same channels,
the consumers' input channels, residual sums). A group is pruned when all its members lie in
tuned units or the head; a group that reaches a frozen unit (the shared trunk, or an untuned unit
of the branch), a residual sum fed by a frozen module, the logits, or an operation that re-indexes
channels (attention's reshape and unbind, concat, split, slice) is left at full width. That keeps
the frozen weights bit-for-bit the ones every other task shares, and the graph valid. In practice:
a ResNet bottleneck's inner convolutions, an inverted residual's expansion, a ``conv_head``'s output
with the head's input, a ViT or ConvNeXt block's MLP hidden layer.

Why torch-pruning: it is maintained, models timm's blocks (residuals, depthwise convolutions,
squeeze-excite, LayerNorm, attention) as a dependency graph instead of per-architecture rules, and
its importance criteria (L1 magnitude as in the paper's code, Taylor, BatchNorm scale) are the
standard ones. We use only its graph and its pruning functions: which groups to touch is ours.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import PruneError
from ..multitask import TaskModel
from .options import PruneConfig

log = logging.getLogger(__name__)


class _Branch(nn.Module):
    """The task's branch as one module for the tracer: branch-point activation in, logits out.

    The activation enters through an identity layer that belongs to no one (a depthwise 1x1
    convolution for ``[B, C, H, W]``, a linear layer for tokens ``[B, N, C]``): the tracer sees no
    module behind a plain input tensor, so without it a residual sum with the branch input (timm's
    ``x += shortcut``) would look like the branch's own and its channels would be pruned away from
    the trunk's.
    """

    def __init__(self, model: TaskModel, h: torch.Tensor):
        super().__init__()
        self.model = model
        c = h.shape[1] if h.dim() == 4 else h.shape[-1]
        if h.dim() == 4:
            self.entry = nn.Conv2d(c, c, 1, groups=c, bias=False)
            nn.init.ones_(self.entry.weight)
        else:
            self.entry = nn.Linear(c, c, bias=False)
            with torch.no_grad():
                self.entry.weight.copy_(torch.eye(c))
        self.entry.to(h.device).requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_branch(self.entry(h))


@dataclass
class PruneRecord:
    """What pruning did to a task: kept channels per group, the head's new input width, branch FLOPs.

    Attributes:
        ratio: the share of channels removed from each pruned group.
        importance: how channels were ranked.
        round_to: kept channels are a multiple of this (small groups: of 1).
        channels: ``[kept, of]`` per pruned group, by the unit that holds the group's producer.
        features: what the branch now gives the head (None: unchanged).
        flops_before: branch FLOPs (batch 1) before pruning, units to head.
        flops_after: the same after.
        left: ``(module, reason)`` of each group left at full width.
    """

    ratio: float
    importance: str
    round_to: int
    channels: dict[str, list[list[int]]]
    features: int | None
    flops_before: int
    flops_after: int
    left: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        """The task file's ``pruned`` entry (training adds the finetuning fields)."""
        out = {"ratio": self.ratio, "importance": self.importance, "round_to": self.round_to,
               "channels": {u: [list(p) for p in pairs] for u, pairs in self.channels.items()},
               "flops": {"before": self.flops_before, "after": self.flops_after}}
        if self.features is not None:
            out["features"] = self.features
        return out


def _tp():
    try:
        import torch_pruning
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise PruneError("pruning needs torch-pruning: pip install torch-pruning") from exc
    return torch_pruning


def _importance(tp, name: str):
    imp = tp.importance
    if name == "taylor":
        return imp.TaylorImportance(normalizer=None, group_reduction="mean")
    if name == "bn":
        return imp.BNScaleImportance(normalizer=None)
    return imp.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")


def _branch_flops(model: TaskModel, h: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_branch(h)
    return int(counter.get_total_flops())


def _owners(model: TaskModel) -> dict[int, str]:
    """id(module or parameter) -> the tuned unit or ``head`` that owns it."""
    owned: dict[int, str] = {}
    for name, module in model.trainable_modules().items():
        for m in module.modules():
            owned[id(m)] = name
        for p in module.parameters():
            owned[id(p)] = name
    return owned


def _verdict(tp, group, owners: dict[int, str], names: dict[int, str]) -> tuple[str | None, set[str]]:
    """(why the group must stay at full width or None, the owners it touches)."""
    ops = tp.ops
    reindexing = (ops._UnbindOp, ops._SplitOp, ops._ConcatOp, ops._SliceOp, ops._ExpandOp)
    touched: set[str] = set()
    for dep, _ in group:
        target = dep.target.module
        if isinstance(target, ops._OutputOp):
            return "it reaches the logits", touched
        if isinstance(target, reindexing):
            return f"an operation re-indexes its channels ({type(target).__name__.strip('_')})", touched
        if isinstance(target, (ops._ElementWiseOp, ops._ReshapeOp)):
            continue  # activations, sums, pooling, flatten: follow their inputs' channels
        owner = owners.get(id(target))
        if owner is None:
            return f"it reaches frozen {names.get(id(target), type(target).__name__)}", touched
        touched.add(owner)
    if touched <= {"head"}:
        return "it is the head's alone", touched
    return None, touched


def _trace(tp, module: nn.Module, h: torch.Tensor, family: str):
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(module, example_inputs=h, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the tracer's failures are many; each becomes one line
        raise PruneError(f"torch-pruning cannot trace the {family} branch ({type(exc).__name__}: "
                         f"{str(exc)[:100]}); train without {{param}}", param="prune") from exc


def _prune_groups(tp, graph, units: dict[str, nn.Module], owners: dict[int, str], names: dict[int, str],
                  config: PruneConfig, family: str) -> tuple[dict[str, list[list[int]]], list[tuple[str, str]]]:
    """Prune, in ``graph``, every group rooted in ``units`` whose members are all owned; (kept channels, left)."""
    imp_fn = _importance(tp, config.importance)
    fallback = _importance(tp, "l1")
    seen: set[int] = set()
    plans, left = [], []
    for unit_name, unit in units.items():
        for module in unit.modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in graph.module2node or id(module) in seen:
                continue
            pruner = graph.get_pruner_of_module(module)
            n = pruner.get_out_channels(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
            for dep, _ in group:
                if graph.is_out_channel_pruning_fn(dep.handler):
                    seen.add(id(dep.target.module))
            reason, _ = _verdict(tp, group, owners, names)
            if reason is None and getattr(module, "groups", 1) > 1 and module.groups != module.out_channels:
                reason = "a grouped convolution produces it"
            if reason is not None:
                left.append((names.get(id(module), "?"), reason))
                continue
            keep = config.kept(n)
            if keep >= n:
                continue
            scores = imp_fn(group)
            if scores is None:  # e.g. BatchNorm scale in a group without BatchNorm
                scores = fallback(group)
            kept = sorted(torch.argsort(scores.float(), descending=True)[:keep].tolist())
            plans.append((unit_name, module, pruner.prune_out_channels, n, sorted(set(range(n)) - set(kept))))
    channels: dict[str, list[list[int]]] = {}
    for unit_name, module, fn, n, dropped in plans:  # indices were chosen first; groups are disjoint
        group = graph.get_pruning_group(module, fn, dropped)
        if not graph.check_pruning_group(group):
            raise PruneError(f"torch-pruning refuses to prune {names.get(id(module), '?')} of the {family} branch; "
                             "train without {param}", param="prune")
        group.prune()
        channels.setdefault(unit_name, []).append([n - len(dropped), n])
    return channels, left


def prune_task_model(model: TaskModel, config: PruneConfig, images: torch.Tensor, family: str = "model"
                     ) -> PruneRecord:
    """Narrow ``model``'s tuned units (in place) by ``config.ratio`` of each prunable group's channels.

    Args:
        model: a trained task model; its tuned units and head are replaced by narrower ones, every
            frozen module is left as it is.
        config: the ratio, the importance and the rounding.
        images: a batch of inputs at the training size, on the model's device (one image is enough;
            the Taylor importance reads the gradients already in the parameters' ``.grad``).
        family: the backbone family, for messages.

    Returns:
        What was pruned.

    Raises:
        PruneError: the branch cannot be traced, or none of its channels can be pruned without
            touching a frozen or shared tensor (naming the family and why).
    """
    tp = _tp()
    if config.importance == "taylor" and not any(p.grad is not None for m in model.trainable_modules().values()
                                                 for p in m.parameters()):
        raise PruneError("Taylor importance ranks channels by |weight x gradient|, and the model holds no gradients; "
                         "rank an untrained model with {param} l1", param="importance")
    was_training = model.training
    # eval mode throughout: one image through BatchNorm in training mode would overwrite its running
    # statistics (and fails outright on a 1x1 feature map)
    model.eval()
    try:
        with torch.no_grad():
            h = model.forward_prefix(images[:1])
        h = h.detach().requires_grad_(True)
        branch = _Branch(model, h)
        names = {id(m): n.removeprefix("model.") for n, m in branch.named_modules()}
        names.update({id(p): n.removeprefix("model.") for n, p in branch.named_parameters()})
        names[id(branch.entry)] = "trunk output"
        flops_before = _branch_flops(model, h)
        graph = _trace(tp, branch, h, family)
        in_features = model.head.in_features
        units = {u: model.units[model.unit_names.index(u)] for u in model.tuned_names}
        channels, left = _prune_groups(tp, graph, units, _owners(model), names, config, family)
        flops_after = _branch_flops(model, h.detach())
    finally:
        model.train(was_training)
    if not channels:
        first = left[0] if left else ("the tuned units", "they hold no convolution or linear layer")
        raise PruneError(f"nothing in the tuned units of this {family} task can be pruned without changing frozen "
                         f"or shared channels ({first[0]}: {first[1]}); tune other units or train without {{param}}",
                         param="prune")
    for module in model.trainable_modules().values():  # pruning made new parameters: trainable, no stale gradients
        for p in module.parameters():
            p.requires_grad_(True)
            p.grad = None
    # a Siamese head reads its features through a concat, which is never pruned: only a plain head narrows
    features = model.head.in_features if model.head.in_features != in_features else None
    record = PruneRecord(config.ratio, config.importance, config.round_to, channels, features, flops_before,
                         flops_after, left)
    log.debug("pruned %s: %s; left %d groups at full width", family, channels, len(left))
    return record
