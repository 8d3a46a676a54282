"""Analysis: correlations of NC metrics with accuracy, transferability scores, plots and the report.

Four parts, each usable on its own:

* **Statistics** (``correlation_stats``, ``correlate_groups``): Pearson, Spearman, Kendall τ and
  weighted Kendall τ straight from ``scipy.stats`` with their p-values and seeded bootstrap
  percentile intervals, plus an OLS fit (``scipy.stats.linregress``). Grouped per architecture
  (or any columns) and pooled across groups three ways (``POOLINGS``).
* **Transferability scores** (``score_features`` / ``score_rows`` / ``write_scores``): LogME, LEEP,
  the three raw parts of NCTI and the NC metrics of pre-trained features on a downstream dataset,
  written to the ``scores`` table; ``combine_parts`` normalises NCTI over the model set being
  ranked and ``rank_eval`` scores a ranking against fine-tuned accuracy.
* **SQL** (``analysis/*.sql``, ``view_sql``, ``correlate``): the saved queries behind the report and
  one analysis view whose columns ``harness correlate`` resolves its metrics against.
* **Report** (``build_sections``, ``write_report``): Markdown + HTML with tables, PNG figures and the
  SQL behind each section.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats

from harness import store
from harness.errors import HarnessError
from harness.fileio import atomic_write_text

ANALYSIS_DIR = Path(__file__).resolve().parents[1] / "analysis"
MIN_POINTS = 3  # fewer points per group: correlations are reported as missing

# =============================================================================================
# Statistics


@dataclass(frozen=True)
class Statistic:
    """A correlation statistic: ``fn(x, y)`` returns scipy's result (statistic, pvalue)."""

    label: str
    fn: Callable[[np.ndarray, np.ndarray], Any]


CORRELATIONS: dict[str, Statistic] = {
    "pearson": Statistic("Pearson r", scipy.stats.pearsonr),
    "spearman": Statistic("Spearman ρ", scipy.stats.spearmanr),
    "kendall": Statistic("Kendall τ", scipy.stats.kendalltau),
    # hyperbolic weigher, ranks from both variables averaged (scipy's defaults); no p-value
    "weighted_tau": Statistic("weighted τ", scipy.stats.weightedtau),
}


