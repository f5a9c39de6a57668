"""Verification of an export being built: every file against the PyTorch task models.

The comparator (:mod:`subtune_edge.runtime.compare`) knows nothing of runtimes; this runs the files
on their runners (any registered runtime, :mod:`subtune_edge.runtime.registry`), collects the outputs
and turns failures into one ExportError line.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from subtune_edge.backbone import Backbone
from subtune_edge.errors import ExportError
from subtune_edge.multitask import TaskModel
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import OrtRunner, RuntimeSpec, TorchRunner, get_runtime, make_runner, missing_reason
from subtune_edge.runtime.compare import FP16, FP32, TF32, Tolerance, compare_outputs
from subtune_edge.task import Task

from .inputs import InputBatch, verification_batches
from .shapes import INPUT_NAME

STAGE = "export"


@contextlib.contextmanager
def step(name: str, timings: dict, progress: Progress | None, message: str):
    emit(progress, STAGE, message, step=name)
    start = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)



def reference_outputs(backbone: Backbone, tasks: list[Task], outs: list[str], batches: list[InputBatch]):
    """PyTorch outputs of each task model (fp32, CPU), per batch: [{output: array}]."""
    refs: list[dict] = [{} for _ in batches]
    for task, name in zip(tasks, outs):
        with TorchRunner(TaskModel.from_task(backbone, task), [name]) as runner:
            for i, b in enumerate(batches):
                refs[i][name] = runner.infer({INPUT_NAME: b.array})[name]
    return refs


def check_runner(runner, file: str, refs: list[dict], batches: list[InputBatch], tol: Tolerance,
                  tasks_by_output: dict[str, str]) -> list[dict]:
    """Run every batch, then compare each output over all batches at once (one output scale)."""
    got: dict[str, list] = {}
    with runner:
        names = [n for n in refs[0] if n in runner.output_names]
        for b in batches:
            actual = runner.infer({INPUT_NAME: b.array})
            for name in names:
                got.setdefault(name, []).append(actual[name])
    reference = {name: np.concatenate([r[name] for r in refs]) for name in names}
    actual = {name: np.concatenate(arrays) for name, arrays in got.items()}
    return [{"file": file, "task": tasks_by_output[c.output], **c.to_json(), "inputs": [b.kind for b in batches]}
            for c in compare_outputs(reference, actual, tol)]


def raise_failures(results: list[dict]) -> None:
    failed = [r for r in results if not r["passed"]]
    if failed:
        r = failed[0]
        more = f" ({len(failed) - 1} more output(s) failed too)" if len(failed) > 1 else ""
        raise ExportError(f"verification failed for task '{r['task']}' in {r['file']}: {r['reason']}{more}; "
                          "nothing was written (export without verification to inspect the files anyway)")




def verify_files(backbone, tasks, outs, tasks_by_output, staging: Path, preprocessing: dict, size, batch, fp16: bool,
            separate: bool, images, timings: dict, progress) -> tuple[dict, tuple]:
    """Every ONNX file against the PyTorch task models; returns the record and (refs, batches)."""
    with step("verify", timings, progress, "verifying every output against the PyTorch task models"):
        batches = verification_batches(preprocessing, size, batch, images)
        refs = reference_outputs(backbone, tasks, outs, batches)
        results = check_runner(OrtRunner(staging / "model.onnx"), "model.onnx", refs, batches, FP32,
                                tasks_by_output)
        for name in outs if separate else ():
            rel = f"separate/{name}.onnx"
            results += check_runner(OrtRunner(staging / rel), rel, refs, batches, FP32, tasks_by_output)
        raise_failures(results)
        if fp16:
            results += check_runner(OrtRunner(staging / "model.fp16.onnx"), "model.fp16.onnx", refs, batches,
                                     FP16, tasks_by_output)
            raise_failures(results)
    return {"passed": True, "tolerance": FP32.rel, "tolerances": {t.name: t.to_json() for t in (FP32, FP16, TF32)},
            "reference": "each task's PyTorch model (TaskModel), float32 on CPU", "runtime": "onnxruntime CPU",
            "inputs": [b.to_json() for b in batches], "results": results}, (refs, batches)


def verify_plan(staging: Path, recipe, tasks_by_output, verification: dict, checked: tuple, timings,
                 progress) -> dict:
    reason = missing_reason("trt")
    if reason:
        return {"passed": None, "skipped": reason}
    refs, batches = checked
    tol = FP16 if recipe.precision == "fp16" else TF32
    with step("tensorrt-verify", timings, progress, "verifying model.plan"):
        results = check_runner(make_runner("trt", staging / "model.plan"), "model.plan", refs, batches, tol,
                               tasks_by_output)
    raise_failures(results)
    verification["results"] += results
    return {"passed": True, "tolerance": tol.name}


# -- the same checks on other runtimes and formats: any registered runtime, ONNX Runtime's .ort files ------------
#: an INT8 QDQ file on another runtime (or as .ort) against the same file in ONNX Runtime CPU: both run the
#: recorded scales, but a value on a rounding boundary may land one quantization step apart and carry on
INT8_RUNTIME = Tolerance("int8-runtime", rel=0.1, tie=0.02)
#: files whose verification is not against PyTorch (the INT8 file passes its own gate against fp32): checked
#: against ONNX Runtime CPU on the same file instead, with this tolerance
RUNTIME_ONLY = {"model.int8.onnx": INT8_RUNTIME}
#: the fused files ``verify_with`` runs on another runtime, where they were written
FUSED_FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx")


def verify_with_runtimes() -> list[str]:
    """The runtimes ``verify_with`` may name: registered ``onnx`` runtimes that verify (not ONNX Runtime CPU,
    which every export is verified on already)."""
    from subtune_edge.runtime import runtimes

    return [s.name for s in runtimes() if s.consumes == "onnx" and s.verifies]


def check_verify_with(names: tuple[str, ...], verify: bool) -> list[RuntimeSpec]:
    """The specs of ``verify_with``, refused before any work when unknown, not verifying, or missing here.

    Raises:
        ExportError: an unknown runtime, one that cannot verify files, or verification turned off.
        RuntimeMissingError: a runtime that is not installed (with its install line).
    """
    allowed = verify_with_runtimes()
    unknown = [r for r in names if r not in allowed]
    if unknown:
        raise ExportError(f"cannot verify on '{unknown[0]}'; {{param}} takes {', '.join(allowed)}",
                          param="verify_with")
    if names and not verify:
        raise ExportError("{param} verifies on more runtimes, but verification is off; turn it on or drop them",
                          param="verify_with")
    specs = [get_runtime(r) for r in names]
    for spec in specs:
        spec.require()  # before any work: a missing OpenVINO should cost nothing
    return specs


def _source_tolerances(verification: dict, source: str) -> dict[str, Tolerance]:
    """Output -> the tolerance ``source`` was verified with (fp32, fp16, an INT8 gate's ...)."""
    known = {name: Tolerance(**{k: t[k] for k in ("name", "rel", "tie")})
             for name, t in (verification.get("tolerances") or {}).items()}
    known.update({t.name: t for t in (FP32, FP16, TF32)})
    return {r["output"]: known[r["tolerance"]] for r in verification.get("results", [])
            if r.get("file") == source and r.get("runtime") is None and r["tolerance"] in known}


def check_like_source(make, file: str, source: str, verification: dict, checked: tuple,
                      tasks_by_output: dict[str, str], runtime: str | None = None,
                      floor: Tolerance | None = None) -> list[dict]:
    """Run ``file`` (made by ``make(path)``) on the verification inputs with its source file's tolerances.

    Args:
        make: builds the runner for a path (``OpenVinoRunner``, ``OrtRunner``).
        file: the file to check, relative to the staging folder it is joined to by ``make``.
        source: the ONNX file whose recorded tolerances apply (``model.onnx`` for ``model.ort``).
        verification: the record :func:`verify_files` returned (results so far).
        checked: ``(refs, batches)`` from :func:`verify_files`.
        tasks_by_output: output name -> task name.
        runtime: recorded as each result's ``runtime`` when it is not ONNX Runtime CPU.
        floor: the runtime's own tolerance: a source tolerance tighter than it is loosened to it
            (a GPU runtime's TF32 kernels against an fp32 file).

    Returns:
        One result per output, like :func:`verify_files`' (``runtime`` added when given).
    """
    refs, batches = checked
    by_tol: dict[Tolerance, list[str]] = {}
    for output, tol in _source_tolerances(verification, source).items():
        if floor is not None and floor.rel > tol.rel:
            tol = floor
            verification.setdefault("tolerances", {})[tol.name] = tol.to_json()
        by_tol.setdefault(tol, []).append(output)
    if not by_tol and source in RUNTIME_ONLY:  # no PyTorch tolerance: the source file in ONNX Runtime is the reference
        tol = RUNTIME_ONLY[source]
        verification.setdefault("tolerances", {})[tol.name] = tol.to_json()
        with OrtRunner(Path(make(source).path)) as ort_runner:
            refs = [ort_runner.infer({INPUT_NAME: b.array}) for b in batches]
        results = check_runner(make(file), file, refs, batches, tol, tasks_by_output)
        return [r | {"reference": f"onnxruntime CPU, {source}"} | ({"runtime": runtime} if runtime else {})
                for r in results]
    results = []
    for tol, outputs in by_tol.items():
        subset = [{o: r[o] for o in outputs} for r in refs]
        results += check_runner(make(file), file, subset, batches, tol, tasks_by_output)
    return [r | {"runtime": runtime} if runtime else r for r in results]


def verify_on(spec: RuntimeSpec, staging: Path, verification: dict, checked: tuple, tasks_by_output: dict[str, str],
              timings: dict, progress) -> None:
    """Every fused ONNX file again on ``spec``'s runtime, with each file's own tolerance (or the runtime's).

    Appends the results (``runtime: <name>``) to ``verification`` and records the runtime's settings
    under ``verification["runtimes"][<name>]``.

    Raises:
        ExportError: an output past its tolerance on that runtime (nothing is written then).
    """
    files = [f for f in FUSED_FILES if (Path(staging) / f).is_file() and _precision(f) in spec.precisions]
    results: list[dict] = []
    with step(f"{spec.name}-verify", timings, progress, f"verifying the ONNX files on {spec.name}"):
        for file in files:
            results += check_like_source(lambda rel: spec.runner(Path(staging) / rel), file, file, verification,
                                         checked, tasks_by_output, runtime=spec.name, floor=spec.tolerance)
    raise_failures(results)
    verification["results"] += results
    with spec.runner(Path(staging) / "model.onnx") as runner:  # the settings as the runtime reports them, active
        verification.setdefault("runtimes", {})[spec.name] = {**runner.settings(), "files": files,
                                                              "version": spec.version()}


def _precision(file: str) -> str:
    """``model.onnx`` -> fp32, ``model.fp16.onnx`` -> fp16, ``model.int8.onnx`` -> int8."""
    parts = file.split(".")
    return parts[-2] if len(parts) > 2 else "fp32"


def verify_ort_format(staging: Path, ort_record: dict, verification: dict, checked: tuple,
                      tasks_by_output: dict[str, str], timings: dict, progress) -> None:
    """Every ``.ort`` file in ONNX Runtime CPU, with the tolerances of the ONNX file it was converted from.

    Raises:
        ExportError: an output past its tolerance (nothing is written then).
    """
    results: list[dict] = []
    with step("ort-format-verify", timings, progress, "verifying the .ort files"):
        for source, file in ort_record["files"].items():
            results += check_like_source(lambda rel: OrtRunner(Path(staging) / rel), file, source, verification,
                                         checked, tasks_by_output)
    raise_failures(results)
    verification["results"] += results
