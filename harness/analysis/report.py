"""``harness report``: Markdown + HTML with tables, PNG figures and the SQL behind each section.

Each section runs one saved query of ``analysis/`` (``SECTIONS`` names them; the report does not
glob the folder), turns its records into statistics, tables and a figure, and prints the query
it ran, so every number can be reproduced with ``harness query``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import store
from harness.analysis.plots import budget_plot, layer_plot, scatter_plot
from harness.analysis.scores import ranking_rows
from harness.analysis.stats import group_stats
from harness.analysis.tables import Table, correlation_table, records_table
from harness.analysis.views import _fetch, load_sql
from harness.errors import HarnessError
from harness.fileio import atomic_write_text


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


# The title and introduction of each section, by the saved query it runs.
TEXTS: dict[str, tuple[str, str]] = {
    "source_nc_vs_linear_probe": (
        "Source NC1 vs linear-probe accuracy, per architecture",
        "Each point is a pre-training run: NC1 of its penultimate features on the pre-training "
        "data against the linear-probe accuracy on a downstream dataset. Per-architecture rows, "
        "then the architectures pooled three ways.",
    ),
    "downstream_nc_vs_accuracy": (
        "Downstream NC1 vs accuracy across models",
        "Each point is a model: NC1 of its penultimate features on the downstream training data "
        "against its accuracy with each fine-tuning method.",
    ),
    "layerwise_nc_vs_accuracy": (
        "Layer-wise NC1 and accuracy",
        "Downstream NC1 of every layer of each model, and the accuracy of fine-tuning that layer "
        "(Layer FT) or that layer with a skip connection to the classifier (SCL FT). The table "
        "correlates NC1 with accuracy across the layers of each model.",
    ),
    "methods_vs_budget": (
        "Accuracy vs budget and trainable parameters, per method",
        "Mean test accuracy over pre-training runs (best-validation configuration per run) for "
        "each fine-tuning method and data budget (per_class: samples per class, — = all data).",
    ),
    "score_ranking": (
        "Transferability scores: ranking models without fine-tuning",
        "How well each score computed on the frozen features ranks the models by fine-tuned "
        "accuracy (weighted Kendall τ, whether the top-scored model is the best one, and the "
        "accuracy lost by picking it), and the seconds spent scoring vs fine-tuning.",
    ),
}

Builder = Callable[[ReportContext, str], Section]  # (context, section name) -> the section


def _query_section(ctx: ReportContext, name: str) -> tuple[Section, list[dict[str, Any]]]:
    """The section skeleton (``TEXTS``) and the records of ``analysis/<name>.sql``."""
    sql = load_sql(name)
    title, intro = TEXTS[name]
    sec = Section(name, title, intro, sql=sql, sql_name=f"analysis/{name}.sql")
    return sec, _fetch(ctx.con, sql)


def _scatter(x: str, y: str, by: Sequence[str], pool: bool) -> Builder:
    """A section that correlates x with y per group of ``by`` columns (and pooled across groups
    when ``pool``), with a scatter plot of the groups and their fits."""

    def build(ctx: ReportContext, name: str) -> Section:
        sec, recs = _query_section(ctx, name)
        rows, points = ctx.stats(recs, x, y, by, pool)
        if not rows:
            sec.note = NO_DATA
            return sec
        sec.tables.append(correlation_table(rows))
        fits = {r["group"]: r for r in rows if r["pooling"] == "group"}
        scatter_plot(points, fits, ctx.out / f"{name}.png", xlabel=x, ylabel=y, title=sec.title)
        sec.figures.append(f"{name}.png")
        return sec

    return build


def _layer_section(ctx: ReportContext, name: str) -> Section:
    sec, recs = _query_section(ctx, name)
    if not recs:
        sec.note = NO_DATA
        return sec
    rows, _ = ctx.stats(recs, "down_nc1", "acc", ("dataset", "arch", "run_id", "method"), True)
    if rows:
        sec.tables.append(correlation_table(rows))
    else:
        sec.intro += " No layer-wise fine-tuning results yet: NC1 curves only."
    layer_plot(recs, ctx.out / f"{name}.png")
    sec.figures.append(f"{name}.png")
    return sec


BUDGET_COLUMNS = (
    "dataset", "arch", "method", "per_class", "runs", "acc", "acc_std",
    "trainable_params", "total_params", "trainable_frac", "wall_s",
)  # fmt: skip


def _budget_section(ctx: ReportContext, name: str) -> Section:
    sec, recs = _query_section(ctx, name)
    if not recs:
        sec.note = NO_DATA
        return sec
    sec.tables.append(records_table(recs, BUDGET_COLUMNS))
    budget_plot(recs, ctx.out / f"{name}.png")
    sec.figures.append(f"{name}.png")
    return sec


RANKING_COLUMNS = (
    "dataset", "method", "score", "n", "weighted_tau", "top1_hit", "regret",
    "top1_model", "best_model", "score_s", "finetune_s", "speedup",
)  # fmt: skip


def _ranking_section(ctx: ReportContext, name: str) -> Section:
    sec, recs = _query_section(ctx, name)
    rows = ranking_rows(recs)
    if not rows:
        sec.note = NO_DATA
        return sec
    sec.tables.append(records_table(rows, RANKING_COLUMNS))
    return sec


# The report's sections in order: each runs the saved query of its name (the report does not
# glob analysis/, whose other files are building blocks).
SECTIONS: dict[str, Builder] = {
    "source_nc_vs_linear_probe": _scatter(
        "source_nc1", "acc_linear_probe", ("dataset", "arch"), True
    ),
    "downstream_nc_vs_accuracy": _scatter("down_nc1", "acc", ("dataset", "method"), False),
    "layerwise_nc_vs_accuracy": _layer_section,
    "methods_vs_budget": _budget_section,
    "score_ranking": _ranking_section,
}


def build_sections(ctx: ReportContext, names: Sequence[str] | None = None) -> list[Section]:
    """The report's sections in order (``SECTIONS``); callers may insert their own, e.g. findings
    at the front, before ``render_report``."""
    return [SECTIONS[n](ctx, n) for n in names or SECTIONS]


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
