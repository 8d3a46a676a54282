"""The `harness` CLI as a user runs it: a real subprocess over a real store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from tests_util import HARNESS

from harness import store

ROWS = [
    dict(
        run_id=f"r{i}",
        dataset="fashion_mnist",
        split="train",
        layer=f"stages.{i % 4}",
        layer_index=i % 4,
        depth_frac=(i % 4 + 1) / 4,
        metric="nc1",
        variant="pinv",
        value=0.1 * i + 1e-9,
        n=1000 + i,
        num_classes=10,
        dim=None,
    )
    for i in range(12)
]
COLS = [f.name for f in store.SCHEMAS["nc"]]


def harness(*args, check=True, **kw):
    r = subprocess.run([HARNESS, *args], capture_output=True, text=True, **kw)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def filled(results):
    store.append("nc", ROWS[:5], results)
    store.append("nc", ROWS[5:], results)
    return results


def expected():
    return [{c: r.get(c) for c in COLS} for r in ROWS]


SQL = "SELECT * FROM nc ORDER BY run_id"


def test_query_formats_round_trip(filled, tmp_path):
    want = sorted(expected(), key=lambda r: r["run_id"])
    # parquet
    harness("query", SQL, "--format", "parquet", "--output", str(tmp_path / "o.parquet"))
    assert pq.read_table(tmp_path / "o.parquet").to_pylist() == want
    # json (file and stdout agree)
    harness("query", SQL, "--format", "json", "-o", str(tmp_path / "o.json"))
    assert json.loads((tmp_path / "o.json").read_text()) == want
    assert json.loads(harness("query", SQL, "--format", "json").stdout) == want
    # csv: values come back as text; compare through the declared types
    harness("query", SQL, "--format", "csv", "-o", str(tmp_path / "o.csv"))
    with open(tmp_path / "o.csv") as fh:
        got = list(csv.DictReader(fh))
    types = {f.name: f.type for f in store.SCHEMAS["nc"]}

    def parse(col, v):
        if v == "":
            return None
        t = str(types[col])
        return int(v) if t == "int64" else float(v) if t == "double" else v

    assert [{k: parse(k, v) for k, v in r.items()} for r in got] == want
    # table: every value is shown
    out = harness("query", SQL).stdout
    assert "(12 rows)" in out
    for r in ROWS:
        assert r["run_id"] in out


def test_tables_lists_columns_and_counts(filled):
    out = harness("query", "--tables").stdout
    assert "nc: 12 rows in 2 parts" in out
    assert "layer_index BIGINT" in out
    assert "finetune: 0 rows in 0 parts" in out


def test_bad_sql_one_line_exit_2(filled):
    r = harness("query", "SELEC * FROM nc", check=False)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "syntax error" in r.stderr
    r = harness("query", "SELECT nope FROM nc", check=False)
    assert r.returncode == 2 and "nope" in r.stderr and r.stderr.count("\n") == 1


def test_empty_root(results):
    r = harness("query", "SELECT * FROM nc", check=False)
    assert r.returncode != 0
    assert r.stderr.strip() == f"harness: no results under {results}"
    assert "42" in harness("query", "SELECT 42 AS answer").stdout
    assert harness("status").stdout.strip() == f"no runs under {results}"


def test_results_flag_overrides_env(filled, tmp_path):
    other = tmp_path / "other"
    store.append("nc", ROWS[:1], other)
    out = harness(
        "--results", str(other), "query", "SELECT count(*) AS c FROM nc", "--format", "json"
    ).stdout
    assert json.loads(out) == [{"c": 1}]


def test_status_counts_latest_attempt(results):
    a = store.Provenance.collect({"a": 1}, "pretrain")
    b = store.Provenance.collect({"b": 1}, "pretrain")
    store.record_run(a, "failed", results, error="RuntimeError: boom\nmore")
    store.record_run(a, "done", results)
    store.record_run(b, "failed", results, error="ValueError: bad lr", log_path="/x/1_0_log.err")
    out = harness("status").stdout
    assert out.splitlines()[0].startswith("done: 1 failed: 1  (total 2)")
    assert "ValueError: bad lr" in out and "/x/1_0_log.err" in out and "boom" not in out


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from harness import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'ray', 'duckdb', 'pyarrow', 'numpy') if m in sys.modules]\n"
        "print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "[]"
