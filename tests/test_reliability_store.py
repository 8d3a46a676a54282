"""A damaged store degrades, never breaks; queries are sandboxed to the results root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_util import HARNESS, nc_row

from harness import analysis, store


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HARNESS, *args], capture_output=True, text=True)


def finetune_row(i: int) -> dict:
    return dict(trial_id=f"t{i}", dataset="d", method="full", status="done", test_acc=i / 10)


@pytest.fixture
def damaged(results) -> list[Path]:
    for i in range(6):
        store.append("finetune", [finetune_row(i)], results)
    store.append("nc", [nc_row()], results)
    tdir = results / "finetune"
    garbage = tdir / "part-zz-garbage.parquet"
    garbage.write_bytes(b"not parquet at all " * 50)
    whole = store.parts("finetune", results)[0].read_bytes()
    truncated = tdir / "part-zz-truncated.parquet"
    truncated.write_bytes(whole[: len(whole) // 2])
    wrong = tdir / "part-zz-wrong.parquet"
    pq.write_table(pa.table({"trial_id": [1, 2], "colour": ["r", "g"]}), wrong)
    return [garbage, truncated, wrong]


def test_damaged_parts_are_left_out_with_one_warning_each(results, damaged):
    r = harness("query", "SELECT count(*) AS n FROM nc", "--format", "csv")
    assert r.returncode == 0 and r.stdout.split()[-1] == "1" and r.stderr == "", r.stderr
    r = harness("query", "SELECT count(*) AS n FROM finetune", "--format", "csv")
    assert r.returncode == 0 and r.stdout.split()[-1] == "6"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("harness: warning: ") for ln in lines)
    assert {p.name for p in damaged} == {
        next(Path(w).name for w in ln.split() if w.endswith(".parquet:")).rstrip(":")
        for ln in lines
    }
    assert harness("status").returncode == 0
    r = harness("query", "SELECT sum(test_acc) AS s FROM finetune", "--format", "csv")
    assert float(r.stdout.split()[-1]) == pytest.approx(sum(i / 10 for i in range(6)))


def test_doctor_lists_and_quarantines_never_deletes(results, damaged):
    record = results / "jobs" / "sub-torn.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"executor": "slurm", "tasks": [[')
    ckpt = results / "checkpoints" / "abc" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 torn")
    r = harness("doctor")
    assert r.returncode == 1
    for p in [*damaged, record, ckpt]:
        assert str(p) in r.stdout
    r = harness("doctor", "--fix")
    assert r.returncode == 0, r.stderr
    quarantine = results / store.QUARANTINE
    for p in [*damaged, record, ckpt]:
        assert not p.exists()
        assert (quarantine / p.relative_to(results)).exists()
    r = harness("query", "SELECT count(*) AS n FROM finetune", "--format", "csv")
    assert r.stdout.split()[-1] == "6" and r.stderr == ""
    assert harness("doctor").returncode == 0


@pytest.mark.parametrize(
    "sql, words",
    [
        ("COPY (SELECT 42) TO '{outside}'", "COPY"),
        ("COPY (SELECT 42) TO '{inside}'", "COPY"),
        ("SELECT * FROM read_csv('{secret}')", "Permission"),
        ("SELECT * FROM read_parquet('{root}/../x.parquet')", "Permission"),
        ("ATTACH '{outside}.db'", "ATTACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("SELECT 1; COPY (SELECT 1) TO '{outside}'", "COPY"),
    ],
)
def test_queries_are_sandboxed(results, tmp_path, sql, words):
    store.append("finetune", [finetune_row(0)], results)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    outside, inside = tmp_path / "out.csv", results / "in.csv"
    r = harness(
        "query",
        sql.format(outside=outside, inside=inside, secret=secret, root=results.resolve()),
    )
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not outside.exists() and not inside.exists()
    assert not Path(f"{outside}.db").exists()


def test_saved_analysis_queries_still_run_in_the_sandbox(results):
    store.append("finetune", [finetune_row(i) for i in range(3)], results)
    names = [
        n
        for n in (p.name.removesuffix(".sql") for p in analysis.saved_queries())
        if not n.startswith(("_", "common"))
    ]
    assert names
    for name in names:
        table = store.execute(analysis.load_sql(name), results)
        assert isinstance(table, pa.Table)
