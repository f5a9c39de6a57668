"""Latency-aware selection: what a unit set adds on the target device, and the accuracy/latency front.

The paper's greedy selection maximises accuracy; on an edge device the question is "the best
accuracy whose added latency per task stays under X ms on this Jetson". A task tuning a set S
leaves the shared trunk at its first tuned unit, so its added latency is the measured cost of a
branch at that unit (``subtune-edge profile-device`` writes the table, on the device that
matters; it can be used for selection anywhere). Without a table, branch FLOPs stand in.

A pruned set saves, per tuned unit, what narrowing that unit saves. A table measured with
``--prune-ratios`` holds rows of branches whose first unit is pruned (same unit, a ``ratio``), and
the saving is read from them; otherwise it is estimated as the unit's own latency (the difference
of consecutive branch points) times the share of its FLOPs pruning removes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SubtuneError
from ..schema import FileFormat, validate

COSTS_FORMAT = "subtune-edge.device-costs"
#: the cost table's schema (``subtune_edge/schema/device-costs.schema.json``) and how its errors read
COSTS_SCHEMA = FileFormat("device-costs.schema.json", SubtuneError, "re-measure it with `subtune-edge profile-device`")


def read_cost_table(path: str | Path) -> dict:
    """The JSON of a ``profile-device`` cost table, refused in one line if it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SubtuneError(f"cannot read cost table {p} ({exc}); create it with `subtune-edge profile-device`") \
            from exc
    if not isinstance(data, dict) or data.get("format") != COSTS_FORMAT:
        raise SubtuneError(f"{p} is not a device cost table; create it with `subtune-edge profile-device`")
    return data


@dataclass(frozen=True)
class LatencyTable:
    """Added milliseconds of a branch at each unit, as measured by ``profile-device``."""

    model: str
    backend: str
    batch: int
    device: str
    added_ms: tuple[tuple[str, float], ...]     # (unit, ms) in model order
    pruned_ms: tuple[tuple[str, float, float], ...] = ()   # (unit, ratio, ms): branch at unit, unit pruned

    @classmethod
    def from_json(cls, data: dict, where: str = "cost table") -> LatencyTable:
        """The table from a ``profile-device`` JSON.

        Raises:
            SubtuneError: the JSON is not a device cost table.
        """
        if not isinstance(data, dict) or data.get("format") != COSTS_FORMAT:
            raise SubtuneError(f"{where} is not a device cost table; create it with `subtune-edge profile-device`")
        validate(data, COSTS_SCHEMA, where)
        units = data["units"]
        env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
        gpus = env.get("gpus") if isinstance(env.get("gpus"), list) else []
        device = gpus[0].get("name") if gpus and isinstance(gpus[0], dict) else env.get("jetson") or env.get("cpu")
        rows = sorted(units, key=lambda r: r["index"])
        plain = [r for r in rows if not r.get("ratio")]
        pruned = [r for r in rows if r.get("ratio")]
        return cls(data["model"], data["backend"], int(data["batch"]), str(device),
                   tuple((r["unit"], max(float(r["added_ms"]), 0.0)) for r in plain),
                   tuple((r["unit"], float(r["ratio"]), max(float(r["added_ms"]), 0.0)) for r in pruned))

    @classmethod
    def read(cls, path: str | Path) -> LatencyTable:
        """The table in a ``profile-device`` file.

        Raises:
            SubtuneError: the file is unreadable or not a device cost table.
        """
        return cls.from_json(read_cost_table(path), str(path))

    def check_model(self, model: str) -> None:
        """Refuse a table measured for another model (its units and costs would not apply)."""
        if model != self.model:
            raise SubtuneError(f"the cost table was measured for '{self.model}', not '{model}'; measure one with "
                               f"`subtune-edge profile-device {model}`")

    def latency(self, units, ratio: float = 0.0, kept_flops: dict[str, float] | None = None) -> float:
        """Added ms of a task tuning ``units`` (0 for a linear probe: it only adds a head).

        Args:
            units: the tuned units.
            ratio: the share of channels pruned from them (0: none).
            kept_flops: per unit, the share of its FLOPs left at ``ratio``; prices a pruned unit the
                table has no measured row for (without it such a unit saves nothing).
        """
        if not units:
            return 0.0
        order = [u for u, _ in self.added_ms]
        missing = [u for u in units if u not in order]
        if missing:
            raise SubtuneError(f"the cost table for {self.model} has no unit '{missing[0]}'; re-measure it with "
                               "`subtune-edge profile-device` over all units")
        first = min(order.index(u) for u in units)
        # an earlier branch point re-runs everything a later one does: never cheaper (measurement noise aside)
        base = max(ms for _, ms in self.added_ms[first:])
        if not ratio:
            return base
        return max(0.0, base - sum(self.saving(u, ratio, kept_flops) for u in units))

    def unit_ms(self, unit: str) -> float:
        """The unit's own share of a branch: its branch point's added ms less the next one's."""
        order = [u for u, _ in self.added_ms]
        i = order.index(unit)
        after = self.added_ms[i + 1][1] if i + 1 < len(order) else 0.0
        return max(0.0, self.added_ms[i][1] - after)

    def saving(self, unit: str, ratio: float, kept_flops: dict[str, float] | None = None) -> float:
        """What pruning ``unit`` by ``ratio`` saves: measured where the table has the row, else FLOPs-scaled."""
        measured = [ms for u, r, ms in self.pruned_ms if u == unit and abs(r - ratio) < 1e-9]
        if measured:
            return max(0.0, dict(self.added_ms)[unit] - measured[0])
        if kept_flops is None:
            return 0.0
        return self.unit_ms(unit) * (1.0 - kept_flops.get(unit, 1.0))


