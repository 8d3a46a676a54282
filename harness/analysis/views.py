"""SQL of the analysis: the saved queries of ``harness/analysis/sql/`` and the analysis view.

The saved queries (``harness/analysis/sql/*.sql``) share the CTEs of ``harness/analysis/sql/common.sql`` (``with_common``),
so every query the report prints runs as shown with ``harness query``. The analysis view
(``view_sql``) is the one table ``harness correlate`` resolves its column names against: its rows
and fixed columns come from ``harness/analysis/sql/_view_*.sql``; only the columns that depend on what the
store holds (one per NC metric, fine-tuning method and score) are pivoted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from harness.analysis.scores import SCORES
from harness.errors import HarnessError
from harness.spec.registry import LAYER_METHODS, METHODS

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

SQL = resources.files("harness.analysis") / "sql"  # package data: the wheel ships it
_WITH = re.compile(r"^\s*WITH\b", re.IGNORECASE)


def saved_queries() -> list[Traversable]:
    """The saved queries (``harness/analysis/sql/*.sql``), by name."""
    return sorted((p for p in SQL.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)


def read_sql(name: str) -> str:
    """The text of saved query ``<name>`` (``harness/analysis/sql/<name>.sql``)."""
    path = SQL / f"{name}.sql"
    if not path.is_file():
        have = [p.name.removesuffix(".sql") for p in saved_queries()]
        raise HarnessError(f"no saved query {name!r}; queries: {', '.join(have)}")
    return path.read_text()


def with_common(body: str) -> str:
    """``body`` (a query, with or without its own CTEs) preceded by the CTEs of
    ``harness/analysis/sql/common.sql``: a complete query that runs as is with ``harness query``."""
    lines = body.strip().splitlines()
    head = 0
    while head < len(lines) and (not lines[head].strip() or lines[head].lstrip().startswith("--")):
        head += 1
    comments, rest = "\n".join(lines[:head]), "\n".join(lines[head:])
    common = read_sql("common").strip()
    if _WITH.match(rest):
        rest = _WITH.sub(",", rest, count=1)
    text = f"WITH\n{common}\n{rest}"
    return f"{comments}\n{text}" if comments else text


def load_sql(name: str) -> str:
    """A saved query of ``harness/analysis/sql/`` with the shared CTEs in front (see ``with_common``)."""
    return with_common(read_sql(name))


def db_error(e: Exception) -> str:
    """A DuckDB error as one line, without its echo of the (long, generated) query."""
    return " ".join(str(e).split("\nLINE ")[0].split())


def fetch_records(
    con: DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    import duckdb

    try:
        cur = con.execute(sql, params or [])
    except duckdb.Error as e:
        raise HarnessError(db_error(e)) from None
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _ident(name: Any) -> str:
    return re.sub(r"[^0-9a-z_]+", "_", str(name).lower()).strip("_") or "x"


def _lit(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _pivot(agg: str, key: str, names: Iterable[Any], prefix: str) -> list[tuple[str, str]]:
    """(column, expression) pairs: ``agg`` filtered to each name of column ``key``."""
    return [(f"{prefix}{_ident(n)}", f"{agg} FILTER (WHERE {key} = {_lit(n)})") for n in names]


LEVELS = ("model", "layer", "trial")
VIEW_KEYS = {  # what identifies one row of the analysis view at each level
    "model": ["run_id", "dataset"],
    "layer": ["run_id", "dataset", "layer"],
    "trial": ["trial_id"],
}
LAYER_COLUMNS = ("layer", "layer_index", "depth_frac")
ACC_METHODS = METHODS.names()  # always offered as acc_<method>

# One pivoted part of the view: (CTE name, the rows it pivots, the keys it joins on, its columns
# as (column, expression) pairs).
_Part = tuple[str, str, tuple[str, ...], list[tuple[str, str]]]


@dataclass(frozen=True)
class _Names:
    """What the analysis view turns into columns (``_view_names``)."""

    metrics: list[str]
    scores: list[tuple[str, str | None]]  # (score, part)
    methods: list[str]
    layer_methods: set[str]


def view_sql(con: DuckDBPyConnection, level: str = "model", split: str = "train") -> str:
    """The analysis view: one query whose columns ``harness correlate`` resolves names against.

    ``level='model'``: one row per (run_id, dataset) with dataset the downstream dataset (runs
    with nothing downstream yet: one row with dataset NULL). Columns: run_id, dataset, arch,
    source (pre-training dataset), loss, augment, head_depth, epochs, source_train_acc,
    source_test_acc; ``source_<m>`` and ``down_<m>`` for every NC metric m measured (penultimate
    layer, ``split``; source = on the pre-training dataset, down = on the downstream dataset);
    ``acc_<method>`` (common.sql's ft_best: best-validation configuration at the largest budget,
    over layers for layer/scl); ``score_<s>`` for model-level scores and ``score_<s>_<part>`` for
    the raw parts of multi-part scores (NCTI).

    ``level='layer'``: one row per (run_id, dataset, layer) with layer_index and depth_frac, the
    NC metrics of that layer (``down_<m>``, and ``source_<m>`` of the same layer), ``acc_layer``
    / ``acc_scl`` fine-tuning that layer (ft_best_layer), the model-level ``acc_linear_probe`` /
    ``acc_full``, and scores written for that layer.

    ``level='trial'``: one row per done fine-tuning trial (trial_id, run_id, dataset, the run's
    columns, checkpoint, method, layer, layer_choice, per_class, seed, ft_epochs, lr,
    weight_decay, ``acc`` (test), val_acc, train_acc, trainable_params, total_params), with
    ``ft_<m>``: NC of the trial's fine-tuned penultimate features on its train split, and
    ``down_<m>``: NC of the pre-trained penultimate features on the same dataset (``split``).

    The rows and fixed columns are ``harness/analysis/sql/_view_<level>.sql``; the columns named after what
    the store holds are pivoted onto them here."""
    if level not in LEVELS:
        raise HarnessError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    names = _view_names(con, level)
    return _view_query(level, split, _view_parts(level, names))


def _view_names(con: DuckDBPyConnection, level: str) -> _Names:
    """The names always offered (so that "no data yet" reads as no rows, not as an unknown
    name), plus whatever the store holds (``harness/analysis/sql/_view_columns.sql``)."""
    found = fetch_records(con, load_sql("_view_columns"))

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in found if r["kind"] == kind]

    offered = {(n, p) for n, s in SCORES.items() if n != "nc" for p in (s.parts or [None])}
    stored = {(r["name"], r["part"]) for r in of("score") if r["level"] == level}
    done = sorted(r["name"] for r in of("method"))
    return _Names(
        metrics=sorted({"nc1", *(r["name"] for r in of("metric"))}),
        scores=sorted(offered | stored, key=str),
        methods=list(dict.fromkeys([*ACC_METHODS, *done])),
        layer_methods={*LAYER_METHODS, *(r["name"] for r in of("layer_method"))},
    )


def _score_pivot(keys: Iterable[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """``score_<score>``, or ``score_<score>_<part>`` for a raw part: the mean value written."""
    return [
        (
            f"score_{_ident(score)}" + (f"_{_ident(part)}" if part is not None else ""),
            f"avg(value) FILTER (WHERE score = {_lit(score)} AND part "
            + ("IS NULL" if part is None else f"= {_lit(part)}")
            + ")",
        )
        for score, part in keys
    ]


def _view_parts(level: str, names: _Names) -> list[_Part]:
    """The pivoted parts of the view at ``level``, in column order, over the rows that
    ``harness/analysis/sql/_view_<level>.sql`` (or common.sql) names."""
    src = _pivot("max(value)", "metric", names.metrics, "source_")
    down = _pivot("max(value)", "metric", names.metrics, "down_")
    scores = _score_pivot(names.scores)

    def acc(methods: Iterable[str]) -> list[tuple[str, str]]:
        return _pivot("max(test_acc)", "method", methods, "acc_")

    if level == "trial":
        fine = _pivot("max(value)", "metric", names.metrics, "ft_")
        return [
            ("ftnc", "view_nc_trial", ("trial_id",), fine),
            ("down", "view_nc_down", ("run_id", "dataset"), down),
        ]
    if level == "model":
        return [
            ("src", "view_nc_source", ("run_id",), src),
            ("down", "view_nc_down", ("run_id", "dataset"), down),
            ("acc", "ft_best", ("run_id", "dataset"), acc(names.methods)),
            ("sc", "view_scores", ("run_id", "dataset"), scores),
        ]
    per_layer = [m for m in names.methods if m in names.layer_methods]
    per_model = [m for m in names.methods if m not in names.layer_methods]
    return [
        ("src", "view_nc_source", ("run_id", "layer"), src),
        ("down", "view_nc_down", ("run_id", "dataset", "layer"), down),
        ("lacc", "ft_best_layer", ("run_id", "dataset", "layer"), acc(per_layer)),
        ("macc", "view_acc_model", ("run_id", "dataset"), acc(per_model)),
        ("sc", "view_scores", ("run_id", "dataset", "layer"), scores),
    ]


def _view_query(level: str, split: str, parts: Sequence[_Part]) -> str:
    """``harness/analysis/sql/_view_run.sql`` and ``_view_<level>.sql`` after the chosen ``split``
    (view_split), then each pivoted part grouped by its keys and joined onto view_base."""
    ctes = [
        f"view_split AS (SELECT {_lit(split)} AS split)",
        read_sql("_view_run").strip(),
        read_sql(f"_view_{level}").strip(),
    ]
    cols, joins = ["b.*"], []
    for name, rows, keys, pivots in parts:
        if not pivots:
            continue
        sel = ", ".join([*keys, *(f"{e} AS {c}" for c, e in pivots)])
        ctes.append(f"{name} AS (SELECT {sel} FROM {rows} GROUP BY {', '.join(keys)})")
        on = " AND ".join(f"{name}.{k} IS NOT DISTINCT FROM b.{k}" for k in keys)
        joins.append(f"LEFT JOIN {name} ON {on}")
        cols += [f"{name}.{c}" for c, _ in pivots]
    return with_common(
        "WITH "
        + ",\n".join(ctes)
        + f"\nSELECT {', '.join(cols)}\nFROM view_base b\n"
        + "\n".join(joins)
    )
