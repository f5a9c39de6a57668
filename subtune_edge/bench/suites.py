"""Declarative benchmark suites (TOML in ``subtune_edge/bench/suites/``).

A suite names a backbone, the tasks (which units each tunes), input size, batch sizes, backends
and budgets. It builds its own export from untrained (synthetic) tasks, because latency and memory
depend on which units a task tunes, not on what it learned, so a suite runs anywhere.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.errors import SubtuneError
from subtune_edge.synthetic import synthetic_task

from .export_time import trained_like_weights
from .harness import BenchConfig, Budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"
BN_INITS = ("timm", "trained-like")
#: where trained-like weights files are cached (one per model and input size)
WEIGHTS_CACHE = Path.home() / ".cache" / "subtune-edge" / "trained-like"


@dataclass
class SuiteTask:
    """One untrained task of a suite: what it tunes decides its branch, so its cost."""

    name: str = field(metadata={"help": "the task's name (its output in the fused graph)"})
    units: str = field(metadata={"help": "units as `tune --blocks` takes them: 'layer4', 'layer4.1,layer4.2', "
                                         "'none'"})
    classes: int = field(default=10, metadata={"help": "head outputs"})
    siamese: bool = field(default=False, metadata={"help": "head on tuned and frozen features side by side"})


@dataclass
class Suite:
    """A declared benchmark run (one ``subtune_edge/bench/suites/*.toml``): model, tasks, settings."""

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
    bn_init: str = "timm"


def available() -> list[str]:
    """The bundled suites' names."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    """Read a bundled suite by name, or a suite file by path.

    Args:
        name_or_path: ``cpu-quick``, ``desktop-gpu``, ``jetson-orin`` or a ``.toml`` path.

    Returns:
        The suite, its settings checked.

    Raises:
        SubtuneError: an unknown name, or a file with missing or wrong fields (named).
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise SubtuneError(f"unknown suite '{name_or_path}'; suites: {', '.join(available())}, or a path to a .toml")
    try:
        data = tomllib.loads(path.read_text())
        budget = Budget(**data.get("budget", {}))
        config = BenchConfig(backends=list(data["backends"]), batch_sizes=list(data["batch_sizes"]),
                             threads=data.get("threads"), budget=budget)
        tasks = [SuiteTask(**t) for t in data["tasks"]]
        h, w = data.get("input_size", [224, 224])
        if not tasks:
            raise ValueError("no [[tasks]]")
        config.check()
        return Suite(name=data.get("name", path.stem), description=data.get("description", ""),
                     backbone=data["backbone"], weights=data.get("weights", "random"), input_size=(int(h), int(w)),
                     tasks=tasks, config=config, opset=int(data.get("opset", 17)), fp16=bool(data.get("fp16")),
                     trt=bool(data.get("trt")), bn_init=_bn_init(data.get("bn_init", "timm")))
    except SubtuneError as exc:
        raise SubtuneError(f"suite {path}: {exc}; see subtune_edge/bench/suites/cpu-quick.toml for the fields") from exc
    except (KeyError, TypeError, ValueError, AttributeError, tomllib.TOMLDecodeError) as exc:
        raise SubtuneError(f"suite {path} is malformed ({type(exc).__name__}: {exc}); see subtune_edge/bench/suites/"
                           "cpu-quick.toml for the fields") from exc


def _bn_init(value) -> str:
    if value not in BN_INITS:
        raise ValueError(f"bn_init must be one of {', '.join(BN_INITS)}, got {value!r}")
    return value


def suite_weights(suite: Suite) -> str:
    """The weights source the suite's backbone is built with.

    ``bn_init = "trained-like"`` (with ``weights = "random"``): timm's seeded random init with
    BatchNorm statistics like a trained network's, written once to :data:`WEIGHTS_CACHE`. Plain
    random init zeroes the last BatchNorm scale of each residual block, so the folded
    convolutions are all zeros and merge in the export, which flatters the fused file's bytes.

    Returns:
        ``suite.weights``, or the trained-like weights file.
    """
    if suite.bn_init != "trained-like" or suite.weights != "random":
        return suite.weights
    h, w = suite.input_size
    path = WEIGHTS_CACHE / f"{suite.backbone}-{h}x{w}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        trained_like_weights(suite.backbone, h, tmp)
        os.replace(tmp, path)
    return str(path)


def build_suite_tasks(suite: Suite):
    """The suite's backbone and its synthetic (never trained) tasks.

    Returns:
        ``(backbone, tasks)``.

    Raises:
        SubtuneError: an unknown model, weights or unit name.
    """
    backbone = create_backbone(suite.backbone, suite_weights(suite),
                               **model_args_for_input(suite.backbone, suite.input_size))
    tasks = [synthetic_task(backbone, t.name, backbone.parse_units(t.units), t.classes, seed=i, siamese=t.siamese,
                            input_size=suite.input_size) for i, t in enumerate(suite.tasks)]
    return backbone, tasks
