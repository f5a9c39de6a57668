"""One SubTuning run on several GPUs (or CPU processes): DistributedDataParallel over what trains.

A SubTuning run trains copies of a few units and a head; the frozen trunk never changes. So only
the trainable part is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
(:class:`TrainableBranch`: the tuned unit copies and the head are its registered modules; the frozen
units are reached through the task model but are not registered, so DDP neither broadcasts nor
all-reduces them, and they stay in ``eval()``). Every process builds the same backbone from the same
weights and reads the data itself.

Each global batch is exactly the batch a one-process run takes (same seed, same shuffled order,
``--batch-size`` is the global batch); process ``r`` of ``W`` trains on the ``r``-th contiguous
slice of it. The loss of a slice is its summed cross-entropy times ``W / global batch``, so the
gradient DDP averages is the gradient of the mean over the global batch: the same update as one
process, up to floating-point order. Validation is sharded and its counts all-reduced.
Two differences to know: BatchNorm layers inside tuned units normalise over each process's slice
(on CUDA they are converted to ``SyncBatchNorm`` by default, which restores one-process statistics;
``SyncBatchNorm`` does not run on CPU), and random augmentation draws differ per process.
A trailing global batch with fewer than 2 samples per process joins the batch before it.

Launch (one process per GPU; rank 0 writes the task file)::

    torchrun --nproc_per_node=4 -m subtune_edge.distributed resnet50 --data ./flowers \\
        --blocks layer4 --name flowers --epochs 10 --batch-size 256
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .data import TaskData
from .errors import SubtuneError
from .multitask import TaskModel
from .training import (
    PREFIX_CACHE,
    Callback,
    PrefixCache,
    TrainConfig,
    TrainResult,
    TrainStep,
    _cached_prefix,
    _loader,
    _seeded,
    check_units,
    evaluate,
    finish_run,
    resolve_device,
    run_mode,
    split_batches,
)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SubtuneError("no process group to join (RANK / WORLD_SIZE unset): launch with `torchrun "
                           "--nproc_per_node=N -m subtune_edge.distributed ...`")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


class TrainableBranch(nn.Module):
    """The trainable part of a :class:`TaskModel` as one module for DDP: tuned unit copies and the head
    are registered; the frozen units are used through the task model but not registered."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.trainable = nn.ModuleDict({n.replace(".", "__"): m for n, m in model.trainable_modules().items()})
        self._task = (model,)  # a tuple hides the task model (and its frozen units) from DDP

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._task[0].forward_branch(h)


class DDPStep(TrainStep):
    """:class:`TrainStep` on a slice of each global batch, gradients averaged by DDP."""

    def __init__(self, model: TaskModel, cfg: TrainConfig, total_steps: int, ctx: DistContext, sync_bn: bool):
        super().__init__(model, cfg, total_steps)  # the optimiser holds the same parameter objects
        self.ctx = ctx
        branch = TrainableBranch(model)
        if sync_bn:
            # BatchNorm children of the tuned units are replaced in place (same parameters)
            nn.SyncBatchNorm.convert_sync_batchnorm(branch)
        cuda = self.device.type == "cuda"
        self.ddp = nn.parallel.DistributedDataParallel(
            branch, device_ids=[self.device.index or 0] if cuda else None, broadcast_buffers=True)

    def __call__(self, x: torch.Tensor | None, y: torch.Tensor, h: torch.Tensor | None = None,
                 global_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on this process's slice; returns (summed loss of the slice, logits), detached."""
        y = y.to(self.device, non_blocking=True)
        global_n = global_n or len(y) * self.ctx.world_size
        with self.autocast():
            if h is None:
                h = self.model.forward_prefix(self.to_device(x))
            logits = self.ddp(h)
            loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing, reduction="sum")
            loss = loss_sum * (self.ctx.world_size / global_n)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss_sum.detach(), logits.detach()


