"""The study's findings: each one's pre-declared primary test, its verdict, and sensitivity rows.

INTERFACE (fixed; the report and ``harness run`` read these objects):

``evaluate(tests, root, run_ids, n_boot, seed) -> list[Finding]`` takes the study's
``studyspec.PrimaryTest`` per finding key ('1', '2a', '2b', '3'), the results root and the study's
own pre-training run ids (only their rows and their trials' rows are read), and returns one
``Finding`` per key in that order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.stats

from harness import store
from harness.analysis.stats import (
    POOLINGS,
    cluster_bootstrap,
    is_missing,
    label_codes,
    stratified,
    units_needed,
)
from harness.analysis.views import VIEW_KEYS, fetch_records, view_sql, with_common
from harness.errors import HarnessError
from harness.spec.registry import METHODS
from harness.spec.study import PrimaryTest

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

VERDICTS = ("agrees", "disagrees", "inconclusive", "too few runs", "no data")


@dataclass
class Estimate:
    """One estimate with its interval: the primary test's, or a sensitivity analysis's."""

    label: str  # what grouping / pooling / features, e.g. "architecture fixed effect, by dataset"
    statistic: str  # "Spearman ρ" or "SCL − full (accuracy)"
    value: float
    lo: float
    hi: float
    n_units: int  # independent units resampled
    unit: str  # "pre-training run", "model", "(checkpoint, seed) pair"
    n_rows: int  # points / pairs behind the estimate

    def interval(self) -> str:
        if any(math.isnan(v) for v in (self.value, self.lo, self.hi)):
            return "n/a"
        return f"{self.value:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


@dataclass
class Finding:
    """One finding: the paper's claim, the primary test's estimate and verdict, and the other
    groupings as sensitivity analyses (shown without a verdict)."""

    key: str  # "1", "2a", "2b", "3"
    title: str  # short, e.g. "Source NC1 vs transfer accuracy"
    claim: str  # the paper's claim, one sentence
    test: str  # the primary test in words (x, y, level, pooling, unit, expected sign / margin)
    primary: Estimate | None
    verdict: str  # one of VERDICTS
    note: str = ""  # one sentence: e.g. "≈ 40 runs would exclude 0 at ρ = 0.31"
    sensitivity: list[Estimate] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. trainable fraction, curvature

    def line(self) -> str:
        """One line for the console and findings.txt."""
        est = self.primary
        shown = (
            f"{est.statistic} = {est.interval()} (n = {est.n_units} {est.unit}s)"
            if est is not None
            else "no estimate"
        )
        return f"{self.key}. {self.title}: {shown} — {self.verdict}" + (
            f"; {self.note}" if self.note else ""
        )


# ---------------------------------------------------------------------------------------------
# What each finding claims, and how its units are named
#
# ``Finding.extra``: finding 1 has 'curvature' (an Estimate: the quadratic coefficient of
# accuracy on standardised NC1 within strata, cluster-bootstrapped) and 'best_nc1_position'
# (where the most accurate run's NC1 sits in its stratum's range, 0..1, averaged); finding 3 has
# 'trainable_fraction' (mean trainable parameters of y / x over pairs) and 'per_budget'
# ({per_class or 'all': Estimate}, also among its sensitivity rows).

TEXTS: dict[str, tuple[str, str]] = {
    "1": (
        "Source NC1 vs transfer accuracy",
        "Features that collapse less on the source data (higher source NC1) transfer better, up "
        "to a point.",
    ),
    "2a": (
        "Fine-tuned downstream NC1 vs accuracy",
        "Fine-tuned features that collapse more on the downstream training data (lower NC1) "
        "give higher downstream accuracy.",
    ),
    "2b": (
        "Downstream NC1 vs SCL accuracy across the layers of a model",
        "Within one model, the block whose features collapse more on the downstream data (lower "
        "NC1) is the better block to fine-tune with a skip connection (SCL FT).",
    ),
    "3": (
        "SCL FT vs full FT",
        "Fine-tuning one block with a skip connection to the classifier (SCL FT) matches full "
        "fine-tuning with far fewer trainable parameters.",
    ),
}
UNIT_NAMES = {"run": "pre-training run", "model": "model", "pair": "(checkpoint, seed) pair"}
UNIT_COLUMNS = {"run": ("run_id",), "model": ("run_id",), "pair": ("checkpoint", "seed")}
ALWAYS_STRATA = ("source", "dataset")  # never pooled in one rank statistic
MODEL_SELECTION = "2 (model selection): pre-trained downstream NC1 vs linear-probe accuracy"
RHO = "Spearman ρ"


def evaluate(
    tests: Mapping[str, Any],
    root: str | os.PathLike | None,
    run_ids: Sequence[str] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Finding]:
    """One ``Finding`` per key of ``tests`` (``studyspec.PrimaryTest`` objects), in that order:
    the primary test gives the verdict, the other groupings are sensitivity rows. Reads only
    the rows of ``run_ids`` and their trials (``store.connect(scope=...)``; None: the whole
    root). Seeded: the same store, tests and seed give the same findings."""
    base = store.results_root(root)

    def run(con: DuckDBPyConnection) -> list[Finding]:
        return [_finding(con, key, t, n_boot, seed) for key, t in tests.items()]

    if not store.has_results(base):
        return [_empty(key, t, "no results yet") for key, t in tests.items()]
    return store.reading(run, base, scope=None if run_ids is None else list(run_ids))


def _finding(
    con: DuckDBPyConnection, key: str, test: PrimaryTest, n_boot: int, seed: int
) -> Finding:
    try:
        if test.kind == "noninferiority":
            return _noninferiority(con, key, test, n_boot, seed)
        return _correlation(con, key, test, n_boot, seed)
    except HarnessError as e:  # a column the store cannot offer yet, a bad `where`
        return _empty(key, test, f"not measurable: {e}")


def _empty(key: str, test: PrimaryTest, note: str) -> Finding:
    title, claim = TEXTS.get(key, (key, ""))
    return Finding(key, title, claim, describe(test), None, "no data", note=note)


def describe(test: PrimaryTest) -> str:
    """The primary test in words: what is compared, how, and what the paper expects."""
    unit = UNIT_NAMES[test.unit]
    if test.kind == "noninferiority":
        return (
            f"paired {test.y} − {test.x} test accuracy per (checkpoint, dataset, budget, seed)"
            + (f" where {test.where}" if test.where else "")
            + f", mean over pairs; {test.ci:.0%} cluster bootstrap over {unit}s; agrees if the "
            f"lower bound > −{test.margin:g}, disagrees if the upper bound < −{test.margin:g}; "
            f"at least {test.min_units} {unit}s"
        )
    sign = "< 0" if test.expected_sign < 0 else "> 0"
    fe = ", ".join(test.fixed_effects) or "none"
    return (
        f"{RHO} of {test.x} vs {test.y} at {test.level} level"
        + (f" where {test.where}" if test.where else "")
        + f", within {' × '.join(strata_of(test))} strata, fixed effects {fe} "
        f"({POOLINGS[test.pooling].label}); {test.ci:.0%} cluster bootstrap over {unit}s; the "
        f"paper expects ρ {sign}; at least {test.min_units} {unit}s"
    )


def strata_of(test: PrimaryTest) -> list[str]:
    """The strata of a correlation test: the source and downstream datasets, then its own."""
    return list(dict.fromkeys([*ALWAYS_STRATA, *test.strata]))


# ---------------------------------------------------------------------------------------------
# Correlation findings (1, 2a, 2b)


@dataclass
class Points:
    """The usable rows of one test: values, integer codes of strata and fixed-effect groups,
    one unit label per row, and the records (for subsetting)."""

    x: np.ndarray
    y: np.ndarray
    strata: np.ndarray
    groups: np.ndarray
    units: list[Any]
    records: list[dict[str, Any]]

    def subset(self, keep: Sequence[bool]) -> Points:
        sel = np.asarray(keep, dtype=bool)
        idx = np.flatnonzero(sel)
        return Points(
            self.x[sel],
            self.y[sel],
            self.strata[sel],
            self.groups[sel],
            [self.units[i] for i in idx],
            [self.records[i] for i in idx],
        )


def view_records(
    con: DuckDBPyConnection, level: str, columns: Sequence[str], where: str | None = None
) -> list[dict[str, Any]]:
    """``columns`` of the analysis view at ``level`` (rows selected by ``where``), in the
    view's key order, so that the bootstrap sees the same rows in the same order every time."""
    keys = VIEW_KEYS[level]
    cols = ", ".join(dict.fromkeys([*keys, *columns]))
    sql = f"SELECT {cols} FROM ({view_sql(con, level)}) v" + (f" WHERE {where}" if where else "")
    return fetch_records(con, sql + f" ORDER BY {', '.join(keys)}")


