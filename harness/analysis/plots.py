"""Figures of the analysis: scatter with per-group fits, the findings' forest plot, NC1 across
depth, accuracy vs trainable parameters.

matplotlib with the Agg backend, imported only when a figure is drawn, so that the package and
the CLI load without it. Each function writes one figure (PNG, or as its name's extension in
``FIGURE_SUFFIXES`` says), atomically, and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analysis.stats import is_missing
from harness.analysis.tables import VERDICT_COLORS
from harness.spec.registry import METHODS
from harness.store.fileio import atomic_write

if TYPE_CHECKING:
    from harness.analysis.findings import Finding


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# the figure formats a plot path may name (matplotlib's Agg backend writes each of them)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` in the format its extension names (PNG without one), through a
    temporary, so that a failed save leaves no partial figure."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight"))
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
            f", r={fit['pearson']:.2f})" if not is_missing(fit.get("pearson")) else ")"
        )
        ax.scatter(xs, ys, color=color, s=26, alpha=0.85, label=text)
        if not is_missing(fit.get("slope")) and len(xs) >= 2 and np.ptp(xs) > 0:
            gx = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(gx, fit["slope"] * gx + fit["intercept"], color=color, lw=1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Findings: the forest plot


def _short(text: str, width: int = 56) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _finite(*vs: Any) -> bool:
    return all(not is_missing(v) for v in vs)


def _estimates(finding: Finding) -> list[tuple[Any, bool]]:
    """(estimate, is primary) of every estimate with a value: the primary one first."""
    ests = [(e, True) for e in [finding.primary] if e is not None]
    ests += [(e, False) for e in finding.sensitivity]
    return [(e, p) for e, p in ests if _finite(e.value)]


def _forest_panel(ax: Any, finding: Finding) -> None:
    """One finding: primary estimate on top (filled, verdict colour), sensitivity estimates
    below it (hollow), each with its interval; 0 and −margin as vertical lines."""
    color = VERDICT_COLORS.get(finding.verdict, "#444444")
    ests = _estimates(finding)
    est = finding.primary or (ests[0][0] if ests else None)
    stat = f"  ({est.statistic})" if est is not None else ""
    ax.set_title(f"{finding.key}. {finding.title}{stat}", loc="left", fontsize=9.5)
    if ests:
        ax.axvline(0, color="#444444", lw=0.9, zorder=1)
    xs = [0.0]
    margin = finding.extra.get("margin")
    if _finite(margin) and margin:
        ax.axvline(-abs(margin), color="#cf222e", ls="--", lw=1.1, zorder=1)
        ax.text(-abs(margin), -0.62, "−margin ", color="#cf222e", fontsize=7.5, ha="right")
        xs.append(-abs(margin))
    labels = []
    for i, (e, primary) in enumerate(ests):
        y = len(ests) - 1 - i
        named = primary and not e.label.lower().startswith("primary")
        labels.append(("primary: " if named else "") + _short(e.label) + f" (n={e.n_units})")
        err = None
        if _finite(e.lo, e.hi):
            err = [[max(e.value - e.lo, 0.0)], [max(e.hi - e.value, 0.0)]]
            xs += [e.lo, e.hi]
        xs.append(e.value)
        ax.errorbar(
            e.value, y, xerr=err, fmt="o" if primary else "s", capsize=3, zorder=3,
            color=color if primary else "#57606a", mfc=color if primary else "white",
            ms=7.5 if primary else 5.5, lw=2.0 if primary else 1.1,
        )  # fmt: skip
    ax.set_yticks(range(len(ests) - 1, -1, -1), labels, fontsize=8)
    ax.set_ylim(-0.7, max(len(ests), 1) - 0.3)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.tick_params(axis="x", labelsize=8)
    if not ests:
        ax.text(0.5, 0.5, f"no estimate ({finding.verdict})", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="#57606a")  # fmt: skip
        ax.set_xticks([])
    ax.grid(axis="x", alpha=0.3)


def forest_plot(findings: Sequence[Finding], path: str | os.PathLike) -> Path:
    """One panel per finding, stacked: its primary estimate and sensitivity estimates with
    their intervals (see ``_forest_panel``); each panel has its own x scale, since findings
    measure different things (a correlation, an accuracy difference)."""
    plt = _pyplot()
    sizes = [1 + max(1, len(_estimates(f))) for f in findings]
    fig, axes = plt.subplots(
        len(findings), 1, figsize=(9.5, 0.3 * sum(sizes) + 0.5), squeeze=False,
        gridspec_kw=dict(height_ratios=sizes),
    )  # fmt: skip
    for ax, f in zip(axes[:, 0], findings, strict=True):
        _forest_panel(ax, f)
    fig.tight_layout(h_pad=0.8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# NC1 across depth


def _x(r: Mapping[str, Any]) -> float:
    return r["depth_frac"] if not is_missing(r.get("depth_frac")) else r["layer_index"]


def _curves(
    ax: Any, recs: Sequence[Mapping[str, Any]], y: str, colors: Mapping[Any, Any], key: str
) -> None:
    """One line per run (colour by ``key``), and the median over runs when there are ≥ 3."""
    runs: dict[str, list[tuple[float, float]]] = {}
    color_of: dict[str, Any] = {}
    for r in recs:
        if not is_missing(r[y]):
            runs.setdefault(r["run_id"], []).append((_x(r), r[y]))
            color_of[r["run_id"]] = colors.get(r.get(key), "#555555")
    for run, pts in sorted(runs.items()):
        pts.sort()
        ax.plot(*zip(*pts, strict=True), "-o", ms=2.5, lw=1.0, alpha=0.75, color=color_of[run])
    if len(runs) >= 3:
        by_x: dict[float, list[float]] = {}
        for pts in runs.values():
            for xv, yv in pts:
                by_x.setdefault(xv, []).append(yv)
        grid = sorted(by_x)
        ax.plot(grid, [np.median(by_x[g]) for g in grid], color="k", lw=2.2, label="median")
    ax.grid(alpha=0.3)


def depth_plot(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    acc_records: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """NC1 across depth, one row of panels per architecture: the source (pre-training) data,
    then each downstream dataset (``records``: side, dataset, arch, loss, run_id, layer_index,
    depth_frac, nc1), one line per pre-training run coloured by its loss, log scale; and when
    ``acc_records`` (layerwise_nc_vs_accuracy.sql) hold Layer/SCL FT results, the accuracy of
    fine-tuning each layer (Layer FT solid, SCL FT dashed)."""
    plt = _pyplot()
    archs = sorted({r["arch"] or "?" for r in records})
    panels = sorted(
        {(r["side"], r["dataset"]) for r in records}, key=lambda p: (p[0] != "source", p)
    )
    accs = [r for r in acc_records if r.get("method") and not is_missing(r.get("acc"))]
    ncol = len(panels) + bool(accs)
    fig, axes = plt.subplots(
        len(archs), ncol, figsize=(3.9 * ncol, 2.9 * len(archs) + 0.4), squeeze=False, sharex=True
    )
    losses = sorted({str(r.get("loss")) for r in records})
    cmap = plt.get_cmap("tab10")
    colors = {loss: cmap(i % 10) for i, loss in enumerate(losses)}
    for i, arch in enumerate(archs):
        mine = [r for r in records if (r["arch"] or "?") == arch]
        for j, (side, ds) in enumerate(panels):
            ax = axes[i, j]
            cell = [
                {**r, "loss": str(r.get("loss"))}
                for r in mine
                if (r["side"], r["dataset"]) == (side, ds)
            ]
            _curves(ax, cell, "nc1", colors, "loss")
            if cell and all(r["nc1"] > 0 for r in cell):
                _log_y(ax)
            where = "source" if side == "source" else "downstream"
            ax.set_title(f"{arch} · {where} ({ds})", fontsize=9)
            ax.set_ylabel("NC1 (log)" if j == 0 else "")
        if accs:
            _acc_panel(axes[i, -1], [r for r in accs if (r["arch"] or "?") == arch], arch)
    for ax in axes[-1]:
        ax.set_xlabel("depth fraction")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=f"loss: {k}") for k, c in colors.items()]
    handles.append(Line2D([], [], color="k", lw=2.2, label="median over runs"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, path)


def _log_y(ax: Any) -> None:
    """A log y axis labelled with plain numbers (1, 2, 5 per decade)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _acc_panel(ax: Any, recs: Sequence[Mapping[str, Any]], arch: str) -> None:
    """Accuracy of fine-tuning each layer: faint, one line per run and method; bold, the mean
    over runs per method (Layer FT solid grey, SCL FT, with its skip, dashed blue, methods
    that train no single layer dotted)."""
    from matplotlib.lines import Line2D

    def style(method: str) -> dict[str, Any]:
        meta = METHODS.meta(method) if method in METHODS else None
        skip = meta is not None and meta.skip
        ls = "--" if skip else "-" if meta is not None and meta.trains == "layer" else ":"
        return dict(ls=ls, color="#0969da" if skip else "#57606a")

    for (_run, method), mine in sorted(_group(recs, ("run_id", "method")).items()):
        pts = sorted((_x(r), r["acc"]) for r in mine)
        ax.plot(*zip(*pts, strict=True), lw=0.7, alpha=0.3, **style(method))
    for (method,), mine in sorted(_group(recs, ("method",)).items()):
        by_x = _group([{**r, "x": _x(r)} for r in mine], ("x",))
        grid = sorted(k for (k,) in by_x)
        means = [np.mean([r["acc"] for r in by_x[(g,)]]) for g in grid]
        ax.plot(grid, means, marker="o", ms=4, lw=2.2, **style(method))
    ax.set_title(f"{arch} · accuracy fine-tuning that layer", fontsize=9)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    found = sorted({r["method"] for r in recs})
    ax.legend(handles=[Line2D([], [], label=m, **style(m)) for m in found], fontsize=7)


