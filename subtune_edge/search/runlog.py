"""The run log: every finished run of a profile or a search, so that a search can resume.

:class:`RunLog` records every finished run in a JSON file, rewritten atomically after each run, so
an interrupted search started again with the same log skips what is already done. A log is read
back against ``subtune_edge/schema/runlog.schema.json``: a hand-edited or foreign file is refused
in one line naming the file and the field, never half-used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SubtuneError
from ..io import atomic_write_bytes, jsonable
from ..schema import FileFormat, validate
from .executor import Executor, RunFn

log = logging.getLogger(__name__)

LOG_FORMAT = "subtune-edge.runs"
LOG_VERSION = 1
#: the run log's schema (``subtune_edge/schema/runlog.schema.json``) and how its errors read
RUNLOG_FORMAT = FileFormat("runlog.schema.json", SubtuneError, "delete it or use another run log")


class RunLog:
    """Every finished run of a profile or a search, by key, in one JSON file.

    ``context`` holds what all runs of the log share (backbone, data, training config); a log
    written for another context is refused rather than silently mixed.

    Args:
        path: the log file (read if it exists); ``None`` keeps the log in memory only.
        context: what every run of the log shares.

    Raises:
        SubtuneError: the file exists but is not a valid run log for this context.
    """

    def __init__(self, path: str | os.PathLike | None, context: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.context = jsonable(context or {})
        self.runs: dict[str, dict] = {}
        self.extra: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def _refuse(self, problem: str) -> SubtuneError:
        return SubtuneError(f"run log {self.path}: {problem}; delete it or use another run log")

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._refuse(f"unreadable ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != LOG_FORMAT:
            kind = f"a {type(data).__name__}" if not isinstance(data, dict) else f"'format' is not '{LOG_FORMAT}'"
            raise self._refuse(f"not a subtune-edge run log ({kind})")
        validate(data, RUNLOG_FORMAT, f"run log {self.path}")
        runs = data.get("runs") or {}
        if self.context and data.get("context") and data["context"] != self.context:
            diff = _first_difference(data["context"], self.context)
            raise SubtuneError(f"run log {self.path} was written for other settings ({diff}); use another run "
                               "log, or delete it to start over")
        self.runs = dict(runs)
        self.extra = dict(data.get("extra") or {})
        log.debug("run log %s: %d runs", self.path, len(self.runs))

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def __len__(self) -> int:
        return len(self.runs)

    def get(self, key: str) -> dict | None:
        """The logged result of run ``key`` (JSON), or ``None``."""
        return self.runs.get(key)

    def record(self, key: str, result: dict) -> None:
        """Log a finished run and rewrite the file."""
        self.runs[key] = jsonable(result)
        self.save()

    def set_extra(self, name: str, value: Any) -> None:
        """Store what the search concluded (its rounds, its choice) beside the runs."""
        self.extra[name] = jsonable(value)
        self.save()

    def save(self) -> None:
        """Rewrite the file atomically (nothing for an in-memory log)."""
        if self.path is None:
            return
        data = {"format": LOG_FORMAT, "version": LOG_VERSION, "context": self.context, "runs": self.runs,
                "extra": self.extra}
        validate(data, RUNLOG_FORMAT, f"run log {self.path} being written")
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())


def run_all(executor: Executor, fn: RunFn, specs: list, log: RunLog, *, key: Callable[[Any], str],
            to_json: Callable[[Any], dict], on_result: Callable[[Any, dict, bool], None] | None = None
            ) -> dict[str, dict]:
    """Run every spec whose key is not in ``log`` (each result logged as it arrives).

    Args:
        executor: where the runs go.
        fn: ``fn(spec, device)``, module-level (it is pickled for process executors).
        specs: the runs; duplicates (same key) run once.
        log: the run log; runs already in it are not run again.
        key: a spec's log key.
        to_json: a result as the log stores it.
        on_result: ``on_result(spec, result, reused)`` for each one, reused ones first.

    Returns:
        Every spec's result (JSON) by key.
    """
    by_key: dict[str, Any] = {}
    for s in specs:
        by_key.setdefault(key(s), s)
    todo = [s for k, s in by_key.items() if k not in log]
    for k, s in by_key.items():
        if k in log and on_result:
            on_result(s, log.get(k), True)
    for result in executor.map(fn, todo):
        data = to_json(result)
        log.record(data["key"], data)
        if on_result:
            on_result(by_key.get(data["key"]), data, False)
    return {k: log.get(k) for k in by_key}


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path}: {a!r} in the log, {b!r} now"
