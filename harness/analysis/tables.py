"""Tables of the analysis: one structure, rendered as Markdown (terminal, report.md) or HTML.

Also the cell formatting shared by every table (missing values as a dash) and the table
builders: the statistics of ``correlate_groups``, plain query records, the findings (one row
per finding, its verdict as a coloured badge), the interval of a mean (``mean_interval``) and
the per-score summary of the rankings (``ranking_summary``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.analysis.stats import CORRELATIONS, is_missing

if TYPE_CHECKING:
    from harness.analysis.findings import Finding

# The colour of each verdict (findings.VERDICTS): badges in the report, markers in the plot.
VERDICT_COLORS: dict[str, str] = {
    "agrees": "#1a7f37",
    "disagrees": "#cf222e",
    "inconclusive": "#9a6700",
    "too few runs": "#6e7781",
    "no data": "#8c959f",
}
MIN_GROUP = 3  # groups with fewer units are plotted, never tabulated


def verdict_slug(verdict: str) -> str:
    """The CSS class suffix of a verdict badge ('too few runs' -> 'too-few-runs')."""
    return "-".join(verdict.lower().split())


@dataclass
class Table:
    """Column names and rows of already formatted cells. ``notes``: one line under each row
    ('' for none); ``badge``: the index of a column whose cells are verdicts (coloured badges
    in HTML); ``caption``: what the table holds, shown when it is collapsed; ``collapsed``:
    shown folded (``<details>``), None = when it is long (see ``report.INLINE_ROWS``)."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    badge: int | None = None
    collapsed: bool | None = None

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for r in self.rows:
            cells = [f"**{c}**" if i == self.badge else c for i, c in enumerate(r)]
            lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
        text = "\n".join(lines) + "\n"
        notes = [f"- {r[0]}: {n}" for r, n in zip(self.rows, self.notes, strict=False) if n]
        return text + ("\n" + "\n".join(notes) + "\n" if notes else "")

    def html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = []
        for i, r in enumerate(self.rows):
            cells = [
                f"<td><span class='badge v-{verdict_slug(c)}'>{esc(c)}</span></td>"
                if j == self.badge
                else f"<td class='num'>{esc(c)}</td>"
                if _numeric(c)
                else f"<td>{esc(c)}</td>"
                for j, c in enumerate(r)
            ]
            note = self.notes[i] if i < len(self.notes) else ""
            cls = " class='noted'" if note else ""
            body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
            if note:
                span = len(self.columns)
                body.append(f"<tr class='note'><td colspan='{span}'>{esc(note)}</td></tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"


def _numeric(cell: str) -> bool:
    """A number, a missing value or a number with its interval: right-aligned in HTML."""
    head = cell.split(" [")[0].replace("−", "-")
    if head in ("—", "yes", "no"):
        return True
    try:
        float(head)
    except ValueError:
        return False
    return True


def format_value(v: Any, spec: str = ".4g") -> str:
    if is_missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def interval_cell(lo: Any, hi: Any, spec: str = ".3f") -> str:
    """'[lo, hi]', or a dash when the interval is missing."""
    if is_missing(lo) or is_missing(hi):
        return "—"
    return f"[{lo:{spec}}, {hi:{spec}}]"


def correlation_table(rows: Sequence[Mapping[str, Any]], min_n: int = 0) -> Table:
    """The Markdown/HTML table of ``correlate_groups`` rows: estimate [CI] and p per statistic;
    groups of fewer than ``min_n`` points are left out."""
    cols = ["group", "n"]
    for name, stat in CORRELATIONS.items():
        cols.append(f"{stat.label} [CI]")
        if name != "weighted_tau":
            cols.append("p")
    cols += ["slope", "intercept", "R²"]
    out = []
    for r in rows:
        if r["n"] < min_n:
            continue
        cells = [str(r["group"]), str(r["n"])]
        for name in CORRELATIONS:
            est = format_value(r[name], ".3f")
            if not is_missing(r[f"{name}_lo"]):
                est += " " + interval_cell(r[f"{name}_lo"], r[f"{name}_hi"])
            cells.append(est)
            if name != "weighted_tau":
                cells.append(format_value(r[f"{name}_p"], ".2g"))
        cells += [
            format_value(r["slope"]),
            format_value(r["intercept"]),
            format_value(r["r2"], ".3f"),
        ]
        out.append(cells)
    return Table(cols, out)


def records_table(
    records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, caption: str = ""
) -> Table:
    """A table of plain records (the rows of a SQL query)."""
    cols = list(columns or (records[0].keys() if records else []))
    return Table(cols, [[format_value(r.get(c)) for c in cols] for r in records], caption=caption)


def _units(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 or unit.endswith("s") else "s")


def estimate_cell(est: Any) -> str:
    """'statistic = +v [+lo, +hi]', with three decimals for small quantities (an accuracy
    difference) and two otherwise (a correlation)."""
    if est is None:
        return "no estimate"
    vals = (est.value, est.lo, est.hi)
    if any(is_missing(v) for v in vals):
        return f"{est.statistic} = n/a"
    d = 2 if max(abs(v) for v in vals) >= 0.1 else 3
    return f"{est.statistic} = {est.value:+.{d}f} [{est.lo:+.{d}f}, {est.hi:+.{d}f}]"


def findings_table(findings: Sequence[Finding]) -> Table:
    """One row per finding: 'key. title', the primary estimate with its interval, the units
    behind it and the verdict (a badge); the finding's note under its row."""
    rows, notes = [], []
    for f in findings:
        est = f.primary
        units = _units(est.n_units, est.unit) if est is not None else "—"
        rows.append([f"{f.key}. {f.title}", estimate_cell(est), units, f.verdict])
        notes.append(f.note)
    cols = ["finding", "primary estimate [CI]", "n", "verdict"]
    return Table(cols, rows, caption="findings", notes=notes, badge=3)


def mean_interval(mean: Any, std_pop: Any, n: Any, ci: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean of ``n`` values with population std ``std_pop``; (nan, nan)
    with fewer than two values."""
    import scipy.stats

    if is_missing(mean) or is_missing(std_pop) or not n or n < 2:
        return math.nan, math.nan
    half = float(scipy.stats.t.ppf((1 + ci) / 2, n - 1)) * std_pop / math.sqrt(n - 1)
    return mean - half, mean + half


def ranking_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per score over its rankings (``ranking_rows``): how many, the mean weighted τ,
    the share of rankings whose top-scored model is the best, the mean regret and speed-up."""
    import numpy as np

    def mean(vals: list[Any]) -> float:
        vals = [float(v) for v in vals if not is_missing(v)]
        return float(np.mean(vals)) if vals else math.nan

    out = []
    for score in sorted({r["score"] for r in rows}):
        mine = [r for r in rows if r["score"] == score]
        out.append(
            dict(
                score=score,
                rankings=len(mine),
                models=int(np.median([r["n"] for r in mine])),
                mean_weighted_tau=mean([r["weighted_tau"] for r in mine]),
                top1_hit_rate=mean([r["top1_hit"] for r in mine]),
                mean_regret=mean([r["regret"] for r in mine]),
                speedup=mean([r["speedup"] for r in mine]),
            )
        )
    return sorted(out, key=lambda r: -r["mean_weighted_tau"] if r["rankings"] else 0)
