"""The ledger: the one answer to "is this run new, queued, running, requeued, failed or done?".

Three sources, each asked once, in bulk, for a whole grid:
- the store: ``runs`` rows (an attempt that finished ``done`` or ``failed``), one query;
- submission records under ``<results>/jobs/``: which run went to which job array task, one JSON
  file per array (or local wave), written while the submit lock is held;
- the scheduler: ``squeue -r`` (arrays expanded, every user) for live tasks, ``sacct`` for
  finished ones (a collapsed pending-array record such as ``11_[2-983%2]`` is expanded, never
  taken as one job).

``submit``, ``sweep``, ``status`` and ``run`` all ask here. Submission is exactly-once: under the
lock in the results root (``submit_lock``), a run with a live task anywhere is not submitted
again, whoever submitted it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import store
from harness.store.fileio import atomic_write_text, file_lock

LIVE = ("pending", "running", "requeued", "completing")  # never submitted again


def jobs_dir(root: str | os.PathLike | None = None) -> Path:
    return store.results_root(root) / "jobs"


@contextmanager
def submit_lock(root: str | os.PathLike | None = None, timeout: float = 600.0) -> Iterator[Path]:
    """Held while a submitter decides what to submit and records what it submitted, so two
    ``harness submit`` of the same grid (any shell, any host sharing the root) submit each run
    once."""
    with file_lock(jobs_dir(root) / ".submit.lock", timeout=timeout) as lock:
        yield lock


# ---------------------------------------------------------------------------------------------
# Submission records


@dataclass(frozen=True)
class JobRecord:
    """One run's task in one submission: ``job_id`` is ``<array>_<index>`` on SLURM, the
    process id on the local executor, None for a local claim whose jobs have not started."""

    run_id: str
    job_id: str | None
    executor: str
    name: str
    folder: str | None
    submitted_at: str
    host: str | None = None
    pid: int | None = None

    @property
    def array_id(self) -> str | None:
        return self.job_id.split("_")[0] if self.job_id else None

    def log(self, stream: str = "err") -> str | None:
        """The task's submitit log (``<folder>/<job id>_0_log.<stream>``)."""
        if not self.folder or not self.job_id:
            return None
        return f"{self.folder}/{self.job_id}_0_log.{stream}"


def record_submission(
    root: str | os.PathLike | None,
    *,
    executor: str,
    name: str,
    folder: str | os.PathLike | None,
    tasks: Sequence[tuple[str, str | None]],
) -> Path:
    """Write one record (atomic JSON) for a whole array / wave: ``tasks`` is (run id, job id).
    The log folder is recorded relative to the results root (``store.store_path``)."""
    d = jobs_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    rec = dict(
        executor=executor,
        name=name,
        folder=store.store_path(folder, root) if folder else None,
        submitted_at=now.isoformat(),
        host=socket.gethostname(),
        pid=os.getpid(),
        tasks=[[r, None if j is None else str(j)] for r, j in tasks],
    )
    path = d / f"sub-{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.json"
    return atomic_write_text(path, json.dumps(rec))


def _records_of(rec: dict[str, Any], root: str | os.PathLike | None) -> list[JobRecord]:
    """The tasks of one submission record, their log folder resolved against ``root``."""
    if "tasks" in rec:
        common = {k: rec.get(k) for k in ("executor", "name", "submitted_at", "host")}
        folder = rec.get("folder")
        common["folder"] = str(store.resolve_path(folder, root)) if folder else None
        return [
            JobRecord(run_id=r, job_id=j, pid=rec.get("pid"), **common) for r, j in rec["tasks"]
        ]
    # one record per run (written by earlier versions)
    folder = str(Path(rec["stderr"]).parent) if rec.get("stderr") else None
    return [
        JobRecord(
            rec["run_id"], rec["job_id"], rec["executor"], rec["name"], folder, rec["submitted_at"]
        )
    ]


def read_jobs(root: str | os.PathLike | None = None) -> list[JobRecord]:
    """Every submitted task, oldest submission first."""
    d = jobs_dir(root)
    if not d.exists():
        return []
    out: list[JobRecord] = []
    for p in d.glob("*.json"):
        try:
            out += _records_of(json.loads(p.read_text()), root)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record must not stop the ledger; the scheduler still answers
    return sorted(out, key=lambda r: r.submitted_at)


def latest_jobs(root: str | os.PathLike | None = None) -> dict[str, JobRecord]:
    """The most recent submission of every run."""
    return {r.run_id: r for r in read_jobs(root)}


# ---------------------------------------------------------------------------------------------
# States


