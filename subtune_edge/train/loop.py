"""One training run: linear probe, SubTuning(S), full finetuning or Siamese SubTuning.

A run trains a :class:`~subtune_edge.multitask.TaskModel`: copies of the units in S and a new
linear head receive gradients; every other unit is the backbone's own module, frozen and kept in
``eval()`` (frozen BatchNorm statistics). The frozen prefix before the first tuned unit runs under
``torch.no_grad()``, so a step costs the prefix's forward plus the branch's forward and backward,
and without augmentation the prefix is computed once (:mod:`~subtune_edge.train.prefix_cache`).

The recipe follows the paper's code: AdamW, a cosine schedule (here per step, after a linear
warm-up), lr 1e-3 for CNNs / 1e-4 for ViTs and 1e-2 for a linear probe, weight decay 1e-2 / 5e-5,
RandomResizedCrop + flip. On CUDA: mixed precision (bf16 where supported, else fp16 with a
gradient scaler), channels_last and pinned-memory loaders.

The same loop runs in one process and in every process of a DDP group: what differs is asked of
the :class:`~subtune_edge.train.world.World` it is given.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import timm
import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..data import ImageSet, TaskData
from ..errors import PruneError, SubtuneError
from ..multitask import TaskModel
from ..progress import Progress, emit
from ..prune import PruneConfig, prune_task_model
from ..task import make_task
from .config import TrainConfig, device_name, resolve_device, run_mode
from .loaders import EpochSampler, make_loader
from .prefix_cache import PREFIX_CACHE, PrefixCache, cached_prefix
from .record import RunRecord, TrainResult
from .step import TrainStep
from .world import SINGLE, World

log = logging.getLogger(__name__)


def check_units(backbone: Backbone, units: list[str] | tuple[str, ...], siamese: bool) -> list[str]:
    """``units`` in model order, after refusing names the backbone lacks and a unit-less Siamese run.

    Raises:
        BackboneError: a unit the backbone does not have (the message lists the ones it has).
        SubtuneError: Siamese SubTuning without a tuned unit.
    """
    backbone.check_units(units)
    if siamese and not units:
        raise SubtuneError("Siamese SubTuning needs at least one tuned unit (its head compares tuned and frozen "
                           "features); tune a unit or drop {param}", param="siamese")
    return [u for u in backbone.unit_names if u in set(units)]


@contextlib.contextmanager
def _seeded(seed: int, device: str):
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@torch.no_grad()
def _counts(step: TrainStep, batches: Iterator) -> tuple[int, float, int]:
    """(correct, summed loss, samples) of the model over (x, y, h) batches, in eval mode."""
    model = step.model
    was_training = model.training
    model.eval()
    total = 0
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), dtype=torch.long, device=step.device)
    for x, y, h in batches:
        y = y.to(step.device, non_blocking=True)
        with step.autocast():
            if h is None:
                h = model.forward_prefix(step.to_device(x))
            logits = model.forward_branch(h).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    model.train(was_training)
    return int(correct), float(loss_sum), total


def _batches(loader, cached, batch_size: int) -> Iterator:
    if cached is not None:
        h_all, y_all = cached
        return ((None, y_all[i:i + batch_size], h_all[i:i + batch_size]) for i in range(0, len(y_all), batch_size))
    return ((x, y, None) for x, y in loader)


def evaluate(step: TrainStep, data: ImageSet | torch.utils.data.DataLoader | None, cfg: TrainConfig,
             cached: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) of the model on a dataset or loader, or on cached prefix outputs."""
    loader = None
    if cached is None:
        loader = data if isinstance(data, torch.utils.data.DataLoader) else make_loader(data, 2 * cfg.batch_size, cfg)
    correct, loss_sum, total = _counts(step, _batches(loader, cached, 2 * cfg.batch_size))
    return (correct / total if total else 0.0), (loss_sum / total if total else 0.0)


