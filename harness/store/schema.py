"""Table schemas of the results store and row validation against them.

One declared pyarrow schema per table; every row is checked before anything is written, and a
problem names the table, the row and the column. ``SORT_KEYS`` are the columns people filter on:
compaction writes merged parts sorted by them so DuckDB can skip row groups.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from harness.errors import HarnessError

_TS = pa.timestamp("us", tz="UTC")

# One declared schema per table. Non-nullable fields are required in every row.
SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # pretrain | measure | finetune | ...
            pa.field("status", pa.string(), nullable=False),  # running | done | failed | stopped
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
            pa.field("log_path", pa.string()),  # relative to the results root (``store_path``)
            pa.field("error", pa.string()),
            # where a resumed attempt started: "last.pt epoch 3", "prev.pt epoch 2 (last.pt
            # unreadable: ...)", "scratch (no readable checkpoint: ...)"; null for a fresh run
            pa.field("resumed_from", pa.string()),
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
            # ``checkpoints/<run id>/last.pt``: relative to the results root, so the path works
            # from a copied or moved root (``store.resolve_path``); rows written before paths
            # were stored relative hold absolute ones
            pa.field("checkpoint", pa.string()),
            pa.field("images_per_s", pa.float64()),  # training throughput of this attempt
            pa.field("wall_s", pa.float64()),
        ]
    ),
    "nc": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("checkpoint", pa.string()),  # relative to the results root when under it
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
            # the pre-training run whose features were measured, as its checkpoint records it:
            # what attributes `harness measure` rows to a run (null: not a harness checkpoint,
            # or a row written before the column; those fall back to the checkpoint path)
            pa.field("source_run_id", pa.string()),
        ]
    ),
    "finetune": pa.schema(
        [
            pa.field("trial_id", pa.string(), nullable=False),
            pa.field("run_id", pa.string()),  # pre-training run of the checkpoint
            pa.field("checkpoint", pa.string()),  # relative to the results root when under it
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
            pa.field("checkpoint", pa.string()),  # relative to the results root when under it
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

# Columns a merged part is sorted by (the ones queries filter and group on).
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("kind", "run_id", "started_at"),
    "pretrain": ("arch", "dataset", "run_id"),
    "nc": ("dataset", "split", "metric", "run_id", "layer_index"),
    "finetune": ("dataset", "method", "per_class", "run_id", "trial_id"),
    "scores": ("dataset", "score", "run_id"),
}

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    _TS: "TIMESTAMPTZ",
}


def sql_type(t: pa.DataType) -> str:
    """DuckDB type name of a declared column type."""
    return _SQL_TYPES[t]


class StoreError(HarnessError, ValueError):
    """A row or table that does not fit the declared schema; the message names the culprit."""


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
