"""results.json, report.md and PNG plots from one harness run, and the rule for replacing them.

A results folder is replaced whole by the next bench into it, so :func:`is_results_dir` says when a
folder is one: a results.json valid per ``bench-results.schema.json`` and nothing but the files a report
writes (and, for a suite, the export it built). Anything else is the user's and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from subtune_edge.errors import SubtuneError
from subtune_edge.io import atomic_write_json, atomic_write_text, check_replaceable, staged_dir
from subtune_edge.runtime import is_export_dir
from subtune_edge.schema import FileFormat, is_valid, load_schema, validate

from .environment import device_label

SCHEMA = "subtune-edge.bench/1"
#: results.json's format: ``subtune_edge/schema/bench-results.schema.json``
BENCH_FORMAT = FileFormat("bench-results.schema.json", SubtuneError, "re-run the benchmark")
WHAT = "benchmark results"
PLOTS = ("latency_vs_tasks", "added_latency_per_task")
REPORT_FILES = ("results.json", "report.md", *(f"{name}.png" for name in PLOTS))
SUITE_EXPORT = "export"  # a suite builds its export inside its results folder


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 1e6:.1f}"


def markdown(results: dict) -> str:
    """report.md: the device and settings, the skipped backends, one table per (backend, batch).

    Args:
        results: results.json's content.

    Returns:
        The Markdown text.
    """
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
        settings = rows[0].get("runtime_settings") if rows else None
        if settings:  # how the runtime ran it, as it reported that (OpenVINO: the compiled model's properties)
            lines.insert(-2, "runtime settings: " + settings_line(settings) + "\n")
        for r in rows:
            m = r["memory"]
            ideal = "-" if r["ideal_ratio_flops"] is None else f"{r['ideal_ratio_flops']:.3f}"
            lines.append(
                f"| {r['k']} | {r['fused']['median_ms']:.2f} ({r['fused']['p90_ms']:.2f}) | "
                f"{r['separate']['median_ms']:.2f} ({r['separate']['p90_ms']:.2f}) | {r['ratio']:.3f} | {ideal} | "
                f"{r['added_ms_fused']:.2f} | {r['added_ms_separate']:.2f} | "
                f"{_mb(m['fused_weight_bytes'])} / {_mb(m['separate_weight_bytes'])} | "
                f"{_mb(m['fused_rss_growth_bytes'])} / {_mb(m['separate_rss_growth_bytes'])} |")
        vs = [r for r in rows if r.get("fused_vs_fp32_fused") is not None]
        if vs:
            lines += ["", "fused / fused fp32: " + ", ".join(f"k={r['k']}: {r['fused_vs_fp32_fused']:.3f}" for r in vs)]
        gpu = [r for r in rows if r["memory"].get("fused_gpu_bytes") is not None]
        if gpu:
            lines.append("")
            lines.append("GPU memory MB (fused / separate): " + ", ".join(
                f"k={r['k']}: {_mb(r['memory']['fused_gpu_bytes'])} / {_mb(r['memory']['separate_gpu_bytes'])}"
                for r in gpu))
    variants = results.get("variants")
    if variants:
        lines += ["", f"## branch layouts on {variants['backend']}", "", "| batch | layout | median ms | p90 ms |",
                  "|---|---|---|---|"]
        for p in variants["points"]:
            lines.append(f"| {p['batch']} | {p['variant']} | {p['median_ms']:.2f} | {p['p90_ms']:.2f} |")
        lines += ["", f"chosen: **{variants['chosen']}** ({worst_slowdown_line(variants)}); export with `--branches` "
                      "set to this results folder to ship it"]
    lines += ["", "ratio = fused median / separate median (lower is better; 1/k would be free tasks). "
              "ideal ratio = the same for FLOPs from the export's sharing plan. added ms/task = L(k) - L(k-1).",
              "Fused and separate are measured alternately in the same process on the same input.", ""]
    return "\n".join(lines)


def worst_slowdown_line(variants: dict) -> str:
    """Why a layout was chosen, in one line: each layout's worst slowdown against the fastest."""
    worst = ", ".join(f"{k} {v:.3f}" for k, v in variants["worst_slowdown"].items())
    return f"least worst slowdown against the fastest over batch {', '.join(map(str, variants['batches']))}: {worst}"


def settings_line(settings: dict) -> str:
    """A runner's settings as one line: OpenVINO's reported (else configured) properties, or each field."""
    props = settings.get("reported") or settings.get("config") or settings
    return ", ".join(f"{k} {v}" for k, v in props.items() if not isinstance(v, (dict, list)) or v)


