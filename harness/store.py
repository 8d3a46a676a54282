"""Results store: immutable Parquet parts per table, read through DuckDB views.

Layout: ``<root>/<table>/part-<utc>-<uuid>.parquet``. Every writer (job, trial, attempt) writes its
own part: first to a ``.tmp`` name that no reader globs, then an atomic rename, so readers never
see a torn file and concurrent writers never contend. There is no shared database file: DuckDB
reads the parts through views (``union_by_name`` so that tables may gain columns over time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import HarnessError
from harness.fileio import atomic_write

RESULTS_ENV = "HARNESS_RESULTS"
DEFAULT_ROOT = "results"

_TS = pa.timestamp("us", tz="UTC")

# One declared schema per table. Non-nullable fields are required in every row.
SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # pretrain | measure | finetune | ...
            pa.field("status", pa.string(), nullable=False),  # running | done | failed
            pa.field("config", pa.string()),  # canonical config JSON
            pa.field("git_sha", pa.string()),
            pa.field("git_dirty", pa.bool_()),
            pa.field("slurm_job_id", pa.string()),
            pa.field("slurm_array_job_id", pa.string()),
            pa.field("slurm_array_task_id", pa.string()),
            pa.field("slurm_restart_count", pa.int64()),
            pa.field("attempt", pa.int64()),
            pa.field("host", pa.string()),
            pa.field("versions", pa.string()),  # JSON {package: version}
            pa.field("log_path", pa.string()),
            pa.field("error", pa.string()),
            pa.field("started_at", _TS),
            pa.field("ended_at", _TS),
        ]
    ),
    "pretrain": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("arch", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("loss", pa.string()),
            pa.field("augment", pa.string()),
            pa.field("head_depth", pa.int64()),
            pa.field("epochs", pa.int64()),
            pa.field("batch_size", pa.int64()),
            pa.field("lr", pa.float64()),
            pa.field("seed", pa.int64()),
            pa.field("world_size", pa.int64()),
            pa.field("train_acc", pa.float64()),
            pa.field("test_acc", pa.float64()),
            pa.field("final_loss", pa.float64()),
            pa.field("params", pa.int64()),
            pa.field("checkpoint", pa.string()),
            pa.field("images_per_s", pa.float64()),  # training throughput of this attempt
            pa.field("wall_s", pa.float64()),
        ]
    ),
    "nc": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("checkpoint", pa.string()),
            pa.field("model", pa.string()),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("layer", pa.string(), nullable=False),
            pa.field("layer_index", pa.int64(), nullable=False),
            pa.field("depth_frac", pa.float64(), nullable=False),
            pa.field("metric", pa.string(), nullable=False),
            pa.field("variant", pa.string()),
            pa.field("value", pa.float64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("num_classes", pa.int64()),
            pa.field("dim", pa.int64()),
        ]
    ),
    "finetune": pa.schema(
        [
            pa.field("trial_id", pa.string(), nullable=False),
            pa.field("run_id", pa.string()),  # pre-training run of the checkpoint
            pa.field("checkpoint", pa.string()),
            pa.field("arch", pa.string()),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("method", pa.string(), nullable=False),
            pa.field("layer", pa.string()),
            pa.field("per_class", pa.int64()),
            pa.field("epochs", pa.int64()),
            pa.field("lr", pa.float64()),
            pa.field("weight_decay", pa.float64()),
            pa.field("seed", pa.int64()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("train_acc", pa.float64()),
            pa.field("val_acc", pa.float64()),
            pa.field("test_acc", pa.float64()),
            pa.field("best_epoch", pa.int64()),
            pa.field("trainable_params", pa.int64()),
            pa.field("total_params", pa.int64()),
            pa.field("wall_s", pa.float64()),
            pa.field("layer_choice", pa.string()),  # why this layer (e.g. `layer: auto`)
            pa.field("node", pa.string()),  # Ray node that ran the trial
        ]
    ),
    "scores": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("checkpoint", pa.string()),
            pa.field("arch", pa.string()),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("layer", pa.string()),
            pa.field("score", pa.string(), nullable=False),
            pa.field("part", pa.string()),
            pa.field("value", pa.float64(), nullable=False),
            pa.field("n", pa.int64()),
            pa.field("wall_s", pa.float64()),
        ]
    ),
}
TABLES = tuple(SCHEMAS)


class StoreError(HarnessError, ValueError):
    """A row or table that does not fit the declared schema; the message names the culprit."""


def results_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The results root: explicit argument, else ``$HARNESS_RESULTS``, else ``./results``."""
    return Path(root or os.environ.get(RESULTS_ENV) or DEFAULT_ROOT)


# ---------------------------------------------------------------------------------------------
# Validation


