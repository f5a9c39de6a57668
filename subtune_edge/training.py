"""One training run: linear probe, SubTuning(S), full finetuning or Siamese SubTuning.

A run trains a :class:`~subtune_edge.multitask.TaskModel`: copies of the units in S and a new
linear head receive gradients; every other unit is the backbone's own module, frozen and kept in
``eval()`` (frozen BatchNorm statistics). The frozen prefix before the first tuned unit runs under
``torch.no_grad()``, so a step costs the prefix's forward plus the branch's forward and backward.
Without augmentation, the prefix's outputs are deterministic and are computed once (the *prefix
cache*), after which an epoch costs only the branch. The validation split is always deterministic,
so its prefix is cached whenever the cache is on.

The recipe follows the paper's code: AdamW, a cosine schedule (here per step, after a linear
warm-up), lr 1e-3 for CNNs / 1e-4 for ViTs and 1e-2 for a linear probe, weight decay 1e-2 / 5e-5,
RandomResizedCrop + flip. On CUDA: mixed precision (bf16 where supported, else fp16 with a
gradient scaler), channels_last and pinned-memory loaders.

:class:`TrainConfig` is resolved once (defaults that depend on the model, the mode and the device
are filled in) and recorded in the task file with the run's history. :class:`RunSpec` and
:class:`RunResult` are the plain, picklable form of a run that executors ship to other processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, BackboneSpec, load_backbone
from .data import DataSpec, ImageSet, TaskData, load_data, spec_key
from .errors import SubtuneError
from .multitask import TaskModel
from .task import Task, make_task

# event name, details: "start" (mode, units, epochs, steps per epoch, prefix cache), "epoch" (a
# history row), "end" (the record). Library code never prints; the CLI renders these.
Callback = Callable[[str, dict], None]

TRANSFORMER_FAMILIES = ("vit",)


def run_mode(units: list[str] | tuple[str, ...], all_units: list[str] | None = None, siamese: bool = False) -> str:
    """'linear-probe' (no unit), 'full-finetune' (every unit), 'siamese', or 'subtune'."""
    if not units:
        return "linear-probe"
    if siamese:
        return "siamese"
    if all_units is not None and list(units) == list(all_units):
        return "full-finetune"
    return "subtune"


@dataclass(frozen=True)
class TrainConfig:
    """How to train; ``None`` fields are filled by :meth:`resolve` from the model, mode and device."""

    epochs: int = 10
    batch_size: int | None = None        # 256 on CUDA (paper), 32 on CPU
    lr: float | None = None              # 1e-2 linear probe; 1e-3 CNN / 1e-4 ViT otherwise
    weight_decay: float | None = None    # 1e-2 CNN and linear probe / 5e-5 ViT
    warmup: float = 0.1                  # fraction of all steps with a linear warm-up
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: bool | None = None              # mixed precision; default on CUDA
    channels_last: bool | None = None    # default on CUDA for CNNs
    augment: bool | None = None          # RandomResizedCrop + flip; default: the dataset's choice
    prefix_cache: bool = True            # cache frozen-prefix outputs of deterministic inputs
    cache_max_bytes: int = 2 << 30
    cache_whole_set: float = 4.0         # cache the whole set a split was cut from if at most this many times larger
    num_workers: int | None = None       # loader workers; 0 on CPU, 4 on CUDA
    select: str = "final"                # which validation accuracy a search compares: final | best

    def resolve(self, backbone: Backbone, units: list[str] | tuple[str, ...], data: TaskData | None = None
                ) -> TrainConfig:
        """A copy with every default filled in for this model, this set of units and this device."""
        if self.epochs < 1:
            raise SubtuneError(f"epochs must be at least 1, got {self.epochs}")
        if self.select not in ("final", "best"):
            raise SubtuneError(f"select must be 'final' or 'best', got '{self.select}'")
        device = resolve_device(self.device)
        cuda = device.startswith("cuda")
        transformer = backbone.family in TRANSFORMER_FAMILIES
        probe = not units
        lr = self.lr if self.lr is not None else (1e-2 if probe else 1e-4 if transformer else 1e-3)
        wd = self.weight_decay if self.weight_decay is not None else (5e-5 if transformer and not probe else 1e-2)
        augment = self.augment if self.augment is not None else (data.augment_default if data else True)
        return replace(
            self, device=device, lr=lr, weight_decay=wd, augment=augment,
            batch_size=self.batch_size or (256 if cuda else 32),
            amp=self.amp if self.amp is not None else cuda,
            channels_last=self.channels_last if self.channels_last is not None else (cuda and not transformer),
            num_workers=self.num_workers if self.num_workers is not None else (4 if cuda else 0))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str) -> str:
    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SubtuneError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SubtuneError(f"unknown device '{device}'; use cpu, cuda or cuda:N")
    return device


def amp_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """bf16 where the device supports it, else fp16 (CUDA only); None without mixed precision."""
    if not cfg.amp:
        return None
    if cfg.device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


# -- the optimisation step ----------------------------------------------------------------------
def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class TrainStep:
    """One optimisation step of a :class:`TaskModel`: the training loop and the step-time benchmarks
    both run this, so what is timed is what trains.

    ``step(x, y)`` runs the frozen prefix (no grad) and the branch; ``step(None, y, h=prefix)`` runs
    only the branch on cached prefix outputs.
    """

    def __init__(self, model: TaskModel, cfg: TrainConfig, total_steps: int):
        self.model, self.cfg = model, cfg
        self.device = torch.device(cfg.device)
        self.dtype = amp_dtype(cfg)
        params = [p for m in model.trainable_modules().values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(round(cfg.warmup * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(total_steps, warmup))
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.forward_prefix(self.to_device(x))

    def __call__(self, x: torch.Tensor | None, y: torch.Tensor, h: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns (loss, logits), both detached."""
        y = y.to(self.device, non_blocking=True)
        with self.autocast():
            if h is None:
                h = self.model.forward_prefix(self.to_device(x))
            logits = self.model.forward_branch(h)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


