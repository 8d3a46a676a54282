"""SQL over the results store and its output formats (`harness query`, `harness status`)."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import pyarrow as pa

from harness import store
from harness.errors import HarnessError
from harness.fileio import atomic_write, atomic_write_text
from harness.store import execute, one_line

__all__ = ["FORMATS", "execute", "write", "run", "list_tables", "status", "compact"]

FORMATS = ("table", "csv", "json", "parquet")


def _jsonable(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, float) and v != v:
        return None
    return v


def write(
    table: pa.Table, fmt: str, output: str | os.PathLike | None = None, out: IO[str] | None = None
) -> None:
    """Write a result table as table|csv|json|parquet to ``output`` (a file) or ``out``/stdout."""
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
        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(table, buf)
        text = buf.getvalue().decode()
    elif fmt == "json":
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_pylist()]
        text = json.dumps(rows, indent=1) + "\n"
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
    columns = [c.to_pylist() for c in table.columns]  # by position: names may repeat
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
    """`harness query`: execute and write in the chosen format."""
    if fmt == "parquet" and not output:
        raise HarnessError("--format parquet needs --output FILE")
    write(execute(sql, root), fmt, output)
    return 0


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
    from harness import ledger

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
) -> int:
    """`harness compact`: merge each table's parts; one line per table."""
    out = out or sys.stdout
    base = store.results_root(root)
    unknown = [t for t in tables or () if t not in store.TABLES]
    if unknown:
        raise HarnessError(f"unknown table {unknown[0]!r}; valid: {', '.join(store.TABLES)}")
    for c in store.compact_tables(tables or None, base):
        if c.merged is None:
            out.write(f"{c.table}: {c.parts_before} part(s), nothing to merge\n")
        else:
            out.write(
                f"{c.table}: {c.parts_before} parts -> 1 ({c.rows} rows) in {c.seconds:.1f} s\n"
            )
    return 0


def _damaged_records(base: os.PathLike) -> list[Any]:
    """Job records that do not parse, and checkpoints that are not whole torch archives."""
    import zipfile
    from pathlib import Path

    from harness import ledger

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
    """`harness doctor`: list damaged parts, job records and checkpoints; ``fix`` moves them to
    ``<root>/quarantine/`` (nothing is deleted). Exit 1 when damage remains."""
    out = out or sys.stdout
    base = store.results_root(root)
    damaged = store.scan_damage(base) + _damaged_records(base)
    for d in damaged:
        out.write(f"damaged: {d.path} ({d.table}: {d.reason})\n")
    if not damaged:
        out.write(f"{base}: no damaged parts, job records or checkpoints\n")
        return 0
    if not fix:
        out.write(f"{len(damaged)} damaged; `harness doctor --fix` moves them to quarantine\n")
        return 1
    moved = store.quarantine(base, damaged)
    out.write(f"moved {len(moved)} to {base / store.QUARANTINE}\n")
    return 0