def points(
    records: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    strata: Sequence[str],
    fixed_effects: Sequence[str],
    unit: Sequence[str],
) -> Points:
    """The rows of ``records`` with both x and y, as ``Points``; fixed-effect groups are
    coded within strata (a group never spans two strata)."""
    keep = [dict(r) for r in records if not is_missing(r[x]) and not is_missing(r[y])]

    def key(r: Mapping[str, Any], cols: Sequence[str]) -> tuple:
        return tuple(r[c] for c in cols)

    return Points(
        np.array([float(r[x]) for r in keep]),
        np.array([float(r[y]) for r in keep]),
        label_codes([key(r, strata) for r in keep]),
        label_codes([key(r, [*strata, *fixed_effects]) for r in keep]),
        [key(r, unit) for r in keep],
        keep,
    )


def estimate(
    p: Points,
    label: str,
    test: PrimaryTest,
    *,
    pooling: str,
    n_boot: int,
    seed: int,
    statistic: str = "spearman",
) -> Estimate:
    """The stratified statistic of ``p`` with its cluster-bootstrap interval over the test's
    units; no interval (NaN) with fewer than ``test.min_units`` units."""

    def fn(i: np.ndarray) -> float:
        return stratified(p.x[i], p.y[i], p.strata[i], p.groups[i], pooling, statistic)

    value = fn(np.arange(len(p.x)))
    n_units = len(set(p.units))
    lo = hi = float("nan")
    if n_units >= test.min_units and math.isfinite(value):
        lo, hi = cluster_bootstrap(fn, p.units, n_boot=n_boot, seed=seed, ci=test.ci)
    name = RHO if statistic == "spearman" else "quadratic coefficient"
    return Estimate(label, name, value, lo, hi, n_units, UNIT_NAMES[test.unit], len(p.x))


