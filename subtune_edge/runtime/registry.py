"""The runtimes an export runs on, as registered plug-ins: one :class:`RuntimeSpec` each.

Every place that runs a model by name reads this registry and nothing else: :func:`load_export`
(``runtime=``), export verification (``verify_with``), ``predict --runtime``, ``bench --backend``,
the benchmark harness, ``profile-device`` and :func:`missing_reason`. No other module tests a
backend's name: what a runtime consumes, where it runs, which precisions and file formats it
loads, how to install it and how close its outputs must come to PyTorch's are fields of its spec.

A runtime is one module that defines its :class:`~.base.Runner` and a module-level ``RUNTIMES``
tuple of specs, plus one line in :data:`BUILTIN` (or, for a package of your own, an entry point
in the ``subtune_edge.runtimes`` group naming that module). Code can also call
:func:`register_runtime` directly. Specs load lazily, on the first look-up: a probe checks
whether the runtime can run here without importing it (``importlib.util.find_spec``), and its
runner imports the runtime only when it activates, so a missing OpenVINO or TensorRT costs
nothing until it is asked for, and is then one line naming what to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RuntimeMissingError, SubtuneError
from .base import Runner
from .compare import FP32, Tolerance

log = logging.getLogger(__name__)

#: the modules holding the built-in runtimes' specs (each defines ``RUNTIMES``); a new runtime is one line here
BUILTIN = (
    "subtune_edge.runtime.onnxruntime",
    "subtune_edge.runtime.openvino",
    "subtune_edge.runtime.tensorrt",
    "subtune_edge.runtime.torch",
)
#: the entry-point group through which an installed package adds runtimes (each entry: a module with
#: ``RUNTIMES``, or a spec, or an iterable of specs)
ENTRY_POINTS = "subtune_edge.runtimes"
#: what a runtime runs: an ``.onnx`` file (``formats`` says whether its ``.ort`` twin too), a TensorRT
#: plan, or a PyTorch module built from the task files
CONSUMES = ("onnx", "plan", "module")
DEVICES = ("cpu", "cuda")


def needs_module(module: str, install: str, what: str | None = None) -> Callable[[], str | None]:
    """A probe: the runtime needs the importable package ``module`` (found without importing it).

    Args:
        module: the import name (``openvino``, ``tensorrt``).
        install: the install line shown when it is missing.
        what: how to name it in the message (default: the module name).

    Returns:
        A function that returns the one-line reason it cannot run here, or ``None``.
    """
    def probe() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"needs {what or module}: {install}"
        return None

    return probe


def package_version(distribution: str) -> Callable[[], str | None]:
    """A version getter reading the installed distribution's metadata (no import of the runtime)."""
    def version() -> str | None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    return version


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: how to build its runner and what it can run.

    Attributes:
        name: the name users type everywhere (``ort-cpu``, ``openvino``, ``trt``, ``torch-cuda``).
        family: the runtime as ``load_export(runtime=...)`` also accepts it, choosing the spec by
            ``device`` (``onnxruntime`` -> ``ort-cpu`` / ``ort-cuda``).
        consumes: ``onnx`` (an export's ``.onnx`` files), ``plan`` (``model.plan``) or ``module``
            (a PyTorch module built from the task files).
        factory: ``factory(source, threads=None, **options) -> Runner``: ``source`` is the file for
            ``onnx`` / ``plan``; for ``module`` it is ``(module, output_names)``.
        probe: why it cannot run on this machine (one line with the fix), or ``None``; must not
            import the runtime.
        install: what to install, for docs and messages.
        device: ``cpu`` or ``cuda``: where it runs.
        precisions: the export's precisions it runs (``fp32``, ``fp16``, ``int8``).
        formats: file formats it loads: ``onnx``, ``ort`` (ONNX Runtime's mobile format), ``plan``.
        tolerance: how close its fp32 outputs must be to PyTorch's in export verification.
        verifies: whether ``export --verify-with`` may name it (an ``onnx`` runtime other than the
            exporter's own ONNX Runtime CPU).
        memory_probe: whether the benchmark's fresh-process memory probe (``bench.memprobe``) runs it.
        modular: whether a modular export's trunk and branches run on it (:class:`~.modular.ModularRunner`).
        variants: backend suffixes it takes (``compile`` for ``torch-cpu+compile``).
        alone: runner options for a session that is alone in its process (``load_export``: an app running
            an export), where they differ from a benchmark's side-by-side sessions.
        version: the installed runtime's version, or ``None``; recorded with results.
        description: one line for ``--help`` and the docs.
    """

    name: str
    family: str
    consumes: str
    factory: Callable[..., Runner]
    probe: Callable[[], str | None] = field(default=lambda: None)
    install: str = ""
    device: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    formats: tuple[str, ...] = ("onnx",)
    tolerance: Tolerance = FP32
    verifies: bool = True
    memory_probe: bool = False
    modular: bool = False
    variants: tuple[str, ...] = ()
    alone: dict = field(default_factory=dict)
    version: Callable[[], str | None] = field(default=lambda: None)
    description: str = ""

    def __post_init__(self) -> None:
        if self.consumes not in CONSUMES:
            raise ValueError(f"runtime '{self.name}': consumes must be one of {', '.join(CONSUMES)}")
        if self.device not in DEVICES:
            raise ValueError(f"runtime '{self.name}': device must be one of {', '.join(DEVICES)}")
        if not self.name or "+" in self.name or "," in self.name:
            raise ValueError(f"runtime name {self.name!r} must be non-empty, without '+' or ','")

    def missing(self) -> str | None:
        """Why this runtime cannot run here (one line with the fix), or ``None`` when it can."""
        reason = self.probe()
        return None if reason is None else f"{self.name} {reason}"

    def require(self) -> None:
        """Raise :class:`RuntimeMissingError` (with the install line) unless it can run here."""
        reason = self.missing()
        if reason:
            raise RuntimeMissingError(reason)

    def runner(self, source, *, threads: int | None = None, **options) -> Runner:
        """An inactive runner of ``source`` (see :attr:`factory`)."""
        return self.factory(source, threads=threads, **options)


_REGISTRY: dict[str, RuntimeSpec] = {}
_LOADED = False


def register_runtime(spec: RuntimeSpec, *, replace: bool = False) -> RuntimeSpec:
    """Add a runtime; its name is then valid wherever a runtime or backend is named.

    Args:
        spec: the runtime.
        replace: allow replacing a runtime of the same name (otherwise that is an error).

    Returns:
        ``spec``, so a module can write ``SPEC = register_runtime(RuntimeSpec(...))``.

    Raises:
        ValueError: a runtime of that name is registered already and ``replace`` is false.
    """
    _load()
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a runtime named '{spec.name}' is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_runtime(name: str) -> None:
    """Remove a runtime (tests that register a toy runtime clean up with it)."""
    _REGISTRY.pop(name, None)


def _add(specs: Iterable[RuntimeSpec], origin: str) -> None:
    for spec in specs:
        if not isinstance(spec, RuntimeSpec):
            raise TypeError(f"{origin} lists {spec!r}, not a RuntimeSpec")
        _REGISTRY.setdefault(spec.name, spec)


def _load() -> None:
    """Import the built-in runtime modules and the installed plug-ins, once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in BUILTIN:
        _add(importlib.import_module(module).RUNTIMES, module)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            value = ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-in runtimes down with it
            log.warning("runtime plug-in %s could not be loaded (%s); skipping it", ep.name, exc)
            continue
        specs = getattr(value, "RUNTIMES", value)
        _add([specs] if isinstance(specs, RuntimeSpec) else specs, f"entry point {ep.name}")


def runtimes() -> list[RuntimeSpec]:
    """Every registered runtime, built-ins first, in registration order."""
    _load()
    return list(_REGISTRY.values())


def runtime_names(consumes: str | None = None) -> list[str]:
    """The registered runtime names (of those consuming ``consumes``, when given)."""
    return [s.name for s in runtimes() if consumes is None or s.consumes == consumes]


def families() -> list[str]:
    """The runtime families ``load_export(runtime=...)`` accepts besides the runtime names."""
    out: list[str] = []
    for s in runtimes():
        if s.family not in out:
            out.append(s.family)
    return out


def get_runtime(name: str) -> RuntimeSpec:
    """The runtime called ``name``.

    Raises:
        SubtuneError: no runtime has that name; the message lists those that exist.
    """
    _load()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise SubtuneError(f"unknown runtime '{name}'; choose from {', '.join(runtime_names())}")
    return spec


def parse_backend(backend: str) -> tuple[RuntimeSpec, str]:
    """``torch-cuda+graphs`` -> (the ``torch-cuda`` spec, ``graphs``); the variant is ``""`` when none.

    Raises:
        SubtuneError: an unknown runtime, or a variant it does not take.
    """
    base, _, variant = backend.partition("+")
    spec = get_runtime(base)
    if variant and variant not in spec.variants:
        takes = ", ".join(f"+{v}" for v in spec.variants) or "no variants"
        raise SubtuneError(f"'{backend}': {base} takes {takes}")
    return spec, variant


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here, with what to install.

    Args:
        backend: a registered runtime name, optionally with a variant (``torch-cuda+graphs``).

    Returns:
        One line naming what is missing (or that the name is unknown), or ``None`` when it can run here.
    """
    try:
        spec, _ = parse_backend(backend)
    except SubtuneError as exc:
        return str(exc)
    return spec.missing()


def require(backend: str) -> None:
    """Refuse a backend this machine cannot run, before any work is spent on it.

    Raises:
        RuntimeMissingError: the runtime (or the GPU it needs) is missing; the message says what to install.
    """
    reason = missing_reason(backend)
    if reason:
        raise RuntimeMissingError(reason)


def make_runner(backend: str, source: str | Path | None = None, *, module=None, output_names=None,
                threads: int | None = None, **options) -> Runner:
    """The runner of a registered runtime, by name.

    Args:
        backend: a runtime name (see :func:`runtime_names`), with a variant where it takes one
            (``torch-cpu+compile``).
        source: the file it runs (``.onnx`` / ``.ort`` / ``model.plan``), for file-consuming runtimes.
        module: the PyTorch module, for ``module`` runtimes.
        output_names: the module's output names, for ``module`` runtimes.
        threads: CPU threads for the runtime (ONNX Runtime intra-op, OpenVINO's ``INFERENCE_NUM_THREADS``).
        **options: passed on to the runner.

    Returns:
        An inactive runner (activate it, or use it as a context manager).

    Raises:
        SubtuneError: an unknown runtime or variant, or the wrong kind of source for it.
    """
    spec, variant = parse_backend(backend)
    if variant:
        options[variant] = True
    if spec.consumes == "module":
        if module is None:
            raise SubtuneError(f"{backend} runs a PyTorch module; pass module= and output_names=")
        return spec.runner((module, list(output_names or [])), threads=threads, **options)
    if source is None:
        raise SubtuneError(f"{backend} runs a file ({spec.consumes}); pass its path")
    return spec.runner(Path(source), threads=threads, **options)


def resolve(runtime: str, device: str) -> RuntimeSpec:
    """The runtime ``load_export`` runs on, from its ``runtime`` (a name or a family) and ``device``.

    Args:
        runtime: a runtime name (``ort-cpu``, ``openvino``, a plug-in's) or a family (``onnxruntime``).
        device: ``auto``, ``cpu`` or ``cuda``; for a family ``auto`` takes its CUDA runtime where that
            can run here, else its CPU one.

    Raises:
        SubtuneError: an unknown runtime, a device the runtime does not run on, or a family without
            a runtime for that device.
    """
    _load()
    if runtime in _REGISTRY:
        spec = _REGISTRY[runtime]
        if device not in ("auto", spec.device):
            raise SubtuneError(f"{spec.name} runs on {spec.device}; pass {{param}} {spec.device} (or auto), not "
                               f"'{device}'", param="device")
        return spec
    members = [s for s in _REGISTRY.values() if s.family == runtime and s.consumes != "module"]
    if not members:
        raise SubtuneError(f"unknown {{param}} '{runtime}'; choose a runtime ({', '.join(runtime_names())}) or a "
                           f"family ({', '.join(families())})", param="runtime")
    if device == "auto":
        cuda = next((s for s in members if s.device == "cuda" and s.missing() is None), None)
        return cuda or next((s for s in members if s.device == "cpu"), members[0])
    chosen = next((s for s in members if s.device == device), None)
    if chosen is None:
        raise SubtuneError(f"{runtime} has no runtime for device '{device}'; its runtimes are "
                           f"{', '.join(f'{s.name} ({s.device})' for s in members)}", param="device")
    return chosen
