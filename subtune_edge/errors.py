"""Errors users can act on.

Every error raised for bad input is a :class:`SubtuneError` whose message is one line that names
the problem and the fix; the CLI prints it as is and exits non-zero, so library code never has
to print or exit.
"""

from __future__ import annotations


class SubtuneError(Exception):
    """Base of every user-facing error; the message is a single actionable line.

    The library speaks Python, the CLI speaks flags: a message that names the parameter at fault
    writes ``{param}`` where its name goes and passes ``param="out"``. ``str(error)`` then says
    ``out``; the CLI, which knows its options, says ``--out``.

    Args:
        message: one line naming the problem and the fix; may hold ``{param}``.
        param: the Python parameter the problem is in, if any.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.template = message
        self.param = param
        super().__init__(self.render())

    def render(self, flag: str | None = None) -> str:
        """The message with ``{param}`` as ``flag`` (the CLI's option) or the parameter's name."""
        if self.param is None:
            return self.template
        return self.template.replace("{param}", flag or self.param)


class BackboneError(SubtuneError):
    """Unknown model name, unsupported family, or a unit name the backbone does not have."""


class WeightsError(SubtuneError):
    """Weights that cannot be found, read or mapped onto the backbone."""


class TaskFileError(SubtuneError):
    """A task file that is corrupt, truncated, edited or incompatible with the backbone."""


class DataError(SubtuneError):
    """A dataset that cannot be used for training (too few classes, unreadable images, ...)."""


class ExportError(SubtuneError):
    """An export that cannot be written or fails verification."""


class RuntimeMissingError(SubtuneError):
    """An optional runtime (TensorRT, onnxruntime-gpu, Ray, ...) is not installed."""


class PruneError(SubtuneError):
    """A pruning request that cannot be met: a ratio out of range, units the pruner cannot narrow."""
