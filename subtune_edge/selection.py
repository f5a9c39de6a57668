"""Which units to tune: finetuning profiles and greedy selection (the paper's Algorithm 1).

Both are many independent training runs. A :class:`SearchSetup` says what every run shares
(backbone, data, training config, seeds, k-fold); a unit set is scored by the mean validation
accuracy of its runs over seeds and folds. Runs go through an :class:`~subtune_edge.executor.Executor`
and are recorded one by one in a :class:`~subtune_edge.executor.RunLog`, so a search that is
interrupted resumes where it stopped and never trains the same (units, seed, fold, mode) twice.

Finetuning profile
    every single unit, and every window of 2 or 3 consecutive units, trained alone with a new
    head; mean and spread per set, beside linear-probe and full-finetuning reference lines.
Greedy selection
    forward from S = {} (add the unit that helps most) or backward from all units (remove the unit
    whose removal helps most), or both keeping the better; each round trains every candidate and
    keeps the best; the search stops when the best candidate gains less than ``epsilon`` (paper
    code default 0.01 accuracy), when no candidate fits the unit / parameter / FLOPs budget, or
    when no unit is left. The cost is O(L x rounds) runs, every round embarrassingly parallel.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .backbone import Backbone, BackboneSpec
from .budget import LatencyTable
from .cost import unit_costs
from .data import DataSpec
from .errors import SubtuneError
from .executor import Executor, LocalExecutor, RunLog, run_all
from .training import Callback, RunResult, RunSpec, TrainConfig, execute_run, get_backbone, run_mode

# told about every run: (spec, result as JSON, reused from the log)
OnRun = Callable[[RunSpec, dict, bool], None]


@dataclass(frozen=True)
class SearchSetup:
    """What every run of a profile or search shares; a unit set's score averages seeds x folds."""

    backbone: BackboneSpec
    data: DataSpec
    config: TrainConfig = TrainConfig()
    siamese: bool = False
    seeds: tuple[int, ...] = (0,)
    folds: int = 0                       # k-fold over the training split; 0 or 1: the validation split

    def __post_init__(self):
        if not self.seeds:
            raise SubtuneError("give at least one seed")
        if self.folds < 0 or self.folds == 1:
            raise SubtuneError(f"k-fold validation needs at least 2 folds, got {self.folds}; pass --folds 0 "
                               "to use the validation split")

    def specs(self, units: tuple[str, ...]) -> list[RunSpec]:
        folds = list(range(self.folds)) if self.folds else [None]
        data = replace(self.data, folds=self.folds) if self.folds else self.data
        return [RunSpec(self.backbone, data.with_fold(f), tuple(units), replace(self.config, seed=s),
                        self.siamese and bool(units))
                for s in self.seeds for f in folds]

    def context(self) -> dict:
        data = replace(self.data, folds=self.folds) if self.folds else self.data
        return RunSpec(self.backbone, data, (), self.config, False).context() | {"siamese": self.siamese}


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

    def to_json(self) -> dict:
        return asdict(self)


def _score(units: tuple[str, ...], mode: str, results: list[dict]) -> SetScore:
    acc = np.array([r["accuracy"] for r in results], dtype=float)
    return SetScore(list(units), mode, float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    float(acc.min()), float(acc.max()), len(acc), float(sum(r["seconds"] for r in results)))