def global_batches(n: int, batch_size: int, generator: torch.Generator | None, world_size: int
                   ) -> list[torch.Tensor]:
    """The one-process batches (:func:`~subtune_edge.training.split_batches`); a trailing batch with fewer
    than 2 samples per process joins the one before."""
    batches = split_batches(n, batch_size, generator)
    if world_size > 1 and len(batches) > 1 and len(batches[-1]) < 2 * world_size:
        last = batches.pop()
        batches[-1] = torch.cat([batches[-1], last])
    return batches


def shard(idx: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's contiguous slice of a global batch."""
    return torch.tensor_split(idx, ctx.world_size)[ctx.rank]


class _ShardSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, batch_size: int, generator: torch.Generator, ctx: DistContext):
        self.n, self.batch_size, self.generator, self.ctx = n, batch_size, generator, ctx

    def __iter__(self):
        return iter([shard(b, self.ctx).tolist()
                     for b in global_batches(self.n, self.batch_size, self.generator, self.ctx.world_size)])

    def __len__(self) -> int:
        return len(global_batches(self.n, self.batch_size, None, self.ctx.world_size))


def _all_sum(values: list[float], device: torch.device, ctx: DistContext) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if ctx.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def _evaluate_sharded(step: TrainStep, val_set, cfg: TrainConfig, cached, ctx: DistContext) -> tuple[float, float]:
    """Validation accuracy and mean loss over the whole split, each process scoring every W-th sample."""
    if cached is not None:
        h, y = cached
        local = evaluate(step, None, cfg, (h[ctx.rank::ctx.world_size], y[ctx.rank::ctx.world_size]))
        n_local = len(y[ctx.rank::ctx.world_size])
    else:
        idx = list(range(ctx.rank, len(val_set), ctx.world_size))
        local = evaluate(step, _loader(torch.utils.data.Subset(val_set, idx), 2 * cfg.batch_size, cfg), cfg)
        n_local = len(idx)
    correct, loss_sum, total = _all_sum([round(local[0] * n_local), local[1] * n_local, n_local], step.device, ctx)
    return (correct / total if total else 0.0), (loss_sum / total if total else 0.0)


