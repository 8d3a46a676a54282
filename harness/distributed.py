"""The process group of one job, whoever started it (a submitit job on SLURM or locally,
torchrun, or a single process): rank, world size, device, initialised from the environment.
Pre-training and NC measurement call this; it knows no executor or scheduler."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


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
