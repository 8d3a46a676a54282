"""Store compaction: readers see every row exactly once while a compaction runs, appends are
never lost, and a compaction killed at any point leaves exactly the same rows."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from tests_util import HARNESS

from harness import store

WRITER = """
import sys
from harness import store
root, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(start, start + n):
    store.append("finetune", [dict(trial_id=f"t{i}", dataset="d", method="full", status="done",
                                   test_acc=i / 1000.0)], root)
print("done", flush=True)
"""

READER = """
import sys
from harness import store
root, seconds = sys.argv[1], float(sys.argv[2])
import time
deadline, last, n = time.monotonic() + seconds, 0, 0
while time.monotonic() < deadline:
    (rows, distinct) = store.fetch("SELECT count(*), count(DISTINCT trial_id) FROM finetune",
                                   None, root)[0]
    assert rows == distinct, f"a row seen twice: {rows} rows, {distinct} ids"
    assert rows >= last, f"rows went missing: {rows} after {last}"
    last, n = rows, n + 1
print(n, last, flush=True)
"""

KILLED_COMPACTION = """
import os, signal, sys
from harness import store
root, step = sys.argv[1], sys.argv[2]
def hook(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
store.compact("finetune", root, on_step=hook)
"""


def assert_kept(root, table: str = "finetune") -> None:
    """Every live merged part matches its manifest, and every file it replaced is kept (not in
    the table folder, where a reader could list it) with the checksum the manifest recorded."""
    import hashlib

    tdir = root / table
    merged = [p for p in store.parts(table, root) if p.parent.name == store.COMPACT_DIR]
    assert merged
    for part in merged:
        man = store.read_manifest(part.parent, part.name)
        assert man.part.sha256 == hashlib.sha256(part.read_bytes()).hexdigest()
        kept = store.kept_dir(part.parent, part.name)
        for f in man.replaced:
            assert not (tdir / f.name).exists()
            data = (kept / os.path.basename(f.name)).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (f.sha256, f.bytes)
    assert store.scan_damage(root) == []


def rows(root) -> list[tuple]:
    return sorted(
        store.fetch("SELECT trial_id, test_acc, status FROM finetune", None, root, ["finetune"])
    )


def fill(root, start: int, n: int) -> None:
    for i in range(start, start + n):
        store.append(
            "finetune",
            [dict(trial_id=f"t{i}", dataset="d", method="full", status="done", test_acc=i / 1000)],
            root,
        )


def test_compaction_merges_sorted_and_is_idempotent(tmp_path):
    fill(tmp_path, 0, 30)
    before = rows(tmp_path)
    c = store.compact("finetune", tmp_path)
    assert (c.parts_before, c.parts_after, c.rows) == (30, 1, 30)
    assert rows(tmp_path) == before
    assert store.parts("finetune", tmp_path) == [c.merged]
    assert list((tmp_path / "finetune").glob("part-*.parquet")) == []  # replaced parts moved
    assert_kept(tmp_path)
    again = store.compact("finetune", tmp_path)
    assert again.merged is None and store.parts("finetune", tmp_path) == [c.merged]
    fill(tmp_path, 30, 5)  # new parts after a compaction merge with the merged one
    c2 = store.compact("finetune", tmp_path)
    assert (c2.parts_before, c2.rows) == (6, 35)
    assert rows(tmp_path) == sorted(before + rows_of(30, 35))
    import pyarrow.parquet as pq

    merged = pq.read_table(c2.merged)
    assert merged.column("trial_id").to_pylist() == sorted(f"t{i}" for i in range(35))


def rows_in_kept(root) -> list[str]:
    """The trial ids in the small parts kept by merged parts (each row was appended once)."""
    import pyarrow.parquet as pq

    kept = (root / "finetune" / store.COMPACT_DIR / store.KEPT_DIR).glob("*/part-*.parquet")
    return sorted(t for p in kept for t in pq.read_table(p).column("trial_id").to_pylist())


def rows_of(a: int, b: int) -> list[tuple]:
    return [(f"t{i}", i / 1000, "done") for i in range(a, b)]


@pytest.mark.slow
def test_compaction_while_appending_and_querying(tmp_path):
    fill(tmp_path, 0, 50)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "50", "250"],
        stdout=subprocess.PIPE,
        text=True,
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(tmp_path), "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    merges = 0
    while writer.poll() is None:
        merges += store.compact("finetune", tmp_path).merged is not None
        time.sleep(0.2)
    merges += store.compact("finetune", tmp_path).merged is not None
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    queries, last = map(int, out.split())
    assert queries > 10 and last > 50
    assert writer.returncode == 0
    assert merges >= 3
    assert rows(tmp_path) == sorted(rows_of(0, 300))  # nothing lost, nothing twice
    assert len(store.parts("finetune", tmp_path)) == 1
    assert_kept(tmp_path)


@pytest.mark.parametrize("step", ["read", "write", "list", "manifest", "commit", "move", "done"])
def test_compaction_killed_at_each_step_keeps_every_row(tmp_path, step):
    fill(tmp_path, 0, 40)
    store.compact("finetune", tmp_path)
    fill(tmp_path, 40, 20)  # a merged part and small parts: the next merge replaces both kinds
    before = rows(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_COMPACTION, str(tmp_path), step])
    assert p.returncode == -signal.SIGKILL
    assert rows(tmp_path) == before
    store.compact("finetune", tmp_path)  # finishes or redoes the killed one
    assert rows(tmp_path) == before
    assert len(store.parts("finetune", tmp_path)) == 1
    leftovers = [p.name for p in (tmp_path / "finetune").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert_kept(tmp_path)
    cdir = tmp_path / "finetune" / store.COMPACT_DIR  # lists and manifests of live parts only
    assert sorted(p.name for p in cdir.glob("compact-*")) == sorted(
        store.parts("finetune", tmp_path)[0].with_suffix(s).name
        for s in (".manifest.json", ".parquet", ".replaces")
    )
    assert len(rows_in_kept(tmp_path)) == 60  # every row also in the files kept


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compaction_killed_at_random_moments(tmp_path, seed):
    fill(tmp_path, 0, 150)
    before = rows(tmp_path)
    rng = random.Random(seed)
    for _ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", KILLED_COMPACTION, str(tmp_path), "never"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.5))  # import, list, read, write, commit or delete
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert rows(tmp_path) == before
    store.compact("finetune", tmp_path)
    assert rows(tmp_path) == before
    assert_kept(tmp_path)


def test_harness_compact_cli_and_query_stays_read_only(results):
    fill(results, 0, 12)
    names = sorted(p.name for p in (results / "finetune").iterdir())
    q = subprocess.run(
        [HARNESS, "query", "SELECT count(*) AS n FROM finetune", "--format", "csv"],
        capture_output=True,
        text=True,
    )
    assert q.stdout.replace(chr(34), "").split() == ["n", "12"]
    assert sorted(p.name for p in (results / "finetune").iterdir()) == names  # query wrote nothing
    r = subprocess.run(
        [HARNESS, "compact", "finetune", "nc", "--results", str(results)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "finetune: 12 parts -> 1 (12 rows)" in r.stdout
    assert "nc: 0 part(s), nothing to merge" in r.stdout
    bad = subprocess.run([HARNESS, "compact", "bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "finetune" in bad.stderr
    assert rows(results) == sorted(rows_of(0, 12))


def test_stale_lock_of_a_dead_compactor_is_broken(tmp_path):
    fill(tmp_path, 0, 3)
    lock = tmp_path / "finetune" / store.COMPACT_DIR / ".lock"
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{os.uname().nodename} {dead.pid} 0")
    c = store.compact("finetune", tmp_path, lock_timeout=5)
    assert c.rows == 3 and not lock.exists()