def _group(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for r in records:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Accuracy vs trainable parameters


def budget_label(per_class: Any) -> str:
    """A data budget as shown: samples per class, or 'all'."""
    return "all" if per_class is None else f"{per_class}/class"


def fraction_plot(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Accuracy against the trainable-parameter fraction, one panel per (dataset, arch): one
    marker per method, one colour per data budget (darker = more data), the mean over runs
    with its interval (``acc_lo``/``acc_hi``); methods at one budget joined by a thin line."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    recs = [
        r
        for r in records
        if _finite(r.get("trainable_frac"), r.get("acc")) and r["trainable_frac"] > 0
    ]
    cells = sorted(_group(recs, ("dataset", "arch")).items(), key=lambda kv: str(kv[0]))
    budgets = sorted({r["per_class"] for r in recs}, key=lambda b: (b is None, b or 0))
    methods = sorted({r["method"] for r in recs})
    shades = plt.get_cmap("viridis")(np.linspace(0.85, 0.1, max(len(budgets), 1)))
    markers = dict(zip(methods, "os^Dv<>P*X" * 3, strict=False))
    ncol = min(len(cells), 3) or 1
    nrow = -(-len(cells) // ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.1 * ncol, 3.3 * nrow + 0.5), squeeze=False)
    for ax, ((ds, arch), mine) in zip(axes.flat, cells, strict=False):
        for b, budget in enumerate(budgets):
            pts = sorted(
                (r for r in mine if r["per_class"] == budget), key=lambda r: r["trainable_frac"]
            )
            dodge = 1.07 ** (b - (len(budgets) - 1) / 2)
            xs = [r["trainable_frac"] * dodge for r in pts]
            ax.plot(xs, [r["acc"] for r in pts], color=shades[b], lw=0.8, alpha=0.6)
            for x, r in zip(xs, pts, strict=True):
                lo, hi = r.get("acc_lo"), r.get("acc_hi")
                err = [[r["acc"] - lo], [hi - r["acc"]]] if _finite(lo, hi) else None
                ax.errorbar(x, r["acc"], yerr=err, fmt=markers[r["method"]], color=shades[b],
                            ms=6, capsize=2.5, lw=1.2)  # fmt: skip
        ax.set_xscale("log")
        ax.set(xlabel="trainable parameter fraction", ylabel="test accuracy")
        ax.set_title(f"{arch or '?'} → {ds}", fontsize=9.5)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    handles = [
        Line2D([], [], color=shades[b], lw=2, label=budget_label(x)) for b, x in enumerate(budgets)
    ]
    handles += [Line2D([], [], ls="", marker=markers[m], color="k", label=m) for m in methods]
    if handles:  # none when no trial has a trainable-parameter count (matplotlib needs ncol >= 1)
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=min(len(handles), 8),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return _save(fig, path)
