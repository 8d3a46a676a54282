"""Results store: immutable Parquet parts per table, read through DuckDB views.

Every writer (job, trial, attempt) writes its own part (``append``): to a hidden temporary, then
an atomic rename, so readers never see a torn file and concurrent writers never contend. There
is no shared database file: DuckDB reads the live parts through views (``union_by_name`` so that
tables may gain columns). ``compact`` merges many small parts into one sorted part without a
reader ever seeing a row twice or not at all (``harness.store.parts`` has the protocol).

Modules: ``schema`` (tables, validation), ``parts`` (layout, writing, snapshots, compaction),
``read`` (DuckDB views, bulk look-ups), ``provenance`` (run ids, ``runs`` rows). This package
knows nothing of torch, Ray or SLURM.
"""

from harness.store.health import QUARANTINE, Damage, quarantine
from harness.store.health import scan as scan_damage
from harness.store.parts import (
    COMPACT_DIR,
    DEFAULT_ROOT,
    RESULTS_ENV,
    Compaction,
    Snapshot,
    append,
    compact,
    compact_tables,
    compaction_line,
    has_results,
    is_missing_file_error,
    parts,
    results_root,
    retrying,
    snapshot,
)
from harness.store.provenance import (
    Provenance,
    canonical_json,
    git_state,
    package_versions,
    record_run,
    run_id,
    utcnow,
)
from harness.store.read import (
    connect,
    done_ids,
    execute,
    fetch,
    is_done,
    latest_runs,
    one_line,
    reading,
)
from harness.store.schema import SCHEMAS, SORT_KEYS, TABLES, StoreError, sql_type, validate_rows

__all__ = [
    "QUARANTINE",
    "Damage",
    "quarantine",
    "scan_damage",
    "reading",
    "COMPACT_DIR",
    "DEFAULT_ROOT",
    "RESULTS_ENV",
    "SCHEMAS",
    "SORT_KEYS",
    "TABLES",
    "Compaction",
    "Provenance",
    "Snapshot",
    "StoreError",
    "append",
    "canonical_json",
    "compact",
    "compact_tables",
    "compaction_line",
    "execute",
    "one_line",
    "connect",
    "done_ids",
    "fetch",
    "git_state",
    "has_results",
    "is_done",
    "is_missing_file_error",
    "latest_runs",
    "package_versions",
    "parts",
    "record_run",
    "results_root",
    "retrying",
    "run_id",
    "snapshot",
    "sql_type",
    "utcnow",
    "validate_rows",
]