def _prefix_caches(step, cfg, backbone, data, train_set, val_set, cache):
    info: dict = {"train": False, "val": False}
    train_cached = val_cached = None
    t0 = time.perf_counter()
    if cfg.prefix_cache:  # every process caches whole splits: its slices of the global batches index them
        val_cached, info["val_reason"] = cached_prefix(step, val_set, cfg, backbone, data, cache)
        info["val"] = val_cached is not None
        if not cfg.augment:
            train_cached, info["train_reason"] = cached_prefix(step, train_set, cfg, backbone, data, cache)
            info["train"] = train_cached is not None
        else:
            info["train_reason"] = "augmentation is on"
    info["seconds"] = time.perf_counter() - t0
    return train_cached, val_cached, info


def train(backbone: Backbone, data: TaskData, units: list[str] | tuple[str, ...], config: TrainConfig | None = None,
          *, siamese: bool = False, prune: PruneConfig | None = None, name: str = "task",
          progress: Progress | None = None, cache: PrefixCache | None = None, world: World = SINGLE) -> TrainResult:
    """Train a new head and copies of ``units`` on ``data``; the backbone's own weights never change.

    Args:
        backbone: the pretrained model; its modules are moved to the training device.
        data: the task's data.
        units: the units to tune; none is a linear probe, all of them full finetuning (the stem
            stays frozen, as everywhere in subtune-edge).
        config: how to train (defaults: the paper's recipe for this model and device).
        siamese: put the head on tuned and frozen features side by side.
        prune: after the epochs, prune the tuned units' channels (:mod:`subtune_edge.prune`) and
            finetune the narrower branch for ``prune.epochs`` more epochs (cosine from the run's lr,
            no warm-up); the task records the pruned widths. None: no pruning.
        name: the task's name in the task file.
        progress: told ``train`` events: data ``event`` = ``start`` (mode, units, epochs, steps per
            epoch, prefix cache), ``epoch`` (a history row) and ``end`` (the record).
        cache: the prefix cache to use (default: the process-wide one).
        world: the processes the run is spread over (default: this one;
            :class:`~subtune_edge.train.ddp.DDPWorld` for a torchrun group, where every process
            gets the result and rank 0 saves it).

    Returns:
        The task (not yet saved), the trained model and the run's record.

    Raises:
        SubtuneError: bad units or config, or a run whose loss became non-finite (nothing is
            returned, so nothing can be saved).
        PruneError: pruning asked of a linear probe, or of units it cannot narrow.
    """
    units = check_units(backbone, units, siamese)
    if prune is not None and not units:
        raise PruneError("a linear probe has no tuned unit to prune; tune units or drop {param}", param="prune")
    config = config or TrainConfig()
    cfg = replace(config, device=world.device(resolve_device(config.device))).resolve(backbone, units, data)
    world.check(cfg)
    cache = cache if cache is not None else PREFIX_CACHE
    mode = run_mode(units, backbone.unit_names, siamese)
    t_start = time.perf_counter()
    with _seeded(cfg.seed, cfg.device):
        model = TaskModel.for_training(backbone, units, data.num_classes, siamese=siamese)
        model.to(cfg.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train_set, val_set = data.train_set(cfg.augment), data.val_set()
        n = len(train_set)
        sizes = [len(b) for b in world.global_batches(n, cfg.batch_size, None)]
        step = TrainStep(model, cfg, cfg.epochs * len(sizes), branch=world.wrap_branch(model),
                         world_size=world.size)
        model.eval()
        train_cached, val_cached, cache_info = _prefix_caches(step, cfg, backbone, data, train_set, val_set, cache)

        gen = torch.Generator().manual_seed(cfg.seed)

        def my_batches(g):
            return [world.shard(b) for b in world.global_batches(n, cfg.batch_size, g)]

        loader = None if train_cached is not None else make_loader(
            train_set, cfg.batch_size, cfg, batch_sampler=EpochSampler(my_batches, gen), persistent=True)
        val_idx = list(range(world.rank, len(val_set), world.size))
        val_part = (val_cached[0][world.rank::world.size], val_cached[1][world.rank::world.size]) \
            if val_cached is not None else None
        val_loader = None if val_cached is not None else make_loader(
            val_set if world.size == 1 else torch.utils.data.Subset(val_set, val_idx), 2 * cfg.batch_size, cfg,
            persistent=True)
        start = {"event": "start", "mode": mode, "units": units, "epochs": cfg.epochs, "steps_per_epoch": len(sizes),
                 "prefix_cache": dict(cache_info)}
        if world.size > 1:
            start["world_size"] = world.size
        emit(progress, "train", f"{mode}: {cfg.epochs} epochs", 0, cfg.epochs, **start)
        history: list[dict] = []
        step_seconds = 0.0
        cuda = cfg.device.startswith("cuda")

        def epoch_batches():
            if train_cached is not None:
                h_all, y_all = train_cached
                return ((None, y_all[i.to(y_all.device)], h_all[i.to(h_all.device)]) for i in my_batches(gen))
            return ((x, y, None) for x, y in loader)

        def run_epochs(step: TrainStep, epochs: int, phase: str | None) -> None:
            nonlocal step_seconds
            for e in range(1, epochs + 1):
                epoch = len(history) + 1
                t_epoch = time.perf_counter()
                model.train()
                # accumulated on the device: no host sync per step
                loss_sum = torch.zeros((), dtype=torch.float64, device=step.device)
                correct = torch.zeros((), dtype=torch.long, device=step.device)
                first_bad = torch.full((), -1, dtype=torch.long, device=step.device)
                seen = 0
                t_steps = time.perf_counter()
                for i, ((x, y, h), global_n) in enumerate(zip(epoch_batches(), sizes)):
                    try:
                        loss, logits = step(x, y, h, global_n)
                    except RuntimeError as exc:  # AdamW's step size itself overflowed float32 (a huge lr)
                        if "overflow" not in str(exc):
                            raise
                        _diverged(epoch, i + 1, float("inf"), cfg)
                    y = y.to(step.device, non_blocking=True)
                    loss_sum += loss.double() * len(y)
                    correct += (logits.argmax(1) == y).sum()
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i + 1, first_bad)
                    seen += len(y)
                if cuda:
                    torch.cuda.synchronize(step.device)
                step_seconds += time.perf_counter() - t_steps  # with data loading, as a user waits for it
                lr = step.lr
                loss_total, correct_total, seen_total, bad = world.all_sum(
                    [float(loss_sum), int(correct), seen, int(first_bad >= 0)], step.device)
                if bad:
                    _diverged(epoch, int(first_bad), loss_total / max(seen_total, 1), cfg)
                v_correct, v_loss, v_total = world.all_sum(
                    list(_counts(step, _batches(val_loader, val_part, 2 * cfg.batch_size))), step.device)
                row = {"epoch": epoch, "train_loss": loss_total / max(seen_total, 1),
                       "train_accuracy": correct_total / max(seen_total, 1),
                       "val_loss": v_loss / v_total if v_total else 0.0,
                       "val_accuracy": v_correct / v_total if v_total else 0.0, "lr": lr,
                       "seconds": time.perf_counter() - t_epoch}
                if phase:
                    row["phase"] = phase
                history.append(row)
                emit(progress, "train", f"{phase or 'epoch'} {e}/{epochs}", e, epochs,
                     **dict(row, event="epoch", epochs=epochs))

        run_epochs(step, cfg.epochs, None)
        pruned_record = None
        if prune is not None:
            unpruned = history[-1]["val_accuracy"]
            if prune.importance == "taylor":
                _taylor_gradients(step, epoch_batches(), prune.taylor_batches)
            sample = train_set[0][0].unsqueeze(0).to(step.device)
            record = prune_task_model(model, prune, sample, backbone.family)
            emit(progress, "train", f"pruned {100 * prune.ratio:.0f}% of the channels: finetuning", 0, prune.epochs,
                 event="start", mode=mode, units=units, epochs=prune.epochs, steps_per_epoch=len(sizes),
                 prefix_cache=dict(cache_info), phase="prune-finetune")
            pruned_record = record.to_json() | {"finetune_epochs": prune.epochs, "unpruned_val_accuracy": unpruned}
            if prune.epochs:
                tune_cfg = replace(cfg, warmup=0.0)
                step = TrainStep(model, tune_cfg, prune.epochs * len(sizes), branch=world.wrap_branch(model),
                                 world_size=world.size)
                run_epochs(step, prune.epochs, "prune-finetune")
            else:  # pruned, not finetuned: the record's last row is the pruned model's
                v_correct, v_loss, v_total = world.all_sum(
                    list(_counts(step, _batches(val_loader, val_part, 2 * cfg.batch_size))), step.device)
                history.append({"epoch": len(history) + 1, "phase": "pruned", "train_loss": None,
                                "train_accuracy": None, "val_loss": v_loss / max(v_total, 1),
                                "val_accuracy": v_correct / max(v_total, 1), "lr": 0.0, "seconds": 0.0})
        model.eval()

    tuned = world.saved_units({u: model.units[backbone.unit_names.index(u)] for u in units})
    _check_finite(tuned, model)
    # a pruned model's best epoch is one of its own: the unpruned epochs scored a model it no longer is
    scored = [r for r in history if r.get("phase") in ("prune-finetune", "pruned")] if prune is not None else history
    best = max(scored, key=lambda r: r["val_accuracy"])
    record = RunRecord(
        mode=mode, units=units, siamese=siamese, epochs=cfg.epochs, samples=len(train_set),
        val_samples=len(val_set), val_accuracy=history[-1]["val_accuracy"],
        best_val_accuracy=best["val_accuracy"], best_epoch=best["epoch"], history=history,
        config=cfg.to_json(), data=data.describe(), device=device_name(cfg.device),
        amp_dtype=str(step.dtype).replace("torch.", "") if step.dtype else None, prefix_cache=cache_info,
        seconds=time.perf_counter() - t_start,
        step_seconds_mean=step_seconds / max(1, (cfg.epochs + (prune.epochs if prune else 0)) * len(sizes)),
        trainable_params=sum(p.numel() for m in model.trainable_modules().values() for p in m.parameters()),
        versions={"torch": torch.__version__, "timm": timm.__version__}, distributed=world.record())
    task = make_task(name, backbone, tuned, model.head, labels=data.labels, preprocessing=data.data_config,
                     siamese=siamese, training=record.to_json(), pruned=pruned_record)
    emit(progress, "train", f"{mode}: val acc {100 * record.val_accuracy:.2f}%", cfg.epochs, cfg.epochs,
         event="end", **record.to_json())
    log.debug("trained %s (%s) in %.1f s", name, mode, record.seconds)
    return TrainResult(task, model, record)


