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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from subtune_edge.errors import ExportError
from subtune_edge.runners import Runner, make_runner, missing_reason

from .memory import TegrastatsSampler, nvml_used_bytes, rss_bytes
from .memprobe import probe
from .stats import added_per_task, summarize


@dataclass
class Budget:
    """When a measurement point stops: at least ``min_runs`` and ``seconds``, at most ``max_runs``."""

    warmup: int = 3
    min_runs: int = 10
    max_runs: int = 200
    seconds: float = 10.0


@dataclass
class BenchConfig:
    backends: list[str] = field(default_factory=lambda: ["ort-cpu"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None
    budget: Budget = field(default_factory=Budget)
    max_tasks: int | None = None
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


VARIANTS = ("compile", "graphs")
ProgressFn = Callable[[str, int, int], None]  # (label, done, total)


def read_manifest(export_dir: Path) -> dict:
    """The export's manifest, parsed and validated by the exporter's own reader."""
    from exporters.manifest import read_manifest as read_export_manifest

    if not (Path(export_dir) / "manifest.json").is_file():
        raise ExportError(f"{export_dir} has no manifest.json; create it with `subtune-edge export --separate`")
    return read_export_manifest(export_dir)


def ideal_ratio(plan: dict, k: int) -> float | None:
    """FLOPs of a k-task fused graph over k separate models, from the plan's per-unit costs."""
    cost = plan.get("cost") or {}
    if not cost.get("units"):
        return None
    units = {u["name"]: u["flops"] for u in cost["units"]}
    names = plan["unit_names"]
    branches = plan["branches"][:k]
    n = len(names)
    trunk_end = n if any(b["siamese"] or b["start"] == n for b in branches) else max(b["start"] for b in branches)
    fused = units["stem"] + sum(units[u] for u in names[:trunk_end])
    fused += sum(cost["branches"][b["task"]]["flops"] for b in branches)
    separate = sum(cost["separate_per_task"][b["task"]]["flops"] for b in branches)
    return fused / separate if separate else None


def prune_outputs(model_path: Path, outputs: list[str], out_path: Path) -> Path:
    """The sub-graph of ``model_path`` that computes only ``outputs`` (dead trunk and branches dropped)."""
    import onnx.utils

    onnx.utils.extract_model(str(model_path), str(out_path), ["input"], outputs, check_model=True)
    return out_path


def _time_round(runners: list[Runner]) -> float:
    return sum(r.run_staged() for r in runners)


def measure_pair(fused: list[Runner], separate: list[Runner], budget: Budget) -> tuple[list[float], list[float]]:
    """Alternate one fused round and one separate round until the budget is spent."""
    for _ in range(budget.warmup):
        _time_round(fused)
        _time_round(separate)
    a, b = [], []
    start = time.perf_counter()
    while len(a) < budget.max_runs:
        a.append(_time_round(fused))
        b.append(_time_round(separate))
        if len(a) >= budget.min_runs and time.perf_counter() - start >= budget.seconds:
            break
    return a, b


@dataclass
class _Side:
    """One side of a comparison: its runners, and the memory they took when activated."""

    runners: list[Runner]
    weight_bytes: int
    rss_growth: int | None = None  # measured in a fresh process where possible (memprobe)
    rss_source: str = "in-process"
    gpu_bytes: int | None = None


def _activate(side: _Side, feed: dict[str, np.ndarray]) -> None:
    before_rss, before_gpu = rss_bytes(), nvml_used_bytes()
    for r in side.runners:
        r.stage(feed)
        r.run_staged()  # arenas and lazy allocations happen on the first run
    if side.rss_growth is None:
        side.rss_growth = max(0, rss_bytes() - before_rss)
    after_gpu = nvml_used_bytes()
    if before_gpu is not None and after_gpu is not None:
        side.gpu_bytes = after_gpu - before_gpu
    reported = [r.memory() for r in side.runners]
    if any(reported):
        side.gpu_bytes = side.gpu_bytes or sum(m.get("gpu_max_allocated", 0) + m.get("trt_activation_bytes", 0)
                                               for m in reported) or None


class Harness:
    """Runs the protocol over one export directory (and, for torch backends, the task objects)."""

    def __init__(self, export_dir: str | Path, config: BenchConfig, *, tasks=None, backbone=None,
                 work_dir: str | Path | None = None, progress: ProgressFn | None = None, memory_probe: bool = True):
        self.export_dir = Path(export_dir)
        self.config = config
        self.manifest = read_manifest(self.export_dir)
        self.tasks, self.backbone = tasks, backbone
        # pruned k-task graphs go to a scratch folder, never into the export (its manifest lists every file)
        self._scratch = None if work_dir else tempfile.TemporaryDirectory(prefix="subtune-bench-")
        self.work_dir = Path(work_dir) if work_dir else Path(self._scratch.name)
        self.progress = progress or (lambda *a: None)
        self.memory_probe = memory_probe
        names = [t["output"] for t in self.manifest["tasks"]]
        self.outputs = names[: config.max_tasks] if config.max_tasks else names
        missing = [o for o in self.outputs if not (self.export_dir / "separate" / f"{o}.onnx").is_file()]
        if missing:
            raise ExportError(f"{self.export_dir} has no separate/{missing[0]}.onnx, the baseline to compare "
                              "against; re-export with `subtune-edge export --separate`")

    @property
    def task_names(self) -> list[str]:
        by_output = {t["output"]: t["name"] for t in self.manifest["tasks"]}
        return [by_output[o] for o in self.outputs]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["preprocessing"]["input_size"])

    def skipped(self) -> list[dict]:
        out = []
        for backend in self.config.backends:
            base, _, variant = backend.partition("+")
            reason = missing_reason(base)
            if reason is None and variant and (variant not in VARIANTS or not base.startswith("torch")):
                reason = f"unknown variant '{backend}'; torch backends take +compile or +graphs (CUDA only)"
            if reason is None and variant == "graphs" and base != "torch-cuda":
                reason = "CUDA graphs need torch-cuda"
            if reason is None and backend.startswith("torch") and self.tasks is None:
                reason = f"{backend} needs the task files to build PyTorch modules: pass --task-dir"
            if reason is None and backend == "trt" and not (self.export_dir / "model.plan").is_file():
                reason = "trt needs model.plan in the export: re-export with --trt"
            if reason:
                out.append({"backend": backend, "reason": reason})
        return out

    # -- building each side -----------------------------------------------------------------------
    def _fused_onnx(self, k: int) -> Path:
        if k == len(self.manifest["tasks"]):
            return self.export_dir / "model.onnx"
        path = self.work_dir / f"fused_{k}.onnx"
        if not path.is_file():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            prune_outputs(self.export_dir / "model.onnx", self.outputs[:k], path)
        return path

    def _sides(self, backend: str, batch: int, k: int) -> tuple[_Side, _Side]:
        threads = self.config.threads
        if backend.startswith("ort"):
            fused_path = self._fused_onnx(k)
            sep_paths = [self.export_dir / "separate" / f"{o}.onnx" for o in self.outputs[:k]]
            fused = _Side([make_runner(backend, fused_path, threads=threads)], fused_path.stat().st_size)
            sep = _Side([make_runner(backend, p, threads=threads) for p in sep_paths],
                        sum(p.stat().st_size for p in sep_paths))
            if self.memory_probe:
                for side, paths in ((fused, [fused_path]), (sep, sep_paths)):
                    probed = probe(backend, batch, self.input_shape, paths, threads)
                    if probed is not None:
                        side.rss_growth, side.rss_source = max(probed["growth"], 0), "fresh process"
            return fused, sep
        if backend == "trt":
            raise ExportError("native TensorRT benchmarking of k-task subsets needs one plan per subset; "
                              "use ort-trt for the k sweep or benchmark model.plan alone")
        return self._torch_sides(backend, k)

    def _torch_sides(self, backend: str, k: int) -> tuple[_Side, _Side]:
        from subtune_edge.cost import size_of
        from subtune_edge.multitask import MultiTaskModel, TaskModel

        variant = backend.split("+")[1] if "+" in backend else ""
        opts = {"compile": variant == "compile", "cuda_graphs": variant == "graphs"}
        base = backend.split("+")[0]
        tasks = self.tasks[:k]
        fused_module = MultiTaskModel(self.backbone, tasks)
        fused = _Side([make_runner(base, module=fused_module, output_names=self.outputs[:k],
                                   threads=self.config.threads, **opts)], size_of(fused_module).bytes)
        # Each separate copy owns all its weights, as k shipped full-finetuned models would.
        modules = [copy.deepcopy(TaskModel.from_task(self.backbone, t)) for t in tasks]
        sep = _Side([make_runner(base, module=m, output_names=[o], threads=self.config.threads, **opts)
                     for m, o in zip(modules, self.outputs[:k])], sum(size_of(m).bytes for m in modules))
        return fused, sep

    # -- the sweep ---------------------------------------------------------------------------------
    def run(self) -> dict:
        skipped = self.skipped()
        runnable = [b for b in self.config.backends if b not in {s["backend"] for s in skipped}]
        n = len(self.outputs)
        points = [(b, bs, k) for b in runnable for bs in self.config.batch_sizes for k in range(1, n + 1)]
        rows: list[dict] = []
        rng = np.random.default_rng(self.config.seed)
        for i, (backend, batch, k) in enumerate(points):
            self.progress(f"{backend} batch {batch} k={k}", i, len(points))
            x = rng.standard_normal((batch, *self.input_shape)).astype(np.float32)
            rows.append(self._point(backend, batch, k, {"input": x}))
        self.progress("done", len(points), len(points))
        if self._scratch is not None:
            self._scratch.cleanup()
        for backend in runnable:
            for batch in self.config.batch_sizes:
                sel = [r for r in rows if r["backend"] == backend and r["batch"] == batch]
                fused_add = added_per_task([r["fused"]["median_ms"] for r in sel])
                sep_add = added_per_task([r["separate"]["median_ms"] for r in sel])
                for r, fa, sa in zip(sel, fused_add, sep_add):
                    r["added_ms_fused"], r["added_ms_separate"] = fa, sa
        return {"rows": rows, "skipped": skipped}

    def _point(self, backend: str, batch: int, k: int, feed: dict) -> dict:
        fused, sep = self._sides(backend, batch, k)
        tegra = TegrastatsSampler() if TegrastatsSampler.available() else None
        try:
            _activate(fused, feed)
            _activate(sep, feed)
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
        return {"backend": backend, "batch": batch, "k": k, "tasks": self.task_names[:k],
                "fused_graph": "pruned" if backend.startswith("ort") and k < len(self.manifest["tasks"]) else
                "full" if backend.startswith("ort") else "module",
                "fused": fs.to_json(), "separate": ss.to_json(),
                "ratio": fs.median_ms / ss.median_ms, "ideal_ratio_flops": ideal_ratio(self.manifest["plan"], k),
                "memory": memory}
