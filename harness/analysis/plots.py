"""Figures of the analysis: scatter with per-group fits, NC1 across layers, accuracy vs budget.

matplotlib with the Agg backend, imported only when a figure is drawn, so that the package and
the CLI load without it. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.stats import _missing


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
