"""Results store: schemas, atomic parts, concurrency, crash safety, provenance."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests_util import nc_row

from harness import store

WRITER = """
import sys
from harness import store
root, tag, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    store.append("nc", [dict(run_id=f"{tag}-{i}-{j}", dataset="d", split="train", layer="l",
                             layer_index=0, depth_frac=1.0, metric="nc1", value=float(j), n=j)
                        for j in range(batch)], root)
    print(i, flush=True)
"""


def count(root, table="nc"):
    con = store.connect(root)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def test_two_processes_append_concurrently(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), tag, "200", "1"],
            stdout=subprocess.DEVNULL,
        )
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert count(tmp_path) == 400
    con = store.connect(tmp_path)
    ids = con.execute("SELECT count(DISTINCT run_id) FROM nc").fetchone()[0]
    assert ids == 400


def test_sigkill_mid_append_leaves_no_readable_torn_part(tmp_path):
    batch = 300_000  # big parts: a write takes long enough to be killed in the middle
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "k", "1000", str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "0"  # one part is committed
    tdir = tmp_path / "nc"
    deadline = time.monotonic() + 60
    while not list(tdir.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)  # wait until a temporary part is being written
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert list(tdir.glob(".*.tmp")), "the kill should land while a part is being written"
    n = count(tmp_path)
    assert n >= batch and n % batch == 0  # only whole parts are visible
    for part in store.parts("nc", tmp_path):
        assert pq.read_metadata(part).num_rows == batch


def test_wrong_type_is_refused_naming_the_column(tmp_path):
    with pytest.raises(store.StoreError, match="'layer_index' expects int, got str"):
        store.append("nc", [nc_row(), nc_row(layer_index="3")], tmp_path)
    with pytest.raises(store.StoreError, match="'value' expects float, got str"):
        store.append("nc", [nc_row(value="0.5")], tmp_path)
    with pytest.raises(store.StoreError, match="unknown column 'colour'"):
        store.append("nc", [nc_row(colour="red")], tmp_path)
    with pytest.raises(store.StoreError, match="'metric' is required"):
        store.append("nc", [nc_row(metric=None)], tmp_path)
    with pytest.raises(store.StoreError, match="unknown table 'bogus'"):
        store.append("bogus", [{}], tmp_path)
    assert not (tmp_path / "nc").exists() or not store.parts("nc", tmp_path)  # nothing partial


def test_numpy_scalars_and_nullable_columns(tmp_path):
    import numpy as np

    store.append("nc", [nc_row(value=np.float32(0.25), n=np.int64(7), variant=None)], tmp_path)
    con = store.connect(tmp_path)
    assert con.execute("SELECT value, n, variant FROM nc").fetchall() == [(0.25, 7, None)]


def test_views_union_parts_and_empty_tables_have_columns(tmp_path):
    store.append("nc", [nc_row(value=1.0)], tmp_path)
    store.append("nc", [nc_row(value=2.0), nc_row(value=3.0)], tmp_path)
    con = store.connect(tmp_path)
    assert con.execute("SELECT sum(value) FROM nc").fetchone()[0] == 6.0
    # finetune has no parts yet: an empty view with the declared columns, so joins work
    cols = [r[0] for r in con.execute("DESCRIBE finetune").fetchall()]
    assert cols == store.SCHEMAS["finetune"].names
    assert con.execute("SELECT count(*) FROM finetune").fetchone()[0] == 0
    with pytest.raises(Exception, match="read-only"):
        con.execute("CREATE TABLE t AS SELECT 1")


def test_run_id_is_canonical_hash():
    a = store.run_id({"arch": "resnet", "lr": 0.1, "grid": [1, 2]})
    b = store.run_id({"lr": 0.1, "grid": [1, 2], "arch": "resnet"})
    c = store.run_id({"lr": 0.2, "grid": [1, 2], "arch": "resnet"})
    assert a == b != c
    import hashlib

    canon = json.dumps({"arch": "resnet", "grid": [1, 2], "lr": 0.1}, separators=(",", ":"))
    assert a == hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_provenance_and_is_done(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    prov = store.Provenance.collect({"x": 1}, "pretrain")
    assert prov.run_id == store.run_id({"x": 1})
    assert (prov.slurm_job_id, prov.slurm_array_job_id, prov.slurm_array_task_id) == (
        "77",
        "70",
        "3",
    )
    assert prov.slurm_restart_count == 2
    versions = json.loads(prov.versions)
    assert "pyarrow" in versions and "duckdb" in versions
    sha, dirty = store.git_state(Path(__file__).parent)
    assert prov.git_sha == sha and prov.git_dirty == dirty
    assert not store.is_done(prov.run_id, tmp_path)
    store.record_run(prov, "failed", tmp_path, error="boom")
    assert not store.is_done(prov.run_id, tmp_path)
    store.record_run(prov, "done", tmp_path)
    assert store.is_done(prov.run_id, tmp_path)
    con = store.connect(tmp_path)
    row = con.execute(
        "SELECT attempt, started_at, ended_at FROM runs WHERE status='done'"
    ).fetchone()
    assert row[0] == 2 and row[1] <= row[2] <= dt.datetime.now(dt.UTC)


def test_results_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_RESULTS", raising=False)
    assert store.results_root() == Path("results")
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path))
    assert store.results_root() == tmp_path
    assert store.results_root(tmp_path / "x") == tmp_path / "x"
