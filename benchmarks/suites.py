"""Declarative benchmark suites (TOML in ``benchmarks/suites/``).

A suite names a backbone, the tasks (which units each tunes), input size, batch sizes, backends
and budgets. It builds its own export from untrained (synthetic) tasks, because latency and memory
depend on which units a task tunes, not on what it learned, so a suite runs anywhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from subtune_edge.errors import SubtuneError

from .harness import BenchConfig, Budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"


@dataclass
class SuiteTask:
    name: str
    units: str  # as `--blocks` takes it: 'layer4', 'layer4.1,layer4.2', 'none'
    classes: int = 10
    siamese: bool = False


@dataclass
class Suite:
    name: str
    description: str
    backbone: str
    weights: str
    input_size: tuple[int, int]
    tasks: list[SuiteTask]
    config: BenchConfig
    opset: int = 17
    fp16: bool = False
    trt: bool = False
    extra: dict = field(default_factory=dict)


def available() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise SubtuneError(f"unknown suite '{name_or_path}'; suites: {', '.join(available())}, or a path to a .toml")
    try:
        data = tomllib.loads(path.read_text())
        budget = Budget(**data.get("budget", {}))
        config = BenchConfig(backends=list(data["backends"]), batch_sizes=[int(b) for b in data["batch_sizes"]],
                             threads=data.get("threads"), budget=budget)
        tasks = [SuiteTask(**t) for t in data["tasks"]]
        h, w = data.get("input_size", [224, 224])
        return Suite(name=data.get("name", path.stem), description=data.get("description", ""),
                     backbone=data["backbone"], weights=data.get("weights", "random"), input_size=(int(h), int(w)),
                     tasks=tasks, config=config, opset=int(data.get("opset", 17)), fp16=bool(data.get("fp16")),
                     trt=bool(data.get("trt")))
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise SubtuneError(f"suite {path} is malformed ({type(exc).__name__}: {exc}); see benchmarks/suites/"
                           "cpu-quick.toml for the fields") from exc


def build_suite_tasks(suite: Suite):
    """The suite's backbone and synthetic tasks."""
    from subtune_edge.backbone import create_backbone, model_args_for_input
    from subtune_edge.synthetic import synthetic_task

    backbone = create_backbone(suite.backbone, suite.weights, **model_args_for_input(suite.backbone, suite.input_size))
    tasks = [synthetic_task(backbone, t.name, backbone.parse_units(t.units), t.classes, seed=i, siamese=t.siamese,
                            input_size=suite.input_size) for i, t in enumerate(suite.tasks)]
    return backbone, tasks
