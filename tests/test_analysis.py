"""Analysis: statistics against scipy, scores against slow independent references, and
`harness correlate` / `harness report` over a store built with known relations."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from tests_util import HARNESS

from harness import analysis, cli, store
from harness.cli import output as query

# ---------------------------------------------------------------------------------------------
# Statistics


def test_correlations_equal_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    got = analysis.correlation_stats(x, y, n_boot=0)
    for name, fn in [
        ("pearson", scipy.stats.pearsonr),
        ("spearman", scipy.stats.spearmanr),
        ("kendall", scipy.stats.kendalltau),
    ]:
        want = fn(x, y)
        assert got[name] == pytest.approx(want.statistic, abs=1e-12)
        assert got[f"{name}_p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert got["weighted_tau"] == pytest.approx(scipy.stats.weightedtau(x, y).statistic, abs=1e-12)
    fit = scipy.stats.linregress(x, y)
    assert (got["slope"], got["intercept"], got["r2"]) == pytest.approx(
        (fit.slope, fit.intercept, fit.rvalue**2)
    )
    assert got["n"] == 40 and math.isnan(got["pearson_lo"])  # no resamples, no interval


def test_too_few_points_are_missing_not_errors():
    got = analysis.correlation_stats([1.0, 2.0], [3.0, 1.0], n_boot=10)
    assert got["n"] == 2 and math.isnan(got["pearson"]) and math.isnan(got["kendall_lo"])
    const = analysis.correlation_stats([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], n_boot=10)
    assert math.isnan(const["pearson"]) and math.isnan(const["slope"])


def test_bootstrap_covers_truth_and_reproduces():
    """Bivariate normal with ρ = 0.6: Pearson ρ, Spearman (6/π)·asin(ρ/2), Kendall (2/π)·asin(ρ)."""
    rho = 0.6
    truth = {
        "pearson": rho,
        "spearman": 6 / math.pi * math.asin(rho / 2),
        "kendall": 2 / math.pi * math.asin(rho),
    }
    rng = np.random.default_rng(7)
    cov = [[1, rho], [rho, 1]]
    covered = {k: 0 for k in truth}
    reps = 10
    for r in range(reps):
        x, y = rng.multivariate_normal([0, 0], cov, size=120).T
        st = analysis.correlation_stats(x, y, n_boot=300, seed=r)
        for k, v in truth.items():
            assert st[f"{k}_lo"] < st[k] < st[f"{k}_hi"]
            covered[k] += st[f"{k}_lo"] <= v <= st[f"{k}_hi"]
    assert all(c >= reps - 2 for c in covered.values()), covered  # 95 % intervals
    # same seed: the same intervals; another seed: other intervals
    a = analysis.correlation_stats(x, y, n_boot=200, seed=3)
    b = analysis.correlation_stats(x, y, n_boot=200, seed=3)
    c = analysis.correlation_stats(x, y, n_boot=200, seed=4)
    keys = [f"{k}_{e}" for k in analysis.CORRELATIONS for e in ("lo", "hi")]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert [a[k] for k in keys] != [c[k] for k in keys]


def test_pooling_per_group_standardised_and_fixed_effect():
    rng = np.random.default_rng(2)
    g = np.repeat(["a", "b", "c"], 15)
    offset = {"a": 0.0, "b": 5.0, "c": -3.0}
    x = rng.normal(size=45) * np.repeat([1.0, 3.0, 0.5], 15)
    y = -2.0 * x + np.array([offset[k] for k in g]) * 4 + rng.normal(size=45)
    rows = {r["pooling"]: r for r in analysis.correlate_groups(x, y, g, n_boot=0)}
    per = [r for r in analysis.correlate_groups(x, y, g, n_boot=0) if r["pooling"] == "group"]
    assert [r["group"] for r in per] == ["a", "b", "c"]
    z = lambda v: np.concatenate([scipy.stats.zscore(v[g == k]) for k in "abc"])  # noqa: E731
    order = np.concatenate([np.flatnonzero(g == k) for k in "abc"])
    assert rows["zscore"]["pearson"] == pytest.approx(
        scipy.stats.pearsonr(z(x), z(y)).statistic, abs=1e-12
    )
    # the fixed-effect slope is the within estimator: OLS on group-demeaned values
    dm = lambda v: np.concatenate([v[g == k] - v[g == k].mean() for k in "abc"])  # noqa: E731
    assert rows["fixed_effect"]["slope"] == pytest.approx(np.polyfit(dm(x), dm(y), 1)[0])
    assert rows["fixed_effect"]["slope"] == pytest.approx(-2.0, abs=0.2)
    assert rows["raw"]["pearson"] == pytest.approx(
        scipy.stats.pearsonr(x[order], y[order]).statistic
    )
    assert rows["raw"]["n"] == rows["zscore"]["n"] == rows["fixed_effect"]["n"] == 45


# ---------------------------------------------------------------------------------------------
# Transferability scores against slow, direct references


def logme_reference(f: np.ndarray, y: np.ndarray) -> float:
    """Mean over classes of max over (α, β) of log N(t; 0, I/β + F·Fᵀ/α) / N: the evidence as a
    Gaussian marginal likelihood, maximised by a grid search refined with Nelder–Mead."""
    n = len(f)
    gram = f @ f.T
    out = []
    for c in np.unique(y):
        t = (y == c).astype(float)

        def nll(p, t=t):
            a, b = np.exp(p)
            cov = np.eye(n) / b + gram / a
            sign, logdet = np.linalg.slogdet(cov)
            if sign <= 0:
                return np.inf
            return 0.5 * (n * math.log(2 * math.pi) + logdet + t @ np.linalg.solve(cov, t))

        grid = np.linspace(-8, 8, 17)
        start = min(((la, lb) for la in grid for lb in grid), key=nll)
        res = scipy.optimize.minimize(
            nll, start, method="Nelder-Mead", options=dict(xatol=1e-9, fatol=1e-12, maxiter=4000)
        )
        out.append(-res.fun / n)
    return float(np.mean(out))


@pytest.mark.parametrize("shape", ["tall", "wide_low_rank"])
def test_logme_matches_direct_evidence_maximisation(shape):
    rng = np.random.default_rng(3)
    if shape == "tall":  # N > D: full-rank features
        y = rng.integers(0, 3, 45)
        f = rng.normal(size=(45, 6)) + 0.8 * rng.normal(size=(3, 6))[y]
    else:  # D > N, rank 5 < N: exercises the zero eigenvalues of FᵀF
        y = rng.integers(0, 3, 30)
        f = (rng.normal(size=(30, 5)) + rng.normal(size=(3, 5))[y]) @ rng.normal(size=(5, 60))
    got = analysis.logme(f, y)
    ref = logme_reference(f, y)
    assert got == pytest.approx(ref, abs=1e-7)


def test_logme_exact_fit_is_finite():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 20)
    f = rng.normal(size=(20, 40))  # rank N: every target is fitted exactly (β → ∞)
    got = analysis.logme(f, y)
    assert math.isfinite(got) and got >= logme_reference(f, y) - 1e-6


def leep_reference(theta: np.ndarray, y: np.ndarray) -> float:
    n, z = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {
        (c, j): sum(theta[i, j] for i in range(n) if y[i] == c) / n
        for c in classes
        for j in range(z)
    }
    marginal = {j: sum(joint[c, j] for c in classes) for j in range(z)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[y[i], j] / marginal[j] * theta[i, j] for j in range(z)))
    return total / n


def test_leep_matches_reference():
    rng = np.random.default_rng(5)
    theta = scipy.special.softmax(rng.normal(size=(50, 7)) * 2, axis=1)
    y = rng.integers(0, 4, 50)
    assert analysis.leep(theta, y) == pytest.approx(leep_reference(theta, y), abs=1e-12)
    with pytest.raises(analysis.HarnessError, match="softmax"):
        analysis.leep(rng.normal(size=(50, 7)), y)


def ncti_reference(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The authors' pipeline with scikit-learn (PCA, then LinearDiscriminantAnalysis with the
    eigen solver and the same shrinkage) for all three parts, and, for the posteriors, a slow
    per-sample evaluation of the shared-covariance Gaussian class posteriors."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    n, d = x.shape
    classes = sorted(set(y.tolist()))
    k = len(classes)
    pca = PCA(n_components=min(64, n, d), svd_solver="full")
    z = pca.fit_transform(x)
    shrink = max(math.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrink)
    low = lda.fit_transform(z, y)
    low = low - low.mean(0)
    post = lda.predict_proba(z)
    out = dict(
        seli=float(np.linalg.norm(low, "nuc")),
        ncc=float(post[np.arange(n), y].mean()),
        vc=float(np.log(sum(np.linalg.norm(post[y == c], "nuc") for c in classes))),
    )
    # slow posteriors: class means, pooled within-class covariance by outer products, shrinkage
    dim = z.shape[1]
    mu = {c: sum(z[i] for i in range(n) if y[i] == c) / (y == c).sum() for c in classes}
    sw = sum(np.outer(z[i] - mu[y[i]], z[i] - mu[y[i]]) for i in range(n)) / n
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / dim * np.eye(dim)
    prior = {c: (y == c).sum() / n for c in classes}
    slow = np.zeros((n, k))
    for i in range(n):
        logp = [
            -0.5 * (z[i] - mu[c]) @ np.linalg.solve(sw, z[i] - mu[c]) + math.log(prior[c])
            for c in classes
        ]
        top = max(logp)
        w = [math.exp(v - top) for v in logp]
        slow[i] = [v / sum(w) for v in w]
    np.testing.assert_allclose(slow, post, atol=1e-9)
    return out


@pytest.mark.parametrize("scale", [0.05, 3.0])  # shrinkage well above / at its 1e-10 floor
def test_ncti_parts_match_reference(scale):
    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 60)
    x = (rng.normal(size=(60, 20)) + 1.5 * rng.normal(size=(4, 20))[y]) * scale
    got = analysis.ncti_parts(x, y)
    want = ncti_reference(x, y)
    assert got == pytest.approx(want, rel=1e-8)


def test_combine_parts_normalises_over_the_model_set():
    parts = {
        "a": dict(seli=10.0, ncc=0.5, vc=2.0),
        "b": dict(seli=20.0, ncc=0.9, vc=1.0),
        "c": dict(seli=15.0, ncc=0.7, vc=4.0),
        "d": dict(seli=1.0, ncc=0.1),  # a missing part: left out of the set
    }
    got = analysis.combine_parts("ncti", parts)
    # by hand: (seli − 10)/10 + (ncc − 0.5)/0.4 − (vc − 1)/3
    assert got == pytest.approx({"a": 0 + 0 - 1 / 3, "b": 1 + 1 - 0, "c": 0.5 + 0.5 - 1})
    assert analysis.combine_parts("ncti", {"a": parts["a"]}) == {"a": 0.0}  # one model: ties


def test_score_features_rows_and_store(results):
    from harness import nc

    assert set(analysis.NC_METRICS) == set(nc.METRICS)
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 40)
    f = rng.normal(size=(40, 8)) + rng.normal(size=(3, 8))[y]
    theta = scipy.special.softmax(rng.normal(size=(40, 5)), axis=1)
    got = analysis.score_features(f, y, theta)
    assert got["logme"] == pytest.approx(analysis.logme(f, y))
    assert got["leep"] == pytest.approx(analysis.leep(theta, y))
    parts = analysis.ncti_parts(f, y)
    assert {k: got[f"ncti_{k}"] for k in parts} == pytest.approx(parts)
    assert got["nc1"] == pytest.approx(nc.nc_metrics(f, y)["nc1"])
    assert "leep" not in analysis.score_features(f, y, names=["logme", "leep"][:1])
    with pytest.raises(analysis.HarnessError, match="source_probs"):
        analysis.score_features(f, y, names=["leep"])

    rows = analysis.score_rows(f, y, theta, run_id="r1", dataset="mnist5k", arch="resnet")
    analysis.write_scores(rows, results)
    con = store.connect(results)
    try:
        back = con.execute(
            "SELECT score, part, value, n, wall_s FROM scores ORDER BY score, part"
        ).fetchall()
    finally:
        con.close()
    assert len(back) == len(got) and all(r[3] == 40 and r[4] >= 0 for r in back)
    assert {(s if p is None else f"{s}_{p}"): v for s, p, v, _, _ in back} == pytest.approx(got)


def test_rank_eval():
    scores = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 0.5}
    accs = {"a": 0.9, "b": 0.7, "c": 0.8, "d": 0.95, "e": 0.1}  # e has no score: ignored
    ev = analysis.rank_eval(
        scores,
        accs,
        score_cost={"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0},
        finetune_cost=dict.fromkeys("abcde", 10.0),
    )
    s, a = [scores[m] for m in "abcd"], [accs[m] for m in "abcd"]
    assert ev["weighted_tau"] == pytest.approx(scipy.stats.weightedtau(s, a).statistic)
    assert (ev["n"], ev["top1_model"], ev["best_model"], ev["top1_hit"]) == (4, "a", "d", False)
    assert ev["regret"] == pytest.approx(0.05)
    assert (ev["score_s"], ev["finetune_s"], ev["speedup"]) == (4.0, 40.0, 10.0)
    low = analysis.rank_eval(
        {"a": 0.1, "b": 2.0, "c": 1.0}, {"a": 0.9, "b": 0.5, "c": 0.7}, higher_is_better=False
    )
    assert low["top1_hit"] and low["weighted_tau"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# A store with known relations

ARCHS = {"resnet": 0.0, "vit": -0.05}
LAYERS = [f"stages.{j}" for j in range(4)]


def build_store(root, *, finetune: bool = True) -> dict[str, dict]:
    """Six runs per architecture. Source NC1 s; linear-probe accuracy 0.9 − 0.1·s + arch offset
    + noise (two seeds around it, and a worse lr and a smaller budget the selection must skip);
    downstream NC1 per layer d_j with Layer FT accuracy 0.95 − 0.05·d_j + noise (SCL: +0.01);
    full FT 0.97 − 0.04·d_last + noise; LogME and NCTI parts as functions of d_last."""
    rng = np.random.default_rng(0)
    truth: dict[str, dict] = {}
    pre, nc, ft, sc = [], [], [], []
    for arch, off in ARCHS.items():
        for i in range(6):
            rid = f"{arch}-{i}"
            s = float(rng.uniform(0.5, 3.0))
            lp = 0.9 - 0.1 * s + off + float(rng.normal(0, 0.03))
            down = np.sort(rng.uniform(0.2, 4.0, 4))[::-1]
            lay = [0.95 - 0.05 * d + float(rng.normal(0, 0.02)) for d in down]
            full = 0.97 - 0.04 * down[-1] + float(rng.normal(0, 0.02))
            parts = dict(
                seli=5 - down[-1] + rng.normal(0, 0.3),
                ncc=0.9 - 0.05 * down[-1] + rng.normal(0, 0.02),
                vc=1 + 0.1 * down[-1] + rng.normal(0, 0.05),
            )
            truth[rid] = dict(
                arch=arch,
                s=s,
                lp=lp,
                down=[float(d) for d in down],
                layer=lay,
                full=full,
                parts=parts,
            )
            ck = f"/ck/{rid}.pt"
            pre.append(
                dict(run_id=rid, arch=arch, dataset="fashion_mnist", loss="ce", augment="none",
                     head_depth=i % 3, epochs=3, train_acc=0.99, test_acc=0.9, checkpoint=ck, wall_s=10.0)
            )  # fmt: skip
            for j, layer in enumerate(LAYERS):
                for ds, v in (("fashion_mnist", s * (4 - j)), ("mnist5k", float(down[j]))):
                    for metric, variant, val in (("nc1", "pinv", v), ("nc1", "svd", 1.1 * v)):
                        nc.append(
                            dict(run_id=rid, checkpoint=ck, model=arch, dataset=ds, split="train",
                                 layer=layer, layer_index=j, depth_frac=(j + 1) / 4, metric=metric,
                                 variant=variant, value=val, n=500)
                        )  # fmt: skip
            base = dict(run_id=rid, checkpoint=ck, arch=arch, dataset="mnist5k", status="done",
                        epochs=5, weight_decay=0.0, total_params=1000, wall_s=3.0)  # fmt: skip

            def trial(method, layer, per_class, lr, seed, test, val, params, base=base, rid=rid):
                ft.append(
                    dict(base, trial_id=f"{rid}/{method}/{layer}/{per_class}/{lr}/{seed}",
                         method=method, layer=layer, per_class=per_class, lr=lr, seed=seed,
                         test_acc=test, val_acc=val, train_acc=1.0, trainable_params=params)
                )  # fmt: skip

            for per_class, shift in ((10, -0.1), (None, 0.0)):
                for seed, e in ((0, 0.002), (1, -0.002)):
                    trial(
                        "linear_probe", None, per_class, 0.1, seed, lp + shift + e, lp + shift, 10
                    )
                    trial("linear_probe", None, per_class, 0.01, seed, lp + 0.05, lp - 0.05, 10)
                trial("full", None, per_class, 0.01, 0, full + shift, full + shift, 1000)
                for j, layer in enumerate(LAYERS):
                    a = lay[j] + shift
                    trial("layer", layer, per_class, 0.01, 0, a, a, 100 + 10 * j)
                    trial("scl", layer, per_class, 0.01, 0, a + 0.01, a + 0.01, 110 + 10 * j)
            ft.append(dict(base, trial_id=f"{rid}/failed", method="full", status="failed"))
            sbase = dict(run_id=rid, checkpoint=ck, arch=arch, dataset="mnist5k", n=500)
            sc.append(dict(sbase, score="logme", value=-1.0 - 0.3 * down[-1], wall_s=0.5))
            sc += [
                dict(sbase, score="ncti", part=p, value=float(v), wall_s=0.1)
                for p, v in parts.items()
            ]
    store.append("pretrain", pre, root)
    store.append("nc", nc, root)
    if finetune:
        store.append("finetune", ft, root)
    store.append("scores", sc, root)
    return truth


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis") / "results"
    return root, build_store(root)


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_not_blank(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.std() > 0.01
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10


def by_arch(truth, key):
    return {a: [t[key] for t in truth.values() if t["arch"] == a] for a in ARCHS}


def test_correlate_cli_prints_the_numbers_and_plots(known, tmp_path):
    root, truth = known
    png = tmp_path / "scatter.png"
    r = subprocess.run(
        [HARNESS, "--results", str(root), "correlate", "--x", "source_nc1", "--y",
         "acc_linear_probe", "--by", "arch", "--bootstrap", "200", "--plot", str(png)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in r.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| group")
    }
    xs, ys = by_arch(truth, "s"), by_arch(truth, "lp")
    for arch in ARCHS:
        n, pearson, p, spearman = table[arch][:4]
        want = scipy.stats.pearsonr(xs[arch], ys[arch])
        assert n == "6"
        assert float(pearson.split()[0]) == pytest.approx(want.statistic, abs=6e-4)
        assert float(p) == pytest.approx(want.pvalue, rel=0.06)
        rho = scipy.stats.spearmanr(xs[arch], ys[arch]).statistic
        assert float(spearman.split()[0]) == pytest.approx(rho, abs=6e-4)
        slope = scipy.stats.linregress(xs[arch], ys[arch]).slope
        assert float(table[arch][-3]) == pytest.approx(slope, rel=1e-3)
    assert {"pooled (raw)", "pooled (z-scored per group)", "pooled (group fixed effect)"} <= set(
        table
    )
    assert_not_blank(png)


def test_correlate_json_equals_scipy_and_reproduces(known, capsys):
    root, truth = known
    args = ["--results", root, "correlate", "--x", "source_nc1", "--y", "acc_linear_probe",
            "--by", "arch", "--format", "json", "--bootstrap", "100", "--seed", "5"]  # fmt: skip
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    doc = json.loads(out)
    rows = {r["group"]: r for r in doc["rows"]}
    xs, ys = by_arch(truth, "s"), by_arch(truth, "lp")
    for arch in ARCHS:
        x, y = np.array(xs[arch]), np.array(ys[arch])
        r = rows[arch]
        assert r["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-9)
        assert r["kendall"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-9)
        assert r["weighted_tau"] == pytest.approx(scipy.stats.weightedtau(x, y).statistic, abs=1e-9)
        assert r["pearson_lo"] <= r["pearson"] <= r["pearson_hi"]
    # pooled with architecture as a fixed effect: OLS on arch-demeaned values
    dx = np.concatenate([np.array(xs[a]) - np.mean(xs[a]) for a in ARCHS])
    dy = np.concatenate([np.array(ys[a]) - np.mean(ys[a]) for a in ARCHS])
    assert rows["pooled (group fixed effect)"]["slope"] == pytest.approx(np.polyfit(dx, dy, 1)[0])
    assert rows["pooled (group fixed effect)"]["slope"] == pytest.approx(-0.1, abs=0.03)
    code, again, _ = run_cli(capsys, *args)
    assert again == out  # the seed reproduces the intervals


def test_correlate_layer_level_and_ncti(known):
    root, truth = known
    t = truth["resnet-2"]
    corr = analysis.correlate(
        "down_nc1",
        "acc_layer",
        by=["run_id"],
        level="layer",
        where="arch = 'resnet'",
        root=root,
        n_boot=0,
    )
    rows = {r["group"]: r for r in corr.rows}
    assert len([r for r in corr.rows if r["pooling"] == "group"]) == 6
    want = scipy.stats.pearsonr(t["down"], t["layer"]).statistic
    assert rows["resnet-2"]["n"] == 4 and rows["resnet-2"]["pearson"] == pytest.approx(want)
    # the layer level is chosen by itself when a layer column is named
    auto = analysis.correlate("depth_frac", "down_nc1", root=root, n_boot=0)
    assert auto.level == "layer" and auto.rows[0]["n"] == 48
    # NCTI is combined over the models being compared (here all 12 on mnist5k)
    corr = analysis.correlate("score_ncti", "acc_full", root=root, n_boot=0)
    ncti = analysis.combine_parts("ncti", {k: v["parts"] for k, v in truth.items()})
    runs = sorted(truth)
    want = scipy.stats.pearsonr([ncti[k] for k in runs], [truth[k]["full"] for k in runs])
    assert corr.rows[0]["pearson"] == pytest.approx(want.statistic)
    # per group: each architecture's models are their own set
    corr = analysis.correlate(
        "score_ncti", "acc_full", by=["arch"], root=root, n_boot=0, pool=False
    )
    vit = {k: v["parts"] for k, v in truth.items() if v["arch"] == "vit"}
    ncti = analysis.combine_parts("ncti", vit)
    want = scipy.stats.spearmanr(
        [ncti[k] for k in sorted(vit)], [truth[k]["full"] for k in sorted(vit)]
    )
    assert {r["group"]: r for r in corr.rows}["vit"]["spearman"] == pytest.approx(want.statistic)


def test_correlate_errors(known, capsys, tmp_path):
    root, _ = known
    base = ["--results", root, "correlate"]
    code, _, err = run_cli(capsys, *base, "--x", "nope", "--y", "acc_full")
    assert code == 2 and err.count("\n") == 1
    assert "'nope' is unknown" in err and "source_nc1" in err and "score_ncti" in err
    code, _, err = run_cli(capsys, *base, "--x", "arch", "--y", "acc_full")
    assert code == 2 and "not numeric" in err
    code, _, err = run_cli(capsys, *base, "--x", "down_nc1", "--y", "acc_full", "--by", "arch,zone")
    assert code == 2 and err.count("\n") == 1 and "'zone'" in err and "run_id" in err
    code, _, err = run_cli(
        capsys, *base, "--x", "down_nc1", "--y", "acc_full", "--where", "zone > 1"
    )
    assert code == 2 and err.count("\n") == 1 and "--where" in err and "zone" in err
    code, _, err = run_cli(
        capsys, *base, "--x", "down_nc1", "--y", "acc_full", "--where", "arch = 'x'"
    )
    assert code == 1 and err.count("\n") == 1 and "no rows match" in err
    empty = tmp_path / "empty"
    for cmd in (["correlate", "--x", "a", "--y", "b"], ["report", "--out", tmp_path / "r"]):
        code, _, err = run_cli(capsys, "--results", empty, *cmd)
        assert code == 1 and err == f"harness: no results under {empty}\n"


def test_report(known, tmp_path):
    root, truth = known
    out = tmp_path / "report"
    r = subprocess.run(
        [HARNESS, "--results", str(root), "report", "--out", str(out), "--bootstrap", "50"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    names = ["source_nc_vs_linear_probe", "downstream_nc_vs_accuracy",
             "layerwise_nc_vs_accuracy", "methods_vs_budget"]  # fmt: skip
    for name in names:
        assert_not_blank(out / f"{name}.png")
        assert f"]({name}.png)" in md  # the Markdown links its figures; the page embeds them
    assert page.count("data:image/png;base64,") >= len(names) and ".png'" not in page
    for name in [*names, "score_ranking", "layer_auto_gap"]:
        where = f"harness/analysis/sql/{name}.sql"
        assert where in md and where in page
        assert analysis.read_sql(name).strip() in md  # the SQL that produced the section
    # the shared CTEs are printed once, at the end, for the 8 queries that ran after them
    common = analysis.read_sql("common").strip()
    assert md.count(common) == 1
    assert md.index(common) > max(md.index(f"harness/analysis/sql/{name}.sql") for name in names)
    assert md.count("pretrain_one AS (") == 1 and page.count("pretrain_one AS (") == 1
    assert md.count("run after the [shared SQL](#shared-sql)") == 8
    assert "no data yet" not in md and md.count("```sql") == 9
    # the numbers: source NC1 vs linear probe, per architecture
    x, y = by_arch(truth, "s")["vit"], by_arch(truth, "lp")["vit"]
    row = next(line for line in md.splitlines() if line.startswith("| mnist5k / vit |"))
    assert f"{scipy.stats.pearsonr(x, y).statistic:.3f}" in row
    # budget table: linear probe at all data is the best-validation lr, seeds averaged
    lp = np.mean(by_arch(truth, "lp")["resnet"])
    row = next(
        line
        for line in md.splitlines()
        if line.startswith("| mnist5k | resnet | linear_probe | — |")
    )
    assert f"{lp:.4g}" in row


def test_saved_queries_run_as_printed(known):
    root, truth = known
    for name in analysis.SECTIONS:
        table = query.execute(analysis.load_sql(name), root)
        assert table.num_rows > 0, name
    # a query with CTEs of its own is merged behind the shared ones
    own = "-- note\nWITH t AS (SELECT run_id FROM pretrain_one)\nSELECT count(*) AS n FROM t"
    assert query.execute(analysis.with_common(own), root).to_pylist() == [{"n": 12}]
    got = query.execute(analysis.load_sql("source_nc_vs_linear_probe"), root).to_pylist()
    assert {r["run_id"]: r["acc_linear_probe"] for r in got} == pytest.approx(
        {k: v["lp"] for k, v in truth.items()}
    )


def test_ranking_rows(known):
    root, truth = known
    con = store.connect(root)
    try:
        recs = analysis.fetch_records(con, analysis.load_sql("score_ranking"))
    finally:
        con.close()
    rows = {(r["method"], r["score"]): r for r in analysis.ranking_rows(recs)}
    ev = rows["full", "ncti"]
    ncti = analysis.combine_parts("ncti", {k: v["parts"] for k, v in truth.items()})
    runs = sorted(truth)
    want = scipy.stats.weightedtau([ncti[k] for k in runs], [truth[k]["full"] for k in runs])
    assert ev["n"] == 12 and ev["weighted_tau"] == pytest.approx(want.statistic)
    assert ev["score_s"] == pytest.approx(12 * 0.3) and ev["finetune_s"] == pytest.approx(
        12 * 3 * 3
    )


def test_report_sections_without_data(tmp_path):
    root = tmp_path / "results"
    build_store(root, finetune=False)
    paths = analysis.write_report(root, tmp_path / "r", n_boot=0, findings=["first finding"])
    md = paths["markdown"].read_text()
    assert md.count("no data yet") == 4  # all but the NC1 curves need fine-tuning results
    assert "## 1. Findings" in md and "- first finding" in md
    assert [p.name for p in paths["figures"]] == ["layerwise_nc_vs_accuracy.png"]