def _no_verdict(est: Estimate, test: PrimaryTest, what: str) -> tuple[str, str] | None:
    """("no data" | "too few runs", note) when the primary estimate cannot give a verdict."""
    if est.n_rows == 0:
        return "no data", f"no {what} has both {test.x} and {test.y}"
    if est.n_units < test.min_units:
        unit = UNIT_NAMES[test.unit]
        return "too few runs", (
            f"{est.n_units} {unit}s; the primary test needs at least {test.min_units}"
        )
    return None


def correlation_verdict(est: Estimate, test: PrimaryTest) -> tuple[str, str]:
    """(verdict, note) of a correlation's primary estimate."""
    unit = UNIT_NAMES[test.unit]
    if (none := _no_verdict(est, test, f"{test.level}-level row")) is not None:
        return none
    if not all(math.isfinite(v) for v in (est.value, est.lo, est.hi)):
        return "no data", "no stratum has enough points with both values to rank"
    if est.lo <= 0 <= est.hi:
        need = units_needed(est.value, test.ci)
        if not math.isfinite(need):
            return "inconclusive", "no association observed (ρ = 0): no number of runs would do"
        return "inconclusive", (
            f"≈ {math.ceil(need)} {unit}s would exclude 0 at ρ = {est.value:+.2f} "
            f"(approximate: Fisher z; {est.n_units} now)"
        )
    positive = est.lo > 0
    return ("agrees" if positive == (test.expected_sign > 0) else "disagrees"), ""


def _correlation(
    con: DuckDBPyConnection, key: str, test: PrimaryTest, n_boot: int, seed: int
) -> Finding:
    strata = strata_of(test)
    unit = list(UNIT_COLUMNS[test.unit])
    cols = [test.x, test.y, *strata, *test.fixed_effects, *unit, "arch", "dataset"]
    recs = view_records(con, test.level, cols, test.where)
    p = points(recs, test.x, test.y, strata, test.fixed_effects, unit)
    kw = dict(n_boot=n_boot, seed=seed)
    primary = estimate(p, "primary", test, pooling=test.pooling, **kw)
    verdict, note = correlation_verdict(primary, test)
    title, claim = TEXTS.get(key, (key, ""))
    found = Finding(key, title, claim, describe(test), primary, verdict, note=note)
    found.sensitivity = sensitivity(p, test, n_boot, seed)
    if key == "2a":
        found.sensitivity += model_selection(con, test, n_boot, seed)
    if key == "1":
        found.extra.update(non_monotone(p, test, n_boot, seed))
        found.note = "; ".join(n for n in (found.note, found.extra.pop("note", "")) if n)
    return found


