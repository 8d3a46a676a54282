"""Executors (submitit: slurm / local / debug), what the scheduler says (limits, the states of
job array tasks) and SIGTERM as an interrupt. A job's process group is ``harness.distributed``."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.spec.config import Resources
from harness.spec.registry import EXECUTORS


def slurm_reachable() -> bool:
    """True when ``sbatch`` is on PATH and the controller answers ``sinfo``."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def choose_executor(requested: str | None = None) -> tuple[str, str]:
    """(executor, why): ``requested`` if given, else slurm when reachable, else local."""
    if requested:
        EXECUTORS[requested]  # an unknown name is one line
        return requested, "requested"
    if slurm_reachable():
        return "slurm", "sbatch is reachable"
    return "local", "no reachable SLURM controller (sbatch/sinfo)"


def make_executor(kind: str, folder: str | os.PathLike, res: Resources, name: str = "harness"):
    """A submitit executor of ``kind`` with ``res`` applied (SLURM-only fields only on SLURM).
    ``res`` is a spec's ``harness.spec.config.Resources`` (what each job asks for)."""
    import submitit

    if not EXECUTORS.meta(kind).multi_node and res.nodes > 1:
        raise HarnessError(f"{kind} executor runs on one node; got nodes={res.nodes}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    kw = {"slurm_max_num_timeout": res.max_num_timeout} if kind == "slurm" else {}
    ex = submitit.AutoExecutor(folder=folder, cluster=kind, **kw)
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=res.timeout_min,
        nodes=res.nodes,
        tasks_per_node=res.tasks_per_node,
        cpus_per_task=res.cpus_per_task,
    )
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    if kind == "slurm":
        params["slurm_signal_delay_s"] = res.signal_delay_s
        if res.requeue:
            params["slurm_additional_parameters"] = {"requeue": True}
        if res.partition:
            params["slurm_partition"] = res.partition
    ex.update_parameters(**params)
    return ex


def sigterm_as_interrupt() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt): stages unwind through their cleanup
    (cancel local jobs, let Tune save its experiment state). Call again after anything that
    installs its own handler, such as ray.init."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------------
# What the scheduler says: limits, and the state of job array tasks

SLURM_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued",
    "PREEMPTED": "requeued",
    "RESIZING": "running",
    "RUNNING": "running",
    "COMPLETING": "completing",
    "SUSPENDED": "running",
    "STOPPED": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "COMPLETED": "done",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "CANCELLED": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class SlurmLimits:
    """What the cluster accepts: tasks per array (``MaxArraySize``: indices 0..size-1), jobs in
    the system (``MaxJobCount``), and the user's association limit on queued jobs where set."""

    max_array_size: int
    max_job_count: int
    max_submit_jobs: int | None = None


def slurm_limits() -> SlurmLimits:
    """Read the limits from ``scontrol show config`` (and ``sacctmgr`` for the user's own)."""
    conf: dict[str, str] = {}
    r = _run(["scontrol", "show", "config"])
    for line in r.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip().split()[0] if value.strip() else ""

    def num(key: str, default: int) -> int:
        v = conf.get(key, "")
        return int(v) if v.isdigit() else default

    limits = SlurmLimits(num("MaxArraySize", 1001), num("MaxJobCount", 10000))
    if shutil.which("sacctmgr"):
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
        a = _run(
            ["sacctmgr", "-n", "-P", "show", "assoc", f"where user={user}", "format=MaxSubmit"]
        )
        values = [int(v) for v in a.stdout.split() if v.strip().isdigit()]
        limits.max_submit_jobs = min(values) if values else None
    return limits


def _expand(jid: str) -> list[str]:
    """``12_[2-5,9%2]`` -> [12_2, 12_3, 12_4, 12_5, 12_9]; other ids unchanged."""
    if "_[" not in jid:
        return [jid]
    base, _, spec = jid.partition("_[")
    out = []
    for piece in spec.rstrip("]").split("%")[0].split(","):
        lo, _, hi = piece.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def job_records() -> int:
    """Job records in the controller as MaxJobCount counts them: a pending array is one record,
    and finished jobs count until ``MinJobAge`` has passed."""
    if not shutil.which("squeue"):
        return 0
    return len(_run(["squeue", "-h", "--states=all", "-o", "%i"]).stdout.split())


def queue_states(array_ids: set[str] | None = None) -> dict[str, str]:
    """Harness state of every live SLURM job task in the queue (``squeue -r``: arrays expanded,
    one line per task, every user), keyed by task id (``12_3``, or ``15`` for a plain job);
    only the jobs of ``array_ids`` when given."""
    if not shutil.which("squeue"):
        return {}
    r = _run(["squeue", "-r", "-h", "--states=all", "-o", "%i|%T"])
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if array_ids is not None and jid.split("_")[0] not in array_ids:
            continue
        for task in _expand(jid):
            out[task] = SLURM_STATES.get(state.split()[0] if state else "", state.lower())
    return out


def accounting_states(array_ids: set[str]) -> dict[str, str]:
    """Harness state of every task of these jobs/arrays as accounting recorded it (``sacct``:
    finished tasks; a pending array's collapsed record ``12_[2-983%2]`` is expanded)."""
    if not array_ids or not shutil.which("sacct"):
        return {}
    out: dict[str, str] = {}
    ids = sorted(array_ids)
    for i in range(0, len(ids), 500):
        r = _run(
            ["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", ",".join(ids[i : i + 500])]
        )
        for line in r.stdout.splitlines():  # with -D every attempt is listed; the last wins
            jid, _, state = line.partition("|")
            for task in _expand(jid.strip()):
                out[task] = SLURM_STATES.get(state.split()[0] if state else "", state.lower())
    return out


def last_error_line(path: str | None) -> str | None:
    """The last line of a log that names an error (or its last non-empty line)."""
    if not path or not os.path.exists(path):
        return None
    with open(path, errors="replace") as fh:
        lines = [ln.strip() for ln in fh.read().splitlines()[-200:] if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln
    return lines[-1] if lines else None