def _zscore(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.full_like(x, np.nan)
    for k in np.unique(g):
        sel = g == k
        if sel.sum() >= 2 and np.ptp(x[sel]) > 0:
            out[sel] = scipy.stats.zscore(x[sel])
    return out


def _demean(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for k in np.unique(g):
        sel = g == k
        out[sel] = x[sel] - x[sel].mean()
    return out


@dataclass(frozen=True)
class Pooling:
    """One way to pool groups: ``fn(values, group_labels)`` transforms x and y alike."""

    label: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]


POOLINGS: dict[str, Pooling] = {
    # all points together, group differences included (the naive view)
    "raw": Pooling("pooled (raw)", lambda v, g: v),
    # x and y standardised within each group (scipy.stats.zscore, ddof=0), then pooled
    "zscore": Pooling("pooled (z-scored per group)", _zscore),
    # group as a fixed effect: x and y demeaned within each group; the OLS slope on the demeaned
    # values is the within (fixed-effects) estimator and R² the within R²
    "fixed_effect": Pooling("pooled (group fixed effect)", _demean),
}


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except (ValueError, FloatingPointError, ZeroDivisionError):
            return None


def correlation_stats(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, float]:
    """Every statistic of ``CORRELATIONS`` with its p-value and bootstrap interval, and OLS.

    Keys: ``n``; per statistic ``<name>``, ``<name>_p``, ``<name>_lo``, ``<name>_hi``; ``slope``,
    ``intercept``, ``r2`` (linregress: y = slope·x + intercept). The interval is the percentile
    interval of ``n_boot`` paired resamples drawn with ``numpy.random.default_rng(seed)``, each
    statistic recomputed by scipy on every resample; degenerate resamples (a constant variable)
    give NaN and are left out. Fewer than ``MIN_POINTS`` points: everything but ``n`` is NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    out: dict[str, float] = {"n": n}
    nan = float("nan")
    for name, stat in CORRELATIONS.items():
        r = _quiet(stat.fn, x, y) if n >= MIN_POINTS else None
        out[name] = float(r.statistic) if r is not None else nan
        out[f"{name}_p"] = float(r.pvalue) if r is not None else nan
    lo, hi = _bootstrap(x, y, n_boot, seed, ci) if n >= MIN_POINTS else ({}, {})
    for name in CORRELATIONS:
        out[f"{name}_lo"] = lo.get(name, nan)
        out[f"{name}_hi"] = hi.get(name, nan)
    fit = _quiet(scipy.stats.linregress, x, y) if n >= 2 else None
    out["slope"] = float(fit.slope) if fit is not None else nan
    out["intercept"] = float(fit.intercept) if fit is not None else nan
    out["r2"] = float(fit.rvalue**2) if fit is not None else nan
    return out


def _bootstrap(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, ci: float
) -> tuple[dict[str, float], dict[str, float]]:
    if n_boot <= 0:
        return {}, {}
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    vals = np.full((n_boot, len(CORRELATIONS)), np.nan)
    for b, i in enumerate(idx):
        xi, yi = x[i], y[i]
        if np.ptp(xi) == 0 or np.ptp(yi) == 0:
            continue  # every correlation of a constant variable is undefined
        for j, stat in enumerate(CORRELATIONS.values()):
            r = _quiet(stat.fn, xi, yi)
            vals[b, j] = r.statistic if r is not None else np.nan
    tail = 100 * (1 - ci) / 2
    lo, hi = {}, {}
    for j, name in enumerate(CORRELATIONS):
        col = vals[:, j][np.isfinite(vals[:, j])]
        if len(col):
            lo[name], hi[name] = (float(v) for v in np.percentile(col, [tail, 100 - tail]))
    return lo, hi


def correlate_groups(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    pool: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> list[dict[str, Any]]:
    """``correlation_stats`` per group (sorted by label), then, with two or more groups and
    ``pool``, one row per ``POOLINGS`` entry. Each row also has ``group`` and ``pooling``
    ('group' or a POOLINGS key). The bootstrap of a pooled row resamples the transformed points."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    g = np.asarray(["all"] * len(x) if groups is None else [str(v) for v in groups], dtype=object)
    kw = dict(n_boot=n_boot, seed=seed, ci=ci)
    rows = []
    labels = sorted(set(g))
    for label in labels:
        sel = g == label
        rows.append(dict(group=label, pooling="group", **correlation_stats(x[sel], y[sel], **kw)))
    if pool and len(labels) >= 2:
        for key, p in POOLINGS.items():
            px, py = p.fn(x, g), p.fn(y, g)
            ok = np.isfinite(px) & np.isfinite(py)
            rows.append(dict(group=p.label, pooling=key, **correlation_stats(px[ok], py[ok], **kw)))
    return rows


# =============================================================================================
# Tables (one structure, rendered as Markdown or HTML)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _fmt(v: Any, spec: str = ".4g") -> str:
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def correlation_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The Markdown/HTML table of ``correlate_groups`` rows: estimate [CI] and p per statistic."""
    cols = ["group", "n"]
    for name, stat in CORRELATIONS.items():
        cols.append(f"{stat.label} [CI]")
        if name != "weighted_tau":
            cols.append("p")
    cols += ["slope", "intercept", "R²"]
    out = []
    for r in rows:
        cells = [str(r["group"]), str(r["n"])]
        for name in CORRELATIONS:
            est = _fmt(r[name], ".3f")
            if not _missing(r[f"{name}_lo"]):
                est += f" [{r[f'{name}_lo']:.3f}, {r[f'{name}_hi']:.3f}]"
            cells.append(est)
            if name != "weighted_tau":
                cells.append(_fmt(r[f"{name}_p"], ".2g"))
        cells += [_fmt(r["slope"]), _fmt(r["intercept"]), _fmt(r["r2"], ".3f")]
        out.append(cells)
    return Table(cols, out)


def records_table(
    records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Table:
    """A table of plain records (the rows of a SQL query)."""
    cols = list(columns or (records[0].keys() if records else []))
    return Table(cols, [[_fmt(r.get(c)) for c in cols] for r in records])


# =============================================================================================
# Transferability scores


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
    so L is the exact log marginal likelihood also when D > N; the iteration runs to convergence
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


@dataclass(frozen=True)
class Score:
    """A transferability score: ``fn(features, labels, source_probs)``.

    ``fn`` returns a float, or a dict: the raw parts of one score when ``parts`` maps each part to
    its sign in the combined score, else several independent scores (a family)."""

    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float | dict[str, float]]
    higher_is_better: bool = True
    needs_source: bool = False
    parts: Mapping[str, float] | None = None


SCORES: dict[str, Score] = {
    "logme": Score(lambda f, y, p: logme(f, y)),
    "leep": Score(lambda f, y, p: leep(p, y), needs_source=True),
    "ncti": Score(lambda f, y, p: ncti_parts(f, y), parts={"seli": 1.0, "ncc": 1.0, "vc": -1.0}),
    "nc": Score(lambda f, y, p: nc_scores(f, y)),  # family: nc1, nc1_svd, cdnv, nc2_*, ncc_acc, ...
}
# harness.nc.METRICS, spelled out because importing harness.nc loads torch (a test keeps them
# equal). All but ncc_acc measure the distance from collapse: lower should predict better transfer.
NC_METRICS = (
    "nc1", "nc1_svd", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf",
    "nc3", "nc4", "ncc_acc",
)  # fmt: skip


def higher_is_better(score: str) -> bool:
    """Whether a larger value of ``score`` should predict a better model (unknown: True)."""
    if score in SCORES:
        return SCORES[score].higher_is_better
    if score in NC_METRICS:
        return score == "ncc_acc"
    return True


def _evaluate(
    features: Any, labels: Any, source_probs: Any, names: Sequence[str] | None
) -> list[tuple[str, str | None, float, float]]:
    """(score, part, value, wall_s) for every requested score; a computation that yields several
    values splits its wall time evenly between them, so wall_s sums to the cost of scoring."""
    unknown = [s for s in names or () if s not in SCORES]
    if unknown:
        raise HarnessError(f"unknown score {unknown[0]!r}; scores: {', '.join(SCORES)}")
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
        value = spec.fn(f, labels, source_probs)
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
    return [
        dict(
            run_id=run_id,
            checkpoint=checkpoint,
            arch=arch,
            dataset=dataset,
            layer=layer,
            score=s,
            part=p,
            value=v,
            n=n,
            wall_s=w,
        )
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
        (m for m in scores if m in accs and not _missing(scores[m]) and not _missing(accs[m])),
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
        out[key] = float(sum(v for v in vals if not _missing(v))) if vals else float("nan")
    out["speedup"] = (
        out["finetune_s"] / out["score_s"]
        if out["score_s"] and out["score_s"] > 0
        else float("nan")
    )
    return out


# =============================================================================================
# SQL: saved queries and the analysis view

_WITH = re.compile(r"^\s*WITH\b", re.IGNORECASE)


def read_sql(name: str) -> str:
    """The text of ``analysis/<name>.sql``."""
    path = ANALYSIS_DIR / f"{name}.sql"
    if not path.is_file():
        have = sorted(p.stem for p in ANALYSIS_DIR.glob("*.sql"))
        raise HarnessError(f"no saved query {name!r} in {ANALYSIS_DIR}; queries: {', '.join(have)}")
    return path.read_text()


def with_common(body: str) -> str:
    """``body`` (a query, with or without its own CTEs) preceded by the CTEs of
    ``analysis/common.sql``: a complete query that runs as is with ``harness query``."""
    lines = body.strip().splitlines()
    head = 0
    while head < len(lines) and (not lines[head].strip() or lines[head].lstrip().startswith("--")):
        head += 1
    comments, rest = "\n".join(lines[:head]), "\n".join(lines[head:])
    common = read_sql("common").strip()
    if _WITH.match(rest):
        rest = _WITH.sub(",", rest, count=1)
    text = f"WITH\n{common}\n{rest}"
    return f"{comments}\n{text}" if comments else text


def load_sql(name: str) -> str:
    """A saved query of ``analysis/`` with the shared CTEs in front (see ``with_common``)."""
    return with_common(read_sql(name))


def _db_error(e: Exception) -> str:
    """A DuckDB error as one line, without its echo of the (long, generated) query."""
    return " ".join(str(e).split("\nLINE ")[0].split())


def _fetch(con: Any, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    import duckdb

    try:
        cur = con.execute(sql, params or [])
    except duckdb.Error as e:
        raise HarnessError(_db_error(e)) from None
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _ident(name: Any) -> str:
    return re.sub(r"[^0-9a-z_]+", "_", str(name).lower()).strip("_") or "x"


def _lit(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _pivot(agg: str, key: str, names: Iterable[Any], prefix: str) -> list[tuple[str, str]]:
    """(column, expression) pairs: ``agg`` filtered to each name of column ``key``."""
    return [(f"{prefix}{_ident(n)}", f"{agg} FILTER (WHERE {key} = {_lit(n)})") for n in names]


LEVELS = ("model", "layer")
LAYER_COLUMNS = ("layer", "layer_index", "depth_frac")
ACC_METHODS = ("linear_probe", "full", "layer", "scl")  # always offered as acc_<method>


def view_sql(con: Any, level: str = "model", split: str = "train") -> str:
    """The analysis view: one query whose columns ``harness correlate`` resolves names against.

    ``level='model'``: one row per (run_id, dataset) with dataset the downstream dataset (runs
    with nothing downstream yet: one row with dataset NULL). Columns: run_id, dataset, arch,
    source (pre-training dataset), loss, augment, head_depth, epochs, source_train_acc,
    source_test_acc; ``source_<m>`` and ``down_<m>`` for every NC metric m measured (penultimate
    layer, ``split``; source = on the pre-training dataset, down = on the downstream dataset);
    ``acc_<method>`` (common.sql's ft_best: best-validation configuration at the largest budget,
    over layers for layer/scl); ``score_<s>`` for model-level scores and ``score_<s>_<part>`` for
    the raw parts of multi-part scores (NCTI).

    ``level='layer'``: one row per (run_id, dataset, layer) with layer_index and depth_frac, the
    NC metrics of that layer (``down_<m>``, and ``source_<m>`` of the same layer), ``acc_layer``
    / ``acc_scl`` fine-tuning that layer (ft_best_layer), the model-level ``acc_linear_probe`` /
    ``acc_full``, and scores written for that layer."""
    if level not in LEVELS:
        raise HarnessError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")

    def side(which: str) -> str:
        return f"WHERE side = {_lit(which)} AND split = {_lit(split)}"

    # columns always offered (so that "no data yet" reads as no rows, not as an unknown name),
    # plus whatever the store holds
    measured = _fetch(con, with_common("SELECT DISTINCT metric FROM nc_named"))
    metrics = sorted({"nc1", *(r["metric"] for r in measured)})
    nc_src = _pivot("max(value)", "metric", metrics, "source_")
    nc_down = _pivot("max(value)", "metric", metrics, "down_")
    layered = level == "layer"
    layer_cond = "layer IS NOT NULL" if layered else "layer IS NULL"
    stored = _fetch(con, f"SELECT DISTINCT score, part FROM scores WHERE {layer_cond}")
    offered = {(n, p) for n, s in SCORES.items() if n != "nc" for p in (s.parts or [None])}
    score_keys = [
        dict(score=n, part=p)
        for n, p in sorted(offered | {(r["score"], r["part"]) for r in stored}, key=str)
    ]
    sc_cols = [
        (
            f"score_{_ident(r['score'])}"
            + (f"_{_ident(r['part'])}" if r["part"] is not None else ""),
            f"avg(value) FILTER (WHERE score = {_lit(r['score'])} AND part "
            + ("IS NULL" if r["part"] is None else f"= {_lit(r['part'])}")
            + ")",
        )
        for r in score_keys
    ]
    done = [
        r["method"]
        for r in _fetch(con, "SELECT DISTINCT method FROM finetune WHERE status = 'done'")
    ]
    methods = list(dict.fromkeys([*ACC_METHODS, *sorted(done)]))

    ctes: list[str] = []
    joins: list[str] = []
    cols: list[str] = []

    def part(name: str, body: str, pivots: list[tuple[str, str]], keys: Sequence[str]) -> None:
        if not pivots:
            return
        sel = ", ".join([*keys, *(f"{e} AS {c}" for c, e in pivots)])
        ctes.append(f"{name} AS (SELECT {sel} FROM {body} GROUP BY {', '.join(keys)})")
        joins.append(
            f"LEFT JOIN {name} ON "
            + " AND ".join(f"{name}.{k} IS NOT DISTINCT FROM k.{k}" for k in keys)
        )
        cols.extend(f"{name}.{c}" for c, _ in pivots)

    if layered:
        layer_methods = {
            r["method"]
            for r in _fetch(con, with_common("SELECT DISTINCT method FROM ft_best_layer"))
        } | {"layer", "scl"}
        ctes.append(
            "k AS (SELECT run_id, dataset, layer FROM nc_named "
            + side("down")
            + " UNION SELECT run_id, dataset, layer FROM ft_best_layer"
            " UNION SELECT run_id, dataset, layer FROM scores WHERE layer IS NOT NULL)"
        )
        ctes.append(
            "pos AS (SELECT run_id, dataset, layer, max(layer_index) AS layer_index, "
            "max(depth_frac) AS depth_frac FROM nc_named " + side("down") + " GROUP BY ALL)"
        )
        joins.append(
            "LEFT JOIN pos ON pos.run_id = k.run_id AND pos.dataset = k.dataset AND pos.layer = k.layer"
        )
        cols += ["pos.layer_index", "pos.depth_frac"]
        part("src", f"nc_named {side('source')}", nc_src, ["run_id", "layer"])
        part("down", f"nc_named {side('down')}", nc_down, ["run_id", "dataset", "layer"])
        part(
            "lacc",
            "ft_best_layer",
            _pivot("max(test_acc)", "method", [m for m in methods if m in layer_methods], "acc_"),
            ["run_id", "dataset", "layer"],
        )
        part(
            "macc",
            "ft_best WHERE layer IS NULL",
            _pivot(
                "max(test_acc)", "method", [m for m in methods if m not in layer_methods], "acc_"
            ),
            ["run_id", "dataset"],
        )
        part("sc", "scores WHERE layer IS NOT NULL", sc_cols, ["run_id", "dataset", "layer"])
        key_cols = ["k.run_id", "k.dataset", "k.layer"]
    else:
        ctes.append(
            "pairs AS (SELECT run_id, dataset FROM ft_best"
            " UNION SELECT run_id, dataset FROM nc_named "
            + side("down")
            + " UNION SELECT run_id, dataset FROM scores WHERE layer IS NULL),\n"
            "k AS (SELECT run_id, dataset FROM pairs UNION ALL SELECT run_id, NULL FROM pretrain_one"
            " WHERE run_id NOT IN (SELECT run_id FROM pairs))"
        )
        part("src", f"nc_pen {side('source')}", nc_src, ["run_id"])
        part("down", f"nc_pen {side('down')}", nc_down, ["run_id", "dataset"])
        part(
            "acc",
            "ft_best",
            _pivot("max(test_acc)", "method", methods, "acc_"),
            ["run_id", "dataset"],
        )
        part("sc", "scores WHERE layer IS NULL", sc_cols, ["run_id", "dataset"])
        key_cols = ["k.run_id", "k.dataset"]
    head = [
        *key_cols,
        "ra.arch",
        "p.dataset AS source",
        "p.loss",
        "p.augment",
        "p.head_depth",
        "p.epochs",
        "p.train_acc AS source_train_acc",
        "p.test_acc AS source_test_acc",
    ]
    return with_common(
        "WITH " + ",\n".join(ctes) + f"\nSELECT {', '.join(head + cols)}\nFROM k\n"
        "LEFT JOIN pretrain_one p ON p.run_id = k.run_id\n"
        "LEFT JOIN run_arch ra ON ra.run_id = k.run_id\n" + "\n".join(joins)
    )


_NUMERIC = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|DOUBLE|FLOAT|REAL|DECIMAL)", re.I)


def _virtual_scores(columns: Sequence[str]) -> dict[str, list[str]]:
    """Multi-part scores combined at query time: {``score_<name>``: its raw part columns}."""
    out = {}
    for name, spec in SCORES.items():
        if spec.parts:
            cols = [f"score_{name}_{p}" for p in spec.parts]
            if all(c in columns for c in cols):
                out[f"score_{name}"] = cols
    return out


def _group_label(row: Mapping[str, Any], by: Sequence[str]) -> str:
    return " / ".join("(none)" if row[b] is None else str(row[b]) for b in by) if by else "all"


def group_stats(
    records: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    by: Sequence[str] = (),
    *,
    pool: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``correlate_groups`` over query records (rows with a missing x or y are skipped), and
    the points of each group for plotting."""
    keep = [r for r in records if not _missing(r[x]) and not _missing(r[y])]
    xs = np.array([float(r[x]) for r in keep])
    ys = np.array([float(r[y]) for r in keep])
    labels = [_group_label(r, by) for r in keep]
    rows = correlate_groups(
        xs, ys, labels if by else None, pool=pool, n_boot=n_boot, seed=seed, ci=ci
    )
    lab = np.array(labels, dtype=object)
    points = {g: (xs[lab == g], ys[lab == g]) for g in sorted(set(labels))}
    return rows, points


@dataclass
class Correlation:
    """The result of ``correlate``: statistics rows (``correlate_groups``) and points per group."""

    x: str
    y: str
    by: list[str]
    level: str
    where: str | None
    rows: list[dict[str, Any]]
    points: dict[str, tuple[np.ndarray, np.ndarray]]

    def table(self) -> Table:
        return correlation_table(self.rows)

    def plot(self, path: str | os.PathLike) -> Path:
        fits = {r["group"]: r for r in self.rows if r["pooling"] == "group"}
        title = f"{self.y} vs {self.x}" + (f" by {', '.join(self.by)}" if self.by else "")
        return scatter_plot(self.points, fits, path, xlabel=self.x, ylabel=self.y, title=title)


def correlate(
    x: str,
    y: str,
    *,
    by: Sequence[str] = (),
    where: str | None = None,
    level: str | None = None,
    split: str = "train",
    root: str | os.PathLike | None = None,
    pool: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Correlation:
    """Correlate two columns of the analysis view (``view_sql``) per group of ``by`` columns.

    ``level`` defaults to 'layer' when x, y or ``by`` names a layer column (layer, layer_index,
    depth_frac), else 'model'. ``where`` (SQL over the view's columns) selects the rows first.
    Multi-part scores (``score_ncti``) are then combined over each set of models being compared:
    the rows of one downstream dataset and ``by`` group that have both values. Raises
    HarnessError: unknown names (code 2, listing what exists), no matching rows (code 1)."""
    import duckdb

    if not 0 < ci < 1:
        raise HarnessError(f"--ci must lie strictly between 0 and 1, got {ci}")
    base = store.results_root(root)
    if not store.has_results(base):
        raise HarnessError(f"no results under {base}", code=1)
    by = [b.strip() for b in by if b and b.strip()]
    if level is None:
        level = "layer" if {x, y, *by} & set(LAYER_COLUMNS) else "model"
    con = store.connect(base)
    try:
        view = view_sql(con, level, split)
        rel = con.sql(f"SELECT * FROM ({view}) v LIMIT 0")
        columns = list(rel.columns)
        numeric = [c for c, t in zip(columns, rel.types, strict=True) if _NUMERIC.match(str(t))]
        virtual = _virtual_scores(columns)
        metrics = numeric + sorted(virtual)
        for name in (x, y):
            if name not in metrics:
                what = "is not numeric" if name in columns else "is unknown"
                raise HarnessError(
                    f"metric {name!r} {what} at level {level}; metrics: {', '.join(metrics)}"
                )
        for b in by:
            if b not in columns:
                raise HarnessError(
                    f"--by column {b!r} is unknown at level {level}; columns: {', '.join(columns)}"
                )
        keys = ["run_id", "dataset", "layer"] if level == "layer" else ["run_id", "dataset"]
        need = list(dict.fromkeys([*by, *keys, *virtual.get(x, [x]), *virtual.get(y, [y])]))
        sql = (
            f"SELECT {', '.join(need)} FROM ({view}) v"
            + (f" WHERE {where}" if where else "")
            + f" ORDER BY {', '.join(keys)}"  # a fixed order: bootstrap draws index rows
        )
        try:
            cur = con.execute(sql)
        except duckdb.Error as e:
            raise HarnessError(f"--where: {_db_error(e)}; columns: {', '.join(columns)}") from None
        names = [d[0] for d in cur.description]
        records = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()

    for col, parts in virtual.items():
        if col not in (x, y):
            continue
        other = y if col == x else x
        usable = [
            r
            for r in records
            if all(not _missing(r[p]) for p in parts)
            and not _missing(r.get(other) if other not in virtual else 0.0)
        ]
        sets: dict[tuple, list[int]] = {}
        for i, r in enumerate(usable):
            sets.setdefault((r["dataset"], *(r[b] for b in by)), []).append(i)
        name = col.removeprefix("score_")
        for members in sets.values():
            combined = combine_parts(
                name,
                {i: {p: usable[i][f"{col}_{p}"] for p in SCORES[name].parts} for i in members},
            )
            for i, v in combined.items():
                usable[i][col] = v
        records = [r for r in usable if col in r]

    rows, points = group_stats(records, x, y, by, pool=pool, n_boot=n_boot, seed=seed, ci=ci)
    if not sum(len(p[0]) for p in points.values()):
        cond = f" where {where}" if where else ""
        raise HarnessError(
            f"no rows match: no {level}-level row{cond} has both {x} and {y}", code=1
        )
    return Correlation(x, y, by, level, where, rows, points)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _json_value(v.item())
    return v


def run_correlate(
    x: str,
    y: str,
    *,
    by: Sequence[str] = (),
    where: str | None = None,
    level: str | None = None,
    split: str = "train",
    plot: str | os.PathLike | None = None,
    fmt: str = "markdown",
    root: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    out: Any = None,
) -> int:
    """`harness correlate`: print the statistics (Markdown table or JSON), draw the scatter."""
    import json
    import sys

    out = out or sys.stdout
    corr = correlate(
        x,
        y,
        by=by,
        where=where,
        level=level,
        split=split,
        root=root,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
    )
    if fmt == "json":
        doc = dict(
            x=x,
            y=y,
            by=corr.by,
            level=corr.level,
            where=where,
            ci=ci,
            n_boot=n_boot,
            seed=seed,
            rows=[{k: _json_value(v) for k, v in r.items()} for r in corr.rows],
        )
        out.write(json.dumps(doc, indent=1) + "\n")
    elif fmt == "markdown":
        n = sum(len(p[0]) for p in corr.points.values())
        out.write(
            f"**{y} vs {x}** — level {corr.level}"
            + (f", by {', '.join(corr.by)}" if corr.by else "")
            + (f", where {where}" if where else "")
            + f"; {n} points; {ci:.0%} bootstrap intervals ({n_boot} resamples, seed {seed})\n\n"
        )
        out.write(corr.table().markdown())
    else:
        raise HarnessError(f"unknown format {fmt!r}; formats: markdown, json")
    if plot:
        path = corr.plot(plot)
        print(f"wrote {path}", file=sys.stderr)
    return 0


# =============================================================================================
# Plots (matplotlib, Agg backend, imported only when drawing)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def scatter_plot(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    fits: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """One colour per group: its points and its OLS line over the group's x range."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, (label, (xs, ys)) in enumerate(sorted(points.items())):
        color = cmap(i % 10)
        fit = fits.get(label, {})
        text = f"{label} (n={len(xs)}" + (
            f", r={fit['pearson']:.2f})" if not _missing(fit.get("pearson")) else ")"
        )
        ax.scatter(xs, ys, color=color, s=26, alpha=0.85, label=text)
        if not _missing(fit.get("slope")) and len(xs) >= 2 and np.ptp(xs) > 0:
            gx = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(gx, fit["slope"] * gx + fit["intercept"], color=color, lw=1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def layer_plot(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Left: downstream NC1 across depth, one colour per model. Right: the accuracy of
    fine-tuning each layer across depth, same colours (Layer FT solid, SCL FT dashed)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    models = sorted({(r["dataset"], r["arch"] or "", r["run_id"]) for r in records})
    several = len({m[0] for m in models}) > 1
    styles = {"layer": "-", "scl": "--"}
    methods: set[str] = set()
    for i, (ds, arch, run) in enumerate(models):
        color = cmap(i % 10)
        mine = [
            r for r in records if (r["dataset"], r["arch"] or "", r["run_id"]) == (ds, arch, run)
        ]
        nc = sorted({(r["depth_frac"], r["down_nc1"]) for r in mine})
        label = f"{arch} {run[:8]}" + (f" ({ds})" if several else "")
        left.plot([d for d, _ in nc], [v for _, v in nc], "o-", color=color, label=label)
        for method in sorted({r["method"] for r in mine if r["method"]}):
            methods.add(method)
            acc = sorted(
                (r["depth_frac"], r["acc"])
                for r in mine
                if r["method"] == method and not _missing(r["acc"])
            )
            right.plot(
                [d for d, _ in acc],
                [v for _, v in acc],
                "o",
                ls=styles.get(method, ":"),
                color=color,
            )
    if all(r["down_nc1"] > 0 for r in records):
        left.set_yscale("log")
    left.set(xlabel="depth fraction", ylabel="downstream NC1", title="NC1 across layers")
    right.set(
        xlabel="depth fraction of the fine-tuned layer",
        ylabel="test accuracy",
        title="Layer / SCL fine-tuning",
    )
    if len(models) <= 12:
        left.legend(fontsize=7)
    if methods:
        handles = [
            Line2D([], [], color="k", ls=styles.get(m, ":"), label=m) for m in sorted(methods)
        ]
        right.legend(handles=handles, fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def budget_plot(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Left: accuracy against samples per class, one line per method (and dataset, arch).
    Right: accuracy against trainable parameters at the largest budget (log scale)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    known = [r["per_class"] for r in records if r["per_class"] is not None]
    full = 2 * max(known) if known else 1  # where "all data" is drawn
    lines = sorted({(r["dataset"], r["arch"] or "", r["method"]) for r in records})
    methods = sorted({m for _, _, m in lines})
    markers = "os^Dv<>P*X"
    multi = len({(d, a) for d, a, _ in lines}) > 1
    for ds, arch, method in lines:
        mine = [
            r for r in records if (r["dataset"], r["arch"] or "", r["method"]) == (ds, arch, method)
        ]
        pts = sorted((full if r["per_class"] is None else r["per_class"], r["acc"]) for r in mine)
        color = cmap(methods.index(method) % 10)
        label = method + (f" ({arch}, {ds})" if multi else "")
        marker = markers[sorted({(d, a) for d, a, _ in lines}).index((ds, arch)) % len(markers)]
        left.plot([p for p, _ in pts], [a for _, a in pts], marker=marker, color=color, label=label)
        top = max(mine, key=lambda r: full if r["per_class"] is None else r["per_class"])
        if not _missing(top["trainable_params"]):
            right.scatter(
                top["trainable_params"], top["acc"], color=color, marker=marker, s=40, label=label
            )
    left.set_xscale("log")
    if known:
        ticks = sorted(set(known)) + [full]
        left.set_xticks(ticks, [str(t) for t in ticks[:-1]] + ["all"])
    left.set(xlabel="samples per class", ylabel="test accuracy", title="Accuracy vs data budget")
    right.set_xscale("log")
    right.set(
        xlabel="trainable parameters",
        ylabel="test accuracy",
        title="Accuracy vs trainable parameters",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


# =============================================================================================
# Report


@dataclass
class Section:
    """One part of the report. ``items`` are bullet points (e.g. findings); ``note`` replaces
    the content when there is no data yet; ``figures`` are file names inside the report folder."""

    key: str
    title: str
    intro: str = ""
    items: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    sql: str | None = None
    sql_name: str | None = None
    note: str | None = None


@dataclass
class ReportContext:
    con: Any
    out: Path
    n_boot: int = 1000
    seed: int = 0
    ci: float = 0.95

    def stats(
        self, records: Sequence[Mapping[str, Any]], x: str, y: str, by: Sequence[str], pool: bool
    ):
        return group_stats(
            records, x, y, by, pool=pool, n_boot=self.n_boot, seed=self.seed, ci=self.ci
        )


NO_DATA = "no data yet"


def _query_section(ctx: ReportContext, name: str, title: str, intro: str):
    """The section skeleton and the records of ``analysis/<name>.sql``."""
    sql = load_sql(name)
    return Section(name, title, intro, sql=sql, sql_name=f"analysis/{name}.sql"), _fetch(
        ctx.con, sql
    )


def _scatter_section(
    ctx: ReportContext,
    name: str,
    title: str,
    intro: str,
    x: str,
    y: str,
    by: Sequence[str],
    pool: bool,
) -> Section:
    sec, recs = _query_section(ctx, name, title, intro)
    rows, points = ctx.stats(recs, x, y, by, pool)
    if not rows:
        sec.note = NO_DATA
        return sec
    sec.tables.append(correlation_table(rows))
    fits = {r["group"]: r for r in rows if r["pooling"] == "group"}
    scatter_plot(points, fits, ctx.out / f"{name}.png", xlabel=x, ylabel=y, title=title)
    sec.figures.append(f"{name}.png")
    return sec


def _source_section(ctx: ReportContext) -> Section:
    return _scatter_section(
        ctx,
        "source_nc_vs_linear_probe",
        "Source NC1 vs linear-probe accuracy, per architecture",
        "Each point is a pre-training run: NC1 of its penultimate features on the pre-training "
        "data against the linear-probe accuracy on a downstream dataset. Per-architecture rows, "
        "then the architectures pooled three ways.",
        "source_nc1",
        "acc_linear_probe",
        ("dataset", "arch"),
        True,
    )


def _downstream_section(ctx: ReportContext) -> Section:
    return _scatter_section(
        ctx,
        "downstream_nc_vs_accuracy",
        "Downstream NC1 vs accuracy across models",
        "Each point is a model: NC1 of its penultimate features on the downstream training data "
        "against its accuracy with each fine-tuning method.",
        "down_nc1",
        "acc",
        ("dataset", "method"),
        False,
    )


def _layer_section(ctx: ReportContext) -> Section:
    sec, recs = _query_section(
        ctx,
        "layerwise_nc_vs_accuracy",
        "Layer-wise NC1 and accuracy",
        "Downstream NC1 of every layer of each model, and the accuracy of fine-tuning that layer "
        "(Layer FT) or that layer with a skip connection to the classifier (SCL FT). The table "
        "correlates NC1 with accuracy across the layers of each model.",
    )
    if not recs:
        sec.note = NO_DATA
        return sec
    rows, _ = ctx.stats(recs, "down_nc1", "acc", ("dataset", "arch", "run_id", "method"), True)
    if rows:
        sec.tables.append(correlation_table(rows))
    else:
        sec.intro += " No layer-wise fine-tuning results yet: NC1 curves only."
    layer_plot(recs, ctx.out / "layerwise_nc_vs_accuracy.png")
    sec.figures.append("layerwise_nc_vs_accuracy.png")
    return sec


BUDGET_COLUMNS = (
    "dataset", "arch", "method", "per_class", "runs", "acc", "acc_std",
    "trainable_params", "total_params", "trainable_frac", "wall_s",
)  # fmt: skip


def _budget_section(ctx: ReportContext) -> Section:
    sec, recs = _query_section(
        ctx,
        "methods_vs_budget",
        "Accuracy vs budget and trainable parameters, per method",
        "Mean test accuracy over pre-training runs (best-validation configuration per run) for "
        "each fine-tuning method and data budget (per_class: samples per class, — = all data).",
    )
    if not recs:
        sec.note = NO_DATA
        return sec
    sec.tables.append(records_table(recs, BUDGET_COLUMNS))
    budget_plot(recs, ctx.out / "methods_vs_budget.png")
    sec.figures.append("methods_vs_budget.png")
    return sec


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


RANKING_COLUMNS = (
    "dataset", "method", "score", "n", "weighted_tau", "top1_hit", "regret",
    "top1_model", "best_model", "score_s", "finetune_s", "speedup",
)  # fmt: skip


def _ranking_section(ctx: ReportContext) -> Section:
    sec, recs = _query_section(
        ctx,
        "score_ranking",
        "Transferability scores: ranking models without fine-tuning",
        "How well each score computed on the frozen features ranks the models by fine-tuned "
        "accuracy (weighted Kendall τ, whether the top-scored model is the best one, and the "
        "accuracy lost by picking it), and the seconds spent scoring vs fine-tuning.",
    )
    rows = ranking_rows(recs)
    if not rows:
        sec.note = NO_DATA
        return sec
    sec.tables.append(records_table(rows, RANKING_COLUMNS))
    return sec


SECTIONS: dict[str, Callable[[ReportContext], Section]] = {
    "source_nc_vs_linear_probe": _source_section,
    "downstream_nc_vs_accuracy": _downstream_section,
    "layerwise_nc_vs_accuracy": _layer_section,
    "methods_vs_budget": _budget_section,
    "score_ranking": _ranking_section,
}


def build_sections(ctx: ReportContext, names: Sequence[str] | None = None) -> list[Section]:
    """The report's sections in order (``SECTIONS``); callers may insert their own, e.g. findings
    at the front, before ``render_report``."""
    return [SECTIONS[n](ctx) for n in names or SECTIONS]


def render_markdown(sections: Sequence[Section], header: str = "") -> str:
    parts = ["# Neural collapse and transfer: report\n", header + "\n" if header else ""]
    for i, s in enumerate(sections, 1):
        parts.append(f"\n## {i}. {s.title}\n\n")
        if s.intro:
            parts.append(s.intro + "\n\n")
        parts += [f"- {item}\n" for item in s.items]
        if s.items:
            parts.append("\n")
        if s.note:
            parts.append(f"_{s.note}_\n\n")
        for t in s.tables:
            parts.append(t.markdown() + "\n")
        parts += [f"![{s.title}]({f})\n\n" for f in s.figures]
        if s.sql:
            parts.append(
                f"SQL (`{s.sql_name}`, after the shared CTEs of `analysis/common.sql`):\n\n"
            )
            parts.append(f"```sql\n{s.sql.strip()}\n```\n")
    return "".join(parts)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
    "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
    "th{background:#eee}td:first-child{text-align:left}img{max-width:100%}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:85%}"
)


def render_html(sections: Sequence[Section], header: str = "") -> str:
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>NC transfer report</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>Neural collapse and transfer: report</h1>\n"
    ]
    if header:
        parts.append(f"<p>{esc(header)}</p>\n")
    for i, s in enumerate(sections, 1):
        parts.append(f"<h2 id='{esc(s.key)}'>{i}. {esc(s.title)}</h2>\n")
        if s.intro:
            parts.append(f"<p>{esc(s.intro)}</p>\n")
        if s.items:
            parts.append("<ul>" + "".join(f"<li>{esc(it)}</li>" for it in s.items) + "</ul>\n")
        if s.note:
            parts.append(f"<p><em>{esc(s.note)}</em></p>\n")
        parts += [t.html() for t in s.tables]
        parts += [f"<p><img src='{esc(f)}' alt='{esc(s.title)}'></p>\n" for f in s.figures]
        if s.sql:
            parts.append(
                f"<details><summary>SQL ({esc(s.sql_name or '')})</summary>"
                f"<pre><code>{esc(s.sql.strip())}</code></pre></details>\n"
            )
    parts.append("</body></html>\n")
    return "".join(parts)


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


DEFAULT_REPORT_DIR = Path("reports") / "latest"


def write_report(
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    findings: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNG figures to ``out`` (default
    ./reports/latest). ``findings`` become a first section of bullet points. Returns the paths
    ({'markdown', 'html', 'figures'}). An empty store: HarnessError (code 1)."""
    import datetime as dt

    base = store.results_root(root)
    if not store.has_results(base):
        raise HarnessError(f"no results under {base}", code=1)
    out = Path(out) if out else DEFAULT_REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    con = store.connect(base)
    try:
        sections = build_sections(ReportContext(con, out, n_boot=n_boot, seed=seed, ci=ci))
    finally:
        con.close()
    if findings:
        sections.insert(0, Section("findings", "Findings", items=list(findings)))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"Results: {base.resolve()} · generated {stamp} · correlation intervals: {ci:.0%} "
        f"bootstrap percentile, {n_boot} resamples, seed {seed}."
    )
    md, page = out / "report.md", out / "report.html"
    _write_text(md, render_markdown(sections, header))
    _write_text(page, render_html(sections, header))
    return dict(markdown=md, html=page, figures=[out / f for s in sections for f in s.figures])


def run_report(
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> int:
    """`harness report`: write the report and print where it went."""
    paths = write_report(root, out, n_boot=n_boot, seed=seed)
    print(f"wrote {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures)")
    return 0
