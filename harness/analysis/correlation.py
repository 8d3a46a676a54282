"""``harness correlate``: correlate two columns of the analysis view, per group, with a plot.

Resolves the names against the view's columns (``views.view_sql``), combines multi-part scores
(NCTI) over each set of models being compared, then hands the points to ``stats.group_stats``;
``run_correlate`` prints the result as a Markdown table or JSON and draws the scatter plot.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import store
from harness.analysis.plots import FIGURE_SUFFIXES, scatter_plot
from harness.analysis.scores import SCORES, combine_parts
from harness.analysis.stats import group_stats, is_missing
from harness.analysis.tables import Table, correlation_table
from harness.analysis.views import LAYER_COLUMNS, VIEW_KEYS, db_error, view_sql
from harness.errors import HarnessError
from harness.store.fileio import check_path

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

_NUMERIC = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|DOUBLE|FLOAT|REAL|DECIMAL)", re.I)


def _virtual_scores(columns: Sequence[str]) -> dict[str, list[str]]:
    """Multi-part scores combined at query time: {``score_<name>``: its raw part columns}."""
    out = {}
    for name, spec in SCORES.items():
        if spec.parts:
            cols = [f"score_{name}_{p}" for p in spec.parts]
            if all(c in columns for c in cols):
                out[f"score_{name}"] = cols
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _json_value(v.item())
    return v


@dataclass
class Correlation:
    """The result of ``correlate``: statistics rows (``correlate_groups``) and points per group."""

    x: str
    y: str
    by: list[str]
    level: str
    where: str | None
    rows: list[dict[str, Any]]
    points: dict[str, tuple[np.ndarray, np.ndarray]]
    ci: float = 0.95
    n_boot: int = 1000
    seed: int = 0
    left_out: list[store.Damage] = field(default_factory=list)  # damaged parts not read

    def table(self) -> Table:
        return correlation_table(self.rows)

    def plot(self, path: str | os.PathLike) -> Path:
        fits = {r["group"]: r for r in self.rows if r["pooling"] == "group"}
        title = f"{self.y} vs {self.x}" + (f" by {', '.join(self.by)}" if self.by else "")
        return scatter_plot(self.points, fits, path, xlabel=self.x, ylabel=self.y, title=title)

    def summary(self) -> str:
        """One line: what was correlated, on which rows, and how the intervals were drawn."""
        n = sum(len(p[0]) for p in self.points.values())
        return (
            f"**{self.y} vs {self.x}** — level {self.level}"
            + (f", by {', '.join(self.by)}" if self.by else "")
            + (f", where {self.where}" if self.where else "")
            + f"; {n} points; {self.ci:.0%} bootstrap intervals ({self.n_boot} resamples, "
            f"seed {self.seed})"
        )

    def document(self) -> dict[str, Any]:
        """The result as JSON-ready data (missing values as None)."""
        keys = ("x", "y", "by", "level", "where", "ci", "n_boot", "seed")
        doc = {k: getattr(self, k) for k in keys}
        doc["rows"] = [{k: _json_value(v) for k, v in r.items()} for r in self.rows]
        doc["left_out"] = [str(d.path) for d in self.left_out]
        return doc


def correlate(
    x: str,
    y: str,
    *,
    by: Sequence[str] = (),
    where: str | None = None,
    level: str | None = None,
    split: str = "train",
    root: str | os.PathLike | None = None,
    pool: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    scope: Sequence[str] | None = None,
) -> Correlation:
    """Correlate two columns of the analysis view (``view_sql``) per group of ``by`` columns.

    ``level`` defaults to 'layer' when x, y or ``by`` names a layer column (layer, layer_index,
    depth_frac), else 'model'. ``where`` (SQL over the view's columns) selects the rows first.
    Multi-part scores (``score_ncti``) are then combined over each set of models being compared:
    the rows of one downstream dataset and ``by`` group that have both values. ``scope``
    (pre-training run ids) reads one study's rows only (``store.connect``). Raises
    HarnessError: unknown names (code 2, listing what exists), no matching rows (code 1)."""
    if not 0 < ci < 1:
        raise HarnessError(f"--ci must lie strictly between 0 and 1, got {ci}")
    base = store.results_root(root)
    if not store.has_results(base):
        raise HarnessError(f"no results under {base}", code=1)
    by = [b.strip() for b in by if b and b.strip()]
    if level is None:
        level = "layer" if {x, y, *by} & set(LAYER_COLUMNS) else "model"
    left_out: list[store.Damage] = []
    records, virtual = _select(base, x, y, by, where, level, split, scope, left_out)
    records = _combine_scores(records, virtual, x, y, by)
    rows, points = group_stats(records, x, y, by, pool=pool, n_boot=n_boot, seed=seed, ci=ci)
    if not sum(len(p[0]) for p in points.values()):
        cond = f" where {where}" if where else ""
        raise HarnessError(
            f"no rows match: no {level}-level row{cond} has both {x} and {y}"
            + (f" ({store.left_out_line(left_out)})" if left_out else ""),
            code=1,
        )
    return Correlation(
        x, y, by, level, where, rows, points, ci=ci, n_boot=n_boot, seed=seed, left_out=left_out
    )


def _select(
    base: Path,
    x: str,
    y: str,
    by: Sequence[str],
    where: str | None,
    level: str,
    split: str,
    scope: Sequence[str] | None = None,
    left_out: list[store.Damage] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The rows of the view that ``where`` selects, with the columns the correlation needs, in a
    fixed order (the bootstrap draws index rows); and the multi-part scores among the columns.
    Damaged parts the connection left out are added to ``left_out``."""
    import duckdb

    con = store.connect(base, scope=scope, left_out=left_out)
    try:
        view = view_sql(con, level, split)
        columns, virtual = _resolve(con, view, x, y, by, level)
        keys = VIEW_KEYS[level]
        need = list(dict.fromkeys([*by, *keys, *virtual.get(x, [x]), *virtual.get(y, [y])]))
        if where:
            _check_where(where)
        sql = (
            f"SELECT {', '.join(need)} FROM ({view}) v"
            + (f" WHERE ({where})" if where else "")
            + f" ORDER BY {', '.join(keys)}"
        )
        try:
            cur = con.execute(sql)
        except duckdb.Error as e:
            msg = f"--where {where!r}: {db_error(e)}; columns: {', '.join(columns)}"
            raise HarnessError(msg) from None
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()], virtual
    finally:
        con.close()


