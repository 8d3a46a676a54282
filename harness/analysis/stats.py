"""Statistics of the analysis: correlations with p-values, bootstrap intervals, OLS and pooling.

Pearson, Spearman, Kendall τ and weighted Kendall τ straight from ``scipy.stats`` with their
p-values and seeded bootstrap percentile intervals, plus an OLS fit (``scipy.stats.linregress``),
per group (architecture, or any columns) and pooled across groups three ways (``POOLINGS``).
Plain numpy/scipy, so that the report and ``harness correlate`` share one definition.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

MIN_POINTS = 3  # fewer points per group: correlations are reported as missing


def is_missing(v: Any) -> bool:
    """A value that counts as absent: None, NaN or infinite."""
    return v is None or (isinstance(v, float) and not math.isfinite(v))


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
    keep = [r for r in records if not is_missing(r[x]) and not is_missing(r[y])]
    xs = np.array([float(r[x]) for r in keep])
    ys = np.array([float(r[y]) for r in keep])
    labels = [_group_label(r, by) for r in keep]
    rows = correlate_groups(
        xs, ys, labels if by else None, pool=pool, n_boot=n_boot, seed=seed, ci=ci
    )
    lab = np.array(labels, dtype=object)
    points = {g: (xs[lab == g], ys[lab == g]) for g in sorted(set(labels))}
    return rows, points


# ---------------------------------------------------------------------------------------------
# Cluster bootstrap: the primary tests of the study's findings
#
# A pre-training run contributes several rows (one per downstream dataset, layer or trial);
# resampling rows treats them as independent and narrows the interval. The functions below
# resample whole units (``units``: one label per row) and recompute the statistic on every
# resample with its strata and fixed effects.


def label_codes(labels: Sequence[Any]) -> np.ndarray:
    """Integer codes of row labels (any hashable values, None included)."""
    index: dict[Any, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in labels], dtype=np.int64)


def _within(v: np.ndarray, g: np.ndarray, pooling: str) -> np.ndarray:
    """``v`` with the fixed effects ``g`` (integer codes) taken out as ``POOLINGS[pooling]``
    does: demeaned ('fixed_effect'), standardised ('zscore', NaN in groups of one or constant
    ones) or left as is ('raw'); vectorised with ``bincount``."""
    if pooling == "raw":
        return v
    n = np.bincount(g)
    mean = np.bincount(g, v) / np.maximum(n, 1)
    d = v - mean[g]
    if pooling == "fixed_effect":
        return d
    sd = np.sqrt(np.bincount(g, d * d) / np.maximum(n, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n[g] >= 2) & (sd[g] > 0), d / sd[g], np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ (average ranks for ties; equals ``scipy.stats.spearmanr``), NaN when either
    variable is constant."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def curvature(x: np.ndarray, y: np.ndarray) -> float:
    """The quadratic coefficient c of y = a + b·z + c·z² with z the standardised x: negative
    when y levels off or turns down at large x. NaN with fewer than 4 points or constant x."""
    if len(x) < 4 or np.ptp(x) == 0:
        return float("nan")
    z = (x - x.mean()) / x.std()
    return float(np.polyfit(z, y, 2)[0])


# statistics computed within one stratum: (x, y) -> value
STRATUM_STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman": spearman,
    "curvature": curvature,
}


def stratified(
    x: np.ndarray,
    y: np.ndarray,
    strata: np.ndarray,
    groups: np.ndarray,
    pooling: str = "fixed_effect",
    statistic: str = "spearman",
) -> float:
    """The statistic within each stratum (strata are never pooled), after taking the fixed
    effects ``groups`` out of x and y within it (``_within``), averaged over strata weighted by
    their points. Strata with fewer than ``MIN_POINTS`` usable points or an undefined value are
    left out; none left: NaN. ``strata`` and ``groups`` are integer codes (``label_codes``)."""
    fn = STRATUM_STATISTICS[statistic]
    total, weight = 0.0, 0
    for s in np.unique(strata):
        sel = strata == s
        g = groups[sel]
        _, g = np.unique(g, return_inverse=True)
        px, py = _within(x[sel], g, pooling), _within(y[sel], g, pooling)
        ok = np.isfinite(px) & np.isfinite(py)
        if ok.sum() < MIN_POINTS:
            continue
        v = fn(px[ok], py[ok])
        if math.isfinite(v):
            total += float(v) * int(ok.sum())
            weight += int(ok.sum())
    return float(total / weight) if weight else float("nan")


def cluster_bootstrap(
    fn: Callable[[np.ndarray], float],
    units: Sequence[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``fn(rows)`` over ``n_boot`` cluster resamples: whole units drawn
    with replacement (``numpy.random.default_rng(seed)``), every row of a drawn unit kept, a
    unit drawn twice kept twice. ``fn`` takes the row indices of a resample. Resamples with an
    undefined statistic are left out; none left (or ``n_boot`` 0): (NaN, NaN). Units given as
    one label per row; ``units = range(n)`` is the ordinary row bootstrap."""
    nan = float("nan")
    code = label_codes(units)
    k = int(code.max()) + 1 if len(code) else 0
    if n_boot <= 0 or k == 0:
        return nan, nan
    order = np.argsort(code, kind="stable")
    starts = np.searchsorted(code[order], np.arange(k + 1))
    rows = [order[starts[u] : starts[u + 1]] for u in range(k)]
    draws = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    vals = np.array([fn(np.concatenate([rows[u] for u in d])) for d in draws])
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return nan, nan
    tail = 100 * (1 - ci) / 2
    lo, hi = np.percentile(vals, [tail, 100 - tail])
    return float(lo), float(hi)


def units_needed(rho: float, ci: float = 0.95) -> float:
    """Approximately how many independent units would make a ``ci`` interval exclude 0 at the
    observed Spearman ρ: Fisher z with the Spearman variance factor 1.06 (Fieller et al.),
    n ≈ (z_{1−α/2} / atanh|ρ|)² · 1.06 + 3. Infinite at ρ = 0."""
    r = min(abs(rho), 0.999999)
    if not math.isfinite(rho) or r == 0:
        return float("inf")
    z = scipy.stats.norm.ppf(1 - (1 - ci) / 2)
    return (z / math.atanh(r)) ** 2 * 1.06 + 3
