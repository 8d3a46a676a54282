"""Damaged parts: a file that cannot be read (garbage, truncated) or whose columns do not fit its
table's schema. Readers leave such a part out of the table's view and say so in one warning
line; ``harness doctor`` lists them and, with ``--fix``, moves them to ``<root>/quarantine/``
(never deletes). Checking costs one footer read per part, and readers only pay it when DuckDB
could not bind a table as it is."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from harness.store.parts import parts, results_root
from harness.store.schema import SCHEMAS, TABLES, sql_type

QUARANTINE = "quarantine"
_PARQUET_PATH = re.compile(r"""['"]?(/[^'"\s]+?\.parquet)['"]?""")
_warned: set[str] = set()


@dataclass(frozen=True)
class Damage:
    """One unusable file of the store and why."""

    path: Path
    table: str
    reason: str


def one_line(msg: object) -> str:
    """A multi-line message (DuckDB's, pyarrow's) as one line."""
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _same_type(found: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_timestamp(found) and pa.types.is_timestamp(want):
        return found.tz is not None  # any unit, as long as it is a UTC instant
    return found == want


def file_problem(table: str, path: str | os.PathLike) -> str | None:
    """Why a part of ``table`` cannot be used, or None when it can: its footer must read and its
    columns must be declared columns of the declared types, required ones present."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - any failure to read the footer means unusable
        return f"unreadable ({one_line(e)[:120]})"
    declared = SCHEMAS[table]
    for f in schema:
        if f.name not in declared.names:
            return f"column {f.name!r} is not a {table} column"
        if not _same_type(f.type, declared.field(f.name).type):
            return f"column {f.name!r} is {f.type}, expected {declared.field(f.name).type}"
    missing = [f.name for f in declared if not f.nullable and f.name not in schema.names]
    return f"required column {missing[0]!r} is missing" if missing else None


def view_fits(table: str, described: list[tuple]) -> bool:
    """Whether a bound view's columns (DuckDB ``DESCRIBE`` rows) are declared ones, as declared."""
    declared = {f.name: sql_type(f.type) for f in SCHEMAS[table]}
    aliases = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
    for name, kind, *_ in described:
        want = declared.get(name)
        if want is None or aliases.get(want, want) != kind:
            return False
    return True


def scan_files(table: str, files: list[Path]) -> list[Damage]:
    """The unusable files among ``files`` (one footer read each)."""
    out = []
    for p in files:
        reason = file_problem(table, p)
        if reason:
            out.append(Damage(Path(p), table, reason))
    return out


def named_part(error: BaseException, root: Path) -> Path | None:
    """The part of the store an error message names, if any."""
    for m in _PARQUET_PATH.finditer(str(error)):
        p = Path(m.group(1))
        if p.is_relative_to(root) and p.exists():
            return p
    return None


def warn(d: Damage, root: Path) -> None:
    """One warning line per damaged part and process."""
    if str(d.path) in _warned:
        return
    _warned.add(str(d.path))
    sys.stderr.write(
        f"harness: warning: {d.path}: left out of {d.table} ({d.reason}); "
        f"`harness doctor --fix` moves it to {root / QUARANTINE}\n"
    )


def scan(root: str | os.PathLike | None = None, tables: list[str] | None = None) -> list[Damage]:
    """Every damaged part of the store (doctor's full check)."""
    base = results_root(root)
    return [d for t in tables or TABLES for d in scan_files(t, parts(t, base))]


def quarantine(root: str | os.PathLike | None, damaged: list[Damage]) -> list[Path]:
    """Move damaged files under ``<root>/quarantine/`` keeping their relative path; return the
    new paths. Nothing is deleted; a name already there gets a numbered suffix."""
    base = results_root(root).resolve()
    moved = []
    for d in damaged:
        src = Path(d.path).resolve()
        dest = base / QUARANTINE / src.relative_to(base)
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():
            dest = dest.with_name(f"{src.name}.{n}")
            n += 1
        os.replace(src, dest)
        moved.append(dest)
    return moved
