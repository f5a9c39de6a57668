"""Run a modular export: the trunk only as deep as the requested tasks need, then only their branches.

:class:`ModularRunner` is a :class:`~.base.Runner` over ``trunk.onnx`` + ``branches/*.onnx`` whose
outputs are the *selected* tasks' logits (:meth:`ModularRunner.select`, or ``tasks=`` per call of
:meth:`ModularRunner.infer_tasks`). For a selection it:

1. runs the trunk only to the deepest tap the selected branches read. Two strategies:
   ``"depth"`` (default) keeps one trunk session per needed set of taps, each a sub-graph of
   ``trunk.onnx`` cut after those taps (``onnx.utils.Extractor``, built in memory, lazily, once);
   ``"pruned"`` keeps one session of the whole trunk and asks it for the needed outputs only.
   ``benchmarks/modular.py`` measures both (see ``benchmarks/results/modular/``): ONNX Runtime
   executes every node of a session's graph whatever outputs a call fetches, so only a cut graph
   skips the deeper units;
2. runs each selected branch once on its tap(s), never another branch's session.

Activations never leave the runtime between sessions: on CPU the trunk's outputs stay
``OrtValue`` objects handed to the branches as they are (``run_with_ort_values``: no numpy
round-trip, no copy); on CUDA the trunk's outputs are bound on the device with IOBinding and
bound again as the branches' inputs, so only the input and the logits cross the bus.

``runs`` counts the session runs per file (``trunk.onnx``, ``trunk.onnx[tap.a,tap.b]`` for a cut
trunk, ``branches/<task>.onnx``): a real counter, incremented by every ``session.run``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ExportError
from .base import Runner
from .modular_layout import ModularLayout, TapRecord
from .onnxruntime import ort_session
from .registry import require

log = logging.getLogger(__name__)

STRATEGIES = ("depth", "pruned")
DEVICES = {"cpu": "ort-cpu", "cuda": "ort-cuda"}


class ModularRunner(Runner):
    """ONNX Runtime over a modular export's trunk and branch files (CPU, or CUDA with IOBinding).

    Args:
        root: the export folder.
        layout: its manifest's :class:`ModularLayout` (``Manifest.modular``).
        input_name: the image input's name (the trunk's input).
        tasks: the task outputs (or names) to run; None: every task.
        device: ``cpu`` or ``cuda``.
        threads: intra-op threads per session; None lets ONNX Runtime choose.
        strategy: ``depth`` (a cut trunk per needed depth) or ``pruned`` (one trunk session, pruned fetches).
        spinning: keep ONNX Runtime's idle spinning (fastest for one session alone on the machine).

    Attributes:
        runs: session runs per file since activation (a :class:`collections.Counter`).
    """

    def __init__(self, root: str | Path, layout: ModularLayout, input_name: str = "input",
                 tasks: Sequence[str] | None = None, device: str = "cpu", threads: int | None = None,
                 strategy: str = "depth", spinning: bool = False):
        super().__init__()
        if device not in DEVICES:
            raise ExportError(f"a modular export runs on ONNX Runtime 'cpu' or 'cuda', not {{param}} '{device}'",
                              param="device")
        if strategy not in STRATEGIES:
            raise ExportError(f"unknown {{param}} '{strategy}'; choose from {', '.join(STRATEGIES)}",
                              param="strategy")
        self.root, self.layout, self.input_name = Path(root), layout, input_name
        self.device, self.threads, self.strategy, self.spinning = device, threads, strategy, spinning
        self.name = DEVICES[device] + "-modular"
        self.runs: collections.Counter = collections.Counter()
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.selected: list[str] = []
        self.select(tasks)

    # -- what runs ----------------------------------------------------------------------------------
    def select(self, tasks: Sequence[str] | None) -> list[str]:
        """Run only ``tasks`` (names or outputs; None: all) from now on; returns their outputs in export order.

        Raises:
            ExportError: an unknown task, or an empty selection.
        """
        if tasks is None:
            self.selected = [b.output for b in self.layout.branches]
            return self.selected
        if isinstance(tasks, str):
            tasks = [tasks]
        wanted = {self.layout.branch(t).output for t in tasks}
        if not wanted:
            raise ExportError("select at least one task", param="tasks")
        self.selected = [b.output for b in self.layout.branches if b.output in wanted]
        return self.selected

    def needed_taps(self, outputs: Sequence[str] | None = None) -> list[TapRecord]:
        """The taps the branches of ``outputs`` (default: the selection) read, shallowest first."""
        outputs = self.selected if outputs is None else outputs
        names = {t for b in self.layout.branches if b.output in outputs for t in b.taps}
        return [t for t in self.layout.taps if t.name in names]

    def trunk_key(self, taps: Sequence[TapRecord]) -> str:
        """The name ``runs`` counts a trunk run under: the file, or the file cut after ``taps``."""
        names = [t.name for t in taps]
        if self.strategy == "pruned" or names == [t.name for t in self.layout.taps]:
            return self.layout.trunk.file
        return f"{self.layout.trunk.file}[{','.join(names)}]"

    # -- sessions -----------------------------------------------------------------------------------
    def _providers(self) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]

    def _session(self, key: str) -> ort.InferenceSession:
        """The session of ``key`` (a file, or the trunk cut after some taps), created once."""
        sess = self._sessions.get(key)
        if sess is not None:
            return sess
        trunk = self.layout.trunk.file
        if key.startswith(trunk + "["):
            taps = key[len(trunk) + 1:-1].split(",")
            model = onnx.load(str(self.root / trunk))
            cut = onnx.utils.Extractor(model).extract_model([self.input_name], taps)
            source: str | bytes = cut.SerializeToString()
        else:
            source = str(self.root / key)
        sess = ort_session(source, self._providers(), self.threads, self.spinning)
        self._sessions[key] = sess
        return sess

    def _activate(self) -> None:
        require(DEVICES[self.device])
        self.runs.clear()

    def _deactivate(self) -> None:
        self._sessions.clear()

    @property
    def input_names(self) -> list[str]:
        return [self.input_name]

    @property
    def output_names(self) -> list[str]:
        return list(self.selected)

    # -- inference ----------------------------------------------------------------------------------
    def infer_tasks(self, feed: dict[str, np.ndarray], tasks: Sequence[str] | None) -> dict[str, np.ndarray]:
        """One inference of ``tasks`` only (names or outputs; None: the current selection)."""
        if tasks is not None:
            self.select(tasks)
        return self.infer(feed)

    def _stage(self, feed):
        array = np.ascontiguousarray(feed[self.input_name], dtype=np.float32)
        if self.device == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(array)  # wraps the array's memory: no copy
        return ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)

    def _run(self, staged) -> float:
        start = time.perf_counter()
        taps = self.needed_taps()
        key = self.trunk_key(taps)
        trunk = self._session(key)
        names = [t.name for t in taps]
        if self.device == "cpu":
            values = dict(zip(names, trunk.run_with_ort_values(names, {self.input_name: staged})))
            self.runs[key] += 1
            out = {}
            for b in self.layout.branches:
                if b.output in self.selected:
                    sess = self._session(b.file)
                    out[b.output] = sess.run_with_ort_values([b.output], {t: values[t] for t in b.taps})[0]
                    self.runs[b.file] += 1
        else:
            out = self._run_cuda(trunk, key, staged, names)
        self._last = out
        return (time.perf_counter() - start) * 1e3

    def _run_cuda(self, trunk, key: str, staged, names: list[str]) -> dict:
        """IOBinding: the taps stay on the GPU between the trunk and the branches."""
        io = trunk.io_binding()
        io.bind_ortvalue_input(self.input_name, staged)
        for n in names:
            io.bind_output(n, "cuda", 0)
        trunk.run_with_iobinding(io)
        self.runs[key] += 1
        values = dict(zip(names, io.get_outputs()))  # OrtValues on the device
        out = {}
        for b in self.layout.branches:
            if b.output not in self.selected:
                continue
            sess = self._session(b.file)
            bio = sess.io_binding()
            for t in b.taps:
                bio.bind_ortvalue_input(t, values[t])
            bio.bind_output(b.output, "cuda", 0)
            sess.run_with_iobinding(bio)
            bio.synchronize_outputs()
            out[b.output] = bio.get_outputs()[0]
            self.runs[b.file] += 1
        return out

    def _fetch(self) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in (self._last or {}).items()}