# -- the prefix cache ------------------------------------------------------------------------------
class PrefixCache:
    """Frozen-prefix outputs of deterministic inputs, least recently used first out.

    A key names everything the outputs depend on: the frozen weights (fingerprint), the branch
    point, the images, the transform, the device and the precision. Runs in one process (a
    profile, a greedy search) share it, so runs that branch at the same unit compute the prefix
    once between them.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> torch.Tensor | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > 1 and self.bytes > self.max_bytes:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


PREFIX_CACHE = PrefixCache()


def _loader(dataset: ImageSet, batch_size: int, cfg: TrainConfig, batch_sampler=None,
            persistent: bool = False) -> torch.utils.data.DataLoader:
    workers = min(int(cfg.num_workers or 0), max(1, len(dataset) // max(1, batch_size)))
    kwargs = dict(num_workers=workers, pin_memory=cfg.device.startswith("cuda"),
                  persistent_workers=persistent and workers > 0)
    if workers:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


def split_batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one sample joins the one before (BatchNorm in train
    mode cannot normalise a single sample)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()  # popped first: the batch it joins is then the last one
        batches[-1] = torch.cat([batches[-1], last])
    return batches


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in split_batches(self.n, self.batch_size, self.generator)])

    def __len__(self) -> int:
        return len(split_batches(self.n, self.batch_size, None))


def compute_prefix(step: TrainStep, dataset: ImageSet, cfg: TrainConfig) -> torch.Tensor:
    """Prefix outputs of every sample of ``dataset``, in order, on the training device."""
    return torch.cat([step.prefix(x) for x, _ in _loader(dataset, 2 * cfg.batch_size, cfg)])


def _prefix_bytes(step: TrainStep, dataset: ImageSet) -> int:
    x, _ = dataset[0]
    h = step.prefix(x.unsqueeze(0))
    return h.numel() * h.element_size() * len(dataset)


def _cached_prefix(step: TrainStep, dataset: ImageSet, cfg: TrainConfig, backbone: Backbone, data: TaskData,
                   cache: PrefixCache) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """(prefix outputs and targets of ``dataset``, or None, and why)."""
    common = (backbone.fingerprint, json.dumps(backbone.spec.to_json(), sort_keys=True), step.model.first,
              json.dumps(data.data_config, sort_keys=True, default=str), cfg.device, str(step.dtype),
              bool(cfg.channels_last))
    targets = torch.as_tensor(dataset.targets, device=step.device)
    limit = min(cfg.cache_max_bytes, cache.max_bytes)
    base = dataset.base
    if base is not None:
        key = (*common, base.key)
        h = cache.get(key)
        reason = "reused"
        # the whole set serves every split, fold and sample size cut from it with one computation;
        # worth it unless the split is a small part of it (cfg.cache_whole_set)
        if h is None and len(base) <= cfg.cache_whole_set * len(dataset):
            whole = base.with_transform(dataset.transform)
            if _prefix_bytes(step, whole) <= limit:
                h, reason = compute_prefix(step, whole, cfg), f"computed for all {len(base)} images"
                cache.put(key, h)
        if h is not None:
            return (h[torch.as_tensor(dataset.base_indices, device=h.device)], targets), reason
    key = (*common, dataset.key)
    h = cache.get(key)
    if h is not None:
        return (h, targets), "reused"
    need = _prefix_bytes(step, dataset)
    if need > limit:
        return None, f"too large ({need / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB)"
    h = compute_prefix(step, dataset, cfg)
    cache.put(key, h)
    return (h, targets), "computed"


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(step: TrainStep, data: ImageSet | torch.utils.data.DataLoader | None, cfg: TrainConfig,
             cached: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) of the model on a dataset or loader, or on cached prefix outputs."""
    model = step.model
    was_training = model.training
    model.eval()
    total = 0
    loss_sum = torch.zeros((), device=step.device)
    correct = torch.zeros((), dtype=torch.long, device=step.device)
    batches: Iterator
    if cached is not None:
        h_all, y_all = cached
        bs = 2 * cfg.batch_size
        batches = ((None, y_all[i:i + bs], h_all[i:i + bs]) for i in range(0, len(y_all), bs))
    else:
        loader = data if isinstance(data, torch.utils.data.DataLoader) else _loader(data, 2 * cfg.batch_size, cfg)
        batches = ((x, y, None) for x, y in loader)
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
    return (int(correct) / total if total else 0.0), (float(loss_sum) / total if total else 0.0)