def sensitivity(p: Points, test: PrimaryTest, n_boot: int, seed: int) -> list[Estimate]:
    """The other groupings of a correlation, without a verdict: every pooling of all rows, then
    per architecture, per downstream dataset (and per method at the trial level) with the
    fixed effects demeaned. Independent of the primary test's pooling by construction."""
    kw = dict(n_boot=n_boot, seed=seed)
    out = [
        estimate(p, f"all rows, {pool.label}", test, pooling=name, **kw)
        for name, pool in POOLINGS.items()
    ]
    by = ["arch", "dataset"] + (["method"] if test.level == "trial" else [])
    for col in by:
        values = sorted({r.get(col) for r in p.records}, key=str)
        if len(values) < 2:
            continue
        for v in values:
            sub = p.subset([r.get(col) == v for r in p.records])
            out.append(estimate(sub, f"{col} = {v}", test, pooling="fixed_effect", **kw))
    return out


def model_selection(
    con: DuckDBPyConnection, test: PrimaryTest, n_boot: int, seed: int
) -> list[Estimate]:
    """Finding 2 with pre-trained features: downstream NC1 of each checkpoint's penultimate
    features vs its linear-probe accuracy, one point per run and dataset (a sensitivity row)."""
    strata = list(ALWAYS_STRATA)
    cols = ["down_nc1", "acc_linear_probe", *strata, "arch", "run_id"]
    recs = view_records(con, "model", cols)
    p = points(recs, "down_nc1", "acc_linear_probe", strata, ["arch"], ["run_id"])
    run_test = test.model_copy(update={"unit": "run"})
    return [
        estimate(p, MODEL_SELECTION, run_test, pooling="fixed_effect", n_boot=n_boot, seed=seed)
    ]


def non_monotone(p: Points, test: PrimaryTest, n_boot: int, seed: int) -> dict[str, Any]:
    """'Up to a point': the quadratic coefficient of y on standardised x within strata (fixed
    effects demeaned) with its cluster-bootstrap interval, and where the best row's x sits in
    its stratum's range (0 = lowest x, 1 = highest), averaged over strata."""
    curv = estimate(
        p, "curvature", test, pooling="fixed_effect", n_boot=n_boot, seed=seed,
        statistic="curvature",
    )  # fmt: skip
    where = []
    for s in np.unique(p.strata):
        xs, ys = p.x[p.strata == s], p.y[p.strata == s]
        if len(xs) >= 2 and np.ptp(xs) > 0:
            where.append(float((xs[np.argmax(ys)] - xs.min()) / np.ptp(xs)))
    pos = float(np.mean(where)) if where else float("nan")
    note = ""
    if math.isfinite(curv.lo) and curv.hi < 0:
        note = f"accuracy levels off or turns down at high NC1 (curvature {curv.interval()})"
    elif math.isfinite(curv.lo) and curv.lo > 0:
        note = f"no turning point: accuracy rises faster at high NC1 (curvature {curv.interval()})"
    elif math.isfinite(curv.value):
        note = f"no curvature resolved (curvature {curv.interval()})"
    if math.isfinite(pos):
        note += f"{'; ' if note else ''}best run at {pos:.0%} of the NC1 range"
    return {"curvature": curv, "best_nc1_position": pos, "note": note}


# ---------------------------------------------------------------------------------------------
# Finding 3: paired non-inferiority of one fine-tuning method against another

PAIRS_SQL = """
SELECT a.run_id, a.checkpoint, coalesce(a.arch, ra.arch) AS arch, p.dataset AS source,
       a.dataset, a.per_class, a.seed, a.test_acc AS x_acc, b.test_acc AS y_acc,
       b.test_acc - a.test_acc AS diff, a.trainable_params AS x_params,
       b.trainable_params AS y_params, b.layer AS y_layer
FROM ft_seed a
JOIN ft_seed b ON b.run_id IS NOT DISTINCT FROM a.run_id
    AND b.checkpoint IS NOT DISTINCT FROM a.checkpoint AND b.dataset = a.dataset
    AND b.per_class IS NOT DISTINCT FROM a.per_class AND b.seed IS NOT DISTINCT FROM a.seed
LEFT JOIN pretrain_one p ON p.run_id = a.run_id
LEFT JOIN run_arch ra ON ra.run_id = a.run_id
WHERE a.method = $x AND b.method = $y AND a.test_acc IS NOT NULL AND b.test_acc IS NOT NULL
"""


def method_pairs(
    con: DuckDBPyConnection, x: str, y: str, where: str | None = None
) -> list[dict[str, Any]]:
    """Per (checkpoint, dataset, budget, seed): the test accuracy of method ``x`` and ``y``
    (each the trial common.sql's ft_seed keeps: sweep-chosen layer, else best validation) and
    ``diff`` = y − x, with both trainable-parameter counts; ``where`` over these columns."""
    sql = with_common(
        f"SELECT * FROM ({PAIRS_SQL}) q"
        + (f" WHERE {where}" if where else "")
        + " ORDER BY run_id, checkpoint, dataset, per_class NULLS LAST, seed"
    )
    return fetch_records(con, sql, {"x": x, "y": y})


