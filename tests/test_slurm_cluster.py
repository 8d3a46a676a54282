"""The real local SLURM cluster: multi-node jobs through submitit and jobs killed by SLURM."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit

from harness import distributed
from harness.cluster import launch
from harness.spec import config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_two_node_gloo_all_reduce(slurm_cluster, shared_tmp):
    ex = launch.make_executor(
        "slurm",
        shared_tmp / "jobs",
        config.Resources(nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=5),
    )
    job = ex.submit(distributed.probe_distributed)
    results = job.results()
    assert len(results) == 2
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["node"] for r in results} == {"n1", "n2"}  # one task on each fake node
    assert all(r["job_id"] == str(job.job_id) for r in results)
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in results)
    assert [r["sum"] for r in results] == [3.0, 3.0]  # (0+1) + (1+1)


def _sleep_through_signals(seconds: float) -> None:
    """Ignore submitit's USR2 and SIGTERM: only SLURM's SIGKILL at the time limit ends us."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def test_job_killed_at_time_limit_fails_clearly(slurm_cluster, shared_tmp):
    ex = launch.make_executor(
        "slurm", shared_tmp / "jobs", config.Resources(timeout_min=1, signal_delay_s=30)
    )
    job = ex.submit(_sleep_through_signals, 600)
    with pytest.raises(submitit.core.utils.UncompletedJobError) as err:
        job.result()
    noticed = dt.datetime.now()
    assert "TIMEOUT" in str(err.value)
    assert job.state == "TIMEOUT"
    # SLURM's own record of when it killed the job; we must have noticed within a minute of it.
    end = (
        subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", str(job.job_id), "-o", "End,State"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.split("\n")[0]
        .split("|")
    )
    assert end[1] == "TIMEOUT"
    lag = (noticed - dt.datetime.fromisoformat(end[0])).total_seconds()
    assert 0 <= lag < 60, lag
