"""A damaged compacted part loses nothing: compaction keeps what it replaced with checksums in a
manifest, `harness doctor` finds a part that no longer matches them and `--fix` restores every
row from the kept copies, `harness compact --vacuum` frees them; stray files are reported; a
report or correlation over a damaged store says so and fails unless --allow-damaged."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_util import HARNESS, nc_row

from harness import cli, store


def harness(capsys, *args: object) -> tuple[int, str, str]:
    """The real command line, in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def nc_rows(root: Path) -> list[tuple]:
    """Every nc row (with repeats, sorted), read by DuckDB through the store's views."""
    return sorted(
        store.fetch("SELECT run_id, layer_index, value FROM nc", None, root, ["nc"]),
        key=repr,
    )


def add_nc(root: Path, first: int, n: int) -> list[tuple]:
    """``n`` parts of three nc rows each; returns every row written so far, as ``nc_rows``
    reads them."""
    for i in range(first, first + n):
        rows = [nc_row(run_id=f"r{i}", layer_index=j, value=i + j / 10) for j in range(3)]
        store.append("nc", rows, root)
    return sorted(((f"r{i}", j, i + j / 10) for i in range(first + n) for j in range(3)), key=repr)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def merged_part(root: Path, table: str = "nc") -> Path:
    (live,) = store.parts(table, root)
    assert live.parent.name == store.COMPACT_DIR
    return live


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture
def compacted(results, capsys) -> tuple[Path, list[tuple]]:
    """nc compacted twice (the live merged part replaced an older merged part and two small
    ones) and finetune once; returns the merged nc part and every nc row written."""
    assert add_nc(results, 0, 5) == nc_rows(results)  # the rows as written, before compaction
    for i in range(3):
        row = dict(trial_id=f"t{i}", dataset="d", method="full", status="done", test_acc=0.5)
        store.append("finetune", [row], results)
    assert harness(capsys, "--results", results, "compact")[0] == 0
    written = add_nc(results, 5, 2)
    code, out, _ = harness(capsys, "--results", results, "compact", "nc")
    assert code == 0 and "nc: 3 parts -> 1 (21 rows)" in out and "3 replaced files kept" in out
    assert nc_rows(results) == written and len(set(written)) == 21
    return merged_part(results), written


def test_compaction_keeps_and_checksums_what_it_replaced(results, compacted):
    merged, _ = compacted
    cdir = merged.parent
    man = json.loads((cdir / merged.name.replace(".parquet", ".manifest.json")).read_text())
    assert man["part"]["sha256"] == sha256(merged)
    assert man["part"]["bytes"] == merged.stat().st_size and man["rows"] == 21
    kept = cdir / store.KEPT_DIR / merged.stem
    names = sorted(f["name"] for f in man["replaced"])
    assert len(names) == 3 and sum(n.startswith("_compact/compact-") for n in names) == 1
    for f in man["replaced"]:
        copy = kept / Path(f["name"]).name
        assert sha256(copy) == f["sha256"] and copy.stat().st_size == f["bytes"]
    # the older merged part is kept with its list, its manifest and the five parts it replaced
    older = Path(next(n for n in names if n.startswith("_compact/"))).stem
    assert (kept / f"{older}.replaces").exists() and (kept / f"{older}.manifest.json").exists()
    assert len(list((cdir / store.KEPT_DIR / older).glob("part-*.parquet"))) == 5
    assert list((results / "nc").glob("part-*")) == []  # readers list none of them


