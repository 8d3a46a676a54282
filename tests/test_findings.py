"""The study's findings (`harness.analysis.findings`): one pre-declared primary test per finding,
cluster bootstrap over independent units, paired non-inferiority, and stores scoped to one study.
Synthetic stores written with the store's own writer; no torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness import store
from harness.analysis import findings, stats
from harness.spec.load import load_spec
from harness.spec.study import DEFAULT_FINDINGS, PrimaryTest

SOURCE, DOWN = "fashion_mnist", "mnist5k"


def primary(key: str, **over) -> PrimaryTest:
    return PrimaryTest.model_validate({**DEFAULT_FINDINGS[key], **over})


def study_rows(prefix, xs, ys, *, arch="resnet", dup=1, dataset=DOWN) -> dict[str, list[dict]]:
    """One pre-training run per (x, y): source and downstream NC1 (penultimate) = x, a linear
    probe with accuracy y, and ``dup`` full fine-tuning trials (seeds) with accuracy y whose
    fine-tuned NC1 is x: ``dup`` = 2 is a nuisance duplicate row per run at the trial level."""
    rows: dict[str, list[dict]] = {"pretrain": [], "nc": [], "finetune": []}
    nc = dict(split="train", layer="pre_logits", layer_index=4, depth_frac=1.0, metric="nc1",
              variant="pinv", n=100)  # fmt: skip
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        rid, ck = f"{prefix}-{i}", f"/ck/{prefix}-{i}.pt"
        rows["pretrain"].append(
            dict(run_id=rid, arch=arch, dataset=SOURCE, loss="ce", checkpoint=ck, epochs=1)
        )
        for ds in (SOURCE, dataset):
            rows["nc"].append(dict(nc, run_id=rid, checkpoint=ck, dataset=ds, value=float(x)))
        base = dict(run_id=rid, checkpoint=ck, arch=arch, dataset=dataset, status="done",
                    epochs=1, lr=0.01, weight_decay=0.0, total_params=1000)  # fmt: skip
        rows["finetune"].append(
            dict(base, trial_id=f"{rid}/lp", method="linear_probe", seed=0, test_acc=float(y),
                 val_acc=float(y), trainable_params=10)
        )  # fmt: skip
        for s in range(dup):
            tid = f"{rid}/full/{s}"
            rows["finetune"].append(
                dict(base, trial_id=tid, method="full", seed=s, test_acc=float(y),
                     val_acc=float(y), trainable_params=1000)
            )  # fmt: skip
            rows["nc"].append(dict(nc, run_id=tid, checkpoint=ck, dataset=dataset, value=float(x)))
    return rows


def write(root: Path, *studies: dict[str, list[dict]]) -> Path:
    for rows in studies:
        for table, rs in rows.items():
            store.append(table, rs, root)
    return root


def correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n).T


def lines(found) -> list[str]:
    return [f.line() for f in found]


# ---------------------------------------------------------------------------------------------
# (a) the cluster bootstrap resamples runs, not rows


def test_cluster_bootstrap_is_wider_than_row_bootstrap_and_covers_truth(tmp_path):
    rho = 0.5
    truth = 6 / math.pi * math.asin(rho / 2)  # Spearman ρ of a bivariate normal
    x, y = correlated(40, rho, seed=3)
    root = write(tmp_path / "r", study_rows("a", x + 2.0, y * 0.05 + 0.8, dup=2))
    test = primary("2a", expected_sign=1)
    (f,) = findings.evaluate({"2a": test}, root, None, n_boot=500, seed=0)
    est = f.primary
    assert est.n_units == 40 and est.n_rows == 80  # two rows per run
    assert est.lo <= truth <= est.hi, (est, truth)
    # the same statistic, resampling rows as if they were independent
    cols = [test.x, test.y, *findings.strata_of(test), *test.fixed_effects, "run_id", "arch"]
    recs = store.reading(lambda con: findings.view_records(con, "trial", cols, test.where), root)
    p = findings.points(recs, test.x, test.y, findings.strata_of(test), ["arch"], ["run_id"])

    def fn(i):
        return stats.stratified(p.x[i], p.y[i], p.strata[i], p.groups[i], "fixed_effect")

    assert fn(np.arange(len(p.x))) == pytest.approx(est.value)
    lo, hi = stats.cluster_bootstrap(fn, range(len(p.x)), n_boot=500, seed=0)
    assert hi - lo < 0.85 * (est.hi - est.lo), ((lo, hi), est)
    # seeded: the same findings again
    again = findings.evaluate({"2a": test}, root, None, n_boot=500, seed=0)
    assert lines(again) == lines([f])


def test_cluster_bootstrap_units_move_together():
    """A unit drawn k times contributes all its rows k times; one row per unit is the row
    bootstrap."""
    seen = []
    units = ["a", "a", "b", "c", "c", "c"]
    stats.cluster_bootstrap(lambda i: seen.append(i) or 0.0, units, n_boot=20, seed=1)
    for i in seen:
        counts = {u: sum(units[j] == u for j in i) for u in "abc"}
        assert counts["a"] % 2 == 0 and counts["c"] % 3 == 0
        assert sum(counts[u] // units.count(u) for u in "abc") == 3


# ---------------------------------------------------------------------------------------------
# (b) the primary test alone gives the verdict


def test_primary_pooling_changes_the_verdict_line_only(tmp_path):
    """Within each architecture accuracy falls with NC1; between them it rises (arch offsets):
    fixed effect and raw pooling disagree, the sensitivity rows stay the same."""
    rng = np.random.default_rng(0)
    studies = []
    for arch, off in (("resnet", 0.0), ("vit", 3.0)):
        x = rng.uniform(0, 1, 12) + off
        y = 0.5 + 0.1 * off - 0.05 * (x - off) + rng.normal(0, 0.005, 12)
        studies.append(study_rows(arch, x, y, arch=arch))
    root = write(tmp_path / "r", *studies)
    fe = findings.evaluate({"1": primary("1")}, root, None, n_boot=200, seed=0)[0]
    raw = findings.evaluate({"1": primary("1", pooling="raw")}, root, None, n_boot=200, seed=0)[0]
    assert fe.verdict == "disagrees" and raw.verdict == "agrees"  # the paper expects ρ > 0
    assert fe.line() != raw.line()
    assert repr(fe.sensitivity) == repr(raw.sensitivity) and len(fe.sensitivity) == 5
    assert repr(fe.extra) == repr(raw.extra) and (fe.title, fe.claim) == (raw.title, raw.claim)
    labels = [e.label for e in fe.sensitivity]
    assert "arch = resnet" in labels and "all rows, pooled (raw)" in labels
    # 'up to a point': the curvature and where the best run sits are reported with finding 1
    assert {"curvature", "best_nc1_position"} <= set(fe.extra) and "NC1 range" in fe.note


# ---------------------------------------------------------------------------------------------
# (c) finding 3: paired non-inferiority


def pairs_rows(diffs, *, budgets=(5, None)) -> dict[str, list[dict]]:
    """One checkpoint per entry of ``diffs``, one seed: full FT at 0.8, SCL at 0.8 + diff with
    its sweep-chosen layer (`layer: auto`) and a worse-on-test layer with a higher validation
    accuracy that the choice must not take."""
    rows: dict[str, list[dict]] = {"pretrain": [], "finetune": []}
    for i, d in enumerate(diffs):
        rid, ck = f"p-{i}", f"/ck/p-{i}.pt"
        rows["pretrain"].append(dict(run_id=rid, arch="resnet", dataset=SOURCE, checkpoint=ck))
        for b in budgets:
            base = dict(run_id=rid, checkpoint=ck, arch="resnet", dataset=DOWN, per_class=b,
                        seed=0, status="done", lr=0.01, total_params=1000)  # fmt: skip
            t = f"{rid}/{b}"
            rows["finetune"] += [
                dict(base, trial_id=f"{t}/full", method="full", test_acc=0.8, val_acc=0.8,
                     trainable_params=1000),
                dict(base, trial_id=f"{t}/scl", method="scl", layer="s2", layer_choice="auto",
                     test_acc=0.8 + float(d), val_acc=0.7, trainable_params=100),
                dict(base, trial_id=f"{t}/scl3", method="scl", layer="s3", test_acc=0.1,
                     val_acc=0.99, trainable_params=120),
            ]  # fmt: skip
    return rows


@pytest.mark.parametrize(
    ("mean", "spread", "verdict"),
    [(0.0, 0.005, "agrees"), (-0.1, 0.005, "disagrees"), (-0.015, 0.03, "inconclusive")],
)
def test_noninferiority_verdicts(tmp_path, mean, spread, verdict):
    diffs = mean + spread * np.random.default_rng(1).standard_normal(10)
    root = write(tmp_path / "r", pairs_rows(diffs))
    (f,) = findings.evaluate({"3": primary("3")}, root, None, n_boot=400, seed=0)
    assert f.verdict == verdict, f.line()
    assert f.primary.value == pytest.approx(diffs.mean())
    assert f.primary.n_units == 10 and f.primary.n_rows == 20
    assert f.extra["trainable_fraction"] == pytest.approx(0.1)
    assert set(f.extra["per_budget"]) == {"5", "all"}
    assert [e.label for e in f.sensitivity][:2] == ["budget = 5", "budget = all"]
    if verdict == "inconclusive":
        assert "would put the lower bound above" in f.note and "approximate" in f.note


# ---------------------------------------------------------------------------------------------
# (d) too few independent units: no verdict, no bootstrap


def test_too_few_runs(tmp_path):
    x, y = correlated(5, 0.9, seed=0)
    root = write(tmp_path / "r", study_rows("a", x, y, dup=4))  # 20 trials, 5 runs
    found = findings.evaluate(
        {"1": primary("1"), "2a": primary("2a")}, root, None, n_boot=100, seed=0
    )
    for f in found:
        assert f.verdict == "too few runs" and "at least 8" in f.note, f.line()
        assert math.isnan(f.primary.lo) and math.isnan(f.primary.hi)
        assert f.primary.n_units == 5
    assert found[1].primary.n_rows == 20
    empty = findings.evaluate({"1": primary("1")}, tmp_path / "none", None, n_boot=10, seed=0)
    assert empty[0].verdict == "no data" and empty[0].primary is None


def test_inconclusive_says_how_many_runs_would_do(tmp_path):
    x, y = correlated(10, 0.15, seed=5)
    root = write(tmp_path / "r", study_rows("a", x, y))
    (f,) = findings.evaluate({"1": primary("1")}, root, None, n_boot=200, seed=0)
    assert f.verdict == "inconclusive", f.line()
    need = math.ceil(stats.units_needed(f.primary.value))
    assert f"≈ {need} pre-training runs would exclude 0" in f.note and "approximate" in f.note
    assert stats.units_needed(0.3) == pytest.approx((1.959964 / math.atanh(0.3)) ** 2 * 1.06 + 3)


# ---------------------------------------------------------------------------------------------
# (e) two studies in one store


def test_findings_depend_only_on_the_study_asked_about(tmp_path):
    xa, ya = correlated(12, 0.7, seed=1)
    xb, yb = correlated(12, -0.7, seed=2)
    a, b = study_rows("a", xa, ya, dup=2), study_rows("b", xb, yb, dup=2)
    # the other study also measured the first study's datasets under ids of its own
    b["nc"].append(dict(b["nc"][0], run_id="measure-b0"))
    alone = write(tmp_path / "alone", a)
    both = write(tmp_path / "both", a, b)
    ids = [r["run_id"] for r in a["pretrain"]]
    tests = {k: primary(k) for k in DEFAULT_FINDINGS}
    want = findings.evaluate(tests, alone, ids, n_boot=100, seed=0)
    got = findings.evaluate(tests, both, ids, n_boot=100, seed=0)
    assert repr(got) == repr(want)
    assert lines(findings.evaluate(tests, both, None, n_boot=100, seed=0)) != lines(want)


def test_scoped_connection_holds_one_study(tmp_path):
    root = write(tmp_path / "r", study_rows("a", [1.0, 2.0], [0.5, 0.6], dup=1))
    write(root, study_rows("b", [1.0], [0.5], dup=1))
    store.append("nc", [dict(study_rows("a", [1.0], [0.5])["nc"][0], run_id="m1")], root)
    con = store.connect(root, scope=["a-0"])
    try:
        nc = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM nc").fetchall()}
        ft = {r[0] for r in con.execute("SELECT trial_id FROM finetune").fetchall()}
        pre = {r[0] for r in con.execute("SELECT run_id FROM pretrain").fetchall()}
    finally:
        con.close()
    # its run, its trial, and a measurement of its checkpoint under another id
    assert nc == {"a-0", "a-0/full/0", "m1"}
    assert ft == {"a-0/lp", "a-0/full/0"} and pre == {"a-0"}


# ---------------------------------------------------------------------------------------------
# (f) nothing is chosen on test accuracy


@pytest.mark.parametrize("swap", [False, True])
def test_ties_on_validation_are_not_broken_by_test_accuracy(tmp_path, swap):
    """Two linear-probe configurations (and two full FT ones) with the same validation accuracy
    and different test accuracy: the choice (the smaller lr) does not depend on which one has
    the higher test accuracy."""
    rows = study_rows("a", [1.0], [0.5])
    lp = rows["finetune"][0]
    accs = (0.6, 0.9) if swap else (0.9, 0.6)
    rows["finetune"] = [
        dict(lp, trial_id=f"{m}/{lr}", method=m, lr=lr, test_acc=acc, val_acc=0.7)
        for m in ("linear_probe", "full")
        for lr, acc in zip((0.1, 0.01), accs, strict=True)
    ]
    root = write(tmp_path / "r", rows)
    cols = ["acc_linear_probe", "acc_full"]
    rec = store.reading(lambda con: findings.view_records(con, "model", cols), root)
    assert rec[0]["acc_linear_probe"] == rec[0]["acc_full"] == accs[1]  # lr 0.01
    pairs = store.reading(lambda con: findings.method_pairs(con, "linear_probe", "full"), root)
    assert [(p["x_acc"], p["y_acc"]) for p in pairs] == [(accs[1], accs[1])]


# ---------------------------------------------------------------------------------------------
# `harness run`'s report stage


class SpecModel:
    """The parts of a StudySpec that the report stage reads."""

    def __init__(self, out: Path, ids: list[str], **findings_: dict) -> None:
        from harness.spec.study import ReportSettings

        self.name, self.ids, self.findings = "t", ids, findings_
        self.report = ReportSettings(out=str(out), bootstrap=50, seed=0)

    def run_ids(self) -> list[str]:
        return self.ids

    def primary_tests(self) -> dict[str, PrimaryTest]:
        return {k: primary(k, **self.findings.get(k, {})) for k in DEFAULT_FINDINGS}


@pytest.mark.slow
def test_report_stage_prints_the_primary_verdicts_and_tracks_the_tests(tmp_path):
    from harness import study

    x, y = correlated(10, 0.8, seed=0)
    a = study_rows("a", x, y, dup=2)
    root = write(tmp_path / "r", a, study_rows("b", x, -y))
    ids = [r["run_id"] for r in a["pretrain"]]
    said: list[str] = []
    spec = SpecModel(tmp_path / "rep", ids)
    study.stage_report(spec, root, said.append)
    want = lines(findings.evaluate(spec.primary_tests(), root, ids, n_boot=50, seed=0))
    assert (tmp_path / "rep" / "findings.txt").read_text().splitlines() == want
    assert [s.strip() for s in said[1:]] == want and (tmp_path / "rep" / "report.md").exists()
    said.clear()
    study.stage_report(spec, root, said.append)
    assert "up to date" in said[0]
    said.clear()
    other = SpecModel(tmp_path / "rep", ids, **{"1": {"pooling": "raw"}})
    study.stage_report(other, root, said.append)  # another primary test: written again
    assert "up to date" not in said[0]


@pytest.mark.slow
def test_report_stage_rewrites_a_report_of_older_analysis_code(tmp_path, monkeypatch):
    """The same store, another version of the saved queries: the report is written again."""
    import shutil

    from harness import study
    from harness.analysis import views

    x, y = correlated(10, 0.8, seed=0)
    a = study_rows("a", x, y)
    root = write(tmp_path / "r", a)
    spec = SpecModel(tmp_path / "rep", [r["run_id"] for r in a["pretrain"]])
    said: list[str] = []
    study.stage_report(spec, root, said.append)
    sql = tmp_path / "analysis"
    shutil.copytree(views.SQL, sql)
    monkeypatch.setattr(views, "SQL", sql)
    said.clear()
    study.stage_report(spec, root, said.append)
    assert "up to date" in said[0]  # an unchanged copy: the same fingerprint
    with open(sql / "methods_vs_budget.sql", "a") as f:
        f.write("-- a newer version\n")
    said.clear()
    study.stage_report(spec, root, said.append)
    assert (
        "up to date" not in said[0]
        and "methods_vs_budget" in (tmp_path / "rep" / "report.md").read_text()
    )


# ---------------------------------------------------------------------------------------------
# `harness report --study` and `harness correlate --study` on a shared root


@pytest.mark.slow
def test_cli_reads_only_the_named_study(tmp_path):
    """A real study spec names its runs; the rows of another study in the same root change
    neither its report's findings nor its correlation."""
    import json
    import subprocess

    import yaml
    from tests_util import HARNESS

    from harness.spec import study as studyspec

    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            dict(
                name="t",
                pretrain=dict(base=dict(arch="resnet_tiny", dataset="fashion_mnist"),
                              grid=dict(seed=list(range(10)))),
                downstream=[DOWN],
                finetune=dict(base=dict(dataset=DOWN, method="linear_probe")),
            )
        )
    )  # fmt: skip
    ids = load_spec(spec_path, kind=studyspec.StudySpec).run_ids()
    x, y = correlated(10, 0.8, seed=3)
    mine = study_rows("a", x, y, dup=2)
    for rows in mine.values():  # the spec's own run ids (a-<i> -> its i-th run id)
        for r in rows:
            for k in ("run_id", "trial_id"):
                if k in r:
                    head, _, tail = r[k].partition("/")
                    r[k] = ids[int(head.split("-")[1])] + (f"/{tail}" if tail else "")
    root = write(tmp_path / "r", mine, study_rows("b", x, -y, dup=2))
    out = tmp_path / "rep"
    cmd = [HARNESS, "--results", str(root), "report", "--study", str(spec_path)]
    r = subprocess.run([*cmd, "--out", str(out), "--bootstrap", "50"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    tests = load_spec(spec_path, kind=studyspec.StudySpec).primary_tests()
    want = lines(findings.evaluate(tests, root, ids, n_boot=50, seed=0))
    assert (out / "findings.txt").read_text().splitlines() == want
    assert want != lines(findings.evaluate(tests, root, None, n_boot=50, seed=0))
    r = subprocess.run(
        [HARNESS, "--results", str(root), "correlate", "--study", str(spec_path), "--x",
         "source_nc1", "--y", "acc_linear_probe", "--format", "json", "--bootstrap", "20"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [row["n"] for row in json.loads(r.stdout)["rows"]] == [10]


def test_layer_auto_gap_against_the_blocks_tried(tmp_path):
    """harness/analysis/sql/layer_auto_gap.sql and the report's line: per block and seed the best-validation
    configuration, the mean over seeds, the gap to the best block; a group where SCL ran at one
    block only is left out."""
    from harness.analysis.report import auto_gap_line
    from harness.analysis.views import fetch_records, load_sql

    rows: dict[str, list[dict]] = {"pretrain": [], "finetune": []}
    for i, (auto_accs, other_accs) in enumerate(
        [((0.6, 0.7), (0.8, 0.9)), ((0.9, 0.9), (0.5, 0.5))]
    ):
        rid, ck = f"g-{i}", f"/ck/g-{i}.pt"
        rows["pretrain"].append(dict(run_id=rid, arch="resnet", dataset=SOURCE, checkpoint=ck))
        base = dict(run_id=rid, checkpoint=ck, arch="resnet", dataset=DOWN, per_class=50,
                    status="done", method="scl", total_params=1000)  # fmt: skip
        for seed in (0, 1):
            t = f"{rid}/{seed}"
            rows["finetune"] += [
                dict(base, trial_id=f"{t}/auto", seed=seed, layer="s2", layer_choice="auto: …",
                     lr=0.01, test_acc=auto_accs[seed], val_acc=0.5),
                dict(base, trial_id=f"{t}/s3", seed=seed, layer="s3", lr=0.01,
                     test_acc=other_accs[seed], val_acc=0.6),
                # a higher test accuracy at a lower validation accuracy: not the block's choice
                dict(base, trial_id=f"{t}/s3b", seed=seed, layer="s3", lr=0.1, test_acc=0.99,
                     val_acc=0.55),
                # one block only at another budget: no comparison
                dict(base, trial_id=f"{t}/b5", seed=seed, layer="s2", layer_choice="auto: …",
                     per_class=5, lr=0.01, test_acc=0.3, val_acc=0.3),
            ]  # fmt: skip
    root = write(tmp_path / "r", rows)
    recs = store.reading(lambda con: fetch_records(con, load_sql("layer_auto_gap")), root)
    got = {r["run_id"]: (r["picked"], r["best"], round(r["gap_pts"], 6), r["blocks"]) for r in recs}
    assert got == {"g-0": ("s2", "s3", 20.0, 2), "g-1": ("s2", "s2", 0.0, 2)}
    line = auto_gap_line(recs)
    assert "over 2 (run, dataset, budget) groups" in line and "10.0 points below" in line
    assert "in 1 of 2" in line
    assert "no run and dataset" in auto_gap_line([])
