"""``harness report``: Markdown + HTML with the findings first, then figures, short tables and
the SQL behind each section.

The first screen is the findings: one row per finding (primary estimate, interval, units,
verdict) and a forest plot of every estimate. The sections below each run one saved query of
``analysis/`` (``SECTIONS`` names them; the report does not glob the folder) or one of the
report's own (``INLINE_SQL``), turn the records into a figure and a short table, and keep long
tables collapsed under it with the query they came from, so every number can be reproduced
with ``harness query``. ``report.html`` is self-contained (figures embedded, inline CSS);
``report.md`` links the PNG files next to it.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import store
from harness.analysis.plots import (
    depth_plot,
    forest_plot,
    fraction_plot,
    scatter_plot,
)
from harness.analysis.scores import ranking_rows
from harness.analysis.stats import group_stats, is_missing
from harness.analysis.tables import (
    MIN_GROUP,
    VERDICT_COLORS,
    Table,
    correlation_table,
    findings_table,
    format_value,
    interval_cell,
    mean_interval,
    ranking_summary,
    records_table,
    verdict_slug,
)
from harness.analysis.views import fetch_records, read_sql, with_common
from harness.errors import HarnessError
from harness.store.fileio import atomic_write_text

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

    from harness.analysis.findings import Finding

INLINE_ROWS = 12  # longer tables are collapsed (<details>)


@dataclass
class Section:
    """One part of the report. ``items`` are bullet points; ``note`` replaces the content when
    there is no data yet; ``figures`` are file names inside the report folder; ``queries`` the
    (where, SQL) of every query the section ran; ``tables_first``: tables above the figures."""

    key: str
    title: str
    intro: str = ""
    items: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    queries: list[tuple[str, str]] = field(default_factory=list)
    note: str | None = None
    tables_first: bool = False


@dataclass
class ReportContext:
    """What every section builder reads: the (scoped) connection, the output folder and the
    bootstrap settings."""

    con: DuckDBPyConnection
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

    def query(self, sec: Section, name: str) -> list[dict[str, Any]]:
        """The records of query ``name`` (``query_text``), run after the shared CTEs; the
        section records its own text (the report prints the shared block once)."""
        where, own = query_text(name, shared=False)
        sec.queries.append((where, own))
        return fetch_records(self.con, with_common(own))


NO_DATA = "no data yet"

# The report's own queries (the saved ones are analysis/<name>.sql), after common.sql's CTEs.
INLINE_SQL: dict[str, str] = {
    "nc_depth": """\
-- NC1 of every measured layer of each pre-training run's features (train split), on the
-- source (pre-training) dataset and on each downstream dataset.
SELECT n.side, n.dataset, a.arch, p.loss, n.run_id, n.layer, n.layer_index, n.depth_frac,
       n.value AS nc1
FROM nc_named n
LEFT JOIN run_arch a ON a.run_id = n.run_id
LEFT JOIN pretrain_one p ON p.run_id = n.run_id
WHERE n.metric = 'nc1' AND n.split = 'train'
ORDER BY n.side DESC, n.dataset, a.arch, n.run_id, n.layer_index""",
    "pretrain_runs": """\
