"""The typed cost records: what a part, a unit, a branch, the trunk and a whole plan cost.

:class:`PlanCost` is what a manifest stores as ``plan.cost``; readers go through
:meth:`PlanCost.from_json` instead of digging into the JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import SubtuneError


@dataclass
class Cost:
    """Parameters, bytes and FLOPs (batch 1) of a part of a model; costs add up."""

    params: int = 0
    bytes: int = 0
    flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.bytes + other.bytes, self.flops + other.flops)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Cost:
        return cls(int(data["params"]), int(data["bytes"]), int(data["flops"]))


@dataclass
class UnitCost:
    """One part of the backbone (``stem``, a unit, ``neck+pool``) at batch 1."""

    name: str
    params: int
    bytes: int
    flops: int


@dataclass
class BranchCost:
    """One task's branch: where it starts, what it tunes; params and bytes of what it adds (tuned
    units and head), FLOPs of everything it runs (branch units, neck, pool, head)."""

    start_unit: str | None
    tuned_units: list[str]
    params: int
    bytes: int
    flops: int

    def to_json(self) -> dict:
        return {"start_unit": self.start_unit, "tuned_units": list(self.tuned_units), "params": self.params,
                "bytes": self.bytes, "flops": self.flops}


@dataclass
class TrunkCost:
    """The shared trunk: the stem and ``units``, run once."""

    units: list[str]
    params: int
    bytes: int
    flops: int

    def to_json(self) -> dict:
        return {"units": list(self.units), "params": self.params, "bytes": self.bytes, "flops": self.flops}


@dataclass
class PlanCost:
    """What a sharing plan costs, fused and as separate full models (batch 1), as the manifest stores it.

    Attributes:
        input_size: (height, width) the FLOPs were counted at.
        units: every part of the backbone, in model order.
        trunk: the shared trunk.
        branches: each task's branch, by task name.
        fused: the whole fused module (unique weights, measured FLOPs).
        separate: the sum of one full standalone model per task.
        separate_per_task: each task's standalone model.
        ideal_ratio_flops: fused / separate FLOPs (None without FLOPs).
        ratio_bytes: fused / separate bytes.
    """

    input_size: tuple[int, int]
    units: list[UnitCost]
    trunk: TrunkCost
    branches: dict[str, BranchCost]
    fused: Cost
    separate: Cost
    separate_per_task: dict[str, Cost] = field(default_factory=dict)
    ideal_ratio_flops: float | None = None
    ratio_bytes: float | None = None

    @property
    def total_unit_flops(self) -> int:
        """FLOPs of one full pass of the backbone (stem, every unit, neck and pool)."""
        return sum(u.flops for u in self.units)

    def to_json(self) -> dict:
        return {
            "input_size": [int(v) for v in self.input_size],
            "units": [asdict(u) for u in self.units],
            "trunk": self.trunk.to_json(),
            "branches": {name: b.to_json() for name, b in self.branches.items()},
            "fused": self.fused.to_json(),
            "separate": self.separate.to_json(),
            "separate_per_task": {name: c.to_json() for name, c in self.separate_per_task.items()},
            "ideal_ratio_flops": self.ideal_ratio_flops,
            "ratio_bytes": self.ratio_bytes,
        }

    @classmethod
    def from_json(cls, data: dict) -> PlanCost:
        """Read :meth:`to_json`'s output (e.g. a manifest's ``plan.cost``).

        Raises:
            SubtuneError: ``data`` is not a plan cost.
        """
        try:
            h, w = data["input_size"]
            return cls(
                input_size=(int(h), int(w)),
                units=[UnitCost(str(u["name"]), int(u["params"]), int(u["bytes"]), int(u["flops"]))
                       for u in data["units"]],
                trunk=TrunkCost([str(u) for u in data["trunk"]["units"]], int(data["trunk"]["params"]),
                                int(data["trunk"]["bytes"]), int(data["trunk"]["flops"])),
                branches={str(name): BranchCost(b.get("start_unit"), list(b["tuned_units"]), int(b["params"]),
                                                int(b["bytes"]), int(b["flops"]))
                          for name, b in data["branches"].items()},
                fused=Cost.from_json(data["fused"]), separate=Cost.from_json(data["separate"]),
                separate_per_task={str(n): Cost.from_json(c) for n, c in (data.get("separate_per_task") or {}).items()},
                ideal_ratio_flops=_ratio(data.get("ideal_ratio_flops")), ratio_bytes=_ratio(data.get("ratio_bytes")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SubtuneError(f"a plan cost is malformed ({type(exc).__name__}: {str(exc)[:80]}); "
                               "re-export to recompute it") from exc


def _ratio(value) -> float | None:
    return None if value is None else float(value)
