"""Transferability scores: LogME, LEEP, NCTI and the NC metrics of pre-trained features.

Each score rates a pre-trained model for a downstream dataset from its frozen features, without
fine-tuning (``SCORES``). ``score_features`` / ``score_rows`` / ``write_scores`` compute them and
write the ``scores`` table; ``combine_parts`` normalises a multi-part score (NCTI) over the model
set being ranked, and ``rank_eval`` / ``ranking_rows`` score a ranking against fine-tuned accuracy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats

from harness import store
from harness.analysis.stats import is_missing
from harness.errors import HarnessError
from harness.spec import registry
from harness.spec.registry import ScoreMeta


def _features(features: Any) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise HarnessError(f"features: expected a 2-D (N, D) array, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise HarnessError("features: NaN or inf values; features must be finite")
    return f


def _labels(labels: Any, n: int) -> tuple[np.ndarray, int]:
    """Labels as 0..C-1 (order of the sorted distinct labels) and C; needs two classes."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise HarnessError(f"labels: expected a 1-D array of {n} labels, got shape {y.shape}")
    classes, inv = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise HarnessError("labels: scores need at least two classes")
    return inv, len(classes)


def logme(features: Any, labels: Any, *, max_iter: int = 1000, tol: float = 1e-10) -> float:
    """LogME (You et al. 2021): mean over classes of the maximised log evidence / N.

    For each class c, the one-vs-rest target t ∈ {0,1}^N is modelled as Bayesian linear
    regression on the features F (N×D): w ~ N(0, α⁻¹I), t | F, w ~ N(Fw, β⁻¹I). The log evidence

        L(α, β) = D/2·log α + N/2·log β − ½·Σ_{i=1..D} log(α + β·σ_i)
                  − β/2·‖F·m − t‖² − α/2·‖m‖² − N/2·log 2π,

    with σ_i the eigenvalues of FᵀF (zero beyond its rank) and m = β(αI + βFᵀF)⁻¹Fᵀt, is
    maximised by the published fixed-point iteration (You et al., "Ranking and tuning pre-trained
    models", 2021): with F = U·diag(s)·Vᵀ, x = Uᵀt, λ = α/β,
    γ = Σ σ_i/(σ_i + λ), α ← γ/‖m‖², β ← (N − γ)/‖Fm − t‖², until λ changes by less than ``tol``
    (relative). Unlike the authors' code, zero eigenvalues beyond the rank keep their log α terms,
    so L is the exact log marginal likelihood also when D > N (there the authors' code reports
    this value plus (D − rank)/(2N)·log α per class, so its numbers are larger and change with
    the feature scale; this one does not); the iteration runs to convergence
    rather than at most 11 steps and without their 1e-5 guards. When the features span the
    targets exactly (rank N), the supremum is approached as β → ∞; the iteration then stops where
    floating point ends it and reports L there.
    """
    f = _features(features)
    y, k = _labels(labels, len(f))
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s[0] * max(n, d) * np.finfo(np.float64).eps if len(s) and s[0] > 0 else s > 0
    if not keep.any():
        raise HarnessError("features: all zero; LogME is undefined")
    u, sigma = u[:, keep], s[keep] ** 2
    rank = len(sigma)
    tiny = np.finfo(np.float64).tiny

    def fit_terms(lam: float, x2: np.ndarray, rest: float) -> tuple[float, float, float]:
        gamma = float((sigma / (sigma + lam)).sum())
        m2 = float((sigma * x2 / (sigma + lam) ** 2).sum())
        res2 = float((x2 * (lam / (sigma + lam)) ** 2).sum()) + rest
        return gamma, m2, res2

    total = 0.0
    for c in range(k):
        t = (y == c).astype(np.float64)
        x2 = (u.T @ t) ** 2
        rest = max(float(t @ t - x2.sum()), 0.0)  # the part of t outside the span of F
        alpha = beta = 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            gamma, m2, res2 = fit_terms(lam, x2, rest)
            a, b = gamma / max(m2, tiny), (n - gamma) / max(res2, tiny)
            if not (0 < a < math.inf and 0 < b < math.inf):
                break  # the supremum lies on the boundary (t fitted exactly: β → ∞)
            alpha, beta = a, b
            if abs(alpha / beta - lam) <= tol * lam:
                break
        _, m2, res2 = fit_terms(alpha / beta, x2, rest)  # m at the final (α, β)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * (np.log(alpha + beta * sigma).sum() + (d - rank) * math.log(alpha))
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi)
        )
        total += evidence / n
    return total / k


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP (Nguyen et al. 2020) from the source classifier's softmax outputs θ (N×Z).

    Empirical joint P̂(y, z) = (1/N)·Σ_{i: y_i = y} θ_i(z), marginal P̂(z) = Σ_y P̂(y, z),
    conditional P̂(y | z) = P̂(y, z)/P̂(z); LEEP = (1/N)·Σ_i log Σ_z P̂(y_i | z)·θ_i(z).
    Source classes with P̂(z) = 0 contribute nothing.
    """
    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all():
        raise HarnessError(f"source_probs: expected a finite 2-D (N, Z) array, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise HarnessError("source_probs: rows must be softmax probabilities (apply softmax)")
    y, k = _labels(labels, len(p))
    joint = np.zeros((k, p.shape[1]))
    np.add.at(joint, y, p)
    joint /= len(p)
    marginal = joint.sum(0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    return float(np.log((p * cond[y]).sum(1)).mean())


def _shrunk(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """(1 − s)·Σ + s·(tr Σ / d)·I, scikit-learn's ``shrunk_covariance``."""
    d = cov.shape[0]
    return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)


