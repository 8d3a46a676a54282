"""The store on disk: immutable parts, merged parts, and the snapshot of live files readers see.

Layout of one table::

    <root>/<table>/part-<utc>-<uuid>.parquet       one per job / trial / attempt (``append``)
    <root>/<table>/_compact/compact-<utc>-<uuid>.parquet    a merged part (``compact``)
    <root>/<table>/_compact/compact-<utc>-<uuid>.replaces   the files it replaces, one a line

Every file appears by an atomic rename, so nobody sees a torn one. Compaction (one compactor per
table at a time, under a lock file) reads the live files, writes their rows sorted by the
table's filter keys to a hidden temporary, writes the ``.replaces`` list, then renames the merged
part into place: that rename is the commit. Only afterwards are the replaced files deleted.

A reader lists the table folder and then ``_compact/`` twice; if the two ``_compact/`` listings
differ a compaction committed meanwhile and it lists again. A file is live unless a committed
merged part replaces it. So at every instant a reader sees each row exactly once: before the
commit the old parts, after it the merged part (a replaced file that still exists is ignored),
and a crash at any point leaves either the old parts or the committed merged part. A reader
whose files are deleted under it gets an I/O error and reads a fresh snapshot (``retrying``).
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from harness.fileio import atomic_write, file_lock
from harness.store.schema import SCHEMAS, SORT_KEYS, TABLES, validate_rows

RESULTS_ENV = "HARNESS_RESULTS"
DEFAULT_ROOT = "results"
COMPACT_DIR = "_compact"
_ROW_GROUP = 128 * 1024

T = TypeVar("T")


def results_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The results root: explicit argument, else ``$HARNESS_RESULTS``, else ``./results``."""
    return Path(root or os.environ.get(RESULTS_ENV) or DEFAULT_ROOT)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")


# ---------------------------------------------------------------------------------------------
# Writing


def append(
    table: str, rows: Iterable[Mapping[str, Any]], root: str | os.PathLike | None = None
) -> Path | None:
    """Write ``rows`` as one immutable Parquet part of ``table``; return its path (None if no rows).

    All rows are validated before anything is written; the part appears atomically (rename).
    """
    clean = validate_rows(table, rows)
    if not clean:
        return None
    tdir = results_root(root) / table
    tdir.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pylist(clean, schema=SCHEMAS[table])
    final = tdir / f"part-{_stamp()}-{uuid.uuid4().hex[:12]}.parquet"
    return atomic_write(final, lambda tmp: pq.write_table(arrow, tmp), fsync=True)


# ---------------------------------------------------------------------------------------------
# Reading: the live snapshot


