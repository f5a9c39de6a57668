"""Greedy selection of the units to tune: the paper's Algorithm 1, under optional budgets.

Forward from S = {} (add the unit that helps most) or backward from all units (remove the unit
whose removal helps most), or both keeping the better; each round trains every candidate and
keeps the best; the search stops when the best candidate gains less than ``epsilon`` (paper code
default 0.01 accuracy), when no candidate fits the unit / parameter / FLOPs / latency budget, or
when no unit is left. The cost is O(L x rounds) runs, every round embarrassingly parallel.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from ..backbone import Backbone
from ..cost import NECK_POOL, branch_flops, unit_costs
from ..docs import documented
from ..errors import SubtuneError
from ..progress import Progress, emit
from .evaluator import Evaluator, SearchSetup
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

    def __post_init__(self):
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
    """The chosen set, its score and cost, and every round of every search that led there."""

    units: list[str]
    accuracy: float
    std: float
    direction: str                          # the search whose result was kept
    params: int
    flops: int
    searches: dict[str, dict] = field(default_factory=dict)   # direction -> {units, accuracy, rounds}
    new_runs: int = 0
    reused_runs: int = 0

    def to_json(self) -> dict:
        """The result as JSON."""
        return asdict(self)


class SetCost:
    """Parameters a unit set adds, and the FLOPs of the branch it makes (batch 1, the data's input size)."""

    def __init__(self, backbone: Backbone, input_size: tuple[int, int] | None):
        if any(p.device.type != "cpu" for p in backbone.model.parameters()):
            # training moved the backbone to an accelerator; count on a CPU copy, leave it where it is
            backbone = copy.deepcopy(backbone)
            backbone.model.cpu()
        costs = {c.name: c for c in unit_costs(backbone, input_size)}
        self.names = backbone.unit_names
        self.params_of = {u: costs[u].params for u in self.names}
        self.flops_of = {u: costs[u].flops for u in self.names}
        self.flops_of[NECK_POOL] = costs[NECK_POOL].flops

    def params(self, units) -> int:
        """Parameters of the tuned units."""
        return sum(self.params_of[u] for u in units)

    def flops(self, units) -> int:
        """FLOPs of the branch tuning ``units`` makes (0 for a linear probe, which adds only a head)."""
        if not units:
            return 0
        return branch_flops(self.flops_of, self.names, units)


def greedy_select(setup: SearchSetup, greedy: GreedyConfig = GreedyConfig(), *, executor: Executor | None = None,
                  log: RunLog | None = None, progress: Progress | None = None) -> GreedyResult:
    """Algorithm 1 of the paper, forward, backward or both; see the module documentation.

    Args:
        setup: what every run shares.
        greedy: the search and its budgets.
        executor: where runs go (default: this process).
        log: the run log (a resumed search takes finished runs from it).
        progress: told ``search`` events: ``event="run"`` per run, ``event="round"`` per round
            (its candidates, the best, the gain, whether it was kept), and each run's ``train``
            events with a local executor.

    Returns:
        The chosen units with their score and cost, and every search's rounds.

    Raises:
        SubtuneError: an unknown candidate, no candidate, or no set within the budgets.
    """
    ev = Evaluator(setup, executor, log, progress)
    names = ev.backbone.unit_names
    ev.backbone.check_units(greedy.candidates or ())
    candidates = ev.order(greedy.candidates) if greedy.candidates is not None else list(names)
    if not candidates:
        raise SubtuneError("greedy selection needs at least one candidate unit")
    cost = SetCost(ev.backbone, setup.data.input_size)
    if greedy.latency_table is not None:
        greedy.latency_table.check_model(setup.backbone.model_name)

    def fits(units) -> bool:
        return ((greedy.max_units is None or len(units) <= greedy.max_units)
                and (greedy.max_params is None or cost.params(units) <= greedy.max_params)
                and (greedy.max_flops is None or cost.flops(units) <= greedy.max_flops)
                and (greedy.max_latency_ms is None or greedy.latency_table.latency(units) <= greedy.max_latency_ms))

    directions = ["forward", "backward"] if greedy.direction == "both" else [greedy.direction]
    searches = {d: _search(ev, d, candidates, greedy.epsilon, fits, progress) for d in directions}
    feasible = [d for d in directions if searches[d]["feasible"]]
    if not feasible:
        raise SubtuneError("no unit set fits the budget (max_units / max_params / max_flops / max_latency_ms); "
                           "loosen it")
    best = max(feasible, key=lambda d: (searches[d]["accuracy"], -cost.params(searches[d]["units"])))
    s = searches[best]
    if log is not None:
        log.set_extra("greedy", {"config": asdict(greedy), "searches": searches, "chosen": best})
    return GreedyResult(s["units"], s["accuracy"], s["std"], best, cost.params(s["units"]), cost.flops(s["units"]),
                        searches, ev.new_runs, ev.reused_runs)


def _search(ev: Evaluator, direction: str, candidates: list[str], epsilon: float, fits,
            progress: Progress | None) -> dict:
    forward = direction == "forward"
    current: tuple[str, ...] = () if forward else tuple(candidates)
    rounds: list[dict] = []
    feasible = fits(current)
    if feasible:
        start = ev.score(current)
        acc, std = start.mean, start.std
    else:  # backward from a set over budget: remove units (forced) until one fits
        acc, std = float("-inf"), 0.0
    for r in range(1, len(candidates) + 1):
        if forward:
            options = [tuple(ev.order((*current, u))) for u in candidates if u not in current]
            options = [o for o in options if fits(o)]
        else:
            options = [tuple(u for u in current if u != drop) for drop in current]
        if not options:
            break
        scores = ev.score_many(options)
        best = max(scores, key=lambda s: s.mean)  # first of equals: model order
        forced = not feasible
        gain = best.mean - acc if not forced else None
        accepted = forced or gain >= epsilon
        info = {"direction": direction, "round": r, "from": list(current),
                "from_accuracy": None if forced else acc, "best": best.units, "best_accuracy": best.mean,
                "gain": gain, "accepted": accepted, "forced": forced,
                "candidates": [{"units": s.units, "accuracy": s.mean, "std": s.std} for s in scores]}
        rounds.append(info)
        emit(progress, "search", f"{direction} round {r}: best {','.join(best.units) or '(linear probe)'}",
             event="round", **info)
        if not accepted:
            break
        current, acc, std = tuple(best.units), best.mean, best.std
        feasible = fits(current)
    return {"units": list(current), "accuracy": acc, "std": std, "rounds": rounds, "feasible": feasible}
