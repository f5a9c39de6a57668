"""Finetuning profiles: which units are worth training.

Every single unit, and every window of 2 or 3 consecutive units, trained alone with a new head;
mean and spread per set over seeds, beside linear-probe and full-finetuning reference lines.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SubtuneError
from ..progress import Progress
from .evaluator import Evaluator, SearchSetup
from .executor import Executor
from .runlog import RunLog


@dataclass
class Profile:
    """A finetuning profile: the score of every window, and the two reference lines."""

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
        """The profile as ``profile.json`` stores it."""
        return asdict(self)


def profile_sets(unit_names: list[str], windows: tuple[int, ...], units: list[str] | None = None
                 ) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start index, window, units) for every window of consecutive units within ``units``.

    Raises:
        SubtuneError: a window size below 1.
    """
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
                       executor: Executor | None = None, log: RunLog | None = None,
                       progress: Progress | None = None, store: str | os.PathLike | None = None) -> Profile:
    """Train each unit (and each window of consecutive units) alone; linear probe and full FT as references.

    Args:
        setup: what every run shares.
        windows: window sizes (1: each unit alone).
        units: profile only windows inside these units (the references still use all of them).
        executor: where runs go (default: this process).
        log: the run log (a resumed profile takes finished runs from it).
        progress: told ``search`` events (``event="run"``) and, locally, each run's ``train`` events.
        store: where validation-split runs keep their tasks, for a final training to reuse.

    Returns:
        The profile.

    Raises:
        SubtuneError: an unknown unit, a window below 1, or no window inside ``units``.
    """
    ev = Evaluator(setup, executor, log, progress, store)
    names = ev.backbone.unit_names
    if units is not None:
        ev.backbone.check_units(units)
    sets = profile_sets(names, tuple(windows), units)
    if not sets:
        raise SubtuneError(f"no window of sizes {list(windows)} fits the chosen units")
    # full finetuning first: the longest run starts first, so parallel workers finish together
    ft, lp_score, *scores = ev.score_many([tuple(names), (), *(s for _, _, s in sets)])
    entries = [dict(sc.to_json(), start=i, window=w) for (i, w, _), sc in zip(sets, scores)]
    lp = lp_score.to_json()
    if setup.siamese:
        lp["mode"] = "linear-probe"
    return Profile(setup.backbone.model_name, setup.data.to_json(), setup.config.to_json(), list(setup.seeds),
                   list(windows), names, entries, lp, ft.to_json(), ev.new_runs, ev.reused_runs)


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """The paper-style figure: accuracy per unit (and window), error bars over seeds, LP and FT lines."""
    import matplotlib  # optional: plots only

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
