"""The benchmark protocol: what k tasks cost fused, against k full-finetuned copies.

For k = 1..N (the first k tasks of an export) and each backend and batch size, the harness runs
(a) the fused graph restricted to those k tasks and (b) the k separate full models one after
another, in the same process on the same staged input, alternating a/b rounds so that drift
(thermal, other load) hits both sides alike. From the medians it derives the measured ratio
fused/separate, the latency each extra task adds, and puts the FLOPs-ideal ratio from the
export's sharing plan beside them.

Fused graphs for k < N are the export's ``model.onnx`` pruned to the first k outputs with
``onnx.utils.extract_model`` (so trunk depth and branches are exactly those of a k-task export);
the torch backends build the k-task ``MultiTaskModel`` directly.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np

from subtune_edge.cost import ideal_ratio, plan_from_json, size_of
from subtune_edge.errors import ExportError, SubtuneError
from subtune_edge.multitask import MultiTaskModel, SharingPlan, TaskModel
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import Manifest, RuntimeSpec, TaskOutput, make_runner, parse_backend, read_manifest
from subtune_edge.runtime.timing import added_per_task, measure_pair, summarize

from .measure import _activate, _Side, prune_outputs
from .memory import TegrastatsSampler
from .memprobe import probe
from .settings import PRECISIONS, BenchConfig, Budget

__all__ = ["PRECISIONS", "BenchConfig", "Budget", "Harness", "measure_pair", "prune_outputs"]

log = logging.getLogger(__name__)


class Harness:
    """Runs the protocol over one export directory (and, for torch backends, the task objects).

    Args:
        export_dir: an export made with ``separate=True`` (the baseline copies).
        config: what to measure.
        tasks: the export's task objects, in manifest order; only the torch backends need them.
        backbone: the backbone the tasks share (with ``tasks``).
        work_dir: where pruned k-task graphs go; default a temporary folder (never the export).
        progress: receives an :class:`~subtune_edge.progress.Event` (stage ``"bench"``) per point.
        memory_probe: measure ONNX Runtime memory in a fresh process (slower, cleaner numbers).

    Raises:
        SubtuneError: bad settings, or an export that is missing, tampered with or lacks the
            separate copies.
    """

    def __init__(self, export_dir: str | Path, config: BenchConfig, *, tasks=None, backbone=None,
                 work_dir: str | Path | None = None, progress: Progress | None = None, memory_probe: bool = True):
        self.export_dir = Path(export_dir)
        self.config = config.check()
        # the one validating reader: schema, the manifest's own hash, and every listed file's sha256
        # (a tampered model.onnx or separate copy is refused here, before anything runs)
        self.manifest: Manifest = read_manifest(self.export_dir, verify_files=True)
        plan = self.manifest.info.get("plan")
        self.plan: SharingPlan | None = plan_from_json(plan) if plan else None
        self.tasks, self.backbone = tasks, backbone
        # pruned k-task graphs go to a scratch folder, never into the export (its manifest lists every file)
        self._scratch = None if work_dir else tempfile.TemporaryDirectory(prefix="subtune-bench-")
        self.work_dir = Path(work_dir) if work_dir else Path(self._scratch.name)
        self.progress = progress
        self.memory_probe = memory_probe
        tasks_all = self.manifest.tasks
        self.measured: tuple[TaskOutput, ...] = tasks_all[: config.max_tasks] if config.max_tasks else tasks_all
        self.outputs = [t.output for t in self.measured]
        missing = [t for t in self.measured if t.separate is None]
        if missing:
            raise ExportError(f"{self.export_dir} has no separate copy of task '{missing[0].name}', the baseline to "
                              "compare against; re-export with separate=True (`subtune-edge export --separate`)")

    @property
    def task_names(self) -> list[str]:
        """The measured tasks' names, in manifest order."""
        return [t.name for t in self.measured]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the export's input."""
        return tuple(self.manifest.preprocessing.input_size)

    def skipped(self) -> list[dict]:
        """The configured backends that cannot run here, each with the reason and what would fix it."""
        out = []
        for backend in self.config.backends:
            try:
                spec, variant = parse_backend(backend)
            except SubtuneError as exc:
                out.append({"backend": backend, "reason": str(exc)})
                continue
            reason = spec.missing()
            if reason is None and spec.consumes == "module" and self.tasks is None:
                reason = (f"{backend} needs the task files to build PyTorch modules: pass tasks and backbone "
                          "(`subtune-edge bench --task-dir`)")
            if reason is None and spec.consumes == "plan" and "model.plan" not in self.manifest.files:
                reason = (f"{backend} needs model.plan in the export: re-export with trt=True "
                          "(`subtune-edge export --trt`)")
            if reason:
                out.append({"backend": backend, "reason": reason})
        return out

    # -- building each side -----------------------------------------------------------------------
    def _fused_onnx(self, k: int, precision: str = "fp32") -> Path:
        file = PRECISIONS[precision][0]
        if k == len(self.manifest.tasks):
            return self.export_dir / file
        path = self.work_dir / (f"fused_{k}.onnx" if precision == "fp32" else f"fused_{k}.{precision}.onnx")
        if not path.is_file():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            prune_outputs(self.export_dir / file, self.outputs[:k], path)
        return path

    def _precision_missing(self, precision: str) -> str | None:
        """Why ``precision`` cannot be measured on this export (None: it can)."""
        file, field_name = PRECISIONS[precision]
        if file not in self.manifest.files:
            return f"{precision} needs {file} in the export: re-export with {precision}=True (--{precision})"
        missing = [t.name for t in self.measured if getattr(t, field_name) is None]
        if missing:
            return (f"{precision} needs the separate {precision} copy of task '{missing[0]}': re-export with "
                    f"separate=True and {precision}=True (--separate --{precision})")
        return None

    def _sides(self, backend: str, batch: int, k: int, precision: str = "fp32") -> tuple[_Side, _Side]:
        threads = self.config.threads
        spec, _ = parse_backend(backend)
        if spec.consumes == "onnx":
            fused_path = self._fused_onnx(k, precision)
            sep_paths = [self.export_dir / getattr(t, PRECISIONS[precision][1]) for t in self.measured[:k]]
            fused = _Side([make_runner(backend, fused_path, threads=threads)], fused_path.stat().st_size)
            sep = _Side([make_runner(backend, p, threads=threads) for p in sep_paths],
                        sum(p.stat().st_size for p in sep_paths))
            if self.memory_probe and spec.memory_probe:  # the fresh-process probe runs ONNX Runtime only
                for side, paths in ((fused, [fused_path]), (sep, sep_paths)):
                    probed = probe(backend, batch, self.input_shape, paths, threads)
                    if probed is None:
                        log.warning("memory probe failed for %s batch %d k=%d; RSS growth measured in-process",
                                    backend, batch, k)
                    else:
                        side.rss_growth, side.rss_source = max(probed["growth"], 0), "fresh process"
            return fused, sep
        if spec.consumes == "plan":
            raise ExportError(f"{backend}: benchmarking k-task subsets of a plan needs one plan per subset; "
                              "use an onnx runtime (ort-trt) for the k sweep or benchmark model.plan alone")
        return self._torch_sides(backend, k)

    def _torch_sides(self, backend: str, k: int) -> tuple[_Side, _Side]:
        tasks = self.tasks[:k]
        fused_module = MultiTaskModel(self.backbone, tasks)
        fused = _Side([make_runner(backend, module=fused_module, output_names=self.outputs[:k],
                                   threads=self.config.threads)], size_of(fused_module).bytes)
        # Each separate copy owns all its weights, as k shipped full-finetuned models would.
        modules = [copy.deepcopy(TaskModel.from_task(self.backbone, t)) for t in tasks]
        sep = _Side([make_runner(backend, module=m, output_names=[o], threads=self.config.threads)
                     for m, o in zip(modules, self.outputs[:k])], sum(size_of(m).bytes for m in modules))
        return fused, sep

    # -- the sweep ---------------------------------------------------------------------------------
    def run(self) -> dict:
        """Measure every (backend, batch, k) point that can run here.

        Returns:
            ``{"rows": [...], "skipped": [...]}``: one row per point (results.json's ``rows``) and the
            backends that could not run, with the reason.
        """
        skipped = self.skipped()
        runnable = [b for b in self.config.backends if b not in {s["backend"] for s in skipped}]
        precisions = []
        for p in self.config.precisions:
            reason = self._precision_missing(p)
            if reason:
                skipped.append({"backend": f"{p} (all backends)", "reason": reason})
            else:
                precisions.append(p)
        n = len(self.outputs)

        def runs(backend: str, precision: str) -> bool:  # the export's files at this precision, on this runtime
            spec: RuntimeSpec = parse_backend(backend)[0]
            return precision == "fp32" or (spec.consumes == "onnx" and precision in spec.precisions)

        points = [(b, p, bs, k) for b in runnable for p in precisions if runs(b, p)
                  for bs in self.config.batch_sizes for k in range(1, n + 1)]
        rows: list[dict] = []
        rng = np.random.default_rng(self.config.seed)
        for i, (backend, precision, batch, k) in enumerate(points):
            label = backend if precision == "fp32" else f"{backend} {precision}"
            emit(self.progress, "bench", f"{label} batch {batch} k={k}", i, len(points),
                 backend=backend, batch=batch, k=k, precision=precision)
            x = rng.standard_normal((batch, *self.input_shape)).astype(np.float32)
            row = self._point(backend, batch, k, {"input": x}, precision)
            if len(self.config.precisions) > 1 or precision != "fp32":
                row["precision"] = precision
            rows.append(row)
        emit(self.progress, "bench", "done", len(points), len(points))
        if self._scratch is not None:
            self._scratch.cleanup()
        for (backend, precision, batch, k) in points:
            if precision != "fp32":  # the row's fused latency against the fused fp32 graph, where both ran
                this = next(r for r in rows if (r["backend"], r.get("precision", "fp32"), r["batch"], r["k"])
                            == (backend, precision, batch, k))
                fp32 = [r for r in rows if (r["backend"], r.get("precision", "fp32"), r["batch"], r["k"])
                        == (backend, "fp32", batch, k)]
                this["fused_vs_fp32_fused"] = this["fused"]["median_ms"] / fp32[0]["fused"]["median_ms"] \
                    if fp32 else None
        for backend, precision in {(b, p) for b, p, _, _ in points}:
            for batch in self.config.batch_sizes:
                sel = [r for r in rows if r["backend"] == backend and r["batch"] == batch
                       and r.get("precision", "fp32") == precision]
                fused_add = added_per_task([r["fused"]["median_ms"] for r in sel])
                sep_add = added_per_task([r["separate"]["median_ms"] for r in sel])
                for r, fa, sa in zip(sel, fused_add, sep_add):
                    r["added_ms_fused"], r["added_ms_separate"] = fa, sa
        return {"rows": rows, "skipped": skipped}

    def _point(self, backend: str, batch: int, k: int, feed: dict, precision: str = "fp32") -> dict:
        fused, sep = self._sides(backend, batch, k, precision)
        tegra = TegrastatsSampler() if TegrastatsSampler.available() else None
        extra = {}
        try:
            _activate(fused, feed)
            _activate(sep, feed)
            settings = fused.runners[0].settings()  # how the runtime runs it, as it reports that while active
            if settings:
                extra["runtime_settings"] = settings
            if tegra:
                with tegra:
                    a, b = measure_pair(fused.runners, sep.runners, self.config.budget)
            else:
                a, b = measure_pair(fused.runners, sep.runners, self.config.budget)
        finally:
            for r in fused.runners + sep.runners:
                r.deactivate()
        fs, ss = summarize(a, batch), summarize(b, batch)
        memory = {"fused_weight_bytes": fused.weight_bytes, "separate_weight_bytes": sep.weight_bytes,
                  "fused_rss_growth_bytes": fused.rss_growth, "separate_rss_growth_bytes": sep.rss_growth,
                  "rss_measured_in": fused.rss_source,
                  "fused_gpu_bytes": fused.gpu_bytes, "separate_gpu_bytes": sep.gpu_bytes}
        if tegra:
            memory["tegrastats_peak_ram_mb"] = tegra.peak_ram_mb()
        onnx_backend = parse_backend(backend)[0].consumes == "onnx"
        return {"backend": backend, "batch": batch, "k": k, "tasks": self.task_names[:k],
                "fused_graph": "pruned" if onnx_backend and k < len(self.manifest.tasks) else
                "full" if onnx_backend else "module", **extra,
                "fused": fs.to_json(), "separate": ss.to_json(),
                "ratio": fs.median_ms / ss.median_ms,
                "ideal_ratio_flops": ideal_ratio(self.plan, k) if self.plan else None,
                "memory": memory}
