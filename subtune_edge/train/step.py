"""The optimisation step: the training loop and the step-time benchmarks both run this, so what is
timed is what trains, and one process and a DDP group step the same way."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..multitask import TaskModel
from .config import TrainConfig, amp_dtype


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up, then the paper's cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class TrainStep:
    """One AdamW step of a :class:`TaskModel` (cosine schedule, a gradient scaler under fp16).

    ``step(x, y)`` runs the frozen prefix (no grad) and the branch; ``step(None, y, h=prefix)`` runs
    only the branch on cached prefix outputs.

    Args:
        model: the task model; only its trainable modules are optimised.
        cfg: a resolved config.
        total_steps: steps of the whole run (the schedule's length).
        branch: what runs the branch on prefix outputs; default ``model.forward_branch``. A DDP
            world passes its wrapped module (same parameters), so gradients are averaged.
        world_size: processes sharing each global batch; with more than one, the loss of a slice is
            scaled so that the averaged gradient is that of the global batch's mean.
    """

    def __init__(self, model: TaskModel, cfg: TrainConfig, total_steps: int,
                 branch: Callable[[torch.Tensor], torch.Tensor] | None = None, world_size: int = 1):
        self.model, self.cfg = model, cfg
        self.device = torch.device(cfg.device)
        self.dtype = amp_dtype(cfg)
        self.branch = branch if branch is not None else model.forward_branch
        self.world_size = world_size
        params = [p for m in model.trainable_modules().values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(round(cfg.warmup * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(total_steps, warmup))
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        """Mixed precision when the config asks for it, else nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the training device, channels-last when the config asks for it."""
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's outputs for ``x`` (what the prefix cache stores)."""
        with self.autocast():
            return self.model.forward_prefix(self.to_device(x))

    def __call__(self, x: torch.Tensor | None, y: torch.Tensor, h: torch.Tensor | None = None,
                 global_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step.

        Args:
            x: images, or ``None`` with ``h``.
            y: targets of this process's samples.
            h: cached prefix outputs instead of ``x``.
            global_n: samples in the global batch this slice belongs to (DDP); default this batch.

        Returns:
            (mean loss over this process's samples, logits), both detached.
        """
        y = y.to(self.device, non_blocking=True)
        with self.autocast():
            if h is None:
                h = self.model.forward_prefix(self.to_device(x))
            logits = self.branch(h)
            if self.world_size == 1:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
                reported = loss
            else:
                loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing,
                                           reduction="sum")
                loss = loss_sum * (self.world_size / (global_n or len(y) * self.world_size))
                reported = loss_sum / len(y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return reported.detach(), logits.detach()

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.optimizer.param_groups[0]["lr"])
