"""The ``subtune-edge`` command: one click command per verb.

Commands live beside the code they drive (``subtune_edge/commands/*.py``) and are added to the
group here; each turns :class:`~subtune_edge.errors.SubtuneError` into a one-line message and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .errors import SubtuneError

# module -> command names it defines. A module that fails to import fails the command loudly: a
# broken install must not silently lose a verb.
COMMAND_MODULES = {
    "subtune_edge.commands.model": ["blocks", "plan"],
    "subtune_edge.commands.train": ["tune", "profile"],
    "subtune_edge.commands.export": ["export", "inspect", "predict"],
    "subtune_edge.commands.bench": ["bench", "profile-device"],
    "subtune_edge.commands.demo": ["demo"],
    "subtune_edge.commands.modular": ["add-task", "remove-task"],
}


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SubtuneError as exc:
            click.secho(f"error: {_render(exc, ctx)}", fg="red", err=True)
            sys.exit(2)


def _render(exc: SubtuneError, ctx: click.Context) -> str:
    """The error as the user typed it: a library parameter becomes the command's flag."""
    if exc.param is None:
        return str(exc)
    sub = ctx
    while sub.invoked_subcommand and sub.command and isinstance(sub.command, click.Group):
        cmd = sub.command.get_command(sub, sub.invoked_subcommand)
        if cmd is None:
            break
        sub = click.Context(cmd, parent=sub, info_name=sub.invoked_subcommand)
    options = [p for p in getattr(sub.command, "params", []) if isinstance(p, click.Option)]
    spelled = "--" + exc.param.replace("_", "-")
    for option in options:  # the option of that Python name, else the one spelled like it (out -> --out)
        if option.name == exc.param:
            longs = [o for o in option.opts if o.startswith("--")]
            return exc.render((longs or option.opts)[0])
    for option in options:
        if spelled in option.opts:
            return exc.render(spelled)
    return str(exc)


# the package whose diagnostics the command shows (library code only logs; it never prints)
LOGGERS = ("subtune_edge",)


class _StderrHandler(logging.Handler):
    """``warning: message`` lines on the stderr of the moment (click's, so test runners capture them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"{record.levelname.lower()}: {self.format(record)}", err=True)
        except Exception:  # a diagnostic must never break the command
            self.handleError(record)


def configure_logging(verbose: int = 0) -> None:
    """Show the library's warnings (``-v``: info, ``-vv``: debug) as one plain line each on stderr.

    Without it Python's last-resort handler prints ``WARNING:module.path:message``. Calling it
    again (every invocation in one process) replaces the handler instead of adding another.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(h)
        handler = _StderrHandler(level)
        logger.addHandler(handler)
        logger.setLevel(level if verbose > 0 else logging.NOTSET)  # warnings pass by the root's own level


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="subtune-edge")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr: -v info, -vv debug.")
def main(verbose: int) -> None:
    """SubTune timm backbones per task and ship every task in one fused ONNX / TensorRT engine.

    \b
    Example (offline, on the bundled digits data):
      subtune-edge demo --out demo-out
    """
    configure_logging(verbose)


for _module, _names in COMMAND_MODULES.items():
    _mod = importlib.import_module(_module)
    for _name in _names:
        main.add_command(getattr(_mod, _name.replace("-", "_")))


if __name__ == "__main__":
    main()