-- Each pre-training run (its longest-trained row) and its test accuracy on the source data.
SELECT run_id, arch, loss, dataset AS source, epochs, test_acc AS source_acc
FROM pretrain_one
ORDER BY arch, loss, run_id""",
}


def query_text(name: str, *, shared: bool = True) -> tuple[str, str]:
    """(where the query is kept, its text): ``INLINE_SQL`` or ``analysis/<name>.sql``; complete
    (the shared CTEs of ``harness/analysis/sql/common.sql`` in front) unless ``shared=False``."""
    if name in INLINE_SQL:
        where, own = f"harness/analysis/report.py INLINE_SQL[{name!r}]", INLINE_SQL[name]
    else:
        where, own = f"harness/analysis/sql/{name}.sql", read_sql(name)
    return where, with_common(own) if shared else own.strip()


# The title and introduction of each section.
TEXTS: dict[str, tuple[str, str]] = {
    "layerwise_nc_vs_accuracy": (
        "NC1 across depth",
        "NC1 of every layer of each pre-training run (one line per run, coloured by its loss; "
        "black: the median over runs), on the pre-training data and on the downstream data, "
        "and the accuracy of fine-tuning that layer alone (Layer FT) or with a skip connection "
        "to the classifier (SCL FT).",
    ),
    "methods_vs_budget": (
        "Accuracy vs trainable parameters, per method and data budget",
        "Mean test accuracy over pre-training runs (each run: its best-validation "
        "configuration) against the fraction of parameters each method trains, with the "
        "interval of the mean over runs (t); per_class: samples per class, — = all data.",
    ),
    "score_ranking": (
        "Transferability scores: ranking models without fine-tuning",
        "How well each score computed on frozen features ranks the models by fine-tuned "
        "accuracy: weighted Kendall τ per ranking (one per downstream dataset and method), how "
        "often the top-scored model is the best one and the accuracy lost by picking it.",
    ),
    "pretrain_runs": (
        "Pre-training runs",
        "Each pre-training run and its test accuracy on the pre-training (source) dataset.",
    ),
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
}

Builder = Callable[[ReportContext, str], Section]  # (context, section name) -> the section


def _section(name: str) -> Section:
    title, intro = TEXTS[name]
    return Section(name, title, intro)


def _queried(ctx: ReportContext, name: str) -> tuple[Section, list[dict[str, Any]]]:
    """The section ``name`` and the records of its query; no records: the section says so."""
    sec = _section(name)
    recs = ctx.query(sec, name)
    if not recs:
        sec.note = NO_DATA
    return sec, recs


def _left_out(dropped: int, unit: str) -> str:
    return (
        f"{dropped} group(s) with fewer than {MIN_GROUP} {unit}s are plotted, not tabulated."
        if dropped
        else ""
    )


def _scatter(x: str, y: str, by: Sequence[str], pool: bool) -> Builder:
    """A section that correlates x with y per group of ``by`` columns (and pooled across groups
    when ``pool``), with a scatter plot of the groups and their fits."""

    def build(ctx: ReportContext, name: str) -> Section:
        sec = _section(name)
        rows, points = ctx.stats(ctx.query(sec, name), x, y, by, pool)
        if not rows:
            sec.note = NO_DATA
            return sec
        table = correlation_table(rows, min_n=MIN_GROUP)
        table.caption = f"correlations per group ({len(table.rows)} rows)"
        sec.tables.append(table)
        sec.items = [t for t in [_left_out(len(rows) - len(table.rows), "point")] if t]
        fits = {r["group"]: r for r in rows if r["pooling"] == "group"}
        scatter_plot(points, fits, ctx.out / f"{name}.png", xlabel=x, ylabel=y, title=sec.title)
        sec.figures.append(f"{name}.png")
        return sec

    return build


def _layer_section(ctx: ReportContext, name: str) -> Section:
    sec = _section(name)
    recs = ctx.query(sec, name)
    curves = ctx.query(sec, "nc_depth")
    if not curves:
        sec.note = NO_DATA
        return sec
    depth_plot(curves, ctx.out / f"{name}.png", acc_records=recs)
    sec.figures.append(f"{name}.png")
    sec.items.append(auto_gap_line(ctx.query(sec, "layer_auto_gap")))
    rows, _ = ctx.stats(recs, "down_nc1", "acc", ("dataset", "arch", "run_id", "method"), True)
    table = correlation_table(rows, min_n=MIN_GROUP)
    if table.rows:
        table.caption = f"NC1 vs accuracy across the layers of each model ({len(table.rows)} rows)"
        table.collapsed = True  # one row per model: the figure shows it better
        sec.tables.append(table)
    return sec


def auto_gap_line(recs: Sequence[Mapping[str, Any]]) -> str:
    """One line on ``layer: auto`` from ``harness/analysis/sql/layer_auto_gap.sql``'s records: the mean gap
    to the best block the study tried, and how often the pick was that block."""
    head = "layer: auto"  # plain text: items are not Markdown in the HTML page
    ok = [r for r in recs if not is_missing(r["gap_pts"])]
    if not ok:
        return f"{head} — no run and dataset where SCL ran at the picked block and another."
    gap = sum(r["gap_pts"] for r in ok) / len(ok)
    hits = sum(r["picked"] == r["best"] for r in ok)
    blocks = sorted({r["blocks"] for r in ok})
    span = f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]}–{blocks[-1]}"
    return (
        f"{head} — over {len(ok)} (run, dataset, budget) groups where SCL ran at {span} blocks, "
        f"the picked block's test accuracy is {gap:.1f} points below the best block tried "
        f"(an oracle, chosen by test accuracy); the pick was that block in {hits} of {len(ok)}. "
        "benchmarks/bench_layer_auto.py measures the gap against every block."
    )


BUDGET_COLUMNS = (
    "dataset", "arch", "method", "per_class", "runs", "acc", "acc CI",
    "trainable_frac", "trainable_params", "total_params", "wall_s",
)  # fmt: skip


def _budget_section(ctx: ReportContext, name: str) -> Section:
    sec, recs = _queried(ctx, name)
    if not recs:
        return sec
    for r in recs:
        r["acc_lo"], r["acc_hi"] = mean_interval(r["acc"], r["acc_std"], r["runs"], ctx.ci)
        r["acc CI"] = interval_cell(r["acc_lo"], r["acc_hi"], ".4g")
    fraction_plot(recs, ctx.out / f"{name}.png")
    sec.figures.append(f"{name}.png")
    kept = [r for r in recs if r["runs"] >= MIN_GROUP]
    sec.items = [t for t in [_left_out(len(recs) - len(kept), "run")] if t]
    if kept:
        sec.tables.append(
            records_table(kept, BUDGET_COLUMNS, caption=f"accuracy per group ({len(kept)} rows)")
        )
    return sec


RANKING_COLUMNS = (
    "dataset", "method", "score", "n", "weighted_tau", "top1_hit", "regret",
    "top1_model", "best_model", "score_s", "finetune_s", "speedup",
)  # fmt: skip


def _ranking_section(ctx: ReportContext, name: str) -> Section:
    sec = _section(name)
    rows = ranking_rows(ctx.query(sec, name))
    if not rows:
        sec.note = NO_DATA
        return sec
    summary = ranking_summary(rows)
    sec.tables.append(records_table(summary, caption="per score"))
    sec.tables.append(
        records_table(rows, RANKING_COLUMNS, caption=f"every ranking ({len(rows)} rows)")
    )
    sec.tables[-1].collapsed = True
    return sec


def _runs_section(ctx: ReportContext, name: str) -> Section:
    sec, recs = _queried(ctx, name)
    if not recs:
        return sec
    cols = ("run_id", "arch", "loss", "source", "epochs", "source_acc")
    every = records_table(recs, cols, caption=f"every run ({len(recs)} runs)")
    if len(recs) > INLINE_ROWS:
        sec.tables.append(_runs_summary(recs, ctx.ci))
    sec.tables.append(every)
    return sec


def _runs_summary(recs: Sequence[Mapping[str, Any]], ci: float) -> Table:
    """Source accuracy per (arch, loss, source): runs, mean and its interval; groups of fewer
    than MIN_GROUP runs left out."""
    import numpy as np

    groups: dict[tuple, list[float]] = {}
    for r in recs:
        if not is_missing(r["source_acc"]):
            groups.setdefault((r["arch"], r["loss"], r["source"]), []).append(r["source_acc"])
    rows = []
    for (arch, loss, source), accs in sorted(groups.items(), key=str):
        if len(accs) >= MIN_GROUP:
            m, s = float(np.mean(accs)), float(np.std(accs))
            lo, hi = mean_interval(m, s, len(accs), ci)
            rows.append([format_value(arch), format_value(loss), format_value(source), str(len(accs)), f"{m:.4g}",
                         interval_cell(lo, hi, ".4g")])  # fmt: skip
    cols = ["arch", "loss", "source", "runs", "source_acc", "CI"]
    return Table(cols, rows, caption="per architecture and loss")


# The report's sections in order. ``SECTIONS`` run the saved query of their name (the report
# does not glob analysis/, whose other files are building blocks); ``OWN_SECTIONS`` run the
# report's own (``INLINE_SQL``).
SECTIONS: dict[str, Builder] = {
    "layerwise_nc_vs_accuracy": _layer_section,
    "methods_vs_budget": _budget_section,
    "score_ranking": _ranking_section,
    "source_nc_vs_linear_probe": _scatter(
        "source_nc1", "acc_linear_probe", ("dataset", "arch"), True
    ),
    "downstream_nc_vs_accuracy": _scatter("down_nc1", "acc", ("dataset", "method"), False),
}
OWN_SECTIONS: dict[str, Builder] = {"pretrain_runs": _runs_section}
ORDER = (
    "layerwise_nc_vs_accuracy", "methods_vs_budget", "score_ranking", "pretrain_runs",
    "source_nc_vs_linear_probe", "downstream_nc_vs_accuracy",
)  # fmt: skip


def build_sections(ctx: ReportContext, names: Sequence[str] | None = None) -> list[Section]:
    """The report's sections in order (``ORDER``); callers may insert their own, e.g. the
    findings at the front (``findings_section``), before ``render_markdown``/``render_html``."""
    builders = {**SECTIONS, **OWN_SECTIONS}
    return [builders[n](ctx, n) for n in names or ORDER]


def findings_section(findings: Sequence[Finding | str], out: Path) -> Section:
    """The first section: the findings table and their forest plot (``findings.png``).
    Plain strings (an older caller's one-line findings) become bullet points."""
    sec = Section("findings", "Findings", tables_first=True)
    objs = [f for f in findings if not isinstance(f, str)]
    sec.items = [f for f in findings if isinstance(f, str)]
    if objs:
        sec.intro = (
            "Each finding's pre-declared primary test and its verdict; in the plot, the primary "
            "estimate (filled, in the verdict's colour) and the other groupings as sensitivity "
            "analyses (hollow, no verdict), each with its interval."
        )
        sec.tables.append(findings_table(objs))
        what = [[f.key, f.claim, f.test] for f in objs]
        cols = ["#", "claim", "primary test"]
        sec.tables.append(Table(cols, what, caption="what each finding tests", collapsed=True))
        forest_plot(objs, out / "findings.png")
        sec.figures.append("findings.png")
    return sec


# ---------------------------------------------------------------------------------------------
# Rendering


def _folded(t: Table) -> bool:
    return t.collapsed if t.collapsed is not None else len(t.rows) > INLINE_ROWS


def _ordered(s: Section) -> list[tuple[str, Any]]:
    """The section's shown parts in order: ('table', t) and ('figure', name)."""
    tables = [("table", t) for t in s.tables if not _folded(t)]
    figures = [("figure", f) for f in s.figures]
    return tables + figures if s.tables_first else figures + tables


TITLE = "Neural collapse and transfer: report"


def render_markdown(sections: Sequence[Section], header: str = "", alert: str = "") -> str:
    """report.md: the sections with relative figure links; long tables and the SQL folded;
    ``alert`` (a damaged store) stands above everything."""
    parts = [
        f"# {TITLE}\n\n",
        f"> **{alert}**\n\n" if alert else "",
        header + "\n" if header else "",
    ]
    for i, s in enumerate(sections, 1):
        parts.append(f"\n## {i}. {s.title}\n\n")
        if s.intro:
            parts.append(s.intro + "\n\n")
        if s.note:
            parts.append(f"_{s.note}_\n\n")
        for kind, part in _ordered(s):
            parts.append(part.markdown() + "\n" if kind == "table" else f"![{s.title}]({part})\n\n")
        parts += [f"- {item}\n" for item in s.items]
        if s.items:
            parts.append("\n")
        for t in s.tables:
            if _folded(t):
                parts.append(
                    f"<details><summary>{t.caption}</summary>\n\n{t.markdown()}\n</details>\n\n"
                )
        for where, sql in s.queries:
            parts.append(f"SQL (`{where}`, run after the [shared SQL](#{SHARED_ID})):\n\n")
            parts.append(f"```sql\n{sql.strip()}\n```\n\n")
    shared = _shared_sql(sections)
    if shared:
        parts.append(f"\n<a id='{SHARED_ID}'></a>\n\n## {SHARED_TITLE}\n\n{SHARED_NOTE}\n\n")
        parts.append(f"```sql\n{shared}\n```\n")
    return "".join(parts)


SHARED_ID = "shared-sql"
SHARED_TITLE = "Shared SQL (harness/analysis/sql/common.sql)"
SHARED_NOTE = (
    "The CTEs every query above runs after, printed once. To run a query with harness query, "
    "put this block first and the query after it (a query's own WITH then becomes a comma)."
)


def _shared_sql(sections: Sequence[Section]) -> str | None:
    """The shared CTEs the sections' queries ran after (``with_common``); None when no section
    ran a query."""
    return "WITH\n" + read_sql("common").strip() if any(s.queries for s in sections) else None


def _css() -> str:
    badges = "".join(f".v-{verdict_slug(v)}{{background:{c}}}" for v, c in VERDICT_COLORS.items())
    return (
        "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1180px;"
        "margin:1.2em auto;padding:0 1em;color:#1f2328;line-height:1.4}"
        "h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.6em 0 .4em;"
        "border-bottom:1px solid #d0d7de;padding-bottom:.2em}"
        ".meta{color:#57606a;font-size:82%;margin:.2em 0 1em}"
        "table{border-collapse:collapse;margin:.6em 0;font-size:88%}"
        "td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}"
        "th{background:#f6f8fa}td.num{text-align:right;white-space:nowrap}"
        "tr.noted td{border-bottom:none}tr.note td{text-align:left;color:#57606a;"
        "font-size:92%;border-top:none;padding-top:0}"
        ".badge{color:#fff;border-radius:10px;padding:1px 9px;font-size:90%;white-space:nowrap}"
        + badges
        + "img{max-width:100%;display:block;margin:.4em 0}"
        "details{margin:.4em 0}summary{cursor:pointer;color:#0969da}"
        "pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:80%}"
        "nav{font-size:85%;color:#57606a}nav a{color:#0969da;margin-right:.9em}"
    )


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(
    sections: Sequence[Section], header: str = "", folder: Path | None = None, alert: str = ""
) -> str:
    """report.html: self-contained (inline CSS; figures from ``folder`` embedded as data URIs,
    else linked by name); long tables and the SQL folded; ``alert`` (a damaged store) stands
    above everything."""
    esc = html.escape

    def img(name: str, alt: str) -> str:
        src = _data_uri(folder / name) if folder is not None else name
        return f"<img src='{src}' alt='{esc(alt)}'>\n"

    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(TITLE)}</title>"
        f"<style>{_css()}</style></head><body>\n<h1>{esc(TITLE)}</h1>\n"
    ]
    if alert:
        parts.append(
            "<p role='alert' style='background:#ffebe9;border:1px solid #cf222e;padding:.5em "
            f".8em;font-weight:bold'>{esc(alert)}</p>\n"
        )
    if header:
        parts.append(f"<p class='meta'>{esc(header)}</p>\n")
    links = "".join(
        f"<a href='#{esc(s.key)}'>{i}. {esc(s.title)}</a>" for i, s in enumerate(sections, 1)
    )
    parts.append(f"<nav>{links}</nav>\n")
    for i, s in enumerate(sections, 1):
        parts.append(f"<h2 id='{esc(s.key)}'>{i}. {esc(s.title)}</h2>\n")
        if s.intro:
            parts.append(f"<p>{esc(s.intro)}</p>\n")
        if s.note:
            parts.append(f"<p><em>{esc(s.note)}</em></p>\n")
        for kind, part in _ordered(s):
            parts.append(part.html() if kind == "table" else img(part, s.title))
        if s.items:
            parts.append("<ul>" + "".join(f"<li>{esc(it)}</li>" for it in s.items) + "</ul>\n")
        for t in s.tables:
            if _folded(t):
                parts.append(f"<details><summary>{esc(t.caption)}</summary>{t.html()}</details>\n")
        for where, sql in s.queries:
            parts.append(
                f"<details><summary>SQL ({esc(where)}, run after the "
                f"<a href='#{SHARED_ID}'>shared SQL</a>)</summary>"
                f"<pre><code>{esc(sql.strip())}</code></pre></details>\n"
            )
    shared = _shared_sql(sections)
    if shared:
        parts.append(
            f"<h2 id='{SHARED_ID}'>{esc(SHARED_TITLE)}</h2>\n<p>{esc(SHARED_NOTE)}</p>\n"
            f"<details><summary>the shared CTEs</summary><pre><code>{esc(shared)}</code></pre>"
            "</details>\n"
        )
    parts.append("</body></html>\n")
    return "".join(parts)