# -- one run -------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    task: Task
    model: TaskModel
    record: dict

    @property
    def accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        return self.record["val_accuracy"]

    @property
    def best_accuracy(self) -> float:
        return self.record["best_val_accuracy"]


def check_units(backbone: Backbone, units: list[str] | tuple[str, ...], siamese: bool) -> list[str]:
    for u in units:
        backbone.unit_index(u)  # raises naming the units the backbone has
    if siamese and not units:
        raise SubtuneError("Siamese SubTuning needs at least one tuned unit (its head compares tuned and frozen "
                           "features); pass --blocks or drop --siamese")
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


def train(backbone: Backbone, data: TaskData, units: list[str] | tuple[str, ...], config: TrainConfig | None = None,
          *, siamese: bool = False, name: str = "task", callback: Callback | None = None,
          cache: PrefixCache | None = None) -> TrainResult:
    """Train a new head and copies of ``units`` on ``data``; the backbone's own weights never change.

    ``units`` empty is a linear probe, all units is full finetuning (the stem stays frozen, as
    everywhere in subtune-edge). The backbone's modules are moved to the training device.
    """
    units = check_units(backbone, units, siamese)
    cfg = (config or TrainConfig()).resolve(backbone, units, data)
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
        steps_per_epoch = len(split_batches(n, cfg.batch_size, None))
        step = TrainStep(model, cfg, cfg.epochs * steps_per_epoch)
        model.eval()

        t_cache = time.perf_counter()
        cache_info = {"train": False, "val": False}
        train_cached = val_cached = None
        if cfg.prefix_cache:
            val_cached, cache_info["val_reason"] = _cached_prefix(step, val_set, cfg, backbone, data, cache)
            cache_info["val"] = val_cached is not None
            if not cfg.augment:
                train_cached, cache_info["train_reason"] = _cached_prefix(step, train_set, cfg, backbone, data, cache)
                cache_info["train"] = train_cached is not None
            else:
                cache_info["train_reason"] = "augmentation is on"
        cache_info["seconds"] = time.perf_counter() - t_cache

        gen = torch.Generator().manual_seed(cfg.seed)
        loader = None if train_cached is not None else _loader(
            train_set, cfg.batch_size, cfg, batch_sampler=_EpochSampler(n, cfg.batch_size, gen), persistent=True)
        val_loader = None if val_cached is not None else _loader(val_set, 2 * cfg.batch_size, cfg, persistent=True)
        callback("start", {"mode": mode, "units": units, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch,
                           "prefix_cache": dict(cache_info)})
        history: list[dict] = []
        step_seconds = 0.0
        cuda = cfg.device.startswith("cuda")
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            # accumulated on the device: no host sync per step
            loss_sum = torch.zeros((), device=step.device)
            correct = torch.zeros((), dtype=torch.long, device=step.device)
            seen = 0
            if train_cached is not None:
                h_all, y_all = train_cached
                batches = ((None, y_all[idx.to(y_all.device)], h_all[idx.to(h_all.device)])
                           for idx in split_batches(n, cfg.batch_size, gen))
            else:
                batches = ((x, y, None) for x, y in loader)
            t_steps = time.perf_counter()
            for x, y, h in batches:
                loss, logits = step(x, y, h)
                y = y.to(step.device, non_blocking=True)
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            if cuda:
                torch.cuda.synchronize(step.device)
            step_seconds += time.perf_counter() - t_steps  # with data loading, as a user waits for it
            lr = step.lr
            val_acc, val_loss = evaluate(step, val_loader, cfg, val_cached)
            row = {"epoch": epoch, "train_loss": float(loss_sum) / max(seen, 1),
                   "train_accuracy": int(correct) / max(seen, 1),
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
                   "seconds": time.perf_counter() - t_epoch}
            history.append(row)
            callback("epoch", dict(row, epochs=cfg.epochs))
        model.eval()

    return finish_run(name, backbone, data, model, units, siamese, mode, cfg, history, step=step,
                      train_set=train_set, val_set=val_set, cache_info=cache_info, t_start=t_start,
                      step_seconds=step_seconds, steps_per_epoch=steps_per_epoch, callback=callback)


