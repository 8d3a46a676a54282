"""The store on disk: immutable parts, merged parts, the snapshot of live files readers see, and
the files a merged part replaced, kept until a vacuum.

Layout of one table::

    <root>/<table>/part-<utc>-<uuid>.parquet        one per job / trial / attempt (``append``)
    <root>/<table>/_compact/compact-<utc>-<uuid>.parquet        a merged part (``compact``)
    <root>/<table>/_compact/compact-<utc>-<uuid>.replaces       the files it replaces, one a line
    <root>/<table>/_compact/compact-<utc>-<uuid>.manifest.json  its sha256 and size, and each
                                                                replaced file's (``Manifest``)
    <root>/<table>/_compact/replaced/compact-<utc>-<uuid>/      the files it replaced, kept

Every file appears by an atomic rename, so nobody sees a torn one. Compaction (one compactor per
table at a time, under a lock file) reads the live files (a damaged one is left where it is, for
``harness doctor``) and checksums them, writes their rows sorted by the table's filter keys to a
hidden temporary, writes the ``.replaces`` list and the manifest (the merged part's sha256 and
size, and each replaced file's), then renames the merged part into place: that rename is the
commit. Only afterwards are the replaced files moved into the merged part's folder under
``replaced/`` (a replaced merged part with its list and manifest). Nothing is deleted: as Delta
Lake and Iceberg do, the replaced files stay until ``vacuum`` (``harness compact --vacuum``)
deletes those replaced more than ``DEFAULT_RETENTION_DAYS`` ago, and a damaged merged part is
restored from them (``harness doctor --fix``, ``health.restore``).

A reader lists the table folder and then ``_compact/`` twice; if the two ``_compact/`` listings
differ a compaction committed meanwhile and it lists again. A file is live unless a committed
merged part replaces it; ``replaced/`` is never listed. So at every instant a reader sees each
row exactly once: before the commit the old parts, after it the merged part (a replaced file
that still exists is ignored), and a crash at any point leaves either the old parts or the
committed merged part (the next compaction finishes moving what it replaced). A reader whose
files are moved under it gets an I/O error and reads a fresh snapshot (``retrying``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from harness.store.fileio import atomic_write, file_lock
from harness.store.fits import file_problem, one_line
from harness.store.schema import SCHEMAS, SORT_KEYS, TABLES, StoreError, validate_rows

RESULTS_ENV = "HARNESS_RESULTS"
DEFAULT_ROOT = "results"
COMPACT_DIR = "_compact"
KEPT_DIR = "replaced"  # <table>/_compact/replaced/<merged part>/: the files it replaced
LIST, MANIFEST = ".replaces", ".manifest.json"  # a merged part's list and manifest
DEFAULT_RETENTION_DAYS = 7.0  # `harness compact --vacuum` keeps files replaced since then
_ROW_GROUP = 128 * 1024
_STAMP = "%Y%m%dT%H%M%S%f"

T = TypeVar("T")
R = TypeVar("R")


def results_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The results root: explicit argument, else ``$HARNESS_RESULTS``, else ``./results``."""
    return Path(root or os.environ.get(RESULTS_ENV) or DEFAULT_ROOT)


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime(_STAMP)


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


def sidecar(merged: str, suffix: str) -> str:
    """The name of a merged part's list (``LIST``) or manifest (``MANIFEST``)."""
    return merged.removesuffix(".parquet") + suffix


def replaced_by(cdir: Path, merged: str) -> set[str] | None:
    """Names (relative to the table folder) a merged part replaces; None if its list vanished
    (the merged part was itself replaced and moved aside meanwhile)."""
    try:
        text = (cdir / sidecar(merged, LIST)).read_text()
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
        lists = [replaced_by(cdir, m) for m in merged]
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
    """True for a read that failed because a part was moved under it (by a compaction)."""
    msg = str(e)
    return isinstance(e, FileNotFoundError) or (
        "No such file" in msg or "No files found" in msg or "Cannot open file" in msg
    )


