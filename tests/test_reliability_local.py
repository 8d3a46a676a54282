"""Local-executor pre-training when processes die: a job whose process is killed is submitted
again and resumes; the jobs of a killed submitter are stopped, not left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests_util import HARNESS

from harness import store
from harness.cluster import ledger, orphans

RUN = dict(
    arch="resnet_tiny",
    dataset="fashion_mnist",
    limit=1200,
    batch_size=100,
    nc_limit=200,
    nc_layers="pre_logits",
)


def spec_file(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "pre.yaml"
    spec = dict(name="rel", base=dict(RUN, epochs=epochs), resources=dict(timeout_min=20))
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_submit(spec: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [HARNESS, "submit", str(spec), "--executor", "local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def job_line(proc: subprocess.Popen, seen: list[str]) -> int:
    """The controller pid (local job id) from the submitter's ``  <job id>  <name>  run`` line."""
    for line in proc.stdout:
        seen.append(line)
        m = re.match(r"^\s+(\d+)\s+\S+\s+run ", line)
        if m:
            return int(m.group(1))
    raise AssertionError("".join(seen))


def task_of(controller: int, seconds: float = 120) -> int:
    """The training process the controller started (its child)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        kids = [p for p in orphans.descendants([controller], orphans._table()) if p != controller]
        if kids:
            return kids[0]
        time.sleep(0.2)
    raise AssertionError(f"no task under controller {controller}")


def wait_file(pattern: str, root: Path, seconds: float = 180) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"no {pattern} under {root}")


@pytest.mark.slow
def test_killed_local_job_is_submitted_again_and_resumes(results, tmp_path):
    proc = start_submit(spec_file(tmp_path, epochs=3))
    seen: list[str] = []
    try:
        controller = job_line(proc, seen)
        task = task_of(controller)
        wait_file("checkpoints/*/last.pt", results)  # an epoch is done: kill it mid-run
        os.kill(task, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out[-3000:]
    assert "lost its process" in out and "submitting 1 runs again (retry 1 of 2)" in out, out
    con = store.connect(results)
    assert con.execute(
        "SELECT count(*), min(status) FROM runs WHERE kind = 'pretrain'"
    ).fetchone() == (1, "done")
    assert con.execute("SELECT count(*) FROM pretrain").fetchone()[0] == 1


@pytest.mark.slow
def test_jobs_of_a_killed_submitter_are_stopped(results, tmp_path):
    proc = start_submit(spec_file(tmp_path, epochs=500))
    seen: list[str] = []
    procs: dict[int, int] = {}
    try:
        controller = job_line(proc, seen)
        task = task_of(controller)
        procs = {p: orphans.start_time(p) for p in (controller, task)}
        record = json.loads((results / "jobs" / "local" / f"driver-{proc.pid}.json").read_text())
        assert controller in [p for p, _ in record["pids"]]
        proc.kill()  # SIGKILL the submitter
        proc.wait()
        t0 = time.monotonic()
        while any(orphans.alive(p, s) for p, s in procs.items()) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        left = [p for p, s in procs.items() if orphans.alive(p, s)]
        assert not left, left
        print(f"local jobs of the killed submitter stopped after {time.monotonic() - t0:.1f} s")
        # nothing of that submission is live any more: the next submit runs the run again
        assert not ledger.live_run_ids(results)
    finally:
        if proc.poll() is None:
            proc.kill()
        orphans.stop(procs, grace=1)


def test_a_lost_process_is_told_from_a_failure_of_the_run():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from harness.cluster import submit

    class Job:
        state = "FINISHED"

        def __init__(self, job_id: str, error: Exception):
            self.job_id, self.error = job_id, error

        def results(self):
            raise self.error

    jobs = [
        Job("11", UncompletedJobError("Job 11 has not produced any output (state: FINISHED)")),
        Job("12", FailedJobError("Traceback (most recent call last):\nValueError: bad config")),
    ]
    lines: list[str] = []
    lost: dict[int, str] = {}
    failed = submit._wait(jobs, lines.append, lost)
    assert list(lost) == [0] and len(failed) == 1 and "ValueError" in failed[0]
    assert "job 11 lost its process" in lines[0] and "job 12 failed" in lines[1]
    assert len(submit._wait(jobs, lines.append)) == 2  # without `lost` both count as failed