def ncti_parts(
    features: Any, labels: Any, *, pca_dim: int = 64, shrink_dims: int = 32
) -> dict[str, float]:
    """The three raw parts of NCTI (Wang et al., ICCV 2023), as in the authors' code.

    1. PCA: features centred and projected on their top k = min(``pca_dim``, N, D) principal
       directions (exact SVD); λ_j = s_j²/(N − 1) the explained variances.
    2. Shrinkage LDA (scikit-learn's ``eigen`` solver) with s = max(exp(−Σ_{j<``shrink_dims``}
       λ_j), 1e-10): priors π_c = N_c/N, S_W = shrunk(Σ_c π_c·Cov_c), S_T = shrunk(Cov),
       S_B = S_T − S_W (covariances with 1/N_c, 1/N; shrunk(Σ) = (1 − s)Σ + s·tr(Σ)/k·I);
       V = generalised eigenvectors of (S_B, S_W), descending, Vᵀ·S_W·V = I. Posteriors
       P(c | z) = softmax_c(zᵀ·S_W⁻¹·μ_c − ½·μ_cᵀ·S_W⁻¹·μ_c + log π_c).
    3. Parts:
       * ``seli`` (simplex-ETF / SELI geometry term, S_seli): ‖H − mean(H)‖_* with H = Z·V[:, :C−1]
         the LDA projection (nuclear norm);
       * ``ncc`` (nearest-centre classifier term, S_ncc): mean_i P(y_i | z_i);
       * ``vc`` (within-class variability term): log Σ_c ‖P_c‖_*, P_c the posterior rows of
         class c.
    ``combine_parts`` turns them into NCTI over a set of models: each part min-max normalised
    over the set, NCTI = seli + ncc − vc (the signs in ``SCORES['ncti'].parts``).

    Deviations from the authors' code: k is capped at N and D (their PCA needs 64 components),
    and the shrinkage solver is used throughout (their code switches to scikit-learn's unshrunk
    ``svd`` solver when s hits its 1e-10 floor, which scales the projection by √(N/(N − C))).
    """
    x = _features(features)
    y, k = _labels(labels, len(x))
    n = len(x)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    dim = min(pca_dim, len(s))
    z = xc @ vt[:dim].T
    shrinkage = max(math.exp(-float((s[:shrink_dims] ** 2).sum() / (n - 1))), 1e-10)

    counts = np.bincount(y, minlength=k).astype(np.float64)
    priors = counts / n
    means = np.zeros((k, dim))
    np.add.at(means, y, z)
    means /= counts[:, None]
    centred = z - means[y]
    s_w = _shrunk(centred.T @ centred / n, shrinkage)
    zc = z - z.mean(0)
    s_t = _shrunk(zc.T @ zc / n, shrinkage)
    evals, evecs = scipy.linalg.eigh(s_t - s_w, s_w)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    post = scipy.special.softmax(z @ coef.T + intercept, axis=1)

    low = z @ evecs[:, : min(k - 1, dim)]
    seli = float(np.linalg.norm(low - low.mean(0), "nuc"))
    ncc = float(post[np.arange(n), y].mean())
    vc = float(np.log(sum(np.linalg.norm(post[y == c], "nuc") for c in range(k))))
    return {"seli": seli, "ncc": ncc, "vc": vc}