def test_truncated_merged_part_is_found_and_every_row_restored(results, compacted, capsys):
    merged, before = compacted
    finetune = store.fetch("SELECT trial_id FROM finetune ORDER BY 1", None, results)
    truncate_half(merged)
    r = subprocess.run(
        [HARNESS, "query", "SELECT count(*) AS n FROM nc", "--format", "csv"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.split()[-1] == "0"  # the whole table is that part
    assert merged.name in r.stderr and "restores the parts it replaced" in r.stderr

    code, out, _ = harness(capsys, "--results", results, "doctor")
    assert code == 1 and f"damaged: {merged}" in out and "does not match its manifest" in out
    code, out, err = harness(capsys, "--results", results, "doctor", "--fix")
    assert code == 0, err
    assert f"restored 3 parts replaced by {merged.name}" in out
    assert not merged.exists()
    assert (results / store.QUARANTINE / merged.relative_to(results)).exists()  # not deleted

    assert nc_rows(results) == before  # every row, each once
    assert store.fetch("SELECT trial_id FROM finetune ORDER BY 1", None, results) == finetune
    code, out, _ = harness(capsys, "--results", results, "doctor")
    assert code == 0 and "no damaged parts" in out
    harness(capsys, "--results", results, "compact", "nc")  # the store compacts again
    assert nc_rows(results) == before and len(store.parts("nc", results)) == 1


def test_corrupt_merged_part_of_the_right_size_fails_its_checksum(results, compacted, capsys):
    merged, before = compacted
    data = bytearray(merged.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte in the data: the footer still reads
    merged.write_bytes(bytes(data))
    code, out, _ = harness(capsys, "--results", results, "doctor")
    assert code == 1 and "sha256 differs" in out and merged.name in out
    assert harness(capsys, "--results", results, "doctor", "--fix")[0] == 0
    assert nc_rows(results) == before


def test_a_bad_kept_copy_is_restored_from_what_it_replaced(results, compacted, capsys):
    """The live merged part and the kept copy of the merged part it replaced are both damaged:
    the rows come back from the small parts that older merged part replaced."""
    merged, before = compacted
    truncate_half(merged)
    kept = merged.parent / store.KEPT_DIR / merged.stem
    (older,) = kept.glob("compact-*.parquet")
    truncate_half(older)
    code, out, err = harness(capsys, "--results", results, "doctor", "--fix")
    assert code == 0, out + err
    assert f"restored 7 parts replaced by {merged.name}" in out  # 2 small ones, and 5 deeper
    assert "quarantined a kept copy that fails its checksum" in out and not older.exists()
    assert (results / store.QUARANTINE / older.relative_to(results)).exists()
    assert nc_rows(results) == before
    assert harness(capsys, "--results", results, "doctor")[0] == 0


RESTORE_KILLED = """
import os, signal, sys
from pathlib import Path
from harness import store
root, merged, step = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
def hook(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
store.restore(root, merged, on_step=hook)
"""


@pytest.mark.parametrize("step", ["list", "restore", "commit", "tidy", "done"])
def test_restore_killed_at_each_step_finishes_when_run_again(results, compacted, capsys, step):
    merged, before = compacted
    truncate_half(merged)
    p = subprocess.run([sys.executable, "-c", RESTORE_KILLED, str(results), str(merged), step])
    assert p.returncode == -signal.SIGKILL
    now = nc_rows(results)
    assert now in ([], before)  # before the commit the damaged part, after it every row once
    code, _, err = harness(capsys, "--results", results, "doctor", "--fix")
    assert code == 0, err
    assert nc_rows(results) == before
    assert harness(capsys, "--results", results, "doctor")[0] == 0


def test_vacuum_frees_the_kept_files_only_when_told(results, compacted, capsys):
    merged, before = compacted
    kept = merged.parent / store.KEPT_DIR
    files = [p for p in kept.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert len(files) == 10  # 2 parts + the older merged part (3 files) + its 5 parts

    code, out, _ = harness(capsys, "--results", results, "compact", "--vacuum")
    assert code == 0 and f"nc: freed 0 files (0 bytes); kept 10 ({size} bytes)" in out
    assert all(p.exists() for p in files)  # the default retention keeps fresh ones

    every = [p for p in results.glob(f"*/_compact/{store.KEPT_DIR}/*/*") if p.is_file()]
    assert len(every) == 13  # and the three finetune parts
    total = sum(p.stat().st_size for p in every)
    code, out, _ = harness(capsys, "--results", results, "compact", "--vacuum", "--older-than", 0)
    assert code == 0 and f"nc: freed 10 files ({size} bytes)" in out
    assert out.splitlines()[-1] == f"vacuum: freed 13 files, {total} bytes"
    assert not any(p.exists() for p in every)
    assert nc_rows(results) == before
    assert harness(capsys, "--results", results, "doctor")[0] == 0

    truncate_half(merged)  # nothing kept any more: doctor says what is lost
    code, out, _ = harness(capsys, "--results", results, "doctor", "--fix")
    assert code == 1 and out.count("lost: nc/") == 3


def test_vacuum_keeps_what_a_damaged_merged_part_replaced(results, compacted, capsys):
    merged, before = compacted
    truncate_half(merged)
    code, out, _ = harness(capsys, "--results", results, "compact", "--vacuum", "--older-than", 0)
    assert code == 1 and "fails its checksum" in out and merged.stem in out
    assert harness(capsys, "--results", results, "doctor", "--fix")[0] == 0
    assert nc_rows(results) == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["--older-than", "3"], "--older-than goes with --vacuum"),
        (["--vacuum", "--older-than", "-1"], "days >= 0"),
        (["--vacuum", "--older-than", "nan"], "days >= 0"),
    ],
)
def test_vacuum_flags_are_checked(results, compacted, capsys, args, words):
    code, out, err = harness(capsys, "--results", results, "compact", *args)
    assert code == 2 and err.count("\n") == 1 and words in err and out == ""


def test_stray_files_are_reported_and_quarantined(results, capsys):
    add_nc(results, 0, 2)
    tdir = results / "nc"
    foo = tdir / "foo.parquet"
    pq.write_table(pa.Table.from_pylist([nc_row(run_id="stray")]), foo)
    notes = tdir / "notes.txt"
    notes.write_text("remember\n")
    folder = tdir / "dataset=x"
    folder.mkdir()
    inner = tdir / store.COMPACT_DIR / "old-merge.parquet"
    inner.parent.mkdir()
    inner.write_bytes(b"x")
    (tdir / ".part-inflight.parquet.tmp").write_bytes(b"")  # a write in flight: not a stray
    before = nc_rows(results)
    assert len(before) == 6 and ("stray", 0, 0.5) not in before  # readers ignore it

    code, out, _ = harness(capsys, "--results", results, "doctor")
    assert code == 1
    for p in (foo, notes, folder, inner):
        assert f"stray: {p} (nc: a stray " in out
    assert ".part-inflight" not in out
    assert harness(capsys, "--results", results, "doctor", "--fix")[0] == 0
    for p in (foo, notes, folder, inner):
        assert not p.exists() and (results / store.QUARANTINE / p.relative_to(results)).exists()
    assert nc_rows(results) == before
    assert harness(capsys, "--results", results, "doctor")[0] == 0


def test_compaction_leaves_a_damaged_part_where_it_is(results, capsys):
    add_nc(results, 0, 3)
    before = nc_rows(results)
    bad = results / "nc" / "part-zz-garbage.parquet"
    bad.write_bytes(b"not parquet " * 40)
    code, out, err = harness(capsys, "--results", results, "compact", "nc")
    assert code == 0 and "nc: 3 parts -> 1 (9 rows)" in out, err
    assert "1 damaged part(s) left as they are" in out
    assert bad.exists() and nc_rows(results) == before  # never merged, never moved aside
    merged = next(p for p in store.parts("nc", results) if p.parent.name == store.COMPACT_DIR)
    replaced = merged.with_suffix(".replaces").read_text().split()
    assert bad.name not in replaced
    code, out, _ = harness(capsys, "--results", results, "doctor", "--fix")
    assert code == 0 and f"moved {bad}" in out
    assert nc_rows(results) == before and len(store.parts("nc", results)) == 1


# ---------------------------------------------------------------------------------------------
# A report or correlation over a damaged store


def half_copied_part(root: Path, *, finetune: bool) -> Path:
    """The analysis store of test_analysis plus half of a copy of its nc part: a half-copied
    part, left out by readers."""
    from test_analysis import build_store

    build_store(root, finetune=finetune)
    (part,) = store.parts("nc", root)
    data = part.read_bytes()
    half = part.parent / "part-zz-half-copied.parquet"
    half.write_bytes(data[: len(data) // 2])
    return half


def test_correlate_over_a_damaged_store_says_so_first_and_last(results, capsys):
    half = half_copied_part(results, finetune=True)
    args = ["--results", results, "correlate", "--x", "source_nc1", "--y", "acc_linear_probe"]
    code, out, err = harness(capsys, *args, "--bootstrap", 10)
    assert code == 1
    assert out.startswith("**Damaged store: 1 damaged part left out (nc: part-zz-half-copied")
    assert "| all | 12 |" in out  # the numbers over the readable parts are still printed
    last = err.strip().splitlines()[-1]
    assert "damaged store" in last and half.name in last and "--allow-damaged" in last
    code, out, err = harness(
        capsys, *args, "--bootstrap", 10, "--allow-damaged", "--format", "json"
    )
    assert code == 0 and json.loads(out)["left_out"] == [str(half.resolve())]
    last = err.strip().splitlines()[-1]
    assert last.startswith("harness: warning: the correlation read a damaged store")


def test_report_over_a_damaged_store_says_so_at_the_top(results, tmp_path, capsys):
    half = half_copied_part(results, finetune=False)  # the smallest store a report reads
    out = tmp_path / "report"
    args = ["--results", results, "report", "--out", out, "--bootstrap", 10]
    code, stdout, err = harness(capsys, *args)
    assert code == 1 and stdout.startswith("wrote ")
    last = err.strip().splitlines()[-1]
    assert last.startswith("harness: the report read a damaged store") and half.name in last
    md = (out / "report.md").read_text().splitlines()
    assert md[0].startswith("# ") and md[2].startswith("> **Damaged store: 1 damaged part")
    assert half.name in md[2]
    page = (out / "report.html").read_text()
    assert page.index("role='alert'") < page.index("<nav>") and half.name in page
    code, _, err = harness(capsys, *args, "--allow-damaged")
    assert code == 0, err
    assert "warning: the report read a damaged store" in err.strip().splitlines()[-1]
    assert harness(capsys, "--results", results, "doctor", "--fix")[0] == 0
    code, _, err = harness(capsys, *args)  # repaired: no banner, exit 0
    assert code == 0 and "damaged" not in err
    assert "Damaged store" not in (out / "report.md").read_text()
    assert "role='alert'" not in (out / "report.html").read_text()


def test_report_stage_of_a_study_over_a_damaged_store(tmp_path):
    """`harness run`'s report stage (and `harness report --study`): written with the banner,
    then exit 1 unless allowed; never "up to date", so a repaired store gets a clean one."""
    from test_findings import SpecModel, correlated, study_rows, write

    from harness import study
    from harness.errors import HarnessError

    x, y = correlated(10, 0.8, seed=0)
    rows = study_rows("a", x, y)
    root = write(tmp_path / "r", rows)
    write(root, {"nc": rows["nc"][:4]})  # a second nc part, then half-copied
    second = store.parts("nc", root)[-1]
    truncate_half(second)
    spec = SpecModel(tmp_path / "rep", [r["run_id"] for r in rows["pretrain"]])
    spec.report = spec.report.model_copy(update={"bootstrap": 10})
    said: list[str] = []
    with pytest.raises(HarnessError, match=f"report read a damaged store.*{second.name}"):
        study.stage_report(spec, root, said.append)
    assert "Damaged store" in (tmp_path / "rep" / "report.md").read_text()
    said.clear()
    study.stage_report(spec, root, said.append, allow_damaged=True)
    assert "up to date" not in said[0]  # a damaged report is written again every time
    assert not (tmp_path / "rep" / ".fingerprint").exists()


def test_left_out_parts_are_what_the_view_lacks(results):
    """What a connection says it left out is exactly the rows it lacks (DuckDB over the raw
    Parquet of the good parts gives the same count)."""
    add_nc(results, 0, 3)
    good = store.parts("nc", results)
    bad = results / "nc" / "part-zz-bad.parquet"
    bad.write_bytes(good[0].read_bytes()[:100])
    left: list[store.Damage] = []
    con = store.connect(results, left_out=left)
    try:
        n = con.execute("SELECT count(*) FROM nc").fetchone()[0]
    finally:
        con.close()
    assert [d.path for d in left] == [bad.resolve()]
    files = ", ".join(f"'{p}'" for p in good)
    assert n == duckdb.sql(f"SELECT count(*) FROM read_parquet([{files}])").fetchall()[0][0] == 9
