"""Bad input through the CLI: every case is one line on stderr, a non-zero exit, no traceback,
nothing on stdout and nothing written; and the exports that used to fail (nested CSV cells,
DECIMAL, BLOB and non-finite numbers in JSON) give values computed here independently."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from tests_util import HARNESS, nc_row

from harness import cli, store

METHODS = ["linear_probe", "full", "lora"]
FINETUNE = [
    dict(
        trial_id=f"t{i}",
        run_id=f"r{i}",
        dataset="digits",
        method=m,
        per_class=10 * (i + 1),
        status="done",
        test_acc=0.5 + 0.1 * i,
    )
    for i, m in enumerate(METHODS)
]
CORRELATE = ["correlate", "--x", "source_nc1", "--y", "acc_linear_probe"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A small real store: NC rows and fine-tuning trials with string columns."""
    base = tmp_path_factory.mktemp("store") / "results"
    store.append("nc", [nc_row(run_id=f"r{i}", value=0.1 * (i + 1)) for i in range(3)], base)
    store.append("finetune", FINETUNE, base)
    return base


def snapshot(*folders: Path) -> dict[Path, tuple[int, int]]:
    """Every path under ``folders`` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in f.rglob("*")}


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``harness.cli.main`` as the entry point runs it (argparse errors exit)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# (argv, exit code, what the one stderr line says); {root} the store, {file} a regular file,
# {tmp} an empty folder, {missing} a path that does not exist
BAD = [
    (["query", "SELECT 1; SELECT 2"], 2, "2 statements given (SELECT, SELECT)"),
    (["query", "SELECT 1", "-o", "{tmp}/nope/x.csv"], 2, "folder {tmp}/nope does not exist"),
    (["query", "SELECT 1", "-o", "{file}/x.csv"], 2, "{file} is a file, not a folder"),
    (["query", "SELECT 1", "--output", "{tmp}"], 2, "--output {tmp}: is a folder"),
    (["query", "SELECT 1", "-o", "/proc/harness-x.csv"], 2, "cannot write in /proc"),
    (["query", "SELECT 1", "--format", "parquet", "-o", "{file}/a/x.pq"], 2, "is a file"),
    ([*CORRELATE, "--where", "arch =="], 2, "--where 'arch ==': Parser Error: syntax error"),
    ([*CORRELATE, "--where", "true ORDER BY 1"], 2, "--where 'true ORDER BY 1': "),
    ([*CORRELATE, "--where", "true; SELECT 1"], 2, "not one condition"),
    ([*CORRELATE, "--plot", "{tmp}/p.txt"], 2, "extension '.txt' is not supported; valid: .png"),
    ([*CORRELATE, "--plot", "{tmp}/p"], 2, "--plot {tmp}/p: no extension"),
    ([*CORRELATE, "--plot", "/proc/harness-p.png"], 2, "cannot write in /proc"),
    ([*CORRELATE, "--plot", "{file}/p.png"], 2, "{file} is a file, not a folder"),
    ([*CORRELATE, "--bootstrap", "3"], 2, "--bootstrap: must be an integer between 10 and"),
    ([*CORRELATE, "--ci", "1.5"], 2, "--ci: must be a number > 0 and < 1 (got 1.5)"),
    ([*CORRELATE, "--ci", "nan"], 2, "--ci: must be a number > 0 and < 1 (got nan)"),
    (["report", "--out", "{file}"], 2, "--out {file}: is a file, not a folder"),
    (["report", "--out", "/proc/harness-report"], 2, "cannot write in /proc"),
    (["report", "--out", "{tmp}/r", "--bootstrap", "0"], 2, "--bootstrap: must be an integer"),
    (["report", "--out", "{tmp}/r", "--seed", "-1"], 2, "--seed: must be an integer between 0"),
    (["--results", "{file}", "doctor"], 2, "--results {file}: is a file, not a folder"),
    (["--results", "{missing}", "status"], 1, "no results under {missing}"),
    (["--results", "{missing}", "doctor"], 1, "no results under {missing}"),
    (["--results", "{missing}", "compact"], 1, "no results under {missing}"),
    (["--results", "{file}", "submit", "{file}"], 2, "--results {file}: is a file"),
    (["measure", "--dataset", "digits", "--batch-size", "0"], 2, "between 1 and 65536 (got 0)"),
    (["measure", "--dataset", "digits", "--limit", "0"], 2, "--limit: must be an integer"),
    (["sweep", "{file}", "--executor", "local"], 2, "a sweep runs on Ray, not through an"),
    (["sweep", "{file}", "--nodes", "0"], 2, "--nodes: must be an integer between 1 and"),
]


@pytest.fixture
def places(root, tmp_path) -> dict[str, str]:
    out = tmp_path / "out"
    out.mkdir()
    file = tmp_path / "afile"
    file.write_text("not a folder\n")
    return dict(root=str(root), file=str(file), tmp=str(out), missing=str(tmp_path / "nothing"))


@pytest.mark.parametrize("argv, code, words", BAD, ids=[" ".join(c[0]) for c in BAD])
def test_bad_input_is_one_line_and_writes_nothing(
    capsys, root, tmp_path, places, argv, code, words
):
    args = [a.format(**places) for a in argv]
    if "--results" not in args:
        args = ["--results", str(root), *args]
    before = snapshot(root, tmp_path)
    got, out, err = run_cli(capsys, args)
    assert got == code, err
    assert err.count("\n") == 1 and err.startswith("harness: "), err
    assert words.format(**places) in err, err
    assert "Traceback" not in err and out == ""
    assert snapshot(root, tmp_path) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        (["query", "SELECT 1", "-o", "/proc/harness-x.csv"], "cannot write in /proc"),
        (["doctor", "--results", "{file}"], "is a file, not a folder"),
        (["sweep", "{file}", "--executor", "local"], "--address HOST:PORT"),
    ],
)
def test_bad_input_in_a_real_process(places, argv, words):
    r = subprocess.run(
        [HARNESS, *(a.format(**places) for a in argv)], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_where_error_names_the_users_text_not_the_generated_query(capsys, root):
    code, _, err = run_cli(capsys, ["--results", str(root), *CORRELATE, "--where", "arch =="])
    assert code == 2 and "ORDER" not in err and "SELECT" not in err


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, which are not JSON."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_csv_writes_nested_cells_as_json(capsys, root):
    sql = (
        "SELECT list(method ORDER BY method) AS methods, "
        "{'n': count(*), 'best': max(test_acc)} AS summary, "
        "map(['digits'], [sum(per_class)]) AS budget, '\\xDE\\xAD'::BLOB AS raw FROM finetune"
    )
    code, out, err = run_cli(capsys, ["--results", str(root), "query", sql, "--format", "csv"])
    assert code == 0, err
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert strict_json(row["methods"]) == sorted(METHODS)
    summary = strict_json(row["summary"])
    assert summary["n"] == len(FINETUNE)
    assert summary["best"] == pytest.approx(max(r["test_acc"] for r in FINETUNE))
    assert strict_json(row["budget"]) == {"digits": sum(r["per_class"] for r in FINETUNE)}
    assert row["raw"] == base64.b64encode(b"\xde\xad").decode()


def test_csv_of_duckdb_settings_has_list_cells(capsys, root):
    sql = "SELECT * FROM duckdb_settings()"
    code, out, err = run_cli(capsys, ["--results", str(root), "query", sql, "--format", "csv"])
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) > 10 and all(isinstance(strict_json(r["aliases"]), list) for r in rows)


def test_json_is_strict_with_decimals_blobs_and_non_finite_numbers(capsys, root, tmp_path):
    sql = (
        "SELECT 'inf'::DOUBLE AS up, '-inf'::DOUBLE AS down, 'nan'::DOUBLE AS nan, "
        "1.25::DECIMAL(5, 2) AS price, sum(per_class) AS budget, max(test_acc) AS best, "
        "'\\x00\\xFF'::BLOB AS raw FROM finetune"
    )
    target = tmp_path / "rows.json"
    target.write_text("old\n")  # an existing file is overwritten
    argv = ["--results", str(root), "query", sql, "--format", "json", "-o", str(target)]
    code, out, err = run_cli(capsys, argv)
    assert code == 0 and out == "", err
    (row,) = strict_json(target.read_text())
    assert row["up"] is None and row["down"] is None and row["nan"] is None
    assert row["price"] == 1.25
    assert row["budget"] == sum(r["per_class"] for r in FINETUNE)
    assert isinstance(row["budget"], int)  # a HUGEINT sum stays an exact integer
    assert row["best"] == pytest.approx(max(r["test_acc"] for r in FINETUNE))
    assert base64.b64decode(row["raw"]) == b"\x00\xff"


def test_one_statement_with_a_trailing_semicolon_runs(capsys, root):
    code, out, err = run_cli(
        capsys, ["--results", str(root), "query", "SELECT 41 + 1 AS a;", "--format", "json"]
    )
    assert code == 0 and strict_json(out) == [{"a": 42}], err


def test_report_rewrites_an_existing_report_folder(capsys, root, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("an old report\n")
    code, _, err = run_cli(
        capsys, ["--results", str(root), "report", "--out", str(out), "--bootstrap", "10"]
    )
    assert code == 0, err
    assert "an old report" not in (out / "report.md").read_text()


@pytest.mark.parametrize("suffix, head", [(".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_plot_formats_follow_the_extension(tmp_path, suffix, head):
    import numpy as np

    from harness.analysis.plots import FIGURE_SUFFIXES, scatter_plot

    assert suffix in FIGURE_SUFFIXES
    points = {"a": (np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.2]))}
    path = scatter_plot(points, {}, tmp_path / f"p{suffix}", xlabel="x", ylabel="y")
    assert path.read_bytes().startswith(head)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"p{suffix}"]  # no temporary left