def finish_run(name: str, backbone: Backbone, data: TaskData, model: TaskModel, units: list[str], siamese: bool,
               mode: str, cfg: TrainConfig, history: list[dict], *, step: TrainStep, train_set: ImageSet,
               val_set: ImageSet, cache_info: dict, t_start: float, step_seconds: float, steps_per_epoch: int,
               callback: Callback, extra: dict | None = None,
               tuned: dict[str, nn.Module] | None = None) -> TrainResult:
    """The run's record and its task file, the same for one process and for a distributed run."""
    best = max(history, key=lambda r: r["val_accuracy"])
    record = {
        "mode": mode, "units": units, "siamese": siamese, "epochs": cfg.epochs,
        "samples": len(train_set), "val_samples": len(val_set),
        "val_accuracy": history[-1]["val_accuracy"], "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"], "history": history,
        "config": cfg.to_json(), "data": data.describe(), "device": device_name(cfg.device),
        "amp_dtype": str(step.dtype).replace("torch.", "") if step.dtype else None,
        "prefix_cache": cache_info, "seconds": time.perf_counter() - t_start,
        "step_seconds_mean": step_seconds / max(1, cfg.epochs * steps_per_epoch),
        "trainable_params": sum(p.numel() for m in model.trainable_modules().values() for p in m.parameters()),
        **(extra or {}),
        "versions": {"torch": torch.__version__, "timm": _timm_version()},
    }
    if tuned is None:
        tuned = {u: model.units[backbone.unit_index(u)] for u in units}
    task = make_task(name, backbone, tuned, model.head, labels=data.labels, preprocessing=data.data_config,
                     siamese=siamese, training=record)
    callback("end", record)
    return TrainResult(task, model, record)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _timm_version() -> str:
    import timm

    return timm.__version__


