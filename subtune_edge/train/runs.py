"""Runs as plain data, for executors: :class:`RunSpec` in, :class:`RunResult` out.

Profiles and searches ship runs to other processes (or a Ray cluster) as picklable specs and get
JSON-able results back; a run log stores the results (``subtune_edge/schema/runlog.schema.json``
says what a log's runs hold, and :class:`~subtune_edge.search.RunLog` checks a log against it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from ..backbone import Backbone, BackboneSpec, load_backbone
from ..data import DataSpec, TaskData, load_data, spec_key
from ..progress import Progress
from ..prune import PruneConfig
from ..task import save_task
from .config import TrainConfig, run_mode
from .loop import train


@dataclass(frozen=True)
class RunSpec:
    """One training run as plain data: what a profile or a search asks an executor to run."""

    backbone: BackboneSpec
    data: DataSpec
    units: tuple[str, ...]
    config: TrainConfig
    siamese: bool = False
    prune: PruneConfig | None = None      # prune the tuned units after training, then finetune
    # where to save the run's task (tuned units + head), so that a final training with the same
    # settings can reuse the run; not part of the key: where a result is kept does not change it
    task_path: str | None = None

    @property
    def key(self) -> str:
        """Unit set + seed + fold + mode (+ the pruning ratio of a pruned run): what a run log is indexed by."""
        mode = run_mode(self.units, None, self.siamese and bool(self.units))
        pruned = f"|prune={self.prune.ratio:g}" if self.prune is not None else ""
        return f"{mode}|{'+'.join(self.units) or '-'}|seed={self.config.seed}|fold={self.data.fold}{pruned}"

    def context(self) -> dict:
        """Everything but the unit set, seed and fold: runs in one log must agree on it."""
        neutral = replace(self.config, seed=0, device="auto", prefix_cache=True, cache_max_bytes=0, cache_whole_set=0,
                          num_workers=None)
        out = {"backbone": self.backbone.to_json(), "data": self.data.with_fold(None).to_json(),
               "config": neutral.to_json()}
        if self.prune is not None:  # how pruned runs prune, but not how much: the ratio is in the key
            out["prune"] = {k: v for k, v in self.prune.to_json().items() if k != "ratio"}
        return out


@dataclass
class RunResult:
    """What a run reports back: plain JSON-able values only (one entry of a run log)."""

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
    prune: float = 0.0                          # the share of channels pruned (0: a full-width run)
    unpruned_accuracy: float | None = None      # a pruned run's last accuracy before pruning

    def to_json(self) -> dict:
        """The result as a run log stores it."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RunResult:
        """A result from its JSON as a run log holds it (checked by the log's reader against
        ``runlog.schema.json``); fields this version does not know are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Per-process caches so a worker builds each backbone and dataset once for all its runs.
_BACKBONES: dict[str, Backbone] = {}
_DATA: dict[str, TaskData] = {}


def get_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone for ``spec``, built once per process."""
    key = json.dumps(spec.to_json(), sort_keys=True)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(spec)
    return _BACKBONES[key]


def get_data(spec: DataSpec, data_config: dict) -> TaskData:
    """The data set for ``spec`` at the backbone's preprocessing, read once per process."""
    key = spec_key(spec, data_config)
    if key not in _DATA:
        _DATA[key] = load_data(spec, data_config)
    return _DATA[key]


def execute_run(spec: RunSpec, device: str | None = None, progress: Progress | None = None) -> RunResult:
    """Run ``spec`` in this process and report plain results.

    Args:
        spec: the run.
        device: where to run (an executor's device); default the spec's own.
        progress: told the run's ``train`` events (local executors only: it does not pickle).

    Returns:
        The run's result, as a run log stores it.
    """
    backbone = get_backbone(spec.backbone)
    data = get_data(spec.data, backbone.data_config)
    cfg = replace(spec.config, device=device) if device and device != "auto" else spec.config
    units = list(spec.units)
    result = train(backbone, data, units, cfg, siamese=spec.siamese and bool(units), prune=spec.prune, name="run",
                   progress=progress)
    if spec.task_path is not None:
        save_task(result.task, spec.task_path)
    r = result.record
    return RunResult(
        key=spec.key, units=units, mode=r.mode, seed=cfg.seed, fold=spec.data.fold,
        accuracy=r.best_val_accuracy if cfg.select == "best" else r.val_accuracy,
        final_accuracy=r.val_accuracy, best_accuracy=r.best_val_accuracy, seconds=r.seconds,
        device=r.device, epochs=r.epochs, train_samples=r.samples, val_samples=r.val_samples,
        prefix_cache=bool(r.prefix_cache["train"]),
        history=[{k: v for k, v in h.items() if k in ("epoch", "train_loss", "val_accuracy", "phase")}
                 for h in r.history],
        prune=spec.prune.ratio if spec.prune is not None else 0.0,
        unpruned_accuracy=result.task.pruned.get("unpruned_val_accuracy") if spec.prune is not None else None)