def _check_where(where: str) -> None:
    """Parse the ``--where`` fragment on its own first, so that a mistake in it is reported
    against the user's text (not the generated query around it), and so that it can only be one
    condition: a clause (``ORDER BY``), a second statement or an unbalanced parenthesis that
    would reach into the query around it is refused."""
    import duckdb

    for sql in (f"SELECT 1 WHERE {where}", f"SELECT 1 WHERE ({where})"):
        try:
            n = len(duckdb.extract_statements(sql))
        except duckdb.Error as e:
            raise HarnessError(f"--where {where!r}: {db_error(e)}") from None
        if n != 1:
            break
    else:
        return
    raise HarnessError(
        f"--where {where!r}: not one condition; give a boolean expression over the view's "
        "columns, e.g. \"arch = 'resnet_tiny' AND epochs >= 3\""
    )


def _resolve(
    con: DuckDBPyConnection, view: str, x: str, y: str, by: Sequence[str], level: str
) -> tuple[list[str], dict[str, list[str]]]:
    """The view's columns and its multi-part scores (``_virtual_scores``); HarnessError when x or
    y is neither a numeric column nor a multi-part score, or a ``by`` column is unknown."""
    rel = con.sql(f"SELECT * FROM ({view}) v LIMIT 0")
    columns = list(rel.columns)
    numeric = [c for c, t in zip(columns, rel.types, strict=True) if _NUMERIC.match(str(t))]
    virtual = _virtual_scores(columns)
    metrics = numeric + sorted(virtual)
    for name in (x, y):
        if name not in metrics:
            what = "is not numeric" if name in columns else "is unknown"
            raise HarnessError(
                f"metric {name!r} {what} at level {level}; metrics: {', '.join(metrics)}"
            )
    for b in by:
        if b not in columns:
            raise HarnessError(
                f"--by column {b!r} is unknown at level {level}; columns: {', '.join(columns)}"
            )
    return columns, virtual


def _combine_scores(
    records: list[dict[str, Any]],
    virtual: Mapping[str, list[str]],
    x: str,
    y: str,
    by: Sequence[str],
) -> list[dict[str, Any]]:
    """Each multi-part score among x and y combined (``combine_parts``) over every set of models
    compared: the rows of one downstream dataset and ``by`` group that have its parts and the
    other value. Rows without them are dropped."""
    for col, parts in virtual.items():
        if col not in (x, y):
            continue
        other = y if col == x else x
        usable = [
            r
            for r in records
            if all(not is_missing(r[p]) for p in parts)
            and not is_missing(r.get(other) if other not in virtual else 0.0)
        ]
        sets: dict[tuple, list[int]] = {}
        for i, r in enumerate(usable):
            sets.setdefault((r["dataset"], *(r[b] for b in by)), []).append(i)
        name = col.removeprefix("score_")
        for members in sets.values():
            combined = combine_parts(
                name,
                {i: {p: usable[i][f"{col}_{p}"] for p in SCORES[name].parts} for i in members},
            )
            for i, v in combined.items():
                usable[i][col] = v
        records = [r for r in usable if col in r]
    return records


def run_correlate(
    x: str,
    y: str,
    *,
    plot: str | os.PathLike | None = None,
    fmt: str = "markdown",
    out: Any = None,
    allow_damaged: bool = False,
    **options: Any,
) -> int:
    """`harness correlate`: print the statistics (Markdown table or JSON), draw the scatter.
    ``options`` are those of ``correlate`` (by, where, level, split, root, n_boot, seed, ci).
    Over a damaged store the output says so first and last, and the exit is 1 unless
    ``allow_damaged``."""
    import json
    import sys

    out = out or sys.stdout
    if plot:  # before the work: a bad path is one line, not a traceback after the table
        check_path(plot, "file", "--plot", FIGURE_SUFFIXES)
    corr = correlate(x, y, **options)
    if fmt == "json":
        out.write(json.dumps(corr.document(), indent=1) + "\n")
    elif fmt == "markdown":
        if corr.left_out:
            out.write(f"**{store.damage_banner(corr.left_out)}**\n\n")
        out.write(corr.summary() + "\n\n")
        out.write(corr.table().markdown())
    else:
        raise HarnessError(f"unknown format {fmt!r}; formats: markdown, json")
    if plot:
        path = corr.plot(plot)
        print(f"wrote {path}", file=sys.stderr)
    store.check_left_out(corr.left_out, "correlation", allow_damaged)
    return 0
