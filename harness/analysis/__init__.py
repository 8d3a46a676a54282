"""Analysis: correlations of NC metrics with accuracy, transferability scores, plots and the report.

One module per part, each usable on its own; this package re-exports their public names, so
``from harness import analysis; analysis.correlate(...)`` is the way in:

* ``stats``: Pearson, Spearman, Kendall τ and weighted Kendall τ from ``scipy.stats`` with
  p-values and seeded bootstrap intervals, OLS, per group and pooled (``correlation_stats``,
  ``correlate_groups``, ``group_stats``).
* ``scores``: transferability scores (LogME, LEEP, NCTI parts, NC metrics of pre-trained
  features) written to the ``scores`` table; ``combine_parts``, ``rank_eval``, ``ranking_rows``.
* ``views``: the saved queries of ``harness/analysis/sql/*.sql`` with their shared CTEs, and the analysis
  view (``view_sql``) whose columns ``harness correlate`` resolves its metrics against.
* ``correlation``: ``harness correlate`` (``correlate``, ``run_correlate``).
* ``tables`` and ``plots``: Markdown/HTML tables (the findings with verdict badges) and PNG
  figures (the findings' forest plot, NC1 across depth, accuracy vs trainable parameters).
* ``report``: ``harness report``, Markdown + self-contained HTML: the findings first, then
  figures, short tables, long ones folded, and the SQL behind each section (``build_sections``,
  ``findings_section``, ``write_report``).
"""

from harness.analysis.correlation import Correlation, correlate, run_correlate
from harness.analysis.plots import depth_plot, forest_plot, fraction_plot, scatter_plot
from harness.analysis.report import (
    BUDGET_COLUMNS,
    DEFAULT_REPORT_DIR,
    INLINE_SQL,
    NO_DATA,
    ORDER,
    OWN_SECTIONS,
    RANKING_COLUMNS,
    SECTIONS,
    ReportContext,
    Section,
    build_sections,
    findings_section,
    query_text,
    render_html,
    render_markdown,
    run_report,
    write_report,
)
from harness.analysis.scores import (
    NC_METRICS,
    SCORES,
    combine_parts,
    compute_scores,
    higher_is_better,
    leep,
    logme,
    nc_scores,
    ncti_parts,
    rank_eval,
    ranking_rows,
    score_features,
    score_rows,
    write_scores,
)
from harness.analysis.stats import (
    CORRELATIONS,
    MIN_POINTS,
    POOLINGS,
    Pooling,
    Statistic,
    correlate_groups,
    correlation_stats,
    group_stats,
)
from harness.analysis.tables import (
    MIN_GROUP,
    VERDICT_COLORS,
    Table,
    correlation_table,
    findings_table,
    mean_interval,
    ranking_summary,
    records_table,
)
from harness.analysis.views import (
    ACC_METHODS,
    LAYER_COLUMNS,
    LEVELS,
    SQL,
    fetch_records,
    load_sql,
    read_sql,
    saved_queries,
    view_sql,
    with_common,
)
from harness.errors import HarnessError

__all__ = [
    "ACC_METHODS",
    "SQL",
    "BUDGET_COLUMNS",
    "CORRELATIONS",
    "Correlation",
    "DEFAULT_REPORT_DIR",
    "HarnessError",
    "INLINE_SQL",
    "LAYER_COLUMNS",
    "LEVELS",
    "MIN_GROUP",
    "MIN_POINTS",
    "NC_METRICS",
    "NO_DATA",
    "ORDER",
    "OWN_SECTIONS",
    "POOLINGS",
    "Pooling",
    "RANKING_COLUMNS",
    "ReportContext",
    "SCORES",
    "SECTIONS",
    "Section",
    "Statistic",
    "Table",
    "VERDICT_COLORS",
    "fetch_records",
    "build_sections",
    "combine_parts",
    "compute_scores",
    "correlate",
    "correlate_groups",
    "correlation_stats",
    "correlation_table",
    "depth_plot",
    "findings_section",
    "findings_table",
    "forest_plot",
    "fraction_plot",
    "group_stats",
    "higher_is_better",
    "leep",
    "load_sql",
    "logme",
    "mean_interval",
    "nc_scores",
    "ncti_parts",
    "query_text",
    "rank_eval",
    "ranking_rows",
    "ranking_summary",
    "read_sql",
    "saved_queries",
    "records_table",
    "render_html",
    "render_markdown",
    "run_correlate",
    "run_report",
    "scatter_plot",
    "score_features",
    "score_rows",
    "view_sql",
    "with_common",
    "write_report",
    "write_scores",
]