def train_distributed(backbone: Backbone, data: TaskData, units: list[str] | tuple[str, ...],
                      config: TrainConfig | None = None, *, ctx: DistContext, siamese: bool = False,
                      name: str = "task", callback: Callback | None = None, cache: PrefixCache | None = None,
                      sync_bn: bool | None = None) -> TrainResult:
    """:func:`~subtune_edge.training.train` as one process of a DDP group; every process gets the result
    (identical weights), rank 0 is the one to save it. ``sync_bn``: default on CUDA with 2+ processes."""
    units = check_units(backbone, units, siamese)
    config = config or TrainConfig()
    device = resolve_device(config.device)
    if device.startswith("cuda"):
        device = f"cuda:{ctx.local_rank}"
    cfg = replace(config, device=device).resolve(backbone, units, data)
    if cfg.batch_size < 2 * ctx.world_size:
        raise SubtuneError(f"a global batch of {cfg.batch_size} leaves fewer than 2 samples per process on "
                           f"{ctx.world_size} processes; raise --batch-size")
    cuda = cfg.device.startswith("cuda")
    sync_bn = (cuda and ctx.world_size > 1) if sync_bn is None else sync_bn
    if sync_bn and not cuda:
        raise SubtuneError("SyncBatchNorm runs on CUDA only; drop --sync-bn on CPU")
    cache = cache if cache is not None else PREFIX_CACHE
    mode = run_mode(units, backbone.unit_names, siamese)
    callback = callback or (lambda event, info: None)
    t_start = time.perf_counter()
    with _seeded(cfg.seed, cfg.device):
        model = TaskModel.for_training(backbone, units, data.num_classes, siamese=siamese)
        model.to(cfg.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train_set, val_set = data.train_set(cfg.augment), data.val_set()
        n = len(train_set)
        steps_per_epoch = len(global_batches(n, cfg.batch_size, None, ctx.world_size))
        step = DDPStep(model, cfg, cfg.epochs * steps_per_epoch, ctx, sync_bn)
        model.eval()

        cache_info = {"train": False, "val": False}
        train_cached = val_cached = None
        if cfg.prefix_cache:  # every process computes the frozen prefix of the whole split (batches are global)
            val_cached, cache_info["val_reason"] = _cached_prefix(step, val_set, cfg, backbone, data, cache)
            cache_info["val"] = val_cached is not None
            if not cfg.augment:
                train_cached, cache_info["train_reason"] = _cached_prefix(step, train_set, cfg, backbone, data, cache)
                cache_info["train"] = train_cached is not None
            else:
                cache_info["train_reason"] = "augmentation is on"

        gen = torch.Generator().manual_seed(cfg.seed)
        sizes = [len(b) for b in global_batches(n, cfg.batch_size, None, ctx.world_size)]
        loader = None if train_cached is not None else _loader(
            train_set, cfg.batch_size, cfg, batch_sampler=_ShardSampler(n, cfg.batch_size, gen, ctx), persistent=True)
        callback("start", {"mode": mode, "units": units, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch,
                           "prefix_cache": dict(cache_info), "world_size": ctx.world_size})
        history: list[dict] = []
        step_seconds = 0.0
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=step.device)
            correct = torch.zeros((), dtype=torch.long, device=step.device)
            seen = 0
            if train_cached is not None:
                h_all, y_all = train_cached
                batches = ((None, y_all[i.to(y_all.device)], h_all[i.to(h_all.device)])
                           for i in (shard(b, ctx) for b in global_batches(n, cfg.batch_size, gen, ctx.world_size)))
            else:
                batches = ((x, y, None) for x, y in loader)
            t_steps = time.perf_counter()
            for (x, y, h), global_n in zip(batches, sizes):
                loss, logits = step(x, y, h, global_n)
                y = y.to(step.device, non_blocking=True)
                loss_sum += loss
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            if cuda:
                torch.cuda.synchronize(step.device)
            step_seconds += time.perf_counter() - t_steps
            lr = step.lr
            loss_total, correct_total, seen_total = _all_sum([float(loss_sum), int(correct), seen], step.device, ctx)
            val_acc, val_loss = _evaluate_sharded(step, val_set, cfg, val_cached, ctx)
            row = {"epoch": epoch, "train_loss": loss_total / max(seen_total, 1),
                   "train_accuracy": correct_total / max(seen_total, 1),
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
                   "seconds": time.perf_counter() - t_epoch}
            history.append(row)
            callback("epoch", dict(row, epochs=cfg.epochs))
        model.eval()

    tuned = {u: model.units[backbone.unit_index(u)] for u in units}
    if sync_bn:  # the task file holds plain BatchNorm modules
        tuned = {u: _revert_sync_bn(m) for u, m in tuned.items()}
    extra = {"distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "sync_bn": sync_bn,
                             "global_batch": cfg.batch_size}}
    return finish_run(name, backbone, data, model, units, siamese, mode, cfg, history, step=step,
                      train_set=train_set, val_set=val_set, cache_info=cache_info, t_start=t_start,
                      step_seconds=step_seconds, steps_per_epoch=steps_per_epoch, callback=callback,
                      extra=extra, tuned=tuned)


