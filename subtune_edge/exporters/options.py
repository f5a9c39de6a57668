"""How an export is made: :class:`ExportOptions`, with the INT8 and TensorRT options nested in it.

Every option is declared once, here: its name, type, default and help. ``export_tasks`` takes the
dataclass (or its fields as keywords), and ``subtune-edge export`` generates its command-line
options from the same fields (:func:`subtune_edge.commands._options.dataclass_options`), so the
library and the CLI cannot drift. A nested variant (``int8``, ``trt``) is ``None`` when off; its
fields are also accepted flat, by the names the CLI spells them (``int8_fallback=True``,
``calibration_samples=64``, ``workspace=...``), which turn the variant on.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from subtune_edge.docs import documented, option
from subtune_edge.errors import ExportError

from .int8.options import Int8Options
from .shapes import parse_batch, parse_size
from .tensorrt import DEFAULT_WORKSPACE

#: how the tasks' branches are laid out in ``model.onnx`` (see :mod:`.steps.branches`)
BRANCHES = ("auto", "plain", "grouped", "stacked")


@documented
@dataclass(frozen=True)
class TrtOptions:
    """How ``model.plan`` is built with TensorRT (``export --trt``)."""

    workspace: int = field(default=DEFAULT_WORKSPACE, metadata=option(
        "TensorRT workspace pool limit (bytes; the CLI takes MB)", flag="--workspace", kw="workspace", metavar="MB",
        scale=1 << 20))
    timing_cache: str | None = field(default=None, metadata=option(
        "TensorRT timing cache file, reused across builds (default: ~/.cache/subtune-edge/)", flag="--timing-cache",
        kw="timing_cache"))


def _branches(text: str) -> str:
    """``auto``/``plain``/``grouped``/``stacked``, or a bench results file (or folder) to take the choice from."""
    if text in BRANCHES or Path(text).is_file() or (Path(text) / "results.json").is_file():
        return text
    raise ExportError(f"'{text}' is neither {', '.join(BRANCHES)} nor a bench results file; run `subtune-edge bench "
                      "EXPORT --variants plain,grouped` on the target to get one", param="branches")


@documented
@dataclass(frozen=True)
class ExportOptions:
    """How :func:`~subtune_edge.exporters.export_tasks` exports; every field is also a keyword of it."""

    weights: str | None = field(default=None, metadata=option(
        "where the frozen weights come from (timm, offline, random, or a file); None: the source the tasks recorded, "
        "when it is a named source (a file is never taken from a task file)",
        metavar="timm|random|offline|PATH"))
    opset: int = field(default=17, metadata=option("ONNX opset (TorchScript exporter 13..20, dynamo 18+)"))
    batch: tuple[int, ...] = field(default=(1, 32), metadata=option(
        "(min, max) or (min, opt, max) batch; min == max is a fixed batch; opt is TensorRT's tuning batch. CLI: N, "
        "MIN:MAX or MIN:OPT:MAX", parse=parse_batch, metavar="MIN:MAX", show="1:32"))
    input_size: tuple[int, int] | None = field(default=None, metadata=option(
        "(H, W) of the input; None: the size the tasks were prepared at", parse=parse_size, metavar="H,W"))
    allow_resize: bool = field(default=False, metadata=option(
        "allow an input_size other than the tasks' own (recorded per task as resized_from)"))
    separate: bool = field(default=False, metadata=option(
        "also write separate/<task>.onnx, each task as a full standalone model (the benchmark's baseline)"))
    fp16: bool = field(default=False, metadata=option(
        "also write model.fp16.onnx (fp16 weights and compute, float32 I/O)"))
    int8: Int8Options | None = field(default=None, metadata=option(
        "also write model.int8.onnx: INT8 QDQ in the form its target runs fastest, calibrated on every task's images, "
        "each task gated against fp32 on held-out images"))
    trt: TrtOptions | None = field(default=None, metadata=option(
        "also build model.plan with TensorRT (needs the 'trt' extra and a GPU)"))
    modular: bool = field(default=False, metadata=option(
        "also write trunk.onnx (one output per branch point) and branches/<task>.onnx, so tasks can be added or "
        "removed later (add-task, remove-task) and an app can run only some (TorchScript exporter)"))
    branches: str = field(default="auto", metadata=option(
        "how the branches of tasks that tune the same units run: auto (export plain and grouped, time both on "
        "--runtime, keep the faster), plain, grouped (one wider network: stacked filters, grouped convolutions), "
        "stacked (shared frozen units once on batch-stacked activations), or a bench results file of "
        "`bench --variants plain,grouped` run on the target", parse=_branches,
        metavar="auto|plain|grouped|stacked|RESULTS"))
    runtime: str = field(default="ort-cpu", metadata=option(
        "the registered runtime the export targets: branches=auto times plain and grouped there", metavar="NAME"))
    threads: int | None = field(default=None, metadata=option(
        "CPU threads for the runtime when timing (branches=auto); None: the runtime's default"))
    ort_format: bool = field(default=False, metadata=option(
        "also write model.ort (+ model.fp16.ort / model.int8.ort) and required_operators.config: ONNX Runtime's "
        "mobile format, verified like the .onnx files"))
    verify: bool = field(default=True, metadata=option(
        "compare every output with the PyTorch task models (past tolerance nothing is written)", negate="--no-verify",
        negate_help="Skip comparing every output with the PyTorch task models."))
    verify_with: tuple[str, ...] = field(default=(), metadata=option(
        "registered runtimes to verify the fused files on besides ONNX Runtime CPU (openvino, ort-cuda, a plug-in's)",
        csv=True, metavar="RUNTIMES"))
    images: tuple[str, ...] | None = field(default=None, metadata=option(
        "image files or folders to verify on besides the seeded batch (default: bundled photos)", multiple=True))
    dynamo: bool = field(default=False, metadata=option("use the torch.export-based ONNX exporter"))

    # -- keywords -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, base: ExportOptions | None = None, **keywords) -> ExportOptions:
        """Options from ``base`` and keywords: fields by name, nested fields flat, shorthands.

        ``int8=True`` / ``trt=True`` turn a variant on with its defaults; a nested field given flat
        (``int8_fallback=True``, ``calibration_samples=64``, ``workspace=...``) turns it on too, unless
        the variant itself is given as ``False`` / ``None``; ``grouped=True`` / ``stacked=True`` are
        ``branches="grouped"`` / ``"stacked"``.

        Raises:
            TypeError: a keyword that is no option.
        """
        opts = base or cls()
        kw = dict(keywords)
        for short in ("grouped", "stacked"):
            if kw.pop(short, False):
                kw["branches"] = short
        changes = {}
        for f in fields(cls):
            nested = _nested_class(cls, f)
            if nested is None:
                if f.name in kw:
                    changes[f.name] = kw.pop(f.name)
                continue
            flat = {g.name: kw.pop(_kw(g)) for g in fields(nested) if _kw(g) in kw}
            if f.name in kw:
                switch = kw.pop(f.name)
                if switch is None or switch is False:
                    changes[f.name] = None
                elif isinstance(switch, nested):
                    changes[f.name] = dataclasses.replace(switch, **flat)
                else:
                    changes[f.name] = dataclasses.replace(getattr(opts, f.name) or nested(), **flat)
            elif flat:
                changes[f.name] = dataclasses.replace(getattr(opts, f.name) or nested(), **flat)
        if kw:
            raise TypeError(f"unknown export option(s) {', '.join(sorted(kw))}; options: {', '.join(keyword_names())}")
        return dataclasses.replace(opts, **changes)


def _kw(f: dataclasses.Field) -> str:
    return f.metadata.get("cli", {}).get("kw", f.name)


def _nested_class(cls: type, f: dataclasses.Field) -> type | None:
    """The dataclass an ``X | None`` field nests, or None for a plain field."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def keyword_names() -> list[str]:
    """Every keyword :meth:`ExportOptions.build` takes."""
    names = []
    for f in fields(ExportOptions):
        names.append(f.name)
        nested = _nested_class(ExportOptions, f)
        names += [_kw(g) for g in fields(nested)] if nested else []
    return names + ["grouped", "stacked"]


OPTION_NAMES = tuple(keyword_names())
