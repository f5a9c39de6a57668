"""One runner per runtime behind one small interface, in the shape of Polygraphy's runners.

Export verification, ``load_export`` and the benchmark harness all run models the same way::

    with OrtRunner("model.onnx", device="cpu") as runner:
        outputs = runner.infer({"input": batch})          # name -> numpy array

Timing code uses the staged path instead, so that host copies stay out of the measurement the
way a deployed app keeps them out (ORT IOBinding, device buffers for TensorRT and torch)::

    runner.stage(feed)            # inputs to where the runtime wants them, once
    ms = runner.run_staged()      # one inference on the staged inputs, completed; returns ms
    outputs = runner.fetch()      # outputs of the last run, as numpy

Sessions and engines are created lazily in ``activate()`` so that a runner is cheap to build and
memory can be measured around activation. A runtime that is not installed is reported by
:func:`~.registry.missing_reason` with the install hint, never by an ImportError deep inside.
Each runtime lives in its own module (:mod:`.onnxruntime`, :mod:`.openvino`, :mod:`.tensorrt`,
:mod:`.torch`) with its :class:`~.registry.RuntimeSpec`; :func:`~.registry.make_runner` picks one
by name from the registry (:mod:`.registry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import SubtuneError


class Runner(ABC):
    """Run one model on one runtime. Use as a context manager (activate / deactivate)."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self._staged: dict | None = None
        self._last: dict[str, np.ndarray] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> Runner:
        """Create the session / engine (once); a second call is free."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the session / engine and the staged buffers."""
        if self.is_active:
            self._deactivate()
            self.is_active = False
            self._staged = None

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference: input name -> array in, output name -> numpy array out.

        Args:
            feed: a value for every input of the model, by name.

        Returns:
            Every output of the model, by name, on the host.

        Raises:
            SubtuneError: an input has no value in ``feed``.
        """
        self.stage(feed)
        self.run_staged()
        return self.fetch()

    def stage(self, feed: dict[str, np.ndarray]) -> None:
        """Put the inputs where the runtime reads them (a GPU buffer, an IOBinding), for timed runs."""
        self.activate()
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise SubtuneError(f"{self.name}: no value for input(s) {missing}; the model's inputs are "
                               f"{self.input_names}")
        self._staged = self._stage({n: np.ascontiguousarray(feed[n]) for n in self.input_names})

    def run_staged(self) -> float:
        """Run once on the staged inputs; returns milliseconds, measured after completion."""
        if self._staged is None:
            raise RuntimeError(f"{self.name}: call stage(feed) before run_staged()")
        return self._run(self._staged)

    def fetch(self) -> dict[str, np.ndarray]:
        """The outputs of the last run, as numpy arrays by output name."""
        return self._fetch()

    def memory(self) -> dict:
        """Runtime-reported memory (bytes) where the runtime reports it; empty otherwise."""
        return {}

    def settings(self) -> dict:
        """How the runtime was set up (threads, optimisation level, compile properties), for results
        files; empty where there is nothing to say."""
        return {}

    # -- what each runtime implements -------------------------------------------------------------
    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release the session/engine; optional."""

    @abstractmethod
    def _stage(self, feed: dict[str, np.ndarray]): ...

    @abstractmethod
    def _run(self, staged) -> float: ...

    @abstractmethod
    def _fetch(self) -> dict[str, np.ndarray]: ...


class ListedRunner(Runner):
    """A runner that lists its input and output names when it activates, and drops its handles when it deactivates.

    A subclass's ``_activate`` fills ``_inputs`` and ``_outputs`` (the model's names, in order) and
    sets the attributes named in ``_handles`` (session, engine, request); ``_deactivate`` sets those
    back to None, in that order.
    """

    #: the attributes holding what activation created, released in this order
    _handles: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def _deactivate(self) -> None:
        for attr in self._handles:
            setattr(self, attr, None)

    @property
    def input_names(self) -> list[str]:
        self.activate()
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        self.activate()
        return list(self._outputs)