class Evaluator:
    """Scores unit sets by training runs through an executor, logging every run."""

    def __init__(self, setup: SearchSetup, executor: Executor | None = None, log: RunLog | None = None,
                 on_run: OnRun | None = None, on_epoch: Callback | None = None):
        self.setup = setup
        self.executor = executor or LocalExecutor(setup.config.device)
        self.log = log if log is not None else RunLog(None, setup.context())
        self.on_run = on_run
        self.backbone: Backbone = get_backbone(setup.backbone)
        self.fn = functools.partial(execute_run, callback=on_epoch) \
            if on_epoch is not None and isinstance(self.executor, LocalExecutor) else execute_run
        self._logged_before = set(self.log.runs)
        self._ran: set[str] = set()
        self._reused: set[str] = set()

    @property
    def new_runs(self) -> int:
        """Runs trained by this evaluator."""
        return len(self._ran)

    @property
    def reused_runs(self) -> int:
        """Distinct runs taken from the log as it was when the evaluator started (a resumed search)."""
        return len(self._reused)

    def runs_needed(self, sets: list[tuple[str, ...]]) -> int:
        keys = {s.key for u in sets for s in self.setup.specs(tuple(u))}
        return sum(1 for k in keys if k not in self.log)

    def score_many(self, sets: list[tuple[str, ...]]) -> list[SetScore]:
        sets = [tuple(self.order(u)) for u in sets]
        specs_per_set = [self.setup.specs(u) for u in sets]

        def on_result(spec: RunSpec, data: dict, reused: bool) -> None:
            key = data["key"]
            if not reused:
                self._ran.add(key)
            elif key in self._logged_before and key not in self._reused:
                self._reused.add(key)
            else:
                return  # a run this search already reported
            if self.on_run:
                self.on_run(spec, data, reused)

        results = run_all(self.executor, self.fn, [s for specs in specs_per_set for s in specs], self.log,
                          key=lambda s: s.key, to_json=RunResult.to_json, on_result=on_result)
        names = self.backbone.unit_names
        return [_score(u, run_mode(u, names, self.setup.siamese), [results[s.key] for s in specs])
                for u, specs in zip(sets, specs_per_set)]

    def score(self, units: tuple[str, ...]) -> SetScore:
        return self.score_many([units])[0]

    def order(self, units) -> list[str]:
        chosen = set(units)
        return [u for u in self.backbone.unit_names if u in chosen]


# -- greedy selection --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GreedyConfig:
    direction: str = "forward"             # forward | backward | both
    epsilon: float = 0.01                  # stop when the best candidate gains less than this
    max_units: int | None = None
    max_params: int | None = None          # parameters of the tuned units
    max_flops: int | None = None           # FLOPs of the task's branch (first tuned unit to the end), batch 1
    candidates: tuple[str, ...] | None = None   # units the search may tune; default: all
    max_latency_ms: float | None = None    # added latency per task on the device of ``latency_table``
    latency_table: LatencyTable | None = None

    def __post_init__(self):
        if self.direction not in ("forward", "backward", "both"):
            raise SubtuneError(f"greedy direction must be forward, backward or both, not '{self.direction}'")
        if self.epsilon < 0:
            raise SubtuneError(f"epsilon must be >= 0, got {self.epsilon}")
        if self.max_latency_ms is not None and self.latency_table is None:
            raise SubtuneError("a latency budget needs a device cost table: measure one with `subtune-edge "
                               "profile-device MODEL --out costs.json` and pass --costs costs.json")


@dataclass
class GreedyResult:
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
        self.tail_flops = costs["neck+pool"].flops

    def params(self, units) -> int:
        return sum(self.params_of[u] for u in units)

    def flops(self, units) -> int:
        if not units:
            return 0
        first = min(self.names.index(u) for u in units)
        return sum(self.flops_of[u] for u in self.names[first:]) + self.tail_flops


def greedy_select(setup: SearchSetup, greedy: GreedyConfig = GreedyConfig(), *, executor: Executor | None = None,
                  log: RunLog | None = None, on_run: OnRun | None = None, on_epoch: Callback | None = None,
                  on_round: Callable[[dict], None] | None = None) -> GreedyResult:
    """Algorithm 1 of the paper, forward, backward or both; see the module documentation."""
    ev = Evaluator(setup, executor, log, on_run, on_epoch)
    names = ev.backbone.unit_names
    candidates = ev.order(greedy.candidates) if greedy.candidates is not None else list(names)
    unknown = [u for u in (greedy.candidates or ()) if u not in names]
    if unknown:
        ev.backbone.unit_index(unknown[0])
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
    searches = {d: _search(ev, d, candidates, greedy.epsilon, fits, on_round) for d in directions}
    feasible = [d for d in directions if searches[d]["feasible"]]
    if not feasible:
        raise SubtuneError("no unit set fits the budget (--max-units / --max-params / --max-flops / "
                           "--latency-budget); loosen it")
    best = max(feasible, key=lambda d: (searches[d]["accuracy"], -cost.params(searches[d]["units"])))
    s = searches[best]
    if log is not None:
        log.set_extra("greedy", {"config": asdict(greedy), "searches": searches, "chosen": best})
    return GreedyResult(s["units"], s["accuracy"], s["std"], best, cost.params(s["units"]), cost.flops(s["units"]),
                        searches, ev.new_runs, ev.reused_runs)