def _taylor_gradients(step: TrainStep, batches: Iterator, n: int) -> None:
    """Leave in every trainable ``.grad`` the loss gradient summed over ``n`` training batches (Taylor importance)."""
    model = step.model
    model.eval()  # ranking channels, not training: BatchNorm statistics stay
    model.zero_grad(set_to_none=True)
    for (x, y, h), _ in zip(batches, range(n)):
        with step.autocast():
            if h is None:
                h = model.forward_prefix(step.to_device(x))
            loss = F.cross_entropy(model.forward_branch(h).float(), y.to(step.device))
        loss.backward()


def _diverged(epoch: int, step_no: int, loss: float, cfg: TrainConfig) -> None:
    where = f"epoch {epoch} step {step_no}" if step_no > 0 else f"epoch {epoch}"
    raise SubtuneError(f"training diverged at {where} (loss {loss:g}); lower {{param}} (it was {cfg.lr:g})",
                       param="lr")


def _check_finite(tuned: dict, model: TaskModel) -> None:
    """Never hand out a task whose weights hold NaN or inf (a task file must be loadable and sane)."""
    for where, module in [*tuned.items(), ("head", model.head)]:
        for pname, p in module.state_dict().items():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise SubtuneError(f"training produced non-finite weights in {where}.{pname}; lower {{param}}",
                                   param="lr")
