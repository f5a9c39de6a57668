"""Scoring unit sets by training runs: what every profile and greedy search is made of.

A :class:`SearchSetup` says what every run shares (backbone, data, training config, seeds, k-fold);
a unit set is scored by the mean validation accuracy of its runs over seeds and folds. Runs go
through an :class:`~subtune_edge.search.executor.Executor` and are recorded one by one in a
:class:`~subtune_edge.search.runlog.RunLog`, so a search that is interrupted resumes where it
stopped and never trains the same (units, seed, fold, mode) twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..backbone import Backbone, BackboneSpec
from ..data import DataSpec
from ..errors import SubtuneError
from ..io import jsonable
from ..progress import Progress, emit
from ..prune import PruneConfig
from ..train.config import TrainConfig, run_mode
from ..train.runs import RunResult, RunSpec, execute_run, get_backbone
from .executor import Executor, LocalExecutor, RunFn
from .runlog import RunLog, run_all


@dataclass(frozen=True)
class SearchSetup:
    """What every run of a profile or search shares; a unit set's score averages seeds x folds.

    Raises:
        SubtuneError: no seed, or a fold count of 1 or below 0 (``param="folds"``).
    """

    backbone: BackboneSpec
    data: DataSpec
    config: TrainConfig = TrainConfig()
    siamese: bool = False
    seeds: tuple[int, ...] = (0,)
    folds: int = 0                       # k-fold over the training split; 0 or 1: the validation split
    prune: PruneConfig | None = None     # how pruned runs prune (their ratio is the set's); None: defaults

    def __post_init__(self):
        if not self.seeds:
            raise SubtuneError("give at least one seed")
        if self.folds < 0 or self.folds == 1:
            raise SubtuneError(f"k-fold validation needs at least 2 folds, got {self.folds}; pass 0 as {{param}} "
                               "to use the validation split", param="folds")

    def specs(self, units: tuple[str, ...], store: str | os.PathLike | None = None, prune: float = 0.0
              ) -> list[RunSpec]:
        """The runs that score ``units``: one per seed and fold.

        Args:
            units: the unit set.
            store: a folder where validation-split runs keep their task files (:func:`store_path`),
                so that a final training with the same settings reuses them.
            prune: the share of channels the runs prune after training (0: none).
        """
        folds = list(range(self.folds)) if self.folds else [None]
        data = replace(self.data, folds=self.folds) if self.folds else self.data
        pruning = replace(self.prune or PruneConfig(), ratio=prune) if prune and units else None
        specs = [RunSpec(self.backbone, data.with_fold(f), tuple(units), replace(self.config, seed=s),
                         self.siamese and bool(units), pruning)
                 for s in self.seeds for f in folds]
        if store is None or self.folds:
            return specs
        return [replace(sp, task_path=str(store_path(store, sp))) for sp in specs]

    def context(self) -> dict:
        """What a run log written for this setup must agree on."""
        data = replace(self.data, folds=self.folds) if self.folds else self.data
        out = RunSpec(self.backbone, data, (), self.config, False).context() | {"siamese": self.siamese}
        if self.prune is not None:
            out["prune"] = {k: v for k, v in self.prune.to_json().items() if k != "ratio"}
        return out


def run_fn(executor: Executor, progress: Progress | None) -> RunFn:
    """:func:`execute_run`, told ``progress`` where the executor runs in this process (it does not pickle)."""
    if progress is not None and isinstance(executor, LocalExecutor):
        return functools.partial(execute_run, progress=progress)
    return execute_run


def store_path(store: str | os.PathLike, spec: RunSpec) -> Path:
    """Where a run's task is kept in a task store: its key and a digest of its settings, as a file name.

    The digest (backbone, data, training config) keeps runs of different tasks or settings that
    share a key (the same units and seed) apart, so one store can serve several searches.
    """
    digest = hashlib.sha256(json.dumps(jsonable(spec.context()), sort_keys=True).encode()).hexdigest()[:12]
    return Path(store) / (re.sub(r"[^A-Za-z0-9._-]+", "_", spec.key).strip("_") + f"_{digest}.safetensors")


@dataclass
class SetScore:
    """The score of one unit set: mean and spread of validation accuracy over its runs."""

    units: list[str]
    mode: str
    mean: float
    std: float
    min: float
    max: float
    runs: int
    seconds: float
    prune: float = 0.0

    def to_json(self) -> dict:
        """The score as profiles and greedy reports store it."""
        return asdict(self)


def _score(units: tuple[str, ...], mode: str, results: list[dict], prune: float = 0.0) -> SetScore:
    acc = np.array([r["accuracy"] for r in results], dtype=float)
    return SetScore(list(units), mode, float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    float(acc.min()), float(acc.max()), len(acc), float(sum(r["seconds"] for r in results)), prune)


class Evaluator:
    """Scores unit sets by training runs through an executor, logging every run.

    Args:
        setup: what the runs share.
        executor: where runs go (default: this process).
        log: the run log (default: in memory).
        progress: told ``search`` events with data ``event="run"`` (``result``: the run's JSON,
            ``reused``: taken from the log) and, with a local executor, each run's ``train`` events.
        store: a folder where validation-split runs keep their tasks (see
            :func:`~subtune_edge.search.chosen.train_chosen`); default: they keep none.
    """

    def __init__(self, setup: SearchSetup, executor: Executor | None = None, log: RunLog | None = None,
                 progress: Progress | None = None, store: str | os.PathLike | None = None):
        self.setup = setup
        self.store = store
        self.executor = executor or LocalExecutor(setup.config.device)
        self.log = log if log is not None else RunLog(None, setup.context())
        self.progress = progress
        self.backbone: Backbone = get_backbone(setup.backbone)
        self.fn = run_fn(self.executor, progress)
        self._logged_before = set(self.log.runs)
        self._ran: set[str] = set()
        self._reused: set[str] = set()
        self._seconds: dict[str, float] = {}

    @property
    def new_runs(self) -> int:
        """Runs trained by this evaluator."""
        return len(self._ran)

    @property
    def run_seconds(self) -> float:
        """Training time of the distinct runs this evaluator scored with, as each run recorded it when it ran.

        A resumed search counts the runs it took from the log at the time they took then: the cost
        of the result, not of this invocation.
        """
        return float(sum(self._seconds.values()))

    @property
    def reused_runs(self) -> int:
        """Distinct runs taken from the log as it was when the evaluator started (a resumed search)."""
        return len(self._reused)

    def score_many(self, sets: list[tuple[str, ...]], prune: list[float] | None = None) -> list[SetScore]:
        """Scores of ``sets``, in order; their runs go to the executor together.

        Args:
            sets: the unit sets.
            prune: per set, the share of channels its runs prune (default: none prune).
        """
        sets = [tuple(self.order(u)) for u in sets]
        ratios = list(prune) if prune is not None else [0.0] * len(sets)
        ratios = [r if u else 0.0 for u, r in zip(sets, ratios)]
        specs_per_set = [self.setup.specs(u, self.store, r) for u, r in zip(sets, ratios)]

        def on_result(spec: RunSpec, data: dict, reused: bool) -> None:
            key = data["key"]
            self._seconds[key] = float(data["seconds"])
            if not reused:
                self._ran.add(key)
            elif key in self._logged_before and key not in self._reused:
                self._reused.add(key)
            else:
                return  # a run this search already reported
            units = ",".join(data["units"]) or "(linear probe)"
            emit(self.progress, "search", f"{units}: {100 * data['accuracy']:.1f}%", event="run", key=key,
                 result=data, reused=reused)

        results = run_all(self.executor, self.fn, [s for specs in specs_per_set for s in specs], self.log,
                          key=lambda s: s.key, to_json=RunResult.to_json, on_result=on_result)
        names = self.backbone.unit_names
        return [_score(u, run_mode(u, names, self.setup.siamese), [results[s.key] for s in specs], r)
                for u, specs, r in zip(sets, specs_per_set, ratios)]

    def score(self, units: tuple[str, ...], prune: float = 0.0) -> SetScore:
        """The score of one unit set (pruned by ``prune`` after training)."""
        return self.score_many([units], [prune])[0]

    def order(self, units) -> list[str]:
        """``units`` in model order."""
        chosen = set(units)
        return [u for u in self.backbone.unit_names if u in chosen]