def _search(ev: Evaluator, direction: str, candidates: list[str], epsilon: float, fits,
            on_round: Callable[[dict], None] | None) -> dict:
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
        if on_round:
            on_round(info)
        if not accepted:
            break
        current, acc, std = tuple(best.units), best.mean, best.std
        feasible = fits(current)
    return {"units": list(current), "accuracy": acc, "std": std, "rounds": rounds, "feasible": feasible}


# -- finetuning profile ------------------------------------------------------------------------------
@dataclass
class Profile:
    model: str
    data: dict
    config: dict
    seeds: list[int]
    windows: list[int]
    unit_names: list[str]
    entries: list[dict]                    # {units, start, window, mean, std, min, max, runs}
    linear_probe: dict
    full_finetune: dict
    new_runs: int = 0
    reused_runs: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def profile_sets(unit_names: list[str], windows: tuple[int, ...], units: list[str] | None = None
                 ) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start index, window, units) for every window of consecutive units within ``units``."""
    allowed = set(units) if units is not None else set(unit_names)
    out = []
    for w in windows:
        if w < 1:
            raise SubtuneError(f"window sizes must be >= 1, got {w}")
        for i in range(len(unit_names) - w + 1):
            window = tuple(unit_names[i:i + w])
            if all(u in allowed for u in window):
                out.append((i, w, window))
    return out


def finetuning_profile(setup: SearchSetup, windows: tuple[int, ...] = (1,), units: list[str] | None = None, *,
                       executor: Executor | None = None, log: RunLog | None = None, on_run: OnRun | None = None,
                       on_epoch: Callback | None = None) -> Profile:
    """Train each unit (and each window of consecutive units) alone; linear probe and full FT as references."""
    ev = Evaluator(setup, executor, log, on_run, on_epoch)
    names = ev.backbone.unit_names
    if units is not None:
        for u in units:
            ev.backbone.unit_index(u)
    sets = profile_sets(names, tuple(windows), units)
    if not sets:
        raise SubtuneError(f"no window of sizes {list(windows)} fits the chosen units")
    scores = ev.score_many([s for _, _, s in sets] + [(), tuple(names)])
    entries = [dict(sc.to_json(), start=i, window=w) for (i, w, _), sc in zip(sets, scores)]
    lp = scores[-2].to_json()
    if setup.siamese:
        lp["mode"] = "linear-probe"
    return Profile(setup.backbone.model_name, setup.data.to_json(), setup.config.to_json(), list(setup.seeds),
                   list(windows), names, entries, lp, scores[-1].to_json(), ev.new_runs, ev.reused_runs)


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """The paper-style figure: accuracy per unit (and window), error bars over seeds, LP and FT lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = profile.unit_names
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2), dpi=120)
    colors = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for w in profile.windows:
        es = [e for e in profile.entries if e["window"] == w]
        if not es:
            continue
        x = [e["start"] + (w - 1) / 2 for e in es]
        ax.errorbar(x, [100 * e["mean"] for e in es], yerr=[100 * e["std"] for e in es], marker="o", ms=4,
                    capsize=3, lw=1.2, color=colors.get(w), label=f"{w} consecutive unit{'s' if w > 1 else ''}")
    for ref, style, color, label in ((profile.linear_probe, "--", "tab:red", "linear probe"),
                                     (profile.full_finetune, ":", "black", "full finetuning")):
        m, s = 100 * ref["mean"], 100 * ref["std"]
        ax.axhline(m, ls=style, color=color, lw=1.2, label=f"{label} ({m:.1f}%)")
        if s:
            ax.axhspan(m - s, m + s, color=color, alpha=0.08)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("unit (windows drawn at their centre)")
    ax.set_ylabel("validation accuracy (%)")
    n_seeds = len(profile.seeds)
    ax.set_title(f"Finetuning profile: {profile.model} on {profile.data['source']} "
                 f"({n_seeds} seed{'s' if n_seeds > 1 else ''}, {profile.config['epochs']} epochs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
