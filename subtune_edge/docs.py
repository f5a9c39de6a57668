"""Config dataclasses document their fields once, where both ``help()`` and the CLI read them.

A field's ``metadata={"help": ...}`` (PEFT's convention) is the one text: :func:`documented`
appends it to the class docstring as a Google-style ``Attributes:`` section, so ``help(TrainConfig)``
shows every field, and the click options read the same text for their ``--help``.
"""

from __future__ import annotations

import dataclasses
import textwrap


def documented(cls: type) -> type:
    """Append an ``Attributes:`` section built from the fields' ``help`` metadata to ``cls.__doc__``.

    Args:
        cls: a dataclass whose fields carry ``metadata={"help": "..."}``.

    Returns:
        ``cls`` itself, with its docstring extended (fields without help are left out).
    """
    lines = []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help")
        if text:
            wrapped = textwrap.wrap(f"{f.name}: {text}", width=96, subsequent_indent="    ")
            lines.extend("    " + line for line in wrapped)
    if lines:
        doc = textwrap.dedent(cls.__doc__ or "").rstrip()
        cls.__doc__ = f"{doc}\n\nAttributes:\n" + "\n".join(lines) + "\n"
    return cls


def field_help(cls: type, name: str) -> str:
    """The ``help`` text of field ``name`` of dataclass ``cls`` (for a click option's help)."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def option(help: str, **cli) -> dict:
    """A field's metadata: its help text and how the command line spells it.

    The CLI generates its options from these (``subtune_edge.commands._options.dataclass_options``),
    so a field's name, default and help are declared once.

    Args:
        help: the one help text (``help()`` and ``--help``).
        **cli: how the option reads, where it differs from the field: ``flag`` (``--calibration-samples``),
            ``kw`` (the flat keyword it is given as, default the field's name), ``parse`` (text -> value,
            raising :class:`~subtune_edge.errors.SubtuneError`), ``csv`` (comma-separated -> tuple),
            ``multiple`` (repeatable), ``choices``, ``metavar``, ``negate`` (a flag that turns a ``True``
            default off: ``--no-verify``), ``scale`` (the CLI's value times this: MB -> bytes), ``skip``
            (no CLI option).

    Returns:
        ``{"help": help, "cli": cli}``.
    """
    return {"help": help, "cli": cli}
