"""Tables of the analysis: one structure, rendered as Markdown (terminal, report.md) or HTML.

Also the cell formatting shared by every table (missing values as a dash) and the two table
builders: the statistics of ``correlate_groups`` and plain query records.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.analysis.stats import CORRELATIONS, _missing


@dataclass
class Table:
    """Column names and rows of already formatted cells."""

    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _fmt(v: Any, spec: str = ".4g") -> str:
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def correlation_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The Markdown/HTML table of ``correlate_groups`` rows: estimate [CI] and p per statistic."""
    cols = ["group", "n"]
    for name, stat in CORRELATIONS.items():
        cols.append(f"{stat.label} [CI]")
        if name != "weighted_tau":
            cols.append("p")
    cols += ["slope", "intercept", "R²"]
    out = []
    for r in rows:
        cells = [str(r["group"]), str(r["n"])]
        for name in CORRELATIONS:
            est = _fmt(r[name], ".3f")
            if not _missing(r[f"{name}_lo"]):
                est += f" [{r[f'{name}_lo']:.3f}, {r[f'{name}_hi']:.3f}]"
            cells.append(est)
            if name != "weighted_tau":
                cells.append(_fmt(r[f"{name}_p"], ".2g"))
        cells += [_fmt(r["slope"]), _fmt(r["intercept"]), _fmt(r["r2"], ".3f")]
        out.append(cells)
    return Table(cols, out)


def records_table(
    records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Table:
    """A table of plain records (the rows of a SQL query)."""
    cols = list(columns or (records[0].keys() if records else []))
    return Table(cols, [[_fmt(r.get(c)) for c in cols] for r in records])