def mean_estimate(
    recs: Sequence[Mapping[str, Any]], label: str, test: PrimaryTest, n_boot: int, seed: int
) -> Estimate:
    """The mean paired difference with its cluster-bootstrap interval over the test's units
    (no interval with fewer than ``test.min_units`` units)."""
    d = np.array([float(r["diff"]) for r in recs])
    units = [tuple(r[c] for c in UNIT_COLUMNS[test.unit]) for r in recs]
    value = float(d.mean()) if len(d) else float("nan")
    lo = hi = float("nan")
    if len(set(units)) >= test.min_units:
        lo, hi = cluster_bootstrap(
            lambda i: float(d[i].mean()), units, n_boot=n_boot, seed=seed, ci=test.ci
        )
    stat = f"{test.y} − {test.x} (accuracy)"
    return Estimate(label, stat, value, lo, hi, len(set(units)), UNIT_NAMES[test.unit], len(d))


def noninferiority_verdict(
    est: Estimate, test: PrimaryTest, recs: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """(verdict, note): agrees when the lower bound is above −margin, disagrees when the upper
    bound is below it; inconclusive says roughly how many units would settle it."""
    unit = UNIT_NAMES[test.unit]
    if (none := _no_verdict(est, test, "(checkpoint, dataset, budget, seed)")) is not None:
        return none
    if est.lo > -test.margin:
        return "agrees", ""
    if est.hi < -test.margin:
        return "disagrees", ""
    gap = est.value + test.margin
    if gap <= 0:
        return "inconclusive", (
            f"the mean difference {est.value:+.3f} is not above the margin −{test.margin:g}: "
            "more pairs would not show non-inferiority"
        )
    by: dict[tuple, list[float]] = {}
    for r in recs:
        by.setdefault(tuple(r[c] for c in UNIT_COLUMNS[test.unit]), []).append(float(r["diff"]))
    sd = float(np.std([np.mean(v) for v in by.values()], ddof=1))
    z = float(scipy.stats.norm.ppf(1 - (1 - test.ci) / 2))
    need = math.ceil((z * sd / gap) ** 2) if sd > 0 else est.n_units
    return "inconclusive", (
        f"≈ {max(need, est.n_units + 1)} {unit}s would put the lower bound above "
        f"−{test.margin:g} at the observed {est.value:+.3f} (approximate: normal; "
        f"{est.n_units} now)"
    )


def _noninferiority(
    con: DuckDBPyConnection, key: str, test: PrimaryTest, n_boot: int, seed: int
) -> Finding:
    recs = method_pairs(con, test.x, test.y, test.where)
    primary = mean_estimate(recs, "primary: all pairs", test, n_boot, seed)
    verdict, note = noninferiority_verdict(primary, test, recs)
    title, claim = TEXTS.get(key, (key, ""))
    found = Finding(key, title, claim, describe(test), primary, verdict, note=note)
    per_budget = {}
    for col, name in (("per_class", "budget"), ("dataset", "dataset"), ("arch", "arch")):
        for v in sorted({r[col] for r in recs}, key=lambda v: (v is None, str(v))):
            shown = "all" if col == "per_class" and v is None else v
            sub = [r for r in recs if r[col] == v]
            est = mean_estimate(sub, f"{name} = {shown}", test, n_boot, seed)
            found.sensitivity.append(est)
            if col == "per_class":
                per_budget[str(shown)] = est
    # against the references that train less than the whole network and have no skip
    less = (e.name for e in METHODS.entries() if e.meta.trains != "all" and not e.meta.skip)
    for other in sorted(less):
        if other not in (test.x, test.y):
            more = method_pairs(con, test.x, other, test.where)
            if more:
                t = test.model_copy(update={"y": other})
                found.sensitivity.append(
                    mean_estimate(more, f"{other} − {test.x}", t, n_boot, seed)
                )
    fracs = [r["y_params"] / r["x_params"] for r in recs if r["x_params"] and r["y_params"]]
    found.extra["trainable_fraction"] = float(np.mean(fracs)) if fracs else float("nan")
    found.extra["per_budget"] = per_budget
    found.extra["margin"] = test.margin
    if fracs:
        frac = f"{test.y} trains {np.mean(fracs):.1%} of {test.x}'s parameters"
        found.note = "; ".join(n for n in (found.note, frac) if n)
    return found
