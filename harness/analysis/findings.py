"""The study's findings: each one's pre-declared primary test, its verdict, and sensitivity rows.

INTERFACE (fixed; the report and ``harness run`` read these objects):

``evaluate(tests, root, run_ids, n_boot, seed) -> list[Finding]`` takes the study's
``studyspec.PrimaryTest`` per finding key ('1', '2a', '2b', '3'), the results root and the study's
own pre-training run ids (only their rows and their trials' rows are read), and returns one
``Finding`` per key in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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