DEFAULT_REPORT_DIR = Path("reports") / "latest"


def _connect(
    base: Path, scope: Sequence[str] | None, left_out: list[store.Damage] | None = None
) -> Any:
    """The one connection the report reads through: the study's rows only when ``scope``; the
    damaged parts it leaves out are added to ``left_out``."""
    return store.connect(base, scope=scope, left_out=left_out)


def write_report(
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    findings: Sequence[Finding | str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    scope: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNG figures to ``out`` (default
    ./reports/latest). ``findings`` come first (table and forest plot); ``scope``: the study's
    pre-training run ids, the only runs read (None: every run in the root). Returns the paths
    ({'markdown', 'html', 'figures'}) and the damaged parts left out ('left_out', named at the
    top of the page). An empty store: HarnessError (code 1)."""
    import datetime as dt

    base = store.results_root(root)
    if not store.has_results(base):
        raise HarnessError(f"no results under {base}", code=1)
    out = Path(out) if out else DEFAULT_REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    left_out: list[store.Damage] = []
    con = _connect(base, scope, left_out)
    try:
        sections = build_sections(ReportContext(con, out, n_boot=n_boot, seed=seed, ci=ci))
    finally:
        con.close()
    if findings:
        sections.insert(0, findings_section(findings, out))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = "all runs" if scope is None else f"{len(scope)} pre-training runs of this study"
    header = (
        f"Results: {base.resolve()} ({runs}) · generated {stamp} · intervals: {ci:.0%} "
        f"(correlations: bootstrap percentile, {n_boot} resamples, seed {seed})."
    )
    md, page = out / "report.md", out / "report.html"
    alert = store.damage_banner(left_out) if left_out else ""
    atomic_write_text(md, render_markdown(sections, header, alert))
    atomic_write_text(page, render_html(sections, header, folder=out, alert=alert))
    figures = [out / f for s in sections for f in s.figures]
    return dict(markdown=md, html=page, figures=figures, left_out=left_out)


def run_report(
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    allow_damaged: bool = False,
) -> int:
    """`harness report`: write the report and print where it went; over a damaged store the
    last line says so and the exit is 1 unless ``allow_damaged``."""
    paths = write_report(root, out, n_boot=n_boot, seed=seed)
    print(f"wrote {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures)")
    store.check_left_out(paths["left_out"], "report", allow_damaged)
    return 0