def _is_int(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"


def _is_ts(v: Any) -> bool:
    return isinstance(v, dt.datetime)


def _checker(t: pa.DataType):
    if pa.types.is_integer(t):
        return _is_int, "int"
    if pa.types.is_floating(t):
        return _is_float, "float"
    if pa.types.is_boolean(t):
        return _is_bool, "bool"
    if pa.types.is_string(t):
        return (lambda v: isinstance(v, str)), "str"
    if pa.types.is_timestamp(t):
        return _is_ts, "datetime"
    raise TypeError(f"unsupported column type {t}")


def validate_rows(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check rows against the table's schema; raise StoreError naming the first bad column."""
    if table not in SCHEMAS:
        raise StoreError(f"unknown table {table!r}; valid tables: {', '.join(TABLES)}")
    schema = SCHEMAS[table]
    checks = {f.name: (f, *_checker(f.type)) for f in schema}
    out = []
    for i, row in enumerate(rows):
        extra = sorted(set(row) - set(checks))
        if extra:
            raise StoreError(
                f"{table} row {i}: unknown column {extra[0]!r}; columns: {', '.join(checks)}"
            )
        clean: dict[str, Any] = {}
        for name, (field, ok, tname) in checks.items():
            v = row.get(name)
            if v is None:
                if not field.nullable:
                    raise StoreError(f"{table} row {i}: column {name!r} is required")
                clean[name] = None
                continue
            if not ok(v):
                raise StoreError(
                    f"{table} row {i}: column {name!r} expects {tname}, "
                    f"got {type(v).__name__} {v!r:.60}"
                )
            if tname == "float":
                v = float(v)
                if not field.nullable and math.isnan(v):
                    raise StoreError(f"{table} row {i}: column {name!r} is NaN")
            elif tname == "int":
                v = int(v)
            elif tname == "bool":
                v = bool(v)
            elif tname == "datetime" and v.tzinfo is None:
                raise StoreError(f"{table} row {i}: column {name!r} needs a timezone-aware time")
            clean[name] = v
        out.append(clean)
    return out


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
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    final = tdir / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
    return atomic_write(final, lambda tmp: pq.write_table(arrow, tmp), fsync=True)


def parts(table: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Committed part files of a table (never temporaries)."""
    return sorted((results_root(root) / table).glob("part-*.parquet"))


# ---------------------------------------------------------------------------------------------
# Provenance


def canonical_json(config: Mapping[str, Any]) -> str:
    """Key-sorted, whitespace-free JSON: the form a run id is hashed from."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical config JSON (first 16 hex digits)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


_PACKAGES = (
    "harness",
    "torch",
    "torchvision",
    "timm",
    "submitit",
    "ray",
    "numpy",
    "pyarrow",
    "duckdb",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (read from metadata, not imported)."""
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit sha, dirty flag) of the checkout holding the harness package, or (None, None)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Provenance:
    """Where and how a run executed; becomes one row of the ``runs`` table per attempt."""

    run_id: str
    kind: str
    config: str
    git_sha: str | None
    git_dirty: bool | None
    slurm_job_id: str | None
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_restart_count: int | None
    host: str
    versions: str
    started_at: dt.datetime

    @classmethod
    def collect(cls, config: Mapping[str, Any], kind: str) -> Provenance:
        env = os.environ
        sha, dirty = git_state()
        restart = env.get("SLURM_RESTART_COUNT")
        return cls(
            run_id=run_id(config),
            kind=kind,
            config=canonical_json(config),
            git_sha=sha,
            git_dirty=dirty,
            slurm_job_id=env.get("SLURM_JOB_ID"),
            slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            slurm_restart_count=int(restart) if restart and restart.isdigit() else None,
            host=socket.gethostname(),
            versions=json.dumps(package_versions(), sort_keys=True),
            started_at=utcnow(),
        )

    def row(
        self,
        status: str,
        *,
        error: str | None = None,
        log_path: str | None = None,
        attempt: int | None = None,
    ) -> dict[str, Any]:
        """The ``runs`` row for this attempt with its final status."""
        d = dict(self.__dict__)
        d.update(
            status=status,
            error=error,
            log_path=log_path,
            attempt=attempt if attempt is not None else (self.slurm_restart_count or 0),
            ended_at=utcnow() if status != "running" else None,
        )
        return d


def record_run(
    prov: Provenance, status: str, root: str | os.PathLike | None = None, **kw: Any
) -> Path | None:
    """Append the provenance row of one attempt to ``runs``."""
    return append("runs", [prov.row(status, **kw)], root)


# ---------------------------------------------------------------------------------------------
# Reading


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _empty_select(schema: pa.Schema) -> str:
    names = {
        pa.string(): "VARCHAR",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        _TS: "TIMESTAMPTZ",
    }
    cols = ", ".join(f"CAST(NULL AS {names[f.type]}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


def has_results(root: str | os.PathLike | None = None) -> bool:
    return any(parts(t, root) for t in TABLES)


def connect(root: str | os.PathLike | None = None):
    """A read-only DuckDB connection with one view per table over its Parquet parts.

    Tables without parts get an empty view with the declared columns (so joins work), unless the
    whole root is empty: then no views exist and queries on tables fail (see ``harness query``).
    """
    import duckdb

    base = results_root(root).resolve()
    tmpdir = tempfile.mkdtemp(prefix="harness-duckdb-")
    path = os.path.join(tmpdir, "views.duckdb")
    try:
        with duckdb.connect(path) as con:
            if has_results(base):
                for t in TABLES:
                    if parts(t, base):
                        glob = _sql_str(str(base / t / "part-*.parquet"))
                        src = f"SELECT * FROM read_parquet({glob}, union_by_name=true)"
                    else:
                        src = _empty_select(SCHEMAS[t])
                    con.execute(f"CREATE VIEW {t} AS {src}")
        ro = duckdb.connect(path, read_only=True)
    finally:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)
    return ro


def is_done(run_id_: str, root: str | os.PathLike | None = None) -> bool:
    """True when some attempt of ``run_id_`` finished with status ``done``."""
    if not parts("runs", root):
        return False
    con = connect(root)
    try:
        n = con.execute(
            "SELECT count(*) FROM runs WHERE run_id = ? AND status = 'done'", [run_id_]
        ).fetchone()[0]
    finally:
        con.close()
    return n > 0


def latest_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The latest row of every run (by end, else start time)."""
    if not parts("runs", root):
        return []
    con = connect(root)
    try:
        cur = con.execute(
            """
            SELECT run_id, kind, status, slurm_job_id, attempt, host, log_path, error,
                   started_at, ended_at
            FROM runs
            QUALIFY row_number() OVER (
                PARTITION BY run_id
                ORDER BY (status = 'done') DESC, coalesce(ended_at, started_at) DESC) = 1
            ORDER BY started_at
            """
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
