"""Reading the store: a read-only DuckDB connection with one view per table over its live
parts, and the bulk look-ups bookkeeping needs (one query for a whole set of ids)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from harness.errors import HarnessError
from harness.store.fits import one_line, view_fits
from harness.store.health import Damage, named_part, scan_files, warn
from harness.store.parts import (
    COMPACT_DIR,
    has_results,
    is_missing_file_error,
    parts,
    results_root,
    retrying,
)
from harness.store.schema import SCHEMAS, TABLES, sql_type

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

T = TypeVar("T")


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


def _checked_view(con: DuckDBPyConnection, table: str, files: list[Path]) -> list[Damage]:
    """Create ``table``'s view over ``files``, leaving out parts DuckDB cannot bind or whose
    columns do not fit (found by one footer read per part, only when binding showed a problem).
    Returns the parts left out."""
    import duckdb

    try:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {_view_sql(table, files)}")
        described = con.execute(f"DESCRIBE {table}").fetchall() if files else []
        if not files or view_fits(table, described):
            _fill_missing(con, table, files, described)
            return []
    except duckdb.Error as e:
        if is_missing_file_error(e):
            raise  # a compaction replaced parts under us: not damage, read a fresh snapshot
    bad = scan_files(table, files)
    gone = [d.path for d in bad if not d.path.exists()]
    if gone:  # moved by a compaction while we looked: a fresh snapshot has their rows
        raise FileNotFoundError(f"No such file: {gone[0]}")
    drop = {d.path for d in bad}
    good = [f for f in files if f not in drop]
    con.execute(f"CREATE OR REPLACE VIEW {table} AS {_view_sql(table, good)}")
    if good:
        _fill_missing(con, table, good, con.execute(f"DESCRIBE {table}").fetchall())
    return bad


def _fill_missing(
    con: DuckDBPyConnection, table: str, files: list[Path], described: list[tuple]
) -> None:
    """Declared columns that no part has (a store written before the column existed) read as
    NULL, so that queries written for today's schema bind over an older store too."""
    have = {row[0] for row in described}
    missing = [f for f in SCHEMAS[table] if f.name not in have]
    if files and missing:
        cols = "".join(f", CAST(NULL AS {sql_type(f.type)}) AS {f.name}" for f in missing)
        sql = f"SELECT *{cols} FROM ({_view_sql(table, files)})"
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {sql}")


# What a scoped view keeps of each table (``connect(scope=...)``): the rows of the scope's
# pre-training runs, of their fine-tuning trials, and the NC rows of either or measured from
# their checkpoints (by the run id a checkpoint records). Tables are scoped in this order, so
# the nc filter reads the scoped views.
SCOPE_FILTERS: dict[str, str] = {
    "runs": "run_id IN (SELECT run_id FROM _scope)",
    "pretrain": "run_id IN (SELECT run_id FROM _scope)",
    "scores": "run_id IN (SELECT run_id FROM _scope)",
    "finetune": "run_id IN (SELECT run_id FROM _scope)",
    "nc": "run_id IN (SELECT run_id FROM _scope) OR run_id IN (SELECT trial_id FROM finetune) "
    "OR source_run_id IN (SELECT run_id FROM _scope) "
    # rows that recorded no source run (written before the column): by checkpoint path
    "OR (source_run_id IS NULL AND checkpoint IN "
    "(SELECT checkpoint FROM pretrain WHERE checkpoint IS NOT NULL))",
}


def _apply_scope(con: DuckDBPyConnection, scope: Sequence[str]) -> None:
    """Narrow every table's view to one study (``SCOPE_FILTERS``): the raw views move to
    ``_all_<table>`` and ``<table>`` becomes the filtered view over them."""
    con.execute("CREATE TABLE _scope (run_id VARCHAR)")
    if scope:
        con.executemany("INSERT INTO _scope VALUES (?)", [[str(r)] for r in scope])
    have = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    for t in SCOPE_FILTERS:
        if t not in have:  # an empty root: empty views, so that a study's queries still bind
            con.execute(f"CREATE VIEW {t} AS {_view_sql(t, [])}")
        con.execute(f"ALTER VIEW {t} RENAME TO _all_{t}")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM _all_{t} WHERE {SCOPE_FILTERS[t]}")


def _sandbox(con: DuckDBPyConnection, root: Path) -> None:
    """Queries may read the results root and nothing else, write nothing, load nothing; the
    settings are locked so that SQL cannot switch them back."""
    con.execute(f"SET allowed_directories=[{_sql_str(str(root) + os.sep)}]")
    for setting in (
        "enable_external_access=false",
        "autoinstall_known_extensions=false",
        "autoload_known_extensions=false",
        "lock_configuration=true",
    ):
        con.execute(f"SET {setting}")


