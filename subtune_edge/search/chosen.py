"""The final training of a chosen unit set, reusing a run already made with the same settings.

A search or a profile on the validation split trains exactly the run that the final training of
its winner would repeat (same units, data, config and seed). Runs made with a task store keep
their task file, so :func:`train_chosen` takes that file instead of training again; a search
scored by k-fold trained on parts of the training split only, so its winner is trained once
more on the whole of it (and that run is logged and stored in turn, so a rerun reuses it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SubtuneError
from ..io import jsonable
from ..progress import Progress
from ..task import Task, load_task
from ..train.runs import RunResult
from .evaluator import SearchSetup, run_fn
from .executor import Executor, LocalExecutor
from .runlog import RunLog, run_all

log = logging.getLogger(__name__)


@dataclass
class ChosenRun:
    """The chosen set's task (named as asked), its run as the log holds it, and whether it was reused."""

    task: Task
    result: dict
    reused: bool


def final_setup(setup: SearchSetup) -> SearchSetup:
    """The setup of a final training: the whole training split, validated on the validation split, first seed."""
    return replace(setup, folds=0, seeds=setup.seeds[:1])


def train_chosen(setup: SearchSetup, units: list[str] | tuple[str, ...], run_log: RunLog, store: str | Path, *,
                 name: str, executor: Executor | None = None, progress: Progress | None = None,
                 prune: float = 0.0) -> ChosenRun:
    """``units`` trained on the whole training split with the setup's first seed, as the task ``name``.

    Args:
        setup: the search's setup (its folds and other seeds are dropped: see :func:`final_setup`).
        units: the chosen units, in model order.
        run_log: the log of validation-split runs for ``final_setup(setup)`` (a profile's, a search's
            without folds); the run is taken from it when its task is in ``store``, else trained and
            recorded there.
        store: the folder of the runs' task files.
        name: the name the task is given.
        executor: where a run that is needed goes (default: this process).
        progress: told the run's ``train`` events (local executor).
        prune: the share of channels the chosen set's run prunes (the search's choice; 0: none).

    Returns:
        The task, the run's logged result and whether it was reused.

    Raises:
        SubtuneError: the run log is for other settings, or the training fails.
    """
    setup = final_setup(setup)
    if run_log.context != jsonable(setup.context()):
        raise SubtuneError("the final training's run log was written for other settings than the search's "
                           "validation-split runs; give it the log of this setup")
    spec = setup.specs(tuple(units), store, prune)[0]
    path = Path(spec.task_path)
    if spec.key in run_log and path.is_file():
        try:
            task = load_task(path)
            ratio = spec.prune.ratio if spec.prune is not None else 0.0
            if list(task.tuned_units) == list(spec.units) and task.prune_ratio == ratio:
                log.info("final training of %s: reusing run %s (%s)", name, spec.key, path)
                return ChosenRun(replace(task, name=name), run_log.get(spec.key), True)
        except SubtuneError as exc:
            log.warning("stored run %s is unusable (%s); training it again", path, exc)
    run_log.runs.pop(spec.key, None)  # logged without its task (or with a bad one): train it again
    path.parent.mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor(setup.config.device)
    result = run_all(executor, run_fn(executor, progress), [spec], run_log, key=lambda s: s.key,
                     to_json=RunResult.to_json)[spec.key]
    return ChosenRun(replace(load_task(path), name=name), result, False)