def nc_scores(features: Any, labels: Any) -> dict[str, float]:
    """The NC metrics of the features on the downstream labels (``harness.nc.nc_metrics``)."""
    from harness import nc

    f = _features(features)
    y, k = _labels(labels, len(f))
    return nc.nc_metrics(f, y, num_classes=k)


# The scores of ``harness.spec.registry.SCORES`` by name, with their metadata. A score's
# function (the entry's target) is ``fn(features, labels)``, or ``fn(source_probs, labels)`` when
# it needs the source classifier; it returns a float, or a dict: the raw parts of one score when
# ``parts`` maps each part to its sign in the combined score, else several scores (a family).
SCORES: Mapping[str, ScoreMeta] = {e.name: e.meta for e in registry.SCORES.entries()}
NC_METRICS = registry.NC_METRICS.names()


def higher_is_better(score: str) -> bool:
    """Whether a larger value of ``score`` should predict a better model (unknown: True)."""
    if score in SCORES:
        return SCORES[score].higher_is_better
    if score in registry.NC_METRICS:
        return registry.NC_METRICS.meta(score).higher_is_better
    return True


def _evaluate(
    features: Any, labels: Any, source_probs: Any, names: Sequence[str] | None
) -> list[tuple[str, str | None, float, float]]:
    """(score, part, value, wall_s) for every requested score; a computation that yields several
    values splits its wall time evenly between them, so wall_s sums to the cost of scoring."""
    unknown = [s for s in names or () if s not in SCORES]
    if unknown:
        raise HarnessError(registry.SCORES.unknown(unknown[0]))
    f = _features(features)
    _labels(labels, len(f))
    out = []
    for name in names or SCORES:
        spec = SCORES[name]
        if spec.needs_source and source_probs is None:
            if names:
                raise HarnessError(f"score {name!r} needs source_probs (source-classifier softmax)")
            continue
        t0 = time.perf_counter()
        fn = registry.SCORES.load(name)
        value = fn(source_probs, labels) if spec.needs_source else fn(f, labels)
        wall = time.perf_counter() - t0
        if isinstance(value, dict):
            items = [
                (name, k, v) if spec.parts else (k, None, v)
                for k, v in value.items()
                if math.isfinite(v)
            ]
        else:
            items = [(name, None, float(value))]
        out += [(s, p, float(v), wall / max(len(items), 1)) for s, p, v in items]
    return out


