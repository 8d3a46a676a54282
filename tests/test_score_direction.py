"""Transferability scores rank a synthetic model zoo of known quality in the right direction.

Each "model" of the zoo is a feature distribution: K class means on a regular simplex with
separation s (the distance of each mean from the centre), embedded by a random rotation in D
dimensions, a common offset (real features are not centred), and unit Gaussian noise in all D
dimensions, so D − K dimensions carry no class information. A larger s makes a better model; the
"fine-tuned accuracy" of each model is measured, not assumed: the held-out accuracy of a
nearest-class-mean classifier fitted on the scored samples (the Bayes rule for this model up to
estimated means). LEEP gets the softmax of a source classifier fitted on an independent sample
whose source labels are a permutation of the classes.

The scores are ranked through ``ranking_rows`` (which applies ``higher_is_better`` and combines
NCTI's parts over the zoo) and must agree with the measured accuracies, for equal feature widths
and for widths that differ across the zoo (as between a tiny ResNet, D = 128, and a tiny ViT,
D = 64).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats

from harness.analysis import scores

K = 5  # downstream classes
N = 400  # scored samples per model (80 per class)
N_TEST = 2000  # held-out samples for the measured accuracy
SEPARATIONS = np.linspace(0.8, 3.2, 6)  # known order: larger separation = better model
SCORED = ("logme", "leep", "ncti", "nc1")


def _simplex(k: int) -> np.ndarray:
    """k unit vectors in R^k pointing to the vertices of a regular simplex centred at 0."""
    m = np.eye(k) - 1.0 / k
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _ncm_fit(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([f[y == c].mean(0) for c in range(K)])


def _sq_dist(f: np.ndarray, means: np.ndarray) -> np.ndarray:
    return (f**2).sum(1)[:, None] - 2 * f @ means.T + (means**2).sum(1)[None]


def _model(rng: np.random.Generator, sep: float, width: int) -> dict:
    rot, _ = np.linalg.qr(rng.standard_normal((width, width)))
    means = sep * _simplex(K) @ rot[:, :K].T + 3.0 * rot[:, K]  # + an offset off the class span

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % K
        return means[y] + rng.standard_normal((n, width)), y

    f, y = draw(N)
    f_test, y_test = draw(N_TEST)
    centres = _ncm_fit(f, y)
    acc = float((_sq_dist(f_test, centres).argmin(1) == y_test).mean())
    # source classifier: Gaussian class posteriors fitted on an independent sample whose labels
    # are the downstream classes under a permutation (LEEP must not rely on their identity)
    f_src, y_src = draw(N)
    z = rng.permutation(K)[y_src]
    src_means = _ncm_fit(f_src, z)
    var = float(((f_src - src_means[z]) ** 2).mean())
    probs = scipy.special.softmax(-_sq_dist(f, src_means) / (2 * var), axis=1)
    return dict(features=f, labels=y, source_probs=probs, acc=acc)


def _zoo(seed: int, widths: list[int]) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {
        f"m{i}_d{w}": _model(rng, s, w)
        for i, (s, w) in enumerate(zip(SEPARATIONS, widths, strict=True))
    }


def _records(zoo: dict[str, dict]) -> list[dict]:
    """score_ranking.sql-style records: one per (model, score[, part])."""
    recs = []
    for run_id, m in zoo.items():
        for r in scores.score_rows(
            m["features"], m["labels"], m["source_probs"], run_id=run_id, dataset="zoo"
        ):
            if r["score"] in SCORED:
                recs.append(
                    dict(r, method="linear", acc=m["acc"], finetune_s=1.0, score_s=r["wall_s"])
                )
    return recs


WIDTHS = {"equal": [64] * len(SEPARATIONS), "mixed": [64, 128] * (len(SEPARATIONS) // 2)}


@pytest.fixture(scope="module", params=sorted(WIDTHS))
def zoo(request) -> tuple[str, dict[str, dict], list[dict], dict[str, dict]]:
    z = _zoo(7, WIDTHS[request.param])
    recs = _records(z)
    rows = {r["score"]: r for r in scores.ranking_rows(recs)}
    return request.param, z, recs, rows


def test_zoo_has_the_known_order(zoo):
    """The measured accuracies follow the separations, and spread widely enough to rank."""
    _, z, _, _ = zoo
    acc = [m["acc"] for m in z.values()]
    assert scipy.stats.spearmanr(SEPARATIONS, acc).statistic >= 0.9
    assert acc[-1] - acc[0] > 0.3


def test_scores_rank_the_zoo_in_the_right_direction(zoo):
    widths, z, _, rows = zoo
    assert set(rows) == set(SCORED)
    for score, row in rows.items():
        assert row["n"] == len(z)
        assert row["weighted_tau"] > 0.6, (widths, score, row["weighted_tau"])
        assert row["top1_hit"] or row["regret"] < 0.02, (widths, score, row)


def test_direction_is_not_symmetric(zoo):
    """The same values under the opposite sign convention rank the zoo backwards, so the test
    above checks ``higher_is_better`` and cannot pass for either sign."""
    widths, z, recs, _ = zoo
    acc = {m: v["acc"] for m, v in z.items()}
    for name in ("logme", "leep", "nc1"):
        vals = {r["run_id"]: r["value"] for r in recs if r["score"] == name}
        flipped = scores.rank_eval(vals, acc, higher_is_better=not scores.higher_is_better(name))
        assert flipped["weighted_tau"] < -0.6, (widths, name, flipped["weighted_tau"])


def test_logme_evidence_penalises_uninformative_width():
    """Exact LogME pays an Occam cost for dimensions that carry no class information: the same
    features padded with pure noise score lower, so mixed widths shift LogME between
    architectures even at equal class separation."""
    rng = np.random.default_rng(3)
    f, y = _model(rng, 2.0, 64)["features"], np.arange(N) % K
    padded = np.hstack([f, rng.standard_normal((N, 64))])
    drop = scores.logme(f, y) - scores.logme(padded, y)
    assert 0.01 < drop < 0.2


def test_logme_is_scale_invariant_when_d_exceeds_n():
    """With D > N the exact evidence keeps the (D − rank)·log α terms, so multiplying the
    features by a constant leaves it unchanged; the published code drops those terms and its
    value moves by (D − N)/(2N)·log c² per class."""
    rng = np.random.default_rng(4)
    y = np.arange(60) % K
    f = rng.standard_normal((60, 150)) + rng.standard_normal((K, 150))[y]
    base = scores.logme(f, y)
    for c in (0.01, 100.0):
        assert scores.logme(c * f, y) == pytest.approx(base, abs=1e-6)