def _revert_sync_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every SyncBatchNorm back to BatchNorm2d (same state)."""
    import copy

    module = copy.deepcopy(module)
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(child.parameters(), child.running_mean).device)
                bn.load_state_dict(child.state_dict())
                bn.train(child.training)
                setattr(parent, child_name, bn)
    return module


# -- the torchrun entry point ------------------------------------------------------------------------
def _command():
    import click

    from .backbone import BackboneSpec, model_args_for_input
    from .commands._options import input_size_option, task_dir_option, weights_option
    from .data import DataSpec
    from .task import save_task
    from .training import get_backbone, get_data

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.argument("model")
    @click.option("--data", "data_source", required=True, metavar="PATH|digits:TARGET",
                  help="Image folder or bundled digits; every process reads it (shared storage).")
    @click.option("--blocks", required=True, metavar="none|all|UNITS",
                  help="Units to tune (comma-separated names / prefixes); none = linear probe, all = full finetuning.")
    @click.option("--name", required=True, help="Task name; rank 0 writes TASK_DIR/NAME.safetensors.")
    @click.option("--siamese", is_flag=True)
    @weights_option
    @input_size_option
    @task_dir_option
    @click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
    @click.option("--batch-size", type=click.IntRange(min=2), default=None,
                  help="Global batch, split over the processes. Default: 256 on CUDA, 32 on CPU.")
    @click.option("--lr", type=float, default=None)
    @click.option("--weight-decay", type=float, default=None)
    @click.option("--augment/--no-augment", default=None)
    @click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True)
    @click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
                  help="cuda: each process takes the GPU of its LOCAL_RANK.")
    @click.option("--backend", type=click.Choice(["nccl", "gloo"]), default=None,
                  help="Default: nccl with CUDA, gloo otherwise.")
    @click.option("--sync-bn/--no-sync-bn", default=None,
                  help="SyncBatchNorm in the tuned units (default: on with CUDA; CUDA only).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--val-fraction", type=float, default=0.2, show_default=True)
    @click.option("--train-samples", type=click.IntRange(min=2), default=None)
    @click.option("--val-samples", type=click.IntRange(min=2), default=None)
    def main(model, data_source, blocks, name, siamese, weights, input_size, task_dir, epochs, batch_size, lr,
             weight_decay, augment, prefix_cache, device, backend, sync_bn, seed, val_fraction, train_samples,
             val_samples):
        """One SubTuning run of MODEL on several GPUs / processes; launch with torchrun.

        \b
        Example:
          torchrun --nproc_per_node=2 -m subtune_edge.distributed resnet50 --data ./flowers \\
              --blocks layer4 --name flowers --epochs 10
        """
        ctx = None
        try:
            if blocks.strip() == "auto":
                raise SubtuneError("--blocks auto is a search of many runs: run it with `subtune-edge tune --blocks "
                                   "auto --executor ray`, then train the chosen units here")
            ctx = init_from_env(backend)
            spec = BackboneSpec(model, weights or "timm", model_args_for_input(model, input_size))
            backbone = get_backbone(spec)
            data = get_data(DataSpec(data_source, tuple(input_size) if input_size else None, val_fraction, 0,
                                     train_samples, val_samples=val_samples), backbone.data_config)
            config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                 augment=augment, prefix_cache=prefix_cache, device=device, seed=seed)
            units = backbone.parse_units(blocks)
            say = (lambda event, info: click.echo(
                f"epoch {info['epoch']}/{info['epochs']}: val acc {100 * info['val_accuracy']:.2f}% "
                f"({info['seconds']:.1f} s)") if event == "epoch" else None) if ctx.is_main else None
            result = train_distributed(backbone, data, units, config, ctx=ctx, siamese=siamese, name=name,
                                       callback=say, sync_bn=sync_bn)
            if ctx.is_main:
                from pathlib import Path

                path = save_task(result.task, Path(task_dir) / name)
                click.echo(f"task '{name}' -> {path}: {result.record['mode']}, val acc "
                           f"{100 * result.accuracy:.2f}% on {ctx.world_size} processes, "
                           f"{result.record['seconds']:.1f} s")
            dist.barrier()
        except SubtuneError as exc:
            if ctx is None or ctx.is_main:
                click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    return main


def main(argv: list[str] | None = None) -> None:
    _command()(args=argv)


if __name__ == "__main__":
    main()