def _names(folder: Path, prefix: str, suffix: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return [e.name for e in it if e.name.startswith(prefix) and e.name.endswith(suffix)]
    except FileNotFoundError:
        return []


def _replaced_by(cdir: Path, merged: str) -> set[str] | None:
    """Names (relative to the table folder) a merged part replaces; None if its list vanished
    (the merged part was itself replaced and deleted meanwhile)."""
    try:
        text = (cdir / merged.replace(".parquet", ".replaces")).read_text()
    except FileNotFoundError:
        return None
    return set(text.split("\n")) - {""}


@dataclass(frozen=True)
class Snapshot:
    """The files of one table at one instant: ``live`` ones are read; ``seen`` is everything
    listed (live or replaced), which a compaction of this snapshot replaces."""

    live: list[Path]
    seen: list[str]


def snapshot(table: str, root: str | os.PathLike | None = None) -> Snapshot:
    """A consistent view of ``table``'s files (see the module docstring for the protocol)."""
    tdir = results_root(root) / table
    cdir = tdir / COMPACT_DIR
    for _ in range(100):
        small = _names(tdir, "part-", ".parquet")
        merged = sorted(_names(cdir, "compact-", ".parquet"))
        if merged != sorted(_names(cdir, "compact-", ".parquet")):
            continue  # a compaction committed while we listed
        replaced: set[str] = set()
        lists = [_replaced_by(cdir, m) for m in merged]
        if any(r is None for r in lists):
            continue
        for r in lists:
            replaced |= r  # type: ignore[arg-type]
        seen = small + [f"{COMPACT_DIR}/{m}" for m in merged]
        live = sorted(tdir / n for n in seen if n not in replaced)
        return Snapshot(live, seen)
    raise OSError(f"{tdir}: the folder kept changing while it was listed")


def parts(table: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The live part files of a table (small and merged parts, never temporaries or replaced
    parts): the files a reader reads."""
    return snapshot(table, root).live


def has_results(root: str | os.PathLike | None = None) -> bool:
    return any(parts(t, root) for t in TABLES)


def is_missing_file_error(e: BaseException) -> bool:
    """True for a read that failed because a part was deleted under it (by a compaction)."""
    msg = str(e)
    return isinstance(e, FileNotFoundError) or (
        "No such file" in msg or "No files found" in msg or "Cannot open file" in msg
    )


def retrying(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run a read; if a compaction deleted a file under it, read again from a fresh snapshot."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if i == attempts - 1 or not is_missing_file_error(e):
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Compaction


@dataclass
class Compaction:
    """What one ``compact`` did to one table."""

    table: str
    parts_before: int
    parts_after: int
    rows: int
    seconds: float
    merged: Path | None


def _read_live(table: str, live: list[Path], batch: int = 1000) -> pa.Table:
    """Every row of the live files in the table's declared schema (a column an older part lacks
    reads as null), sorted by the table's filter keys. Files are read ``batch`` at a time and
    each batch combined into one chunk: memory follows the rows, not the number of files."""
    import pyarrow.dataset as pds

    schema = SCHEMAS[table]
    pieces = [
        pds.dataset([str(p) for p in live[i : i + batch]], schema=schema, format="parquet")
        .to_table()
        .combine_chunks()
        for i in range(0, len(live), batch)
    ]
    out = pa.concat_tables(pieces).combine_chunks() if pieces else schema.empty_table()
    keys = [(k, "ascending") for k in SORT_KEYS.get(table, ())]
    return out.sort_by(keys) if keys else out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete(tdir: Path, names: Iterable[str]) -> None:
    """Delete replaced files (and the lists of replaced merged parts), a few at a time in
    threads: on network file systems each unlink is a round trip."""
    from concurrent.futures import ThreadPoolExecutor

    def one(n: str) -> None:
        (tdir / n).unlink(missing_ok=True)
        if n.startswith(f"{COMPACT_DIR}/"):
            (tdir / n.replace(".parquet", ".replaces")).unlink(missing_ok=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names, chunksize=256))


def _tidy(tdir: Path, cdir: Path) -> None:
    """Finish what a killed compaction left: its temporaries, lists without a committed merged
    part, and replaced files a committed merged part still names (caller holds the lock)."""
    for n in _names(cdir, ".compact-", ".tmp"):
        (cdir / n).unlink(missing_ok=True)
    merged = set(_names(cdir, "compact-", ".parquet"))
    for n in _names(cdir, "compact-", ".replaces"):
        if n.replace(".replaces", ".parquet") not in merged:
            (cdir / n).unlink(missing_ok=True)
    leftovers: set[str] = set()
    for m in merged:
        leftovers |= _replaced_by(cdir, m) or set()
    _delete(tdir, sorted(n for n in leftovers if (tdir / n).exists()))


def compact(
    table: str,
    root: str | os.PathLike | None = None,
    *,
    min_parts: int = 2,
    lock_timeout: float = 600.0,
    on_step: Callable[[str], None] | None = None,
) -> Compaction:
    """Merge the live files of ``table`` into one sorted part (idempotent: a table with fewer
    than ``min_parts`` live files is left alone). Safe against concurrent appends and readers
    and against a kill at any point (see the module docstring). ``on_step`` is called with the
    name of each step as it starts (tests kill the process there)."""
    step = on_step or (lambda name: None)
    t0 = time.perf_counter()
    tdir = results_root(root) / table
    cdir = tdir / COMPACT_DIR
    if table not in SCHEMAS or not tdir.exists():
        return Compaction(table, 0, 0, 0, 0.0, None)
    cdir.mkdir(exist_ok=True)
    with file_lock(cdir / ".lock", timeout=lock_timeout):
        _tidy(tdir, cdir)
        snap = snapshot(table, root)
        if len(snap.live) < min_parts:
            n = len(snap.live)
            return Compaction(table, n, n, 0, time.perf_counter() - t0, None)
        step("read")
        merged_rows = _read_live(table, snap.live)
        name = f"compact-{_stamp()}-{uuid.uuid4().hex[:12]}"
        final = cdir / f"{name}.parquet"
        tmp = cdir / f".{name}.parquet.tmp"
        step("write")
        pq.write_table(merged_rows, tmp, row_group_size=_ROW_GROUP)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        step("list")
        atomic_write(
            cdir / f"{name}.replaces",
            lambda p: p.write_text("\n".join(snap.seen) + "\n"),
            fsync=True,
        )
        step("commit")
        os.replace(tmp, final)
        _fsync_dir(cdir)
        step("delete")
        _delete(tdir, snap.seen)
        step("done")
    return Compaction(
        table, len(snap.live), 1, merged_rows.num_rows, time.perf_counter() - t0, final
    )


def compact_tables(
    tables: Iterable[str] | None = None, root: str | os.PathLike | None = None, **kw: Any
) -> list[Compaction]:
    """``compact`` each table (all tables by default)."""
    return [compact(t, root, **kw) for t in (tables or TABLES)]


def compaction_line(done: Iterable[Compaction]) -> str | None:
    """One line saying what a round of compaction merged (None when nothing was)."""
    merged = [c for c in done if c.merged is not None]
    if not merged:
        return None
    return "compacted: " + ", ".join(f"{c.table} {c.parts_before} parts -> 1" for c in merged)
