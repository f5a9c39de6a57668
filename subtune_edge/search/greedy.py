"""Greedy selection of the units to tune: the paper's Algorithm 1, under optional budgets.

Forward from S = {} (add the unit that helps most) or backward from all units (remove the unit
whose removal helps most), or both keeping the better; each round trains every candidate and
keeps the best; the search stops when the best candidate gains less than ``epsilon`` (paper code
default 0.01 accuracy), when no candidate fits the unit / parameter / FLOPs / latency budget, or
when no unit is left. The cost is O(L x rounds) runs, every round embarrassingly parallel.

On small data one score is noisy, so a set is scored by repeated k-fold (the setup's folds x
seeds) and, with ``prefer_cheaper``, a round takes the cheapest candidate (fewest branch FLOPs,
then parameters) among those within one standard error of the best that still gain ``epsilon``:
a difference the runs cannot resolve is not worth a bigger branch on every frame. The paper's
code keeps the arg-max; ``prefer_cheaper=False`` does that.

With pruning (``prune``), a candidate is a (unit set, ratio) pair: a set's runs prune its tuned
units' channels after training and finetune the narrower branch. ``prune=0.5`` prunes every set
by half; ``prune="auto"`` gives each set the least ratio of ``prune_ratios`` that brings it under
the budgets (none when it fits unpruned), so a latency budget can be met by tuning more units,
more narrowly. Accuracy falls with the ratio, so the least ratio that fits is the one worth
training: one run per set, as without pruning.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from dataclasses import asdict, dataclass, field

from ..backbone import Backbone
from ..cost import NECK_POOL, branch_flops, unit_costs
from ..docs import documented
from ..errors import SubtuneError
from ..progress import Progress, emit
from ..prune import AUTO_RATIOS, PruneConfig, check_ratio, pruned_unit_costs
from .evaluator import Evaluator, SearchSetup, SetScore
from .executor import Executor
from .latency import LatencyTable
from .runlog import RunLog


@documented
@dataclass(frozen=True)
class GreedyConfig:
    """How greedy selection searches, and the budgets a chosen set must fit.

    Raises:
        SubtuneError: an unknown direction, a negative epsilon, or a latency budget without a table.
    """

    direction: str = field(default="forward", metadata={"help": "forward | backward | both (keep the better)."})
    epsilon: float = field(default=0.01, metadata={"help": "Stop when the best candidate gains less than this."})
    max_units: int | None = field(default=None, metadata={"help": "At most this many tuned units."})
    max_params: int | None = field(default=None, metadata={"help": "At most this many tuned parameters."})
    max_flops: int | None = field(default=None, metadata={
        "help": "At most this many branch FLOPs (first tuned unit to the end, plus neck and pool), batch 1."})
    candidates: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Units the search may tune; default: all."})
    max_latency_ms: float | None = field(default=None, metadata={
        "help": "At most this added latency per task on the device of latency_table."})
    latency_table: LatencyTable | None = field(default=None, metadata={
        "help": "Added ms of a branch at each unit (profile-device)."})
    prefer_cheaper: bool = field(default=True, metadata={
        "help": "Among candidates within one standard error of the best (that still gain epsilon), take the "
                "one with the fewest branch FLOPs; False: the arg-max, as the paper's code."})
    prune: float | str | None = field(default=None, metadata={
        "help": "Prune every set's tuned units by this share of channels, or 'auto': each set by the least of "
                "prune_ratios that fits the budgets; None: no pruning."})
    prune_ratios: tuple[float, ...] = field(default=AUTO_RATIOS, metadata={
        "help": "The ratios prune='auto' may choose, least pruning first."})

    def __post_init__(self):
        if self.prune == "auto":
            if self.max_latency_ms is None and self.max_flops is None and self.max_params is None:
                raise SubtuneError("{param} auto prunes each set as much as a budget needs: give a latency budget, "
                                   "max_flops or max_params, or a ratio such as 0.5", param="prune")
            for r in self.prune_ratios:
                check_ratio(r, "prune_ratios")
        elif self.prune is not None:
            check_ratio(self.prune)
        if self.direction not in ("forward", "backward", "both"):
            raise SubtuneError(f"greedy {{param}} must be forward, backward or both, not '{self.direction}'",
                               param="direction")
        if self.epsilon < 0:
            raise SubtuneError(f"{{param}} must be >= 0, got {self.epsilon}", param="epsilon")
        if self.max_latency_ms is not None and self.latency_table is None:
            raise SubtuneError("a latency budget needs a device cost table: measure one with `subtune-edge "
                               "profile-device MODEL --out costs.json` and pass it as {param}", param="costs_path")


@dataclass
class GreedyResult:
    """The chosen set, its score and cost, and every round of every search that led there.

    ``accuracy`` is the selection score (mean over the setup's folds x seeds): the number the search
    maximised, so an optimistic estimate; report a held-out split's accuracy beside it, not it.
    ``runs`` / ``run_seconds`` are what the result cost (every run it scored with, at the time each
    was trained); ``seconds`` is this invocation's wall time (small for a search resumed from its log).
    """

    units: list[str]
    accuracy: float
    std: float
    direction: str                          # the search whose result was kept
    params: int
    flops: int
    searches: dict[str, dict] = field(default_factory=dict)   # direction -> {units, accuracy, rounds}
    new_runs: int = 0
    reused_runs: int = 0
    runs: int = 0
    run_seconds: float = 0.0
    seconds: float = 0.0
    runs_per_set: int = 1
    prune: float = 0.0                      # the share of channels the chosen set's runs pruned

    def to_json(self) -> dict:
        """The result as JSON."""
        return asdict(self)


class SetCost:
    """Parameters a unit set adds, and the FLOPs of the branch it makes (batch 1, the data's input size).

    With a pruning ratio, each tuned unit is priced as pruned alone at that ratio
    (:func:`~subtune_edge.prune.pruned_unit_costs`): a conservative figure, since units tuned
    together may share prunable channels.
    """

    def __init__(self, backbone: Backbone, input_size: tuple[int, int] | None, prune: PruneConfig | None = None):
        if any(p.device.type != "cpu" for p in backbone.model.parameters()):
            # training moved the backbone to an accelerator; count on a CPU copy, leave it where it is
            backbone = copy.deepcopy(backbone)
            backbone.model.cpu()
        self.backbone, self.prune = backbone, prune
        self.input_size = tuple(input_size or backbone.data_config["input_size"][1:])
        costs = {c.name: c for c in unit_costs(backbone, self.input_size)}
        self.names = backbone.unit_names
        self.params_of = {u: costs[u].params for u in self.names}
        self.flops_of = {u: costs[u].flops for u in self.names}
        self.flops_of[NECK_POOL] = costs[NECK_POOL].flops

    def pruned(self, ratio: float) -> dict[str, tuple[int, int]]:
        """(params, FLOPs) of each unit pruned alone at ``ratio``."""
        return pruned_unit_costs(self.backbone, ratio, self.input_size, self.prune)

    def kept_flops(self, ratio: float) -> dict[str, float]:
        """The share of each unit's FLOPs left after pruning it at ``ratio`` (1 without pruning)."""
        if not ratio:
            return {u: 1.0 for u in self.names}
        pruned = self.pruned(ratio)
        return {u: pruned[u][1] / self.flops_of[u] if self.flops_of[u] else 1.0 for u in self.names}

    def params(self, units, ratio: float = 0.0) -> int:
        """Parameters of the tuned units (pruned at ``ratio``)."""
        if ratio:
            pruned = self.pruned(ratio)
            return sum(pruned[u][0] for u in units)
        return sum(self.params_of[u] for u in units)

    def flops(self, units, ratio: float = 0.0) -> int:
        """FLOPs of the branch tuning ``units`` makes, its tuned units pruned at ``ratio`` (0 for a linear probe,
        which adds only a head)."""
        if not units:
            return 0
        total = branch_flops(self.flops_of, self.names, units)
        if ratio:
            pruned = self.pruned(ratio)
            total -= sum(self.flops_of[u] - pruned[u][1] for u in units)
        return total


def greedy_select(setup: SearchSetup, greedy: GreedyConfig = GreedyConfig(), *, executor: Executor | None = None,
                  log: RunLog | None = None, progress: Progress | None = None,
                  store: str | os.PathLike | None = None) -> GreedyResult:
    """Algorithm 1 of the paper, forward, backward or both; see the module documentation.

    Args:
        setup: what every run shares.
        greedy: the search and its budgets.
        executor: where runs go (default: this process).
        log: the run log (a resumed search takes finished runs from it).
        progress: told ``search`` events: ``event="run"`` per run, ``event="round"`` per round
            (its candidates, the best, the gain, whether it was kept), and each run's ``train``
            events with a local executor.
        store: where validation-split runs keep their tasks, so that the final training of the
            chosen set reuses its run (:func:`~subtune_edge.search.chosen.train_chosen`).

    Returns:
        The chosen units with their score and cost, and every search's rounds.

    Raises:
        SubtuneError: an unknown candidate, no candidate, or no set within the budgets.
    """
    t0 = time.perf_counter()
    ev = Evaluator(setup, executor, log, progress, store)
    names = ev.backbone.unit_names
    ev.backbone.check_units(greedy.candidates or ())
    candidates = ev.order(greedy.candidates) if greedy.candidates is not None else list(names)
    if not candidates:
        raise SubtuneError("greedy selection needs at least one candidate unit")
    cost = SetCost(ev.backbone, setup.data.input_size, setup.prune)
    if greedy.latency_table is not None:
        greedy.latency_table.check_model(setup.backbone.model_name)

    def fits(units, ratio: float) -> bool:
        return ((greedy.max_units is None or len(units) <= greedy.max_units)
                and (greedy.max_params is None or cost.params(units, ratio) <= greedy.max_params)
                and (greedy.max_flops is None or cost.flops(units, ratio) <= greedy.max_flops)
                and (greedy.max_latency_ms is None
                     or greedy.latency_table.latency(units, ratio, cost.kept_flops(ratio)) <= greedy.max_latency_ms))

    ratios = _ratios(greedy)

    def ratio_for(units) -> float | None:
        """The pruning a set is trained with: the least that fits the budgets; None when none does."""
        for r in (ratios if units else [0.0]):
            if fits(units, r):
                return r
        return None

    directions = ["forward", "backward"] if greedy.direction == "both" else [greedy.direction]
    pick = functools.partial(_pick, cost=cost, prefer_cheaper=greedy.prefer_cheaper)
    searches = {d: _search(ev, d, candidates, greedy.epsilon, ratio_for, max(ratios), pick, progress)
                for d in directions}
    feasible = [d for d in directions if searches[d]["feasible"]]
    if not feasible:
        raise SubtuneError("no unit set fits the budget (max_units / max_params / max_flops / max_latency_ms); "
                           "loosen it" + (" or allow pruning (prune='auto')" if greedy.prune is None else ""))
    finals = [SetScore(searches[d]["units"], d, searches[d]["accuracy"], searches[d]["std"], 0.0, 0.0,
                       searches[d]["runs"], 0.0, searches[d]["prune"]) for d in feasible]
    best = feasible[finals.index(pick(finals, floor=float("-inf")))]
    s = searches[best]
    if log is not None:
        log.set_extra("greedy", {"config": asdict(greedy), "searches": searches, "chosen": best})
    return GreedyResult(s["units"], s["accuracy"], s["std"], best, cost.params(s["units"], s["prune"]),
                        cost.flops(s["units"], s["prune"]), searches, ev.new_runs, ev.reused_runs,
                        ev.new_runs + ev.reused_runs, ev.run_seconds, time.perf_counter() - t0,
                        len(setup.specs(())), s["prune"])


def _ratios(greedy: GreedyConfig) -> list[float]:
    """The pruning ratios a set may be trained with, least first."""
    if greedy.prune is None:
        return [0.0]
    if greedy.prune == "auto":
        return [0.0, *sorted(greedy.prune_ratios)]
    return [float(greedy.prune)]


def standard_error(score: SetScore) -> float:
    """The standard error of a set's mean score (0 for a single run: only exact ties are ties)."""
    return score.std / math.sqrt(score.runs) if score.runs > 1 else 0.0


def _pick(scores: list[SetScore], floor: float, cost: SetCost, prefer_cheaper: bool) -> SetScore | None:
    """The set a round keeps among ``scores`` that reach ``floor``; ``None`` when none does.

    The arg-max (first of equals: model order), or with ``prefer_cheaper`` the cheapest set within
    one standard error of it: fewest branch FLOPs, then fewest parameters, then the higher score.
    """
    eligible = [s for s in scores if s.mean >= floor]
    if not eligible:
        return None
    best = max(eligible, key=lambda s: s.mean)
    if not prefer_cheaper:
        return best
    near = [s for s in eligible if s.mean >= best.mean - standard_error(best)]
    return min(near, key=lambda s: (cost.flops(s.units, s.prune), cost.params(s.units, s.prune), -s.mean))


def _search(ev: Evaluator, direction: str, candidates: list[str], epsilon: float, ratio_for, most: float, pick,
            progress: Progress | None) -> dict:
    forward = direction == "forward"
    current: tuple[str, ...] = () if forward else tuple(candidates)
    rounds: list[dict] = []
    ratio = ratio_for(current)
    feasible = ratio is not None
    if feasible:
        start = ev.score(current, ratio)
        acc, std, runs = start.mean, start.std, start.runs
    else:  # backward from a set over budget: remove units (forced) until one fits
        acc, std, runs, ratio = float("-inf"), 0.0, 0, 0.0
    for r in range(1, len(candidates) + 1):
        if forward:
            options = [tuple(ev.order((*current, u))) for u in candidates if u not in current]
            priced = [(o, ratio_for(o)) for o in options]
        else:
            options = [tuple(u for u in current if u != drop) for drop in current]
            # a removal that still does not fit is trained anyway (the search is forced down to the budget),
            # at the most pruning allowed: the nearest it can come
            priced = [(o, q if q is not None else most) for o, q in ((o, ratio_for(o)) for o in options)]
        priced = [(o, q) for o, q in priced if q is not None]
        if not priced:
            break
        options = [o for o, _ in priced]
        scores = ev.score_many(options, [q for _, q in priced])
        forced = not feasible
        top = max(scores, key=lambda s: s.mean)  # first of equals: model order
        kept = pick(scores, floor=float("-inf") if forced else acc + epsilon)
        accepted = kept is not None
        best = kept if accepted else top
        gain = best.mean - acc if not forced else None
        info = {"direction": direction, "round": r, "from": list(current),
                "from_accuracy": None if forced else acc, "best": best.units, "best_accuracy": best.mean,
                "best_std": best.std, "top": top.units, "top_accuracy": top.mean,
                "gain": gain, "accepted": accepted, "forced": forced, "best_prune": best.prune,
                "from_prune": None if forced else ratio,
                "candidates": [{"units": s.units, "accuracy": s.mean, "std": s.std, "runs": s.runs,
                                "seconds": s.seconds, "prune": s.prune} for s in scores]}
        rounds.append(info)
        emit(progress, "search", f"{direction} round {r}: best {','.join(best.units) or '(linear probe)'}",
             event="round", **info)
        if not accepted:
            break
        current, acc, std, runs, ratio = tuple(best.units), best.mean, best.std, best.runs, best.prune
        feasible = ratio_for(current) is not None
    return {"units": list(current), "accuracy": acc, "std": std, "runs": runs, "rounds": rounds,
            "feasible": feasible, "prune": ratio}
