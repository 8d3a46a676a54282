"""Grids at cluster scale on the real local SLURM cluster: arrays within MaxArraySize,
exactly-once submission (re-submits, cancelled tasks, concurrent submitters), capacity and
sbatch errors as one line. Jobs are submitted held and cancelled: nothing trains."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from tests_util import HARNESS

from harness.cluster import launch, ledger
from harness.spec.load import load_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BASE = dict(arch="resnet_tiny", dataset="digits", limit=100, epochs=1)
AXES = dict(loss=["ce", "label_smoothing", "mse", "supcon"], augment=["none", "weak", "strong"])


def grid_spec(path: Path, seeds: int, name: str = "scale", **resources) -> Path:
    """A grid of 12 × ``seeds`` runs."""
    spec = dict(
        name=name,
        executor="slurm",
        resources=dict(timeout_min=10, **resources),
        base=BASE,
        grid=dict(AXES, seed=list(range(seeds))),
    )
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(spec: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HARNESS, "submit", str(spec), "--hold", *args], capture_output=True, text=True
    )


def run_ids(spec: Path) -> set[str]:
    return {c.run_id() for c in load_spec(spec).runs()}


def live_runs(results: Path) -> Counter:
    """How many live tasks each run has, by the scheduler's expanded view."""
    recs = ledger.read_jobs(results)
    states = launch.queue_states({r.array_id for r in recs if r.array_id})
    return Counter(r.run_id for r in recs if states.get(r.job_id) in ledger.LIVE)


@pytest.fixture
def cancel_all(results):
    yield
    arrays = sorted({r.array_id for r in ledger.read_jobs(results) if r.array_id})
    for i in range(0, len(arrays), 100):
        subprocess.run(["scancel", *arrays[i : i + 100]], check=False)


def test_large_grid_goes_out_as_arrays_exactly_once(slurm_cluster, results, tmp_path, cancel_all):
    spec = grid_spec(tmp_path / "g.yaml", seeds=210)  # 2,520 runs
    want = run_ids(spec)
    r = submit(spec)
    assert r.returncode == 0, r.stderr
    recs = ledger.read_jobs(results)
    arrays = Counter(rec.array_id for rec in recs)
    limit = launch.slurm_limits().max_array_size
    assert len(arrays) >= 3 and max(arrays.values()) <= limit, arrays
    assert Counter(rec.run_id for rec in recs) == Counter(want)  # every run in exactly one task
    assert live_runs(results) == Counter(want)
    # again while every task is pending (sacct shows collapsed array records): nothing new
    r = submit(spec)
    assert r.returncode == 0 and "0 to submit" in r.stdout, r.stdout
    assert f"{len(want)} already queued" in r.stdout
    assert len(ledger.read_jobs(results)) == len(recs)
    # cancel half of the tasks; a re-submit submits exactly that half
    first, second = sorted(arrays, key=int)[:2]
    half = len(want) // 2
    from_second = half - arrays[first]
    subprocess.run(["scancel", first, f"{second}_[0-{from_second - 1}]"], check=True)
    cancelled = {
        rec.run_id
        for rec in recs
        if rec.array_id == first
        or (rec.array_id == second and int(rec.job_id.split("_")[1]) < from_second)
    }
    assert len(cancelled) == half
    deadline = time.monotonic() + 60
    while sum(live_runs(results).values()) != len(want) - half and time.monotonic() < deadline:
        time.sleep(0.5)
    r = submit(spec)
    assert r.returncode == 0, r.stderr
    assert f"{half} to submit" in r.stdout, r.stdout
    new = ledger.read_jobs(results)[len(recs) :]
    assert {rec.run_id for rec in new} == cancelled and len(new) == half
    assert live_runs(results) == Counter(want)  # each run live exactly once


def test_two_concurrent_submits_submit_each_run_once(slurm_cluster, results, tmp_path, cancel_all):
    spec = grid_spec(tmp_path / "c.yaml", seeds=25)  # 300 runs
    procs = [
        subprocess.Popen(
            [HARNESS, "submit", str(spec), "--hold"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    submitted = sorted("300 to submit" in out for out, _ in outs)
    assert submitted == [False, True], outs  # one submitted everything, the other nothing
    want = run_ids(spec)
    assert Counter(rec.run_id for rec in ledger.read_jobs(results)) == Counter(want)
    assert live_runs(results) == Counter(want)


def test_grid_beyond_the_cluster_is_one_line_and_submits_nothing(slurm_cluster, results, tmp_path):
    limits = launch.slurm_limits()
    seeds = limits.max_job_count // 12 + 1
    spec = grid_spec(tmp_path / "huge.yaml", seeds=seeds)
    queued = launch.job_records()
    r = submit(spec)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "nothing submitted" in err and "MaxJobCount" in err, err
    assert ledger.read_jobs(results) == []
    assert launch.job_records() == queued


def test_sbatch_refusal_is_one_line(slurm_cluster, results, tmp_path):
    spec = grid_spec(tmp_path / "p.yaml", seeds=2, partition="no_such_partition")
    r = submit(spec)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "partition" in err.lower() and "nothing submitted" in err, err
    assert ledger.read_jobs(results) == []
    leftovers = list((results / "logs" / "scale").glob("*.pkl"))
    assert leftovers == []
