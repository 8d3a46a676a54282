"""SQL over the results store and its output formats (`harness query`, `harness status`)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import pyarrow as pa

from harness import store
from harness.errors import HarnessError
from harness.store import execute, one_line
from harness.store.fileio import atomic_write, atomic_write_text, check_path

__all__ = ["FORMATS", "execute", "write", "run", "list_tables", "status", "compact"]

FORMATS = ("table", "csv", "json", "parquet")


def _cells(column: pa.ChunkedArray) -> list[Any]:
    """A result column as Python values (maps as dicts). A value Python cannot hold, such as
    DuckDB's infinite dates and timestamps, becomes the string ``infinity`` / ``-infinity``
    (None when it is not a number underneath), so that no result fails to print."""
    try:
        return column.to_pylist(maps_as_pydicts="lossy")
    except (ValueError, OverflowError, pa.ArrowException):
        return [_cell(s) for s in column]


def _cell(scalar: pa.Scalar) -> Any:
    """One value of ``_cells``, for a column Python cannot hold whole."""
    try:
        return scalar.as_py(maps_as_pydicts="lossy")
    except (ValueError, OverflowError, pa.ArrowException):
        pass
    try:
        n = scalar.cast(pa.int64()).as_py()
    except (ValueError, pa.ArrowException):
        return None
    return None if n is None else ("infinity" if n > 0 else "-infinity")


def _jsonable(v: Any) -> Any:
    """A result value as strict JSON data (what ``--format json`` writes, and what a nested
    ``--format csv`` cell holds as JSON text):

    * NaN, infinity and -infinity: null (JSON has no such numbers);
    * DECIMAL (and HUGEINT, e.g. ``sum`` of integers): a number, exact when its scale is 0,
      else the nearest double (cast to VARCHAR in the query for every digit);
    * BLOB: its bytes in base64 (RFC 4648, padded);
    * dates, times and timestamps: ISO 8601 text; INTERVAL: its months, days and nanoseconds;
      a duration: its seconds;
    * LIST, STRUCT, MAP: arrays and objects of the same (a non-text map key as its JSON text);
    * anything else without a JSON form (UUID): its text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        if not v.is_finite():
            return None
        return int(v) if v.as_tuple().exponent >= 0 else float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, Mapping):
        return {_json_key(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, pa.MonthDayNano):  # an INTERVAL
        return {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _json_key(k: Any) -> str:
    return k if isinstance(k, str) else json.dumps(_jsonable(k), allow_nan=False)


def _dumps(v: Any, **kw: Any) -> str:
    return json.dumps(_jsonable(v), allow_nan=False, **kw)


def _csv_text(value: Any) -> str:
    """A CSV cell for a value pyarrow's CSV writer cannot write: a BLOB as its bare base64 text,
    anything else (LIST, STRUCT, MAP, UNION, INTERVAL) as its compact JSON text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _jsonable(value)
    return _dumps(value, separators=(",", ":"))


def _csv_native(column: pa.ChunkedArray) -> bool:
    """Whether pyarrow's CSV writer writes this column as it is: not BLOBs (invalid UTF-8 fails
    it), nested columns or INTERVALs, nor any other type it has no text for (a cast of its
    first value to text is tried)."""
    t, types = column.type, pa.types
    binary = types.is_binary(t) or types.is_large_binary(t) or types.is_fixed_size_binary(t)
    if binary or types.is_nested(t) or types.is_interval(t):
        return False
    try:
        column.slice(0, 1).cast(pa.string())
    except (pa.ArrowException, TypeError):
        return False
    return True


def _csv(table: pa.Table) -> str:
    """The table as CSV: scalars as pyarrow writes them, other columns through ``_csv_text``."""
    import pyarrow.csv as pcsv

    columns = [
        col
        if _csv_native(col)
        else pa.array([None if v is None else _csv_text(v) for v in _cells(col)], pa.string())
        for col in table.columns
    ]
    buf = io.BytesIO()
    pcsv.write_csv(pa.Table.from_arrays(columns, names=table.column_names), buf)
    return buf.getvalue().decode()


def write(
    table: pa.Table, fmt: str, output: str | os.PathLike | None = None, out: IO[str] | None = None
) -> None:
    """Write a result table as table|csv|json|parquet to ``output`` (a file) or ``out``/stdout.

    json is strict JSON, one object per row, values as ``_jsonable`` says (non-finite numbers
    null, DECIMAL a number, BLOB base64); csv writes nested cells (LIST, STRUCT, MAP) as their
    JSON text and BLOBs as base64, so that every result can be exported."""
    if fmt not in FORMATS:
        raise HarnessError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = out or sys.stdout
    if fmt == "parquet":
        if not output:
            raise HarnessError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        atomic_write(output, lambda p: pq.write_table(table, p))
        return
    if fmt == "csv":
        text = _csv(table)
    elif fmt == "json":
        names = table.column_names
        columns = [_cells(c) for c in table.columns]
        rows = [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]
        text = _dumps(rows, indent=1) + "\n"
    else:
        text = _render_table(table)
    if output:
        atomic_write_text(output, text)
    else:
        out.write(text)


def _render_table(table: pa.Table) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=True, header_style="bold")
    for name in table.column_names:
        t.add_column(name)
    columns = [_cells(c) for c in table.columns]  # by position: names may repeat
    for row in zip(*columns, strict=True):
        t.add_row(
            *("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row)
        )
    buf = io.StringIO()
    Console(file=buf, width=max(80, min(250, 16 * max(1, table.num_columns)))).print(t)
    return buf.getvalue() + f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n"


def run(
    sql: str,
    root: str | os.PathLike | None = None,
    fmt: str = "table",
    output: str | os.PathLike | None = None,
) -> int:
    """`harness query`: execute one statement and write it in the chosen format; the output
    path and the statement count are checked before anything runs."""
    if fmt == "parquet" and not output:
        raise HarnessError("--format parquet needs --output FILE")
    if output:
        check_path(output, "file", "--output")
    _one_statement(sql)
    write(execute(sql, root), fmt, output)
    return 0


def _one_statement(sql: str) -> None:
    """Refuse more than one statement (DuckDB would run them all and show only the last); a
    trailing semicolon is fine. SQL that does not parse is left to ``execute`` to report."""
    import duckdb

    try:
        kinds = [s.type.name for s in duckdb.extract_statements(sql)]
    except duckdb.Error:
        return
    if len(kinds) > 1:
        raise HarnessError(
            f"query: {len(kinds)} statements given ({', '.join(kinds)}), one runs at a time; run "
            "each with its own `harness query`, or join them into one SELECT (UNION ALL, WITH)"
        )


def list_tables(root: str | os.PathLike | None = None, out: IO[str] | None = None) -> int:
    """`harness query --tables`: every table with its columns and row count."""
    out = out or sys.stdout
    base = store.results_root(root)
    if not store.has_results(base):
        out.write(f"no results under {base}\n")
    con = store.connect(base) if store.has_results(base) else None
    try:
        for t in store.TABLES:
            if con is not None:
                n = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                cols = [f"{r[0]} {r[1]}" for r in con.execute(f"DESCRIBE {t}").fetchall()]
            else:
                n = 0
                cols = [f"{f.name} {f.type}" for f in store.SCHEMAS[t]]
            nparts = len(store.parts(t, base))
            out.write(f"{t}: {n} rows in {nparts} parts\n  " + ", ".join(cols) + "\n")
    finally:
        if con is not None:
            con.close()
    return 0


def status(
    root: str | os.PathLike | None = None, show_all: bool = False, out: IO[str] | None = None
) -> int:
    """`harness status`: counts of runs by state, and the failed ones with log and error line."""
    out = out or sys.stdout
    base = store.results_root(root)
    from harness.cluster import ledger

    runs = ledger.run_states(base)
    if not runs:
        out.write(f"no runs under {base}\n")
        return 0
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out.write(" ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"  (total {len(runs)})\n")
    for r in runs:
        if show_all or r["status"] == "failed":
            line = f"{r['run_id']}  {r['kind']:<9} {r['status']:<9}"
            if r.get("slurm_job_id"):
                line += f" job {r['slurm_job_id']}"
            if r.get("log_path"):
                line += f" log {r['log_path']}"
            if r.get("error"):
                line += f"  error: {one_line(r['error'])[:200]}"
            out.write(line + "\n")
    return 0


def compact(
    tables: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    out: IO[str] | None = None,
    *,
    vacuum: bool = False,
    older_than: float | None = None,
) -> int:
    """`harness compact`: merge each table's parts (the replaced ones are kept); ``vacuum``:
    instead, delete the kept files replaced more than ``older_than`` days ago (default
    ``store.DEFAULT_RETENTION_DAYS``). One line per table."""
    out = out or sys.stdout
    base = store.results_root(root)
    unknown = [t for t in tables or () if t not in store.TABLES]
    if unknown:
        raise HarnessError(f"unknown table {unknown[0]!r}; valid: {', '.join(store.TABLES)}")
    if older_than is not None and not vacuum:
        raise HarnessError("--older-than goes with --vacuum (e.g. --vacuum --older-than 7)")
    if vacuum:
        days = store.DEFAULT_RETENTION_DAYS if older_than is None else older_than
        return _vacuum(tables, base, days, out)
    for c in store.compact_tables(tables or None, base):
        if c.merged is None:
            out.write(f"{c.table}: {c.parts_before} part(s), nothing to merge\n")
        else:
            left = c.parts_after - 1
            out.write(
                f"{c.table}: {c.parts_before} parts -> 1 ({c.rows} rows) in {c.seconds:.1f} s; "
                f"{c.kept} replaced files kept until `harness compact --vacuum`"
                + (f"; {left} damaged part(s) left as they are (`harness doctor`)" if left else "")
                + "\n"
            )
    return 0


def _vacuum(tables: Sequence[str] | None, base: os.PathLike, days: float, out: IO[str]) -> int:
    """`harness compact --vacuum`: what each table freed and kept, then the total."""
    if not math.isfinite(days) or days < 0:
        raise HarnessError(f"--older-than takes days >= 0 (0: free every kept file), got {days:g}")
    done = store.vacuum_tables(tables or None, base, older_than_days=days)
    for v in done:
        if v.freed_files or v.kept_files:
            line = f"{v.table}: freed {v.freed_files} files ({v.freed_bytes} bytes)"
            kept = f"; kept {v.kept_files} ({v.kept_bytes} bytes)" if v.kept_files else ""
            out.write(line + kept + "\n")
        for folder in v.held:
            out.write(f"{v.table}: kept {folder}: its merged part fails its checksum; see doctor\n")
    files, size = sum(v.freed_files for v in done), sum(v.freed_bytes for v in done)
    young = f"; kept what was replaced less than {days:g} days ago" if days else ""
    out.write(f"vacuum: freed {files} files, {size} bytes{young}\n")
    return 1 if any(v.held for v in done) else 0


def _damaged_records(base: os.PathLike) -> list[Any]:
    """Job records that do not parse, and checkpoints that are not whole torch archives."""
    import zipfile
    from pathlib import Path

    from harness.cluster import ledger

    out = []
    for p in sorted(ledger.jobs_dir(base).glob("*.json")):
        try:
            json.loads(p.read_text())
        except (OSError, ValueError) as e:
            out.append(store.Damage(p, "jobs", f"unreadable record ({_one(e)})"))
    for p in sorted(Path(base, "checkpoints").glob("*/*.pt")):
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            bad = _one(e)
        if bad:
            out.append(store.Damage(p, "checkpoints", f"torn checkpoint ({bad})"))
    return out


def _one(e: BaseException) -> str:
    return store.one_line(e)[:120]


def doctor(
    root: str | os.PathLike | None = None, fix: bool = False, out: IO[str] | None = None
) -> int:
    """`harness doctor`: list damaged parts (merged parts checked against their manifest's
    checksums), stray files, job records and checkpoints; ``fix`` restores a damaged merged part
    from the parts it replaced and moves the rest to ``<root>/quarantine/`` (nothing is
    deleted). Exit 1 when damage remains or rows could not be restored."""
    out = out or sys.stdout
    base = store.results_root(root)
    damaged = store.scan_damage(base) + _damaged_records(base)
    for d in damaged:
        out.write(f"{d.kind}: {d.path} ({d.table}: {d.reason})\n")
    if not damaged:
        out.write(f"{base}: no damaged parts, stray files, job records or checkpoints\n")
        return 0
    if not fix:
        out.write(
            f"{len(damaged)} damaged or stray; `harness doctor --fix` restores compacted parts "
            "from the parts they replaced and moves the rest to quarantine\n"
        )
        return 1
    lost = 0
    for f in store.repair(base, damaged):
        r = f.restored
        if r is None:
            out.write(f"moved {f.damage.path} to {f.moved_to}\n")
            continue
        out.write(
            f"restored {len(r.restored)} parts replaced by {f.damage.path.name} (checksums "
            f"match); the damaged part moved to {f.moved_to}\n"
        )
        for p in r.bad:
            out.write(f"quarantined a kept copy that fails its checksum: {p}\n")
        for name in r.lost:
            out.write(f"lost: {f.damage.table}/{name}: no copy matches its checksum (vacuumed?)\n")
        lost += len(r.lost)
    return 1 if lost else 0
