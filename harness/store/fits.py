"""Whether a file or a bound view fits its table's declared schema: the one check both
compaction (``parts``: a damaged part is never merged) and the damage reports (``health``,
``read``) make, so that neither of those modules needs the other."""

from __future__ import annotations

import os

import pyarrow as pa

from harness.store.schema import SCHEMAS, sql_type


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