def connect(
    root: str | os.PathLike | None = None,
    tables: Iterable[str] | None = None,
    exclude: Iterable[Path] = (),
    warn_tables: Iterable[str] | None = None,
    scope: Sequence[str] | None = None,
    left_out: list[Damage] | None = None,
):
    """A read-only, sandboxed DuckDB connection with one view per table over its live Parquet
    parts (a consistent snapshot: see ``harness.store.parts``).

    Tables without parts get an empty view with the declared columns (so joins work), unless the
    whole root is empty: then no views exist and queries on tables fail (see ``harness query``).
    ``tables`` limits the views built (the others are empty) when a caller needs only some.
    Damaged parts (and ``exclude``) are left out, each with one warning line on stderr when its
    table is among ``warn_tables`` (default: all). The connection can read files under the root
    only, and cannot write, attach or load anything.

    ``scope`` (pre-training run ids): every view holds only that study's rows
    (``SCOPE_FILTERS``), so whatever is built on the connection reads one study, not the root.
    ``left_out``: a list the damaged parts left out are added to (once each), for a caller
    that must say its results lack their rows (``health.check_left_out``).
    """
    import duckdb

    base = results_root(root).resolve()
    wanted = set(tables or TABLES)
    skip = set(exclude)

    def files(t: str) -> list[Path]:
        return [p for p in parts(t, base) if p not in skip] if t in wanted else []

    live = {t: files(t) for t in TABLES}
    tmpdir = tempfile.mkdtemp(prefix="harness-duckdb-")
    path = os.path.join(tmpdir, "views.duckdb")
    try:
        with duckdb.connect(path) as con:
            if any(live.values()) or (tables is not None and has_results(base)):
                loud = set(TABLES if warn_tables is None else warn_tables)
                for t in TABLES:  # each view over a snapshot taken just before it binds,
                    # and a fresh one if a compaction moved a part meanwhile
                    for d in retrying(lambda t=t: _checked_view(con, t, files(t))):
                        if t in loud:
                            warn(d, base)
                        _note(left_out, d)
            if scope is not None:
                _apply_scope(con, scope)
        ro = duckdb.connect(path, read_only=True)
    finally:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)
    _sandbox(ro, base)
    return ro


def _note(left_out: list[Damage] | None, d: Damage) -> None:
    """Add ``d`` to a caller's list of parts left out, once."""
    if left_out is not None and all(x.path != d.path for x in left_out):
        left_out.append(d)


def reading(
    fn: Callable[[Any], T],
    root: str | os.PathLike | None,
    tables=None,
    warn_tables=None,
    scope: Sequence[str] | None = None,
    left_out: list[Damage] | None = None,
) -> T:
    """Run ``fn(connection)`` on a fresh snapshot: read again if a compaction moved a part
    under it, and leave out (with a warning) a part whose data turns out unreadable. ``scope``:
    the connection's views hold one study's rows; ``left_out``: gets the parts left out (see
    ``connect``)."""
    import duckdb

    base = results_root(root).resolve()
    exclude: set[Path] = set()

    def once() -> T:
        loud = warn_tables if warn_tables is not None else tables
        con = connect(base, tables, exclude, loud, scope=scope, left_out=left_out)
        try:
            return fn(con)
        finally:
            con.close()

    for _ in range(20):
        try:
            return retrying(once)
        except duckdb.Error as e:
            bad = named_part(e, base)
            if bad is None or bad in exclude or is_missing_file_error(e):
                raise
            exclude.add(bad)
            table = bad.parent.name if bad.parent.name != COMPACT_DIR else bad.parent.parent.name
            damage = Damage(bad, table, f"unreadable data: {one_line(e)[:120]}")
            warn(damage, base)
            _note(left_out, damage)
    raise AssertionError("unreachable")


def fetch(
    sql: str,
    params: Any = None,
    root: str | os.PathLike | None = None,
    tables: Iterable[str] | None = None,
    scope: Sequence[str] | None = None,
) -> list[tuple]:
    """Rows of one query over a fresh snapshot (see ``reading``), of one study with ``scope``."""
    return reading(
        lambda con: (con.execute(sql, params) if params else con.sql(sql)).fetchall(),
        root,
        tables,
        scope=scope,
    )


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


ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")


def _check_statements(con: DuckDBPyConnection, sql: str) -> None:
    """Only queries: writes, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET`` are one line."""
    import duckdb

    try:
        kinds = [s.type.name for s in con.extract_statements(sql)]
    except duckdb.Error as e:
        raise HarnessError(one_line(e)) from None
    bad = [k for k in kinds if k not in ALLOWED_STATEMENTS]
    if bad:
        raise HarnessError(
            f"query: only SELECT statements run here (got {bad[0]}); the store is read-only and "
            "exports go through --format/--output"
        )


def execute(sql: str, root: str | os.PathLike | None = None) -> pa.Table:
    """Run one user query (SELECT only) against the store's views in the sandbox; a DuckDB error
    becomes one HarnessError line."""
    import duckdb

    base = results_root(root)

    def run(con: DuckDBPyConnection) -> pa.Table:
        _check_statements(con, sql)
        rel = con.sql(sql)
        if rel is None:  # a statement without a result set
            return pa.table({})
        fetch = getattr(rel, "to_arrow_table", None) or rel.arrow  # duckdb 2 / 1
        return fetch()

    try:
        named = duckdb.connect().get_table_names(sql)
    except duckdb.Error:
        named = set()  # the query itself will say what is wrong with it
    try:
        return reading(run, base, warn_tables={t for t in named if t in TABLES})
    except duckdb.Error as e:
        msg = one_line(e)
        if not has_results(base) and isinstance(e, duckdb.CatalogException):
            missing = [t for t in TABLES if f"name {t} does not exist" in msg]
            if missing:
                raise HarnessError(f"no results under {base}", code=1) from None
        raise HarnessError(msg) from None
