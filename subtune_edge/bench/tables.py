"""Markdown pieces the benchmark reports share: a section's heading and note, a table's header rows."""

from __future__ import annotations

RULES = {"l": "---", "r": "---:"}


def table_head(columns: list[str], align: str) -> list[str]:
    """A Markdown table's header and rule rows; ``align`` has one letter per column, ``l`` or ``r``."""
    if len(align) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(align)} alignments")
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(RULES[a] for a in align) + "|"]


def section(title: str, note: str, columns: list[str], align: str) -> list[str]:
    """A report section opening with a table: ``## title``, a note line, the table's header rows."""
    return [f"## {title}", "", note, "", *table_head(columns, align)]