def retrying(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run a read; if a compaction moved a file under it, read again from a fresh snapshot."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if i == attempts - 1 or not is_missing_file_error(e):
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Checksums and manifests


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileSum:
    """A file's name (relative to its table folder), sha256 and size in bytes."""

    name: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path, name: str) -> FileSum:
        return cls(name, sha256_file(path), path.stat().st_size)

    def problem(self, path: Path) -> str | None:
        """Why ``path`` does not hold exactly this file (None when it does); the size first,
        which costs no read."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size != self.bytes:
            return f"{size} bytes where its manifest says {self.bytes} (truncated or overwritten)"
        if sha256_file(path) != self.sha256:
            return "its sha256 differs from its manifest's (corrupt)"
        return None


@dataclass(frozen=True)
class Manifest:
    """What a merged part committed: its own checksum (``part``), its row count, and each file
    it replaced (``replaced``), kept in ``kept_dir`` until a vacuum."""

    table: str
    part: FileSum
    rows: int
    replaced: tuple[FileSum, ...] = field(default=())

    def dumps(self) -> str:
        return json.dumps({"format": 1, **asdict(self)}, indent=1) + "\n"

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``; None when there is none or it does not parse."""
        try:
            doc = json.loads(path.read_text())
            return cls(
                doc["table"],
                FileSum(**doc["part"]),
                int(doc["rows"]),
                tuple(FileSum(**f) for f in doc["replaced"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def read_manifest(cdir: Path, merged: str) -> Manifest | None:
    """The manifest of merged part ``merged`` (its file name) in ``cdir``; None if it has none."""
    return Manifest.load(cdir / sidecar(merged, MANIFEST))


def kept_dir(cdir: Path, merged: str) -> Path:
    """The folder holding the files merged part ``merged`` (its file name) replaced."""
    return cdir / KEPT_DIR / merged.removesuffix(".parquet")


def is_merged(path: Path) -> bool:
    """Whether ``path`` is a merged part in its table's ``_compact/`` folder."""
    return path.parent.name == COMPACT_DIR and path.name.startswith("compact-")


def _pool(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` a few at a time in threads: on network file systems each file
    operation is a round trip."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, items, chunksize=64))


def move(src: Path, dest: Path) -> bool:
    """Rename ``src`` to ``dest`` (atomic); False when ``src`` is already gone."""
    try:
        os.replace(src, dest)
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# Compaction


@dataclass
class Compaction:
    """What one ``compact`` did to one table: live files merged (``parts_before``) and live
    afterwards (the merged part and any damaged part left as it is); ``kept``: replaced files
    moved aside."""

    table: str
    parts_before: int
    parts_after: int
    rows: int
    seconds: float
    merged: Path | None
    kept: int = 0


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


def _usable(table: str, tdir: Path, snap: Snapshot) -> tuple[list[Path], list[str]]:
    """The live files a compaction merges and the names it replaces: a damaged part (one
    footer read each, as readers judge it) stays where it is, live and left out by readers,
    for ``harness doctor``; it is never merged or moved."""
    problems = _pool(lambda p: file_problem(table, p), snap.live)
    bad = {p for p, why in zip(snap.live, problems, strict=True) if why}
    return [p for p in snap.live if p not in bad], [n for n in snap.seen if tdir / n not in bad]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_aside(tdir: Path, merged: str, names: Iterable[str]) -> int:
    """Move replaced files into the kept folder of ``merged`` (a replaced merged part with its
    manifest and then its list: see ``snapshot``); return how many moved (a file already moved
    is skipped)."""
    cdir = tdir / COMPACT_DIR
    kept = kept_dir(cdir, merged)
    kept.mkdir(parents=True, exist_ok=True)

    def one(n: str) -> int:
        moved = move(tdir / n, kept / Path(n).name)
        if n.startswith(f"{COMPACT_DIR}/"):
            for suffix in (MANIFEST, LIST):
                move(tdir / sidecar(n, suffix), kept / sidecar(Path(n).name, suffix))
        return int(moved)

    return sum(_pool(one, sorted(names)))


def _tidy(tdir: Path, cdir: Path) -> None:
    """Finish what a killed compaction (or restore) left, holding the lock: its temporaries
    are deleted, replaced files a committed merged part still names are moved aside, and a list
    or manifest without its merged part joins the part where it went (kept by a newer merged
    part) or, for one never committed, is deleted."""
    for n in _names(cdir, ".compact-", ".tmp"):
        (cdir / n).unlink(missing_ok=True)
    merged = sorted(_names(cdir, "compact-", ".parquet"))
    owner: dict[str, str] = {}  # a replaced merged part -> the merged part keeping it
    for m in merged:
        names = replaced_by(cdir, m) or set()
        leftovers = [n for n in names if (tdir / n).exists()]
        if leftovers:
            _move_aside(tdir, m, leftovers)
        owner.update({Path(n).name: m for n in names if n.startswith(f"{COMPACT_DIR}/")})
    for suffix in (LIST, MANIFEST):
        for n in _names(cdir, "compact-", suffix):
            part = n.removesuffix(suffix) + ".parquet"
            if part in owner:
                move(cdir / n, kept_dir(cdir, owner[part]) / n)
            elif not (cdir / part).exists():
                (cdir / n).unlink(missing_ok=True)


def compact(
    table: str,
    root: str | os.PathLike | None = None,
    *,
    min_parts: int = 2,
    lock_timeout: float = 600.0,
    on_step: Callable[[str], None] | None = None,
) -> Compaction:
    """Merge the live files of ``table`` into one sorted part (idempotent: a table with fewer
    than ``min_parts`` usable live files is left alone). Safe against concurrent appends and
    readers and against a kill at any point (see the module docstring). ``on_step`` is called
    with the name of each step as it starts (tests kill the process there)."""
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
        live, seen = _usable(table, tdir, snap)
        if len(live) < min_parts:
            n = len(snap.live)
            return Compaction(table, n, n, 0, time.perf_counter() - t0, None)
        sums = _pool(lambda n: FileSum.of(tdir / n, n), seen)
        try:
            merged_rows = _read_live(table, live)
        except (pa.ArrowException, OSError) as e:
            if is_missing_file_error(e):
                raise
            raise StoreError(
                f"{table}: cannot compact ({one_line(e)[:160]}); `harness doctor` checks the parts"
            ) from None
        part = f"compact-{_stamp()}-{uuid.uuid4().hex[:12]}.parquet"
        final, tmp = cdir / part, cdir / f".{part}.tmp"
        step("write")
        pq.write_table(merged_rows, tmp, row_group_size=_ROW_GROUP)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        step("list")
        atomic_write(
            cdir / sidecar(part, LIST), lambda p: p.write_text("\n".join(seen) + "\n"), fsync=True
        )
        step("manifest")
        own = FileSum.of(tmp, f"{COMPACT_DIR}/{part}")
        man = Manifest(table, own, merged_rows.num_rows, tuple(sums))
        atomic_write(
            cdir / sidecar(part, MANIFEST), lambda p: p.write_text(man.dumps()), fsync=True
        )
        step("commit")
        os.replace(tmp, final)
        _fsync_dir(cdir)
        step("move")
        kept = _move_aside(tdir, part, seen)
        step("done")
    after = 1 + len(snap.live) - len(live)  # the merged part and any damaged ones left
    return Compaction(
        table, len(live), after, merged_rows.num_rows, time.perf_counter() - t0, final, kept
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


# ---------------------------------------------------------------------------------------------
# Vacuum: deleting what merged parts replaced, once it is old enough


@dataclass
class Vacuum:
    """What one ``vacuum`` did to one table: files (and bytes) freed and kept; ``held``: kept
    folders of merged parts that do not match their manifest (the only copy of their rows)."""

    table: str
    freed_files: int = 0
    freed_bytes: int = 0
    kept_files: int = 0
    kept_bytes: int = 0
    held: list[Path] = field(default_factory=list)


def _replaced_at(folder: Path) -> float:
    """When the files in a kept folder were replaced: the stamp in its merged part's name (the
    folder's time if the name has none)."""
    try:
        stamp = folder.name.split("-")[1]
        return dt.datetime.strptime(stamp, _STAMP).replace(tzinfo=dt.UTC).timestamp()
    except (IndexError, ValueError):
        return folder.stat().st_mtime


def _damaged_owner(cdir: Path, stem: str) -> bool:
    """Whether the live merged part named ``stem`` does not match its manifest (then the files
    it replaced are the only good copy of its rows)."""
    part = cdir / f"{stem}.parquet"
    man = read_manifest(cdir, part.name) if part.exists() else None
    return man is not None and man.part.problem(part) is not None


def vacuum(
    table: str,
    root: str | os.PathLike | None = None,
    *,
    older_than_days: float = DEFAULT_RETENTION_DAYS,
    lock_timeout: float = 600.0,
) -> Vacuum:
    """Delete the files merged parts of ``table`` replaced more than ``older_than_days`` ago (0:
    all of them). The only deletion in the store: afterwards a damaged merged part can no longer
    be restored. The files of a merged part that does not match its manifest are kept."""
    cdir = results_root(root) / table / COMPACT_DIR
    done = Vacuum(table)
    if not (cdir / KEPT_DIR).is_dir():
        return done
    cutoff = time.time() - older_than_days * 86400.0
    with file_lock(cdir / ".lock", timeout=lock_timeout):
        _tidy(cdir.parent, cdir)
        for folder in sorted(p for p in (cdir / KEPT_DIR).iterdir() if p.is_dir()):
            files = [p for p in folder.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            young = _replaced_at(folder) > cutoff
            if not young and _damaged_owner(cdir, folder.name):
                done.held.append(folder)
            if young or done.held[-1:] == [folder]:
                done.kept_files += len(files)
                done.kept_bytes += size
                continue
            for p in files:
                p.unlink()
            for d in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
                d.rmdir()
            folder.rmdir()
            done.freed_files += len(files)
            done.freed_bytes += size
    return done


def vacuum_tables(
    tables: Iterable[str] | None = None, root: str | os.PathLike | None = None, **kw: Any
) -> list[Vacuum]:
    """``vacuum`` each table (all tables by default)."""
    return [vacuum(t, root, **kw) for t in (tables or TABLES)]