def score_features(
    features: Any,
    labels: Any,
    source_probs: Any = None,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Transferability scores of pre-trained ``features`` (N×D) for downstream ``labels``.

    ``source_probs`` (N×Z softmax outputs of the source classifier) enables LEEP. ``names``
    selects from ``SCORES`` (default: all that the inputs allow). Keys: ``logme``, ``leep``,
    ``ncti_seli``, ``ncti_ncc``, ``ncti_vc`` (raw parts; NCTI itself needs the model set, see
    ``combine_parts``) and the NC metrics (``nc1``, ``nc1_svd``, ``cdnv``, ``nc2_*``, ...)."""
    return {
        s if p is None else f"{s}_{p}": v
        for s, p, v, _ in _evaluate(features, labels, source_probs, names)
    }


compute_scores = score_features


def score_rows(
    features: Any,
    labels: Any,
    source_probs: Any = None,
    *,
    run_id: str,
    dataset: str,
    checkpoint: str | None = None,
    arch: str | None = None,
    layer: str | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``scores`` rows for one model's features on one downstream ``dataset``.

    ``run_id`` is the pre-training run of the checkpoint (as in ``finetune``); ``layer`` is None
    for the model's own (penultimate) features, which the model-level analyses use, or a layer
    name for layer-wise scores."""
    n = len(np.asarray(labels))
    ids = dict(run_id=run_id, checkpoint=checkpoint, arch=arch, dataset=dataset, layer=layer)
    return [
        dict(ids, score=s, part=p, value=v, n=n, wall_s=w)
        for s, p, v, w in _evaluate(features, labels, source_probs, names)
    ]


def write_scores(
    rows: Iterable[Mapping[str, Any]], root: str | os.PathLike | None = None
) -> Path | None:
    """Append score rows (``score_rows``) to the ``scores`` table as one part."""
    return store.append("scores", rows, root)


def combine_parts(score: str, parts: Mapping[Any, Mapping[str, float]]) -> dict[Any, float]:
    """Combine a multi-part score over the model set ``parts`` ({model: {part: value}}).

    Each part is min-max normalised over the models, (v − min)/(max − min) (0 when all models
    tie), and the normalised parts are summed with the signs of ``SCORES[score].parts``:
    NCTI = seli + ncc − vc. Models missing a part are left out. The result depends on the set,
    which is why the store keeps the raw parts."""
    spec = SCORES.get(score)
    if spec is None or not spec.parts:
        raise HarnessError(f"score {score!r} has no parts to combine")
    models = [
        m
        for m, v in parts.items()
        if all(p in v and v[p] is not None and math.isfinite(v[p]) for p in spec.parts)
    ]
    total = dict.fromkeys(models, 0.0)
    for part, sign in spec.parts.items():
        vals = np.array([parts[m][part] for m in models], dtype=np.float64)
        if not len(vals):
            break
        span = vals.max() - vals.min()
        norm = (vals - vals.min()) / span if span > 0 else np.zeros_like(vals)
        for m, v in zip(models, norm, strict=True):
            total[m] += sign * float(v)
    return total


def rank_eval(
    scores: Mapping[Any, float],
    accs: Mapping[Any, float],
    *,
    higher_is_better: bool = True,
    score_cost: Mapping[Any, float] | None = None,
    finetune_cost: Mapping[Any, float] | None = None,
) -> dict[str, Any]:
    """How well ``scores`` rank models by fine-tuned accuracy ``accs`` (models in both).

    ``weighted_tau``: scipy.stats.weightedtau(score, acc) (hyperbolic weights on the top ranks;
    a score where lower is better is negated first). ``top1_hit``: the top-scored model has the
    best accuracy; ``regret``: best accuracy − accuracy of the top-scored model. Costs: sums of
    ``score_cost`` / ``finetune_cost`` (wall seconds per model) over the ranked models, and their
    ratio ``speedup`` = fine-tuning / scoring."""
    models = sorted(
        (m for m in scores if m in accs and not is_missing(scores[m]) and not is_missing(accs[m])),
        key=str,
    )
    if len(models) < 2:
        raise HarnessError(
            f"ranking needs at least two models with a score and accuracy, got {len(models)}"
        )
    sign = 1.0 if higher_is_better else -1.0
    s = np.array([sign * scores[m] for m in models], dtype=np.float64)
    a = np.array([accs[m] for m in models], dtype=np.float64)
    pick = int(np.argmax(s))
    out: dict[str, Any] = dict(
        n=len(models),
        weighted_tau=float(scipy.stats.weightedtau(s, a).statistic),
        top1_hit=bool(a[pick] >= a.max()),
        top1_model=models[pick],
        best_model=models[int(np.argmax(a))],
        regret=float(a.max() - a[pick]),
    )
    for key, cost in (("score_s", score_cost), ("finetune_s", finetune_cost)):
        vals = [cost.get(m) for m in models] if cost is not None else []
        out[key] = float(sum(v for v in vals if not is_missing(v))) if vals else float("nan")
    out["speedup"] = (
        out["finetune_s"] / out["score_s"]
        if out["score_s"] and out["score_s"] > 0
        else float("nan")
    )
    return out


def ranking_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rank_eval`` per (dataset, method, score) over the records of score_ranking.sql; a
    multi-part score is combined (``combine_parts``) over the models of that dataset."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["score"]), []).append(r)
    out = []
    for (ds, method, score), recs in sorted(groups.items()):
        acc = {r["run_id"]: r["acc"] for r in recs}
        ft_cost = {r["run_id"]: r["finetune_s"] for r in recs}
        sc_cost: dict[str, float] = {}
        for r in recs:
            sc_cost[r["run_id"]] = sc_cost.get(r["run_id"], 0.0) + (r["score_s"] or 0.0)
        if any(r["part"] is not None for r in recs):
            parts: dict[str, dict[str, float]] = {}
            for r in recs:
                parts.setdefault(r["run_id"], {})[r["part"]] = r["value"]
            if score not in SCORES or not SCORES[score].parts:
                continue
            values = combine_parts(score, parts)
        else:
            values = {r["run_id"]: r["value"] for r in recs}
        try:
            ev = rank_eval(
                values,
                acc,
                higher_is_better=higher_is_better(score),
                score_cost=sc_cost,
                finetune_cost=ft_cost,
            )
        except HarnessError:
            continue  # fewer than two models
        out.append(dict(dataset=ds, method=method, score=score, **ev))
    return out
