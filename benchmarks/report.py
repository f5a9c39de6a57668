"""results.json, report.md and PNG plots from one harness run."""

from __future__ import annotations

import json
from pathlib import Path

from .environment import device_label

SCHEMA = "subtune-edge.bench/1"


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 1e6:.1f}"


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Benchmark: {results['title']}", "",
             f"- device: {device_label(env)}; {env['platform']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- settings: threads {results['settings']['threads']}, budget {results['settings']['budget']}",
             f"- export: {results['export']['backbone']}, input {results['export']['input_size']}, "
             f"tasks {', '.join(results['export']['tasks'])}", ""]
    for s in results["skipped"]:
        lines.append(f"- skipped {s['backend']}: {s['reason']}")
    for (backend, batch), rows in group_rows(results).items():
        lines += ["", f"## {backend}, batch {batch}", "",
                  "| k | fused ms (p90) | separate ms (p90) | ratio | ideal ratio (FLOPs) | added ms/task fused | "
                  "added ms/task separate | weights MB fused / separate | RSS growth MB fused / separate |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r["memory"]
            ideal = "-" if r["ideal_ratio_flops"] is None else f"{r['ideal_ratio_flops']:.3f}"
            lines.append(
                f"| {r['k']} | {r['fused']['median_ms']:.2f} ({r['fused']['p90_ms']:.2f}) | "
                f"{r['separate']['median_ms']:.2f} ({r['separate']['p90_ms']:.2f}) | {r['ratio']:.3f} | {ideal} | "
                f"{r['added_ms_fused']:.2f} | {r['added_ms_separate']:.2f} | "
                f"{_mb(m['fused_weight_bytes'])} / {_mb(m['separate_weight_bytes'])} | "
                f"{_mb(m['fused_rss_growth_bytes'])} / {_mb(m['separate_rss_growth_bytes'])} |")
        gpu = [r for r in rows if r["memory"].get("fused_gpu_bytes") is not None]
        if gpu:
            lines.append("")
            lines.append("GPU memory MB (fused / separate): " + ", ".join(
                f"k={r['k']}: {_mb(r['memory']['fused_gpu_bytes'])} / {_mb(r['memory']['separate_gpu_bytes'])}"
                for r in gpu))
    lines += ["", "ratio = fused median / separate median (lower is better; 1/k would be free tasks). "
              "ideal ratio = the same for FLOPs from the export's sharing plan. added ms/task = L(k) - L(k-1).",
              "Fused and separate are measured alternately in the same process on the same input.", ""]
    return "\n".join(lines)


def group_rows(results: dict) -> dict[tuple[str, int], list[dict]]:
    """Rows by (backend, batch), in measurement order: one table or panel each."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results["rows"]:
        groups.setdefault((r["backend"], r["batch"]), []).append(r)
    return groups


def _latency_panel(ax, rows: list[dict]) -> None:
    ks = [r["k"] for r in rows]
    ax.plot(ks, [r["fused"]["median_ms"] for r in rows], "o-", label="fused (one trunk)")
    ax.plot(ks, [r["separate"]["median_ms"] for r in rows], "s--", label="separate full copies")
    ax.fill_between(ks, [r["fused"]["p90_ms"] for r in rows], [r["fused"]["median_ms"] for r in rows], alpha=.2)
    ax.set(xlabel="number of tasks k", ylabel="latency ms (median)", xticks=ks)
    ax.grid(alpha=.3)


def _added_panel(ax, rows: list[dict]) -> None:
    ks = [r["k"] for r in rows]
    w = 0.38
    ax.bar([k - w / 2 for k in ks], [r["added_ms_fused"] for r in rows], w, label="fused")
    ax.bar([k + w / 2 for k in ks], [r["added_ms_separate"] for r in rows], w, label="separate")
    ax.set(xlabel="k-th task", ylabel="added latency ms", xticks=ks)
    ax.grid(alpha=.3, axis="y")


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_rows(results)
    if not groups:
        return []
    device = device_label(results["environment"])
    written = []
    for name, title, panel in (("latency_vs_tasks", "Latency vs tasks", _latency_panel),
                               ("added_latency_per_task", "Latency each extra task adds", _added_panel)):
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        for ax, ((backend, batch), rows) in zip(axes[0], groups.items()):
            panel(ax, rows)
            ax.set_title(f"{backend}, batch {batch}")
            ax.legend()
        fig.suptitle(f"{title} — {device}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and the plots into ``out_dir``; returns the paths."""
    from subtune_edge.io import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md"}
    atomic_write_bytes(paths["json"], (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(paths["markdown"], markdown(results).encode())
    for p in plots(results, out):
        paths[p.stem] = p
    return paths
