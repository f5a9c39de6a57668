"""Every command the README (and the docs it links) shows still parses: its verb exists and each flag is one of it.

Running the whole tour (training, exports, benchmarks) is the closing note's job; this keeps the
written commands from drifting away from the CLI as options move (they are generated from the
config dataclasses now) and catches a renamed flag or module the day it happens.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import click
import pytest

from subtune_edge.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "ARCHITECTURE.md", "examples/cpp/README.md", "examples/distributed/README.md",
        "exporters/FORMAT.md", "benchmarks/README.md"]


def _commands(text: str) -> list[list[str]]:
    """The ``subtune-edge ...`` and ``python -m subtune_edge...`` command lines of the text's code blocks."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("subtune-edge ", "python -m subtune_edge")):
                out.append(_split(line))
    for inline in re.findall(r"`(subtune-edge [^`]+)`", text):
        if "..." not in inline and "<" not in inline:
            out.append(_split(inline))
    return [argv for argv in out if argv]


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # prose quotes inside a line (it's, subtune-edge's): the words are what is checked
        return line.split()


def _cases() -> list[tuple[str, list[str]]]:
    return [(doc, argv) for doc in DOCS if (ROOT / doc).is_file() for argv in _commands((ROOT / doc).read_text())]


CASES = _cases()


def test_the_docs_show_commands():
    assert len(CASES) > 30


@pytest.mark.parametrize("doc, argv", CASES, ids=[" ".join(a)[:80] for _, a in CASES])
def test_each_documented_command_parses(doc, argv):
    if argv[0] == "python":
        assert importlib.util.find_spec(argv[2]) is not None, f"{doc}: no module {argv[2]}"
        return
    ctx = click.Context(main)
    command = main.get_command(ctx, argv[1])
    assert command is not None, f"{doc}: no command '{argv[1]}'"
    flags = {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    flags |= {"-h", "--help"}
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in flags, f"{doc}: '{' '.join(argv)}': {command.name} has no option {arg}"
