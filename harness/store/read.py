"""Reading the store: a read-only DuckDB connection with one view per table over its live
parts, and the bulk look-ups bookkeeping needs (one query for a whole set of ids)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from harness.errors import HarnessError
from harness.store.parts import has_results, parts, results_root, retrying
from harness.store.schema import SCHEMAS, TABLES, sql_type


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {sql_type(f.type)}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


def _view_sql(table: str, files: list[Any]) -> str:
    if not files:
        return _empty_select(SCHEMAS[table])
    listed = ", ".join(_sql_str(str(p)) for p in files)
    return f"SELECT * FROM read_parquet([{listed}], union_by_name=true)"


def connect(root: str | os.PathLike | None = None, tables: Iterable[str] | None = None):
    """A read-only DuckDB connection with one view per table over its live Parquet parts (a
    consistent snapshot: see ``harness.store.parts``).

    Tables without parts get an empty view with the declared columns (so joins work), unless the
    whole root is empty: then no views exist and queries on tables fail (see ``harness query``).
    ``tables`` limits the views built (the others are empty) when a caller needs only some.
    """
    import duckdb

    base = results_root(root).resolve()
    wanted = set(tables or TABLES)
    live = {t: parts(t, base) if t in wanted else [] for t in TABLES}
    tmpdir = tempfile.mkdtemp(prefix="harness-duckdb-")
    path = os.path.join(tmpdir, "views.duckdb")
    try:
        with duckdb.connect(path) as con:
            if any(live.values()) or (tables is not None and has_results(base)):
                for t in TABLES:
                    con.execute(f"CREATE VIEW {t} AS {_view_sql(t, live[t])}")
        ro = duckdb.connect(path, read_only=True)
    finally:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)
    return ro


def fetch(
    sql: str,
    params: Any = None,
    root: str | os.PathLike | None = None,
    tables: Iterable[str] | None = None,
) -> list[tuple]:
    """Rows of one query over a fresh snapshot, read again if a compaction deleted a part under
    it."""

    def once() -> list[tuple]:
        con = connect(root, tables)
        try:
            return con.execute(sql, params).fetchall() if params else con.sql(sql).fetchall()
        finally:
            con.close()

    return retrying(once)


def done_ids(
    root: str | os.PathLike | None = None, ids: Iterable[str] | None = None, kind: str | None = None
) -> set[str]:
    """Run ids with an attempt that finished ``done`` (of ``kind`` if given): one query for the
    whole set. ``ids`` limits the answer to those ids."""
    if not parts("runs", root):
        return set()
    where = "status = 'done'" + (" AND kind = $kind" if kind else "")
    params: dict[str, Any] = {"kind": kind} if kind else {}
    if ids is not None:
        where += " AND run_id IN (SELECT unnest($ids))"
        params["ids"] = list(ids)
    rows = fetch(f"SELECT DISTINCT run_id FROM runs WHERE {where}", params, root, ["runs"])
    return {r[0] for r in rows}


def recorded_trials(root: str | os.PathLike | None = None) -> set[str]:
    """Trial ids with a `finetune` row (done, or failed with a recorded reason)."""
    if not parts("finetune", root):
        return set()
    rows = fetch("SELECT DISTINCT trial_id FROM finetune", None, root, ["finetune"])
    return {r[0] for r in rows}


def is_done(run_id_: str, root: str | os.PathLike | None = None) -> bool:
    """True when some attempt of ``run_id_`` finished with status ``done``."""
    return run_id_ in done_ids(root, [run_id_])


def latest_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The latest row of every run (a done attempt wins, else the latest by end/start time)."""
    if not parts("runs", root):
        return []
    cols = (
        "run_id",
        "kind",
        "status",
        "slurm_job_id",
        "attempt",
        "host",
        "log_path",
        "error",
        "started_at",
        "ended_at",
    )
    rows = fetch(
        f"""
        SELECT {", ".join(cols)}
        FROM runs
        QUALIFY row_number() OVER (
            PARTITION BY run_id
            ORDER BY (status = 'done') DESC, coalesce(ended_at, started_at) DESC) = 1
        ORDER BY started_at
        """,
        None,
        root,
        ["runs"],
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def one_line(msg: str) -> str:
    """A multi-line message (DuckDB's) as one line."""
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def execute(sql: str, root: str | os.PathLike | None = None) -> pa.Table:
    """Run SQL against the store's views; a DuckDB error becomes one HarnessError line."""
    import duckdb

    base = results_root(root)

    def once() -> pa.Table:
        con = connect(base)
        try:
            rel = con.sql(sql)
            if rel is None:  # a statement without a result set
                return pa.table({})
            fetch = getattr(rel, "to_arrow_table", None) or rel.arrow  # duckdb 2 / 1
            return fetch()
        finally:
            con.close()

    try:  # a compaction may delete a part under the query: read a fresh snapshot then
        return retrying(once)
    except duckdb.Error as e:
        msg = one_line(e)
        if not has_results(base) and isinstance(e, duckdb.CatalogException):
            missing = [t for t in TABLES if f"name {t} does not exist" in msg]
            if missing:
                raise HarnessError(f"no results under {base}", code=1) from None
        raise HarnessError(msg) from None
