"""Figures tests measure (fault injection, fuzzing), printed together at the end of the run.

A test adds a row with `report(section, **figures)`; `pytest_terminal_summary` in
conftest prints every section as a table and writes it to artifacts/figures.txt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "render", "report"]

FIGURES: dict[str, list[dict[str, Any]]] = {}


def report(section: str, **figures: Any) -> None:
    FIGURES.setdefault(section, []).append(figures)


def render() -> str:
    lines: list[str] = []
    for section, rows in FIGURES.items():
        columns = list(dict.fromkeys(key for row in rows for key in row))
        widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
        lines.append(f"{section}:")
        lines.append("  " + "  ".join(c.ljust(widths[c]) for c in columns))
        for row in rows:
            lines.append("  " + "  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    return "\n".join(lines)


def save(root: Path) -> None:
    if FIGURES:
        (root / "artifacts").mkdir(exist_ok=True)
        (root / "artifacts" / "figures.txt").write_text(render() + "\n")
