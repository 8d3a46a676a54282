"""A results root is relocatable: the paths inside it are relative to the root, and NC measured
from a checkpoint is attributed to the run the checkpoint records, not to its path. A finished
store copied elsewhere (the original deleted) gives the same correlations and queries."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tests_util import HARNESS, nc_row

from harness import store
from harness.analysis.views import with_common
from harness.cluster import sweep
from harness.spec import config

RUN = dict(
    arch="resnet_tiny",
    dataset="fashion_mnist",
    limit=300,
    epochs=1,
    batch_size=100,
    lr=0.02,
    nc_limit=200,
)
# which run each NC row of the pre-trained features is attributed to, and on which side
ATTRIBUTION = with_common(
    "SELECT run_id, dataset, split, side, count(*) AS n FROM nc_named GROUP BY ALL ORDER BY ALL"
)


def harness(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [HARNESS, *args, "--results", str(root)], capture_output=True, text=True, timeout=600
    )
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def query(root: Path, sql: str) -> list[dict]:
    return json.loads(harness(root, "query", sql, "--format", "json").stdout)


def specs(tmp_path: Path) -> tuple[Path, Path]:
    """The pre-training spec (one run) and a study spec with the same pre-training grid (what
    ``--study`` scopes a correlation to)."""
    pre, study = tmp_path / "pre.yaml", tmp_path / "study.yaml"
    resources = dict(timeout_min=20)
    pre.write_text(yaml.safe_dump(dict(name="rel", resources=resources, base=RUN)))
    study.write_text(
        yaml.safe_dump(
            dict(
                name="rel",
                executor="local",
                pretrain=dict(resources=resources, base=RUN),
                downstream=["digits"],
                finetune=dict(base=dict(dataset="digits", method="linear_probe", epochs=1)),
            )
        )
    )
    return pre, study


def correlation(root: Path, study: Path, dataset: str) -> dict[str, object]:
    """Source vs downstream NC1 across the layers of the study's run (a `harness correlate`)."""
    args = ["correlate", "--x", "source_nc1", "--y", "down_nc1", "--level", "layer"]
    args += ["--where", f"dataset='{dataset}'", "--study", str(study), "--format", "json"]
    return json.loads(harness(root, *args, "--bootstrap", "20").stdout)


@pytest.mark.slow
def test_copied_store_gives_the_same_findings_and_keeps_attributing(tmp_path):
    pre, study = specs(tmp_path)
    orig = tmp_path / "scratch" / "results"
    out = harness(orig, "submit", str(pre), "--executor", "local").stdout
    assert "1 to submit" in out, out
    (run,) = [r["run_id"] for r in query(orig, "SELECT run_id FROM pretrain")]
    ckpt = f"checkpoints/{run}/last.pt"
    measure = ["measure", "--checkpoint", str(orig / ckpt), "--dataset", "digits"]
    harness(orig, *measure, "--limit", "200")
    before = (correlation(orig, study, "digits"), query(orig, ATTRIBUTION))
    assert before[0]["rows"][0]["n"] >= 3, before  # one point per layer
    assert {(a["run_id"], a["side"]) for a in before[1]} == {(run, "source"), (run, "down")}

    copy = tmp_path / "project" / "results"
    shutil.copytree(orig, copy, symlinks=True)
    shutil.rmtree(orig)
    assert (correlation(copy, study, "digits"), query(copy, ATTRIBUTION)) == before

    # the README's query gives a path that works from the copy; so does the run's log
    sql = "SELECT p.checkpoint, r.log_path FROM pretrain p JOIN runs r USING (run_id)"
    (row,) = query(copy, sql + " WHERE r.status = 'done'")
    assert row["checkpoint"] == ckpt and (copy / ckpt).is_file(), row
    assert not Path(row["log_path"]).is_absolute() and (copy / row["log_path"]).is_file(), row
    status = harness(copy, "status", "--all").stdout
    assert f"log {copy / row['log_path']}" in status, status
    # a sweep selecting checkpoints by a query fine-tunes the copy's file, and records it relative
    select = dict(query="SELECT checkpoint FROM pretrain")
    ft = dict(name="ft", checkpoints=select, base=dict(dataset="digits", method="linear_probe"))
    (trial,) = sweep.expand(config.SweepSpec.model_validate(ft), copy)
    assert (trial["trial"]["checkpoint"], trial["checkpoint"]) == (str(copy / ckpt), ckpt)

    # NC measured on the copy is the run's: it correlates with the run's source NC
    harness(
        copy, "measure", "--checkpoint", str(copy / ckpt), "--dataset", "mnist5k", "--limit", "150"
    )
    rows = query(
        copy, "SELECT DISTINCT checkpoint, source_run_id FROM nc WHERE dataset = 'mnist5k'"
    )
    assert rows == [dict(checkpoint=ckpt, source_run_id=run)]
    assert correlation(copy, study, "mnist5k")["rows"][0]["n"] == before[0]["rows"][0]["n"]

    # the copy knows its run is done
    out = harness(copy, "submit", str(pre), "--executor", "local").stdout
    assert "0 to submit, 1 done" in out, out


def test_rows_written_with_absolute_paths_still_read_and_attribute(tmp_path):
    """A store written before paths were relative: absolute checkpoint paths and NC parts
    without ``source_run_id`` are attributed by path, in the analysis and in a study's scope."""
    root = tmp_path / "results"
    ckpt = str(root / "checkpoints" / "p1" / "last.pt")
    store.append(
        "pretrain", [dict(run_id="p1", arch="resnet_tiny", dataset="src", checkpoint=ckpt)], root
    )
    old = [
        nc_row(run_id="m1", checkpoint=ckpt, dataset="down", layer_index=i, layer=f"s{i}")
        for i in range(2)
    ]
    schema = pa.schema([f for f in store.SCHEMAS["nc"] if f.name != "source_run_id"])
    (root / "nc").mkdir()
    pq.write_table(pa.Table.from_pylist(old, schema=schema), root / "nc" / "part-old.parquet")
    # a measurement of another run's checkpoint at the same path is its recorded run's
    new = nc_row(run_id="m2", checkpoint=ckpt, source_run_id="p2", dataset="down", split="test")
    store.append("pretrain", [dict(run_id="p2", arch="resnet_tiny", dataset="src")], root)
    store.append("nc", [new], root)

    got = query(root, ATTRIBUTION)
    assert [(r["run_id"], r["split"], r["side"], r["n"]) for r in got] == [
        ("p1", "train", "down", 2),
        ("p2", "test", "down", 1),
    ]
    assert store.fetch("SELECT count(*) FROM nc", root=root, scope=["p1"]) == [(2,)]
    assert store.fetch("SELECT count(*) FROM nc", root=root, scope=["p2"]) == [(1,)]
    assert store.resolve_path(ckpt, tmp_path / "elsewhere") == Path(ckpt)


def test_store_path_is_relative_under_the_root_and_absolute_outside(tmp_path):
    root = tmp_path / "results"
    inside = root / "checkpoints" / "r" / "last.pt"
    assert store.store_path(inside, root) == "checkpoints/r/last.pt"
    assert store.store_path(tmp_path / "x.pt", root) == str(tmp_path / "x.pt")
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    root.mkdir()
    assert store.store_path(link / "logs" / "a.err", root) == "logs/a.err"
    moved = tmp_path / "moved"
    assert store.resolve_path("checkpoints/r/last.pt", moved) == moved / "checkpoints/r/last.pt"