def evaluated_sets(searches: dict) -> list[dict]:
    """Every (unit set, pruning ratio) a greedy search scored (its start and each round's candidates), once each."""
    seen: dict[tuple, dict] = {}

    def add(units, prune, **info) -> None:
        prune = float(prune or 0.0)
        seen.setdefault((tuple(units), prune), {"units": list(units), "prune": prune, **info})

    for s in searches.values():
        for rd in s.get("rounds", []):
            if rd.get("from_accuracy") is not None:
                add(rd["from"], rd.get("from_prune"), accuracy=rd["from_accuracy"])
            for c in rd["candidates"]:
                add(c["units"], c.get("prune"), accuracy=c["accuracy"], std=c.get("std"))
        if s.get("feasible", True) and s.get("accuracy") is not None and s["accuracy"] != float("-inf"):
            add(s["units"], s.get("prune"), accuracy=s["accuracy"])
    return list(seen.values())


def pareto_front(points: list[dict], cost: str = "added_ms") -> list[dict]:
    """The points no other point beats on both accuracy (higher) and ``cost`` (lower), by cost."""
    ordered = sorted(points, key=lambda p: (p[cost], -p["accuracy"]))
    front, best = [], float("-inf")
    for p in ordered:
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def front_report(searches: dict, chosen: list[str], latency=None, flops=None, chosen_prune: float = 0.0) -> dict:
    """Accuracy against added cost for every evaluated (set, ratio), with the fronts and the choice marked.

    Args:
        searches: the greedy result's searches.
        chosen: the chosen units.
        latency: ``latency(units, ratio) -> ms`` (a table's), or None to price by FLOPs.
        flops: ``flops(units, ratio) -> FLOPs``.
        chosen_prune: the chosen set's ratio.

    Returns:
        ``points`` (each with its cost, ``on_front``, ``chosen``), ``front`` over all points, and
        ``fronts``: the unpruned points' front and, where pruned sets were evaluated, the front of all.
    """
    cost_key = "added_ms" if latency is not None else "branch_gflops"
    points = []
    for p in evaluated_sets(searches):
        p = dict(p)
        if latency is not None:
            p["added_ms"] = latency(p["units"], p["prune"])
        if flops is not None:
            p["branch_gflops"] = flops(p["units"], p["prune"]) / 1e9
        points.append(p)
    front = pareto_front(points, cost_key)
    keys = {(tuple(p["units"]), p["prune"]) for p in front}
    for p in points:
        p["on_front"] = (tuple(p["units"]), p["prune"]) in keys
        p["chosen"] = list(p["units"]) == list(chosen) and p["prune"] == float(chosen_prune)
    fronts = {"unpruned": [[p["units"], p["prune"]] for p in pareto_front([p for p in points if not p["prune"]],
                                                                          cost_key)]}
    if any(p["prune"] for p in points):
        fronts["with pruning"] = [[p["units"], p["prune"]] for p in front]
    return {"cost": cost_key, "points": sorted(points, key=lambda p: p[cost_key]),
            "front": [p["units"] for p in front], "fronts": fronts, "chosen": list(chosen),
            "chosen_prune": float(chosen_prune)}


def plot_front(report: dict, path: str | Path, title: str, budget: float | None = None,
               other_choice: dict | None = None) -> Path:
    """Accuracy vs added latency (or branch FLOPs) for every evaluated set; the front joined up."""
    import matplotlib  # optional: plots only

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    key = report["cost"]
    pts = report["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    plain = [p for p in pts if not p.get("prune")]
    pruned = [p for p in pts if p.get("prune")]
    ax.scatter([p[key] for p in plain], [100 * p["accuracy"] for p in plain], s=18, color="tab:gray", alpha=.7,
               label="evaluated unit sets")
    if pruned:
        ax.scatter([p[key] for p in pruned], [100 * p["accuracy"] for p in pruned], s=22, marker="^",
                   color="tab:orange", alpha=.7, label="evaluated sets, pruned")
    by_key = {(tuple(p["units"]), p.get("prune", 0.0)): p for p in pts}
    fronts = report.get("fronts") or {"unpruned": [[p["units"], 0.0] for p in pts if p["on_front"]]}
    for (label, members), color in zip(fronts.items(), ("tab:blue", "tab:green")):
        line = [by_key[(tuple(u), float(r))] for u, r in members if (tuple(u), float(r)) in by_key]
        ax.plot([p[key] for p in line], [100 * p["accuracy"] for p in line], "o-", color=color, ms=5,
                label=f"Pareto front ({label})" if len(fronts) > 1 else "Pareto front")
    for p in pts:
        if p["chosen"]:
            tag = f" pruned {p['prune']:g}" if p.get("prune") else ""
            ax.scatter([p[key]], [100 * p["accuracy"]], s=120, marker="*", color="tab:red", zorder=5,
                       label=f"chosen: {','.join(p['units']) or 'linear probe'}{tag}")
    if other_choice:
        ax.scatter([other_choice[key]], [100 * other_choice["accuracy"]], s=90, marker="D", facecolors="none",
                   edgecolors="black", zorder=6, label=f"{other_choice['label']}: "
                   f"{','.join(other_choice['units']) or 'linear probe'}")
    if budget is not None:
        ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:g}")
    ax.set_xlabel("added latency per task (ms)" if key == "added_ms" else "branch GFLOPs per image")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
