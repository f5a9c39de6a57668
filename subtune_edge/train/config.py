"""How a run trains: :class:`TrainConfig`, the device it runs on and its mixed precision.

A config is written by a user with most fields left ``None``; :meth:`TrainConfig.resolve` fills
them in once from the model, the mode and the device (the paper's recipe), and the resolved config
is what a task file records. Bad values are refused when the config is made, naming the field, so
a run never starts with a learning rate that cannot train.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from ..backbone import Backbone
from ..data import TaskData
from ..docs import documented
from ..errors import SubtuneError


def run_mode(units: list[str] | tuple[str, ...], all_units: list[str] | None = None, siamese: bool = False) -> str:
    """The name a run is recorded under; the run log's keys and the task file's record use it.

    Args:
        units: the tuned units.
        all_units: every unit of the backbone, to tell full finetuning from SubTuning; ``None``
            when unknown (then a run of every unit is still called ``subtune``).
        siamese: whether the head sees tuned and frozen features.

    Returns:
        ``linear-probe`` (no unit), ``siamese``, ``full-finetune`` (every unit) or ``subtune``.
    """
    if not units:
        return "linear-probe"
    if siamese:
        return "siamese"
    if all_units is not None and list(units) == list(all_units):
        return "full-finetune"
    return "subtune"


def _help(text: str) -> dict:
    return {"help": text}


@documented
@dataclass(frozen=True)
class TrainConfig:
    """How to train; ``None`` fields are filled by :meth:`resolve` from the model, mode and device.

    Raises:
        SubtuneError: a field outside its range (``param`` names the field).
    """

    epochs: int = field(default=10, metadata=_help("Passes over the training split."))
    batch_size: int | None = field(default=None, metadata=_help("Default: 256 on CUDA (paper), 32 on CPU."))
    lr: float | None = field(default=None, metadata=_help("Default: 1e-2 linear probe, 1e-3 CNN, 1e-4 ViT (paper)."))
    weight_decay: float | None = field(default=None, metadata=_help("AdamW weight decay. Default: 1e-2 CNN and "
                                                                    "linear probe, 5e-5 ViT."))
    warmup: float = field(default=0.1, metadata=_help("Fraction of all steps with a linear warm-up."))
    label_smoothing: float = field(default=0.0, metadata=_help("Cross-entropy label smoothing, in [0, 1)."))
    seed: int = field(default=0, metadata=_help("Seeds the head, the shuffling and the augmentation."))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N."))
    amp: bool | None = field(default=None, metadata=_help("Mixed precision; default on CUDA."))
    channels_last: bool | None = field(default=None, metadata=_help("Default: on CUDA for CNNs."))
    augment: bool | None = field(default=None, metadata=_help("RandomResizedCrop + flip; default: the "
                                                              "dataset's choice."))
    prefix_cache: bool = field(default=True, metadata=_help("Cache frozen-prefix outputs of deterministic inputs."))
    cache_max_bytes: int = field(default=2 << 30, metadata=_help("Most bytes one cached prefix may take."))
    cache_whole_set: float = field(default=4.0, metadata=_help(
        "Cache the whole set a split was cut from if it is at most this many times larger."))
    num_workers: int | None = field(default=None, metadata=_help("Loader workers; 0 on CPU, 4 on CUDA."))
    select: str = field(default="final", metadata=_help(
        "Which validation accuracy a search compares: final | best."))

    def __post_init__(self):
        def refuse(name: str, expected: str):
            raise SubtuneError(f"{{param}} must be {expected}, got {getattr(self, name)!r}", param=name)

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            refuse("epochs", "an integer of at least 1")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            refuse("batch_size", "a positive integer")
        if self.lr is not None and not (number(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            refuse("lr", "a positive, finite number (for example 1e-3)")
        if self.weight_decay is not None and not (number(self.weight_decay) and math.isfinite(self.weight_decay)
                                                  and self.weight_decay >= 0):
            refuse("weight_decay", "a finite number of at least 0")
        if not (number(self.warmup) and 0 <= self.warmup <= 1):
            refuse("warmup", "a fraction in [0, 1]")
        if not (number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            refuse("label_smoothing", "a number in [0, 1)")
        if self.select not in ("final", "best"):
            refuse("select", "'final' or 'best'")

    def resolve(self, backbone: Backbone, units: list[str] | tuple[str, ...], data: TaskData | None = None
                ) -> TrainConfig:
        """A copy with every default filled in for this model, this set of units and this device.

        Args:
            backbone: the model trained (its family picks the CNN or ViT recipe).
            units: the tuned units (none: the linear-probe recipe).
            data: the data set, whose kind chooses the augmentation default.

        Returns:
            A config without ``None`` fields and with a concrete device.

        Raises:
            SubtuneError: the device is unknown or not available.
        """
        device = resolve_device(self.device)
        cuda = device.startswith("cuda")
        transformer = backbone.family_record.transformer
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
        """The config as JSON, as the task file's training record and the run log store it."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """The config a :meth:`to_json` wrote; keys this version does not know are ignored.

        Raises:
            SubtuneError: a stored field is out of range.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str | None) -> str:
    """``auto`` becomes CUDA when torch sees one, else CPU; a device that cannot run is refused.

    Raises:
        SubtuneError: an unknown device, or CUDA without a CUDA device (``param="device"``).
    """
    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SubtuneError(f"{{param}} {device} asked for, but torch sees no CUDA device; use {{param}} cpu",
                           param="device")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SubtuneError(f"unknown {{param}} '{device}'; use cpu, cuda or cuda:N", param="device")
    return device


def amp_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """bf16 where the device supports it, else fp16 (CUDA only); None without mixed precision."""
    if not cfg.amp:
        return None
    if cfg.device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def device_name(device: str) -> str:
    """What a record says the run ran on: the GPU's name, or the CPU architecture and threads."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