def group_rows(results: dict) -> dict[tuple[str, int], list[dict]]:
    """Rows by (backend, batch), in measurement order: one table or panel each (an INT8 row's backend reads
    ``ort-cpu int8``)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results["rows"]:
        precision = r.get("precision", "fp32")
        backend = r["backend"] if precision == "fp32" else f"{r['backend']} {precision}"
        groups.setdefault((backend, r["batch"]), []).append(r)
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
    """Draw latency vs k and the latency each extra task adds, one panel per (backend, batch).

    Args:
        results: results.json's content.
        out_dir: the folder to write ``latency_vs_tasks.png`` and ``added_latency_per_task.png`` to.

    Returns:
        The PNG files written (none without rows).
    """
    import matplotlib  # optional: plotting only, keeps `import benchmarks` light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: as above

    groups = group_rows(results)
    if not groups:
        return []
    device = device_label(results["environment"])
    written = []
    for name, title, panel in zip(PLOTS, ("Latency vs tasks", "Latency each extra task adds"),
                                  (_latency_panel, _added_panel)):
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


def results_schema() -> dict:
    """The JSON schema of results.json (``subtune_edge/schema/bench-results.schema.json``)."""
    return load_schema(BENCH_FORMAT.schema)


def is_results_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an earlier bench's results and nothing else, so it may be replaced.

    That is: a results.json valid per the results schema, besides it only report.md and the plots,
    and, when results.json records a suite, the suite's ``export/`` folder if it is an intact export.

    Args:
        path: a folder.

    Returns:
        True when replacing ``path`` loses nothing but an earlier bench's output.
    """
    path = Path(path)
    try:
        results = json.loads((path / "results.json").read_text())
        entries = list(path.iterdir())
    except (OSError, ValueError):
        return False
    if not is_valid(results, BENCH_FORMAT.schema):
        return False
    for entry in entries:
        if entry.name in REPORT_FILES and entry.is_file() and not entry.is_symlink():
            continue
        if (entry.name == SUITE_EXPORT and results.get("suite") and entry.is_dir() and not entry.is_symlink()
                and is_export_dir(entry)):
            continue
        return False
    return True


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or inside it (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_results_dir(results_dir: str | Path, export_dir: str | Path | None = None, *,
                      param: str = "results_dir") -> Path:
    """Refuse, before any measuring, a results folder that writing the report would destroy.

    Args:
        results_dir: where the report will go.
        export_dir: the export being measured, which must not be inside ``results_dir`` (replacing
            it would delete the export) nor hold it (the export would gain files it does not list).
        param: the parameter naming ``results_dir``, for the message.

    Returns:
        ``results_dir`` as a path.

    Raises:
        SubtuneError: ``results_dir`` is a file, a folder holding anything but an earlier bench's
            results, or nested with the export.
    """
    results_dir = Path(results_dir)
    if export_dir is not None and Path(export_dir).exists() and (
            _inside(Path(export_dir), results_dir) or _inside(results_dir, Path(export_dir))):
        raise SubtuneError(f"{{param}} {results_dir} and the export {export_dir} are nested (one inside the "
                           "other); choose a results folder outside the export", param=param)
    try:
        check_replaceable(results_dir, is_results_dir, WHAT, "{param}")
    except SubtuneError as exc:  # the message as a template, so that the CLI can name its flag
        raise SubtuneError(exc.template, param=param) from None
    return results_dir


def write_files(results: dict, out_dir: Path) -> dict[str, str]:
    """Write results.json, report.md and the plots into the existing folder ``out_dir``.

    Returns:
        File names by kind (``json``, ``markdown``, and each plot's name).
    """
    names = {"json": "results.json", "markdown": "report.md"}
    validate(results, BENCH_FORMAT, "results.json being written")  # a writer never publishes what its reader refuses
    atomic_write_json(out_dir / names["json"], results)
    atomic_write_text(out_dir / names["markdown"], markdown(results))
    for p in plots(results, out_dir):
        names[p.stem] = p.name
    return names


def write_report(results: dict, out_dir: str | Path, *, param: str = "out_dir") -> dict[str, Path]:
    """Write results.json, report.md and the plots as the folder ``out_dir``, in one step.

    The files are written to a hidden folder beside ``out_dir`` that replaces it when complete, so
    a reader sees the old report or the new one. ``out_dir`` must be new, empty, or an earlier
    bench's results (:func:`is_results_dir`); anything else is refused, never emptied.

    Args:
        results: results.json's content (:func:`~subtune_edge.bench.run.run_bench`).
        out_dir: the results folder.
        param: the parameter naming ``out_dir``, for messages (the CLI passes its own).

    Returns:
        The written files by kind (``json``, ``markdown``, ``latency_vs_tasks``, ...).

    Raises:
        SubtuneError: ``out_dir`` holds something else, or is nested with the measured export.
    """
    out = check_results_dir(out_dir, (results.get("export") or {}).get("dir"), param=param)
    with staged_dir(out, owns=is_results_dir, what=WHAT, param=param) as stage:
        names = write_files(results, stage)
    return {kind: out / name for kind, name in names.items()}
