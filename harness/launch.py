"""Executors (submitit: slurm / local / debug) and the distributed environment of a job."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fileio import atomic_write_text

EXECUTORS = ("slurm", "local", "debug")


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
        if requested not in EXECUTORS:
            raise HarnessError(f"unknown executor {requested!r}; valid: {', '.join(EXECUTORS)}")
        return requested, "requested"
    if slurm_reachable():
        return "slurm", "sbatch is reachable"
    return "local", "no reachable SLURM controller (sbatch/sinfo)"


@dataclass
class Resources:
    """What one job asks for; the same fields come from a spec or the command line."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    signal_delay_s: int = 90
    max_num_timeout: int = 3
    requeue: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def make_executor(kind: str, folder: str | os.PathLike, res: Resources, name: str = "harness"):
    """A submitit executor of ``kind`` with ``res`` applied (SLURM-only fields only on SLURM)."""
    import submitit

    if kind not in EXECUTORS:
        raise HarnessError(f"unknown executor {kind!r}; valid: {', '.join(EXECUTORS)}")
    if kind != "slurm" and res.nodes > 1:
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
        extra = dict(res.extra)
        if res.requeue:
            extra.setdefault("requeue", True)
        if extra:
            params["slurm_additional_parameters"] = extra
        if res.partition:
            params["slurm_partition"] = res.partition
    ex.update_parameters(**params)
    return ex


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    initialized: bool


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise torch.distributed from the submitit/SLURM environment (gloo on CPU, nccl on GPU).

    Outside a multi-task job this is a no-op returning rank 0 of 1.
    """
    import torch
    import torch.distributed as dist

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            dist.get_backend(),
            True,
        )
    ntasks, in_job = _job_tasks()
    if ntasks <= 1:
        return DistInfo(0, 1, 0, backend, False)
    if in_job and "MASTER_ADDR" not in os.environ:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, True)


def _job_tasks() -> tuple[int, bool]:
    """(number of tasks, inside a submitit job?): a submitit job (SLURM or local) knows its
    tasks; otherwise WORLD_SIZE (torchrun) or 1."""
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks, True
    except RuntimeError:
        return int(os.environ.get("WORLD_SIZE", "1")), False


def sigterm_as_interrupt() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt): stages unwind through their cleanup
    (cancel local jobs, let Tune save its experiment state). Call again after anything that
    installs its own handler, such as ray.init."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def probe_distributed(value: float | None = None) -> dict[str, Any]:
    """Cluster smoke test: join the job's process group and all-reduce ``value`` (default rank+1).

    Returns this rank's view: rank, world size, SLURM job id and node, and the reduced sum.
    """
    import torch
    import torch.distributed as dist

    info = init_distributed()
    try:
        t = torch.tensor(
            [float(info.rank + 1) if value is None else float(value)], dtype=torch.float64
        )
        if info.initialized:
            dist.all_reduce(t)
        return dict(
            rank=info.rank,
            world_size=info.world_size,
            backend=info.backend,
            job_id=os.environ.get("SLURM_JOB_ID"),
            node=os.environ.get("SLURMD_NODENAME"),
            sum=float(t.item()),
        )
    finally:
        shutdown_distributed()


# ---------------------------------------------------------------------------------------------
# Job records: what was submitted where, so `harness status` can join SLURM / submitit states.

_SLURM_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued",
    "PREEMPTED": "requeued",
    "RESIZING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "COMPLETED": "done",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "CANCELLED": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}


def jobs_dir(root: str | os.PathLike | None = None) -> Path:
    from harness.store import results_root

    return results_root(root) / "jobs"


def record_job(
    root: str | os.PathLike | None, *, run_id: str, job: Any, executor: str, name: str
) -> Path:
    """Write one submission record (atomic JSON) next to the results."""
    import datetime as dt
    import json

    d = jobs_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    rec = dict(
        run_id=run_id,
        job_id=str(job.job_id),
        executor=executor,
        name=name,
        stdout=str(job.paths.stdout),
        stderr=str(job.paths.stderr),
        submitted_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    path = d / f"{run_id}-{str(job.job_id).replace('/', '_')}.json"
    return atomic_write_text(path, json.dumps(rec))


def read_jobs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every submission record, oldest first."""
    import json

    d = jobs_dir(root)
    recs = [json.loads(p.read_text()) for p in d.glob("*.json")] if d.exists() else []
    return sorted(recs, key=lambda r: r["submitted_at"])


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Harness state (pending/running/requeued/failed/done) of SLURM jobs, from sacct."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    r = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():  # with -D, requeued jobs list every attempt; last wins
        if "|" in line:
            jid, state = line.split("|", 1)
            out[jid] = _SLURM_STATES.get(state.split()[0], state.lower())
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
