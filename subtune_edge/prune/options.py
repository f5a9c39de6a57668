"""What a pruning request may say: the ratio, how channels are ranked, and what widths are kept."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..docs import documented
from ..errors import PruneError

#: the largest share of channels a unit may lose: past it a group keeps one or two channels
MAX_RATIO = 0.95
#: how channels are ranked: L1 norm of the producing filters (the paper's code), first-order Taylor
#: (|weight x gradient| summed over the group, from a few training batches) or BatchNorm scale
IMPORTANCES = ("l1", "taylor", "bn")
#: the ratios ``--prune auto`` and the pruning benchmark try, least pruning first
AUTO_RATIOS = (0.25, 0.5, 0.75)


def check_ratio(ratio: float, param: str = "prune") -> float:
    """``ratio`` as a float, refused in one line outside (0, :data:`MAX_RATIO`].

    Args:
        ratio: the share of each pruned group's channels to remove.
        param: the parameter the ratio came from, for the message.

    Returns:
        The ratio.

    Raises:
        PruneError: not a number, or outside (0, 0.95].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 < ratio <= MAX_RATIO:
        raise PruneError(f"{{param}} must be a share of channels in (0, {MAX_RATIO}] such as 0.5, got {ratio!r}; "
                         "0 means no pruning: leave it out", param=param)
    return float(ratio)


@documented
@dataclass(frozen=True)
class PruneConfig:
    """How a task's tuned units are pruned after SubTuning, and how long the narrower branch is finetuned.

    Raises:
        PruneError: a ratio outside (0, 0.95], an unknown importance, a bad rounding or epoch count.
    """

    ratio: float = field(default=0.5, metadata={"help": "Share of each pruned group's channels to remove."})
    importance: str = field(default="taylor", metadata={
        "help": "taylor (|weight x gradient| over a few training batches; kept accuracy best in "
                "benchmarks/results/pruning) | l1 (filter L1 norm, the paper's code) | bn (BatchNorm scale)."})
    round_to: int = field(default=8, metadata={
        "help": "Kept channels are a multiple of this (vector width, tensor cores); groups under twice it "
                "are rounded to 1."})
    epochs: int = field(default=3, metadata={"help": "Finetuning epochs of the pruned branch."})
    taylor_batches: int = field(default=4, metadata={"help": "Training batches the Taylor importance sums over."})

    def __post_init__(self):
        check_ratio(self.ratio, "ratio")
        if self.importance not in IMPORTANCES:
            raise PruneError(f"{{param}} must be one of {', '.join(IMPORTANCES)}, not {self.importance!r}",
                             param="importance")
        for name, low in (("round_to", 1), ("epochs", 0), ("taylor_batches", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PruneError(f"{{param}} must be an integer of at least {low}, got {value!r}", param=name)

    def kept(self, channels: int) -> int:
        """How many of a group's ``channels`` survive: ``1 - ratio`` of them, a multiple of ``round_to``, at least 1."""
        step = self.round_to if channels >= 2 * self.round_to else 1
        keep = int(round(channels * (1.0 - self.ratio) / step)) * step
        return min(channels, max(step, keep))

    def to_json(self) -> dict:
        """The config as a run's context records it."""
        return asdict(self)