def _local_alive(rec: JobRecord) -> bool:
    """A local job (or claim) lives while the process that runs or waits for it lives."""
    if rec.host and rec.host != socket.gethostname():
        return False
    pids = [rec.pid] + ([int(rec.job_id)] if rec.job_id and rec.job_id.isdigit() else [])
    for pid in filter(None, pids):
        try:
            with open(f"/proc/{pid}/status") as fh:
                if not any(ln.startswith("State:") and "\tZ" in ln for ln in fh):
                    return True
        except OSError:
            continue
    return False


def scheduler_states(records: Iterable[JobRecord], finished: bool = True) -> dict[str | None, str]:
    """State of each record's task as the scheduler sees it, keyed by job id: live tasks from
    the queue; with ``finished`` also the accounting of tasks no longer queued."""
    from harness.cluster import launch

    recs = list(records)
    arrays = {r.array_id for r in recs if r.executor == "slurm" and r.array_id}
    states: dict[str | None, str] = {}
    if arrays:
        states.update(launch.queue_states(arrays))
        if finished:
            gone = {r.array_id for r in recs if r.array_id in arrays and r.job_id not in states}
            acct = launch.accounting_states(gone)
            states.update({k: v for k, v in acct.items() if k not in states})
    for r in recs:
        if r.executor != "slurm" and _local_alive(r):
            states[r.job_id] = "running"
    return states


def live_run_ids(root: str | os.PathLike | None = None) -> set[str]:
    """Runs with a pending, running or requeued task in any submission (any array, any shell)."""
    recs = read_jobs(root)
    states = scheduler_states(recs, finished=False)
    return {r.run_id for r in recs if states.get(r.job_id) in LIVE}


@dataclass
class Plan:
    """What a submission of ``run_ids`` must do: submit ``todo``; the rest are done or live."""

    todo: list[str]
    done: set[str]
    live: set[str]


def plan(root: str | os.PathLike | None, run_ids: Sequence[str]) -> Plan:
    """Split ``run_ids`` into to-submit, done and live (one store query, one squeue call)."""
    done = store.done_ids(root, run_ids, kind="pretrain")
    live = live_run_ids(root) - done
    todo = [r for r in run_ids if r not in done and r not in live]
    return Plan(todo, done & set(run_ids), live & set(run_ids))


def run_states(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Each run's current state: the store's done / failed rows, joined with its latest
    submission and the scheduler's view (pending / running / requeued, or failed when the job
    ended without writing a result)."""
    from harness.cluster import launch

    base = store.results_root(root)
    runs = {r["run_id"]: dict(r) for r in store.latest_runs(base)}
    for row in runs.values():  # stored relative to the root: where the root is now
        if row.get("log_path"):
            row["log_path"] = str(store.resolve_path(row["log_path"], base))
    latest = latest_jobs(base)
    open_recs = [rec for rid, rec in latest.items() if runs.get(rid, {}).get("status") != "done"]
    sched = scheduler_states(open_recs)
    for rid, rec in latest.items():
        row = runs.setdefault(rid, dict(run_id=rid, kind="pretrain", status="submitted"))
        row["slurm_job_id"] = row.get("slurm_job_id") or rec.job_id
        if row["status"] == "done":
            continue
        state = sched.get(rec.job_id)
        if state == "done":  # the scheduler finished it but the run wrote no result
            state = "failed"
        if state and (row["status"] != "failed" or _resubmitted(rec, row)):
            row["status"] = state  # a run's own failure is final unless submitted again since
        if row["status"] == "failed":
            row["log_path"] = row.get("log_path") or rec.log()
            row["error"] = row.get("error") or launch.last_error_line(rec.log())
    return list(runs.values())


def _resubmitted(rec: JobRecord, row: dict[str, Any]) -> bool:
    """Whether ``rec`` was submitted after the attempt that wrote ``row`` ended."""
    ended = row.get("ended_at") or row.get("started_at")
    if ended is None:
        return True
    return dt.datetime.fromisoformat(rec.submitted_at) > ended


@dataclass(frozen=True)
class TrialState:
    """A trial's latest state in ``finetune`` (a done row wins: a trial is run again only while
    its rows are failures) and how many rows it has (one per recorded attempt)."""

    status: str
    rows: int


def trial_states(root: str | os.PathLike | None = None) -> dict[str, TrialState]:
    """Every recorded trial's latest state, one query for the whole store."""
    if not store.parts("finetune", store.results_root(root)):
        return {}
    rows = store.fetch(
        "SELECT trial_id, bool_or(status = 'done'), bool_or(status = 'stopped'), count(*) "
        "FROM finetune GROUP BY trial_id",
        None,
        root,
        ["finetune"],
    )
    # a done row wins; a trial the scheduler stopped early is recorded, not failed
    return {
        t: TrialState("done" if done else ("stopped" if stopped else "failed"), n)
        for t, done, stopped, n in rows
    }