# -- runs as plain data, for executors -----------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run as plain data: what a profile or a search asks an executor to run."""

    backbone: BackboneSpec
    data: DataSpec
    units: tuple[str, ...]
    config: TrainConfig
    siamese: bool = False

    @property
    def key(self) -> str:
        """Unit set + seed + fold + mode: what a run log is indexed by."""
        mode = run_mode(self.units, None, self.siamese and bool(self.units))
        return f"{mode}|{'+'.join(self.units) or '-'}|seed={self.config.seed}|fold={self.data.fold}"

    def context(self) -> dict:
        """Everything but the unit set, seed and fold: runs in one log must agree on it."""
        neutral = replace(self.config, seed=0, device="auto", prefix_cache=True, cache_max_bytes=0, cache_whole_set=0,
                          num_workers=None)
        return {"backbone": self.backbone.to_json(), "data": self.data.with_fold(None).to_json(),
                "config": neutral.to_json()}


@dataclass
class RunResult:
    """What a run reports back: plain JSON-able values only."""

    key: str
    units: list[str]
    mode: str
    seed: int
    fold: int | None
    accuracy: float            # the one a search compares (config.select)
    final_accuracy: float
    best_accuracy: float
    seconds: float
    device: str
    epochs: int
    train_samples: int
    val_samples: int
    prefix_cache: bool
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Per-process caches so a worker builds each backbone and dataset once for all its runs.
_BACKBONES: dict[str, Backbone] = {}
_DATA: dict[str, TaskData] = {}


def get_backbone(spec: BackboneSpec) -> Backbone:
    key = json.dumps(spec.to_json(), sort_keys=True)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(spec)
    return _BACKBONES[key]


def get_data(spec: DataSpec, data_config: dict) -> TaskData:
    key = spec_key(spec, data_config)
    if key not in _DATA:
        _DATA[key] = load_data(spec, data_config)
    return _DATA[key]


def execute_run(spec: RunSpec, device: str | None = None, callback: Callback | None = None) -> RunResult:
    """Run ``spec`` in this process (on ``device`` if given) and report plain results."""
    backbone = get_backbone(spec.backbone)
    data = get_data(spec.data, backbone.data_config)
    cfg = replace(spec.config, device=device) if device and device != "auto" else spec.config
    units = list(spec.units)
    result = train(backbone, data, units, cfg, siamese=spec.siamese and bool(units), callback=callback)
    r = result.record
    return RunResult(
        key=spec.key, units=units, mode=r["mode"], seed=cfg.seed, fold=spec.data.fold,
        accuracy=r["best_val_accuracy"] if cfg.select == "best" else r["val_accuracy"],
        final_accuracy=r["val_accuracy"], best_accuracy=r["best_val_accuracy"], seconds=r["seconds"],
        device=r["device"], epochs=r["epochs"], train_samples=r["samples"], val_samples=r["val_samples"],
        prefix_cache=bool(r["prefix_cache"]["train"]),
        history=[{k: v for k, v in h.items() if k in ("epoch", "train_loss", "val_accuracy")} for h in r["history"]])


def unit_module(model: TaskModel, unit: str) -> nn.Module:
    return model.units[model.unit_names.index(unit)]
