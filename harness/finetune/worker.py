"""One fine-tuning trial inside a Ray Tune worker: the function Tune runs per trial
(``trainable``), the rows it writes, and the marks it leaves in the experiment folder.

The store is the source of truth: each finished trial writes its row at once (one atomic Parquet
part, from the trial's own process), and a trial that raises or hits a NaN loss is recorded as
``failed`` with its reason, once, and ends normally (Tune does not retry it). Only a dead process
(signal, OOM kill, lost Ray worker) errors the trial; Tune runs it again, and the new attempt
first looks at what the dead one recorded. A running trial names its process in
``<experiment>/running/<trial id>.json``; ``<experiment>/harness-pending.txt`` lists the trials
the driver that started (or restored) the experiment still had to run.

What Tune hands a trial is a grid point ``{"trial": TrialConfig fields, "meta": TrialMeta as a
dict}`` (plain dicts: Tune saves them with its experiment and restores them); ``grid_point``
builds one and ``read_point`` reads one back, typed. The sweep driver is
``harness.cluster.sweep``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from harness import store
from harness.errors import HarnessError
from harness.store.fileio import atomic_write_text

PENDING_FILE = "harness-pending.txt"
RUNNING = "running"  # <experiment>/running/<trial id>.json: the process running a trial


@dataclass(frozen=True)
class TrialMeta:
    """What a trial carries besides its TrialConfig fields: its id, the pre-training run and
    architecture of its checkpoint, why its layer was chosen, the checkpoint as its rows record
    it (relative to the results root when under it) and how many rows it had when the sweep
    started (a retried failure's earlier rows)."""

    trial_id: str
    run_id: str | None
    arch: str
    layer_choice: str | None
    checkpoint: str | None = None  # None in experiments interrupted before metas carried it
    rows: int = 0

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> TrialMeta:
        """The meta among ``m``'s keys (a sweep's trial dict, or a grid point's ``meta``)."""
        return cls(**{f.name: m[f.name] for f in fields(cls) if f.name in m})

    def columns(self) -> dict[str, Any]:
        """The fields as row values (an unknown stored checkpoint left to the trial's)."""
        out = asdict(self)
        if self.checkpoint is None:
            del out["checkpoint"]
        return out


def grid_point(t: Mapping[str, Any]) -> dict[str, Any]:
    """The value Tune's grid holds for one trial of the sweep (``expand``'s dict)."""
    return {"trial": t["trial"], "meta": asdict(TrialMeta.of(t))}


def read_point(config: Mapping[str, Any]) -> tuple[dict[str, Any], TrialMeta]:
    """(TrialConfig fields, meta) of the trial a Tune config holds (``config["t"]``)."""
    point = config["t"]
    return point["trial"], TrialMeta.of(point["meta"])


def write_pending(experiment: str | os.PathLike, ids: Iterable[str]) -> None:
    """Record the trials the driver has still to run in the experiment folder."""
    atomic_write_text(Path(experiment) / PENDING_FILE, "\n".join(sorted(ids)) + "\n")


@functools.cache
def _pending_ids(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(Path(path).read_text().split())


def _is_pending(experiment: str, tid: str) -> bool:
    """Whether the driver that started (or restored) this experiment still had ``tid`` to run:
    read once per worker from the experiment folder, never by scanning the store."""
    path = Path(experiment) / PENDING_FILE
    try:
        return tid in _pending_ids(str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return True


def _claim(experiment: str, tid: str) -> int:
    """Name this process as the one running ``tid``; return the attempt number (1, or more
    after attempts whose process died: their file is still there)."""
    path = Path(experiment) / RUNNING / f"{tid}.json"
    try:
        attempt = int(json.loads(path.read_text())["attempt"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        attempt = 1
    mark = dict(pid=os.getpid(), host=socket.gethostname(), attempt=attempt, started=time.time())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(mark))
    except (OSError, HarnessError):  # a full disk: the trial itself will say so
        pass
    return attempt


def _earlier_rows(root: str, tid: str, rows_before: int) -> tuple[str | None, bool]:
    """What an earlier attempt whose process died left: the status of a `finetune` row it
    recorded (None if none), and whether it wrote the trial's `nc` rows."""
    status = None
    if store.parts("finetune", root):
        sql = "SELECT bool_or(status = 'done'), count(*) FROM finetune WHERE trial_id = ?"
        ((done, n),) = store.fetch(sql, [tid], root, ["finetune"])
        if n > rows_before:
            status = "done" if done else "failed"
    nc = bool(store.parts("nc", root)) and bool(
        store.fetch("SELECT count(*) FROM nc WHERE run_id = ?", [tid], root, ["nc"])[0][0]
    )
    return status, nc


def trainable(config: dict[str, Any]) -> None:
    """One trial, inside a Ray worker: run it, write its rows, report to Tune. A failure of
    the trial itself is recorded and ends the trial normally (Tune does not retry it); only a
    dead process errors the trial, and Tune runs it again. ``config``: the grid point ``t``,
    the results ``root`` and the ``experiment`` folder."""
    from ray import tune

    _, meta = read_point(config)
    experiment, tid = config["experiment"], meta.trial_id
    if not _is_pending(experiment, tid):  # a restored experiment re-offering a recorded trial
        tune.report({"val_acc": math.nan, "skipped": 1})
        return
    attempt = _claim(experiment, tid)
    status, nc_written = (None, False)
    if attempt > 1:
        status, nc_written = _earlier_rows(config["root"], tid, meta.rows)
    try:
        if status is None:  # not recorded by an earlier attempt: run it
            if _run_and_record(config, attempt, write_nc=not nc_written) == "failed":
                tune.report({"val_acc": math.nan, "failed": 1, "attempt": attempt})
        else:  # an earlier attempt recorded it, then its process died
            failed = int(status == "failed")
            tune.report({"val_acc": math.nan, "skipped": 1, "failed": failed, "attempt": attempt})
    finally:  # also when the scheduler stops the trial (SystemExit inside tune.report)
        (Path(experiment) / RUNNING / f"{tid}.json").unlink(missing_ok=True)


# The name Tune registers the trainable under, as before it moved here: Tune refuses to restore
# an experiment whose trainable name changed, so one interrupted by an earlier version restores.
trainable._name = "_trainable"  # type: ignore[attr-defined]


def _run_and_record(config: dict[str, Any], attempt: int, write_nc: bool = True) -> str:
    """Run the trial and write its rows; return ``done``, or ``failed`` for an exception of the
    trial (recorded with its reason). A trial the scheduler stops early (ASHA ends it inside
    ``tune.report``) gets a ``stopped`` row with the epochs it ran and its best validation
    accuracy so far. MemoryError propagates: Tune retries it."""
    import ray
    from ray import tune

    from harness import finetune

    root = config["root"]
    trial, meta = read_point(config)
    prov = store.Provenance.collect({"kind": "finetune", **trial}, "finetune")
    base = row_base(trial, meta, ray.get_runtime_context().get_node_id())
    t0 = time.perf_counter()
    seen: dict[str, Any] = dict(epochs=0, val_acc=None, best_epoch=None)

    def report(**m: Any) -> None:
        seen["epochs"] = m["epoch"]
        if seen["val_acc"] is None or m["val_acc"] > seen["val_acc"]:
            seen["val_acc"], seen["best_epoch"] = m["val_acc"], m["epoch"]
        tune.report(dict(m, attempt=attempt))

    try:
        row = finetune.run_trial(finetune.TrialConfig(**trial), report=report)
    except MemoryError:
        raise
    except SystemExit:  # the scheduler stopped the trial at a rung: record how far it got
        why = f"stopped early by the scheduler after {seen['epochs']} of {trial['epochs']} epochs"
        stopped = dict(base, status="stopped", error=why, wall_s=time.perf_counter() - t0)
        stopped.update(
            epochs=seen["epochs"], val_acc=seen["val_acc"], best_epoch=seen["best_epoch"]
        )
        store.append("finetune", [stopped], root)
        store.record_run(prov, "stopped", root, error=why)
        raise
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        store.append(
            "finetune",
            [dict(base, status="failed", error=reason, wall_s=time.perf_counter() - t0)],
            root,
        )
        store.record_run(prov, "failed", root, error=reason)
        return "failed"
    nc = row.pop("nc", {}) or {}
    if nc and write_nc:
        store.append("nc", _nc_rows_after(trial, meta, nc), root)
    names = store.SCHEMAS["finetune"].names
    extra = {k: v for k, v in row.items() if k in names and k not in base}
    store.append("finetune", [dict(base, **extra, status="done")], root)
    store.record_run(prov, "done", root)
    return "done"


def row_base(trial: Mapping[str, Any], meta: TrialMeta, node: str | None) -> dict[str, Any]:
    """The `finetune` columns every row of a trial has, done or failed: the trial's settings
    and its ids, as the table names them (``meta`` wins: its checkpoint is the stored form)."""
    names = set(store.SCHEMAS["finetune"].names)
    srcs = (trial, meta.columns())
    return {**{k: v for src in srcs for k, v in src.items() if k in names}, "node": node}


def _nc_rows_after(
    trial: dict[str, Any], meta: TrialMeta, nc: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """`nc` rows of the fine-tuned features (run_id = trial id) with the layer's registry
    index and depth fraction from the checkpoint's model."""
    from harness import data, finetune, models
    from harness.nc.measure import LayerResult, nc_rows

    model, _ = models.load_checkpoint(trial["checkpoint"])
    layers = {ly.name: ly for ly in models.model_layers(model)}
    train = data.load(
        trial["dataset"],
        "train",
        root=trial["data_root"],
        seed=trial["seed"],
        per_class=trial["per_class"],
        **trial["data_kwargs"],
    )
    n = min(finetune.NC_MAX_SAMPLES, len(train))
    results = [
        LayerResult(name, layers[name].index, layers[name].depth_frac, 0, m)
        for name, m in nc.items()
    ]
    rows = nc_rows(
        results,
        n,
        run_id=meta.trial_id,
        # an experiment interrupted before metas carried the stored form: the trial's path
        checkpoint=meta.checkpoint if meta.checkpoint is not None else trial["checkpoint"],
        model=meta.arch,
        dataset=trial["dataset"],
        split="train",
        num_classes=train.info.num_classes,
    )
    for r in rows:
        r["dim"] = None
    return rows
