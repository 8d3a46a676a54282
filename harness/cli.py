"""Command line: parses arguments and calls the library. Imports nothing heavy at start-up:
each subcommand imports its module only when it runs (``harness --help`` stays fast)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.errors import HarnessError as CLIError


def _cmd_query(args: argparse.Namespace) -> int:
    from harness import query

    if args.tables:
        return query.list_tables(args.results, out=sys.stdout)
    if not args.sql:
        raise CLIError('query: give SQL (e.g. harness query "SELECT 42") or --tables')
    return query.run(args.sql, root=args.results, fmt=args.format, output=args.output)


def _cmd_status(args: argparse.Namespace) -> int:
    from harness import query

    return query.status(args.results, show_all=args.all)


def _cmd_submit(args: argparse.Namespace) -> int:
    from harness import config, pretrain

    flags = {
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem,
        "timeout_min": args.time,
        "partition": args.partition,
    }
    overrides = [f"resources.{k}={v}" for k, v in flags.items() if v is not None] + args.set
    spec = config.load_spec(args.spec, overrides)
    pretrain.submit(spec, args.executor or spec.executor, root=args.results, wait=args.wait)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from harness import config, sweep

    spec = config.load_spec(args.spec, args.set, kind=config.SweepSpec)
    if args.slurm:
        return sweep.submit_slurm(
            args.spec,
            args.set,
            nodes=args.nodes,
            root=args.results,
            cpus_per_task=args.cpus_per_task,
            time_min=args.time,
            partition=args.partition,
            wait=args.wait,
        )
    counts = sweep.run(spec, root=args.results, address=args.address)
    return 1 if counts["failed"] else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from harness import config, study

    spec = config.load_spec(args.spec, args.set, kind=config.StudySpec)
    executor = None if args.executor in (None, "auto") else args.executor
    study.run(spec, root=args.results, executor=executor, address=args.address)
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from harness import measure

    return measure.main(args)


def _cmd_correlate(args: argparse.Namespace) -> int:
    from harness import analysis

    return analysis.run_correlate(
        args.x,
        args.y,
        by=[c.strip() for c in args.by.split(",") if c.strip()],
        where=args.where,
        level=args.level,
        split=args.split,
        plot=args.plot,
        fmt=args.format,
        root=args.results,
        n_boot=args.bootstrap,
        seed=args.seed,
        ci=args.ci,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from harness import analysis

    return analysis.run_report(args.results, args.out, n_boot=args.bootstrap, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Neural-collapse transfer-learning benchmark harness.",
    )
    p.add_argument(
        "--results",
        default=None,
        help="results root (default: $HARNESS_RESULTS or ./results)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("submit", help="run a pre-training grid through submitit (SLURM or local)")
    s.add_argument("spec", help="YAML spec: base config, grid of lists, resources")
    s.add_argument(
        "--executor",
        choices=["auto", "slurm", "local", "debug"],
        default=None,
        help="default: the spec's, else slurm when sbatch is reachable, else local",
    )
    s.add_argument("--nodes", type=int)
    s.add_argument("--tasks-per-node", type=int)
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--mem", type=float, help="memory per node in GB")
    s.add_argument("--time", type=int, help="time limit in minutes")
    s.add_argument("--partition")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. base.epochs=3 or grid.loss=[ce,mse]",
    )
    s.add_argument("--wait", action="store_true", help="wait for SLURM jobs to finish")
    s.set_defaults(func=_cmd_submit)

    s = sub.add_parser("status", help="runs by status")
    s.add_argument("--all", action="store_true", help="list every run, not only the counts")
    s.set_defaults(func=_cmd_status)

    s = sub.add_parser("measure", help="per-layer NC metrics of a model on a dataset")
    s.add_argument("--model", help="timm architecture or preset name (random or pretrained init)")
    s.add_argument("--checkpoint", help="a harness checkpoint (.pt), loaded with weights_only")
    s.add_argument("--dataset", required=True, help="dataset name (see --help of datasets)")
    s.add_argument("--split", default="train", choices=["train", "val", "test"])
    s.add_argument("--layers", default="all", help="'all', or comma list of names / indices")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    s.add_argument(
        "--pool",
        default="avg",
        choices=["avg", "cls", "mean"],
        help="ViT tokens: cls or mean (avg = mean); CNN maps are always averaged",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of a randomly initialised --model")
    s.add_argument(
        "--ncc",
        action="store_true",
        help="second pass over the data for ncc_acc and nc4 (needs final class means)",
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_measure)

    s = sub.add_parser("sweep", help="Ray Tune fine-tuning sweep (local Ray by default)")
    s.add_argument("spec", help="YAML sweep spec: checkpoints, grid of trial fields, search")
    s.add_argument("--address", help="join a running Ray cluster (host:port)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. grid.epochs=[2]",
    )
    s.add_argument(
        "--slurm",
        action="store_true",
        help="run on a Ray cluster inside a SLURM allocation (slurm/ray-sweep.sbatch)",
    )
    s.add_argument("--nodes", type=int, default=2, help="with --slurm: nodes of the allocation")
    s.add_argument("--cpus-per-task", type=int, default=1, help="with --slurm: CPUs per node")
    s.add_argument("--time", type=int, default=60, help="with --slurm: time limit in minutes")
    s.add_argument("--partition", help="with --slurm: partition")
    s.add_argument("--wait", action="store_true", help="with --slurm: wait for the allocation")
    s.set_defaults(func=_cmd_sweep)

    s = sub.add_parser("query", help="SQL over the results tables (DuckDB)")
    s.add_argument("sql", nargs="?")
    s.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"])
    s.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    s.add_argument("--tables", action="store_true", help="list tables, columns and row counts")
    s.set_defaults(func=_cmd_query)

    s = sub.add_parser(
        "correlate",
        help="correlate an NC metric with accuracy (Markdown table, scatter plot)",
        description="Correlate two columns of the analysis view: Pearson, Spearman, Kendall and "
        "weighted Kendall tau with bootstrap intervals, and an OLS fit, per group of --by.",
    )
    s.add_argument("--x", required=True, metavar="METRIC", help="e.g. source_nc1, down_nc1")
    s.add_argument("--y", required=True, metavar="METRIC", help="e.g. acc_linear_probe")
    s.add_argument("--by", default="", metavar="COLS", help="comma list of grouping columns")
    s.add_argument("--where", default=None, metavar="SQL", help="filter on the view's columns")
    s.add_argument(
        "--level",
        choices=["model", "layer"],
        default=None,
        help="one row per model and dataset, or per layer (default: layer when a layer column "
        "is named, else model)",
    )
    s.add_argument("--split", default="train", choices=["train", "val", "test"], help="NC split")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="scatter with fit lines")
    s.add_argument("--format", default="markdown", choices=["markdown", "json"])
    s.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples for CIs")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--ci", type=float, default=0.95, help="interval level")
    s.set_defaults(func=_cmd_correlate)

    s = sub.add_parser("report", help="Markdown/HTML report with tables and figures")
    s.add_argument("--out", default=None, metavar="DIR", help="default: ./reports/latest")
    s.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples for CIs")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("run", help="the whole study: submit, measure, sweep, correlate, report")
    s.add_argument("spec", help="YAML study spec (benchmarks/quick.yaml)")
    s.add_argument(
        "--executor",
        choices=["auto", "slurm", "local", "debug"],
        default=None,
        help="default: the spec's; auto = slurm when sbatch is reachable, else local",
    )
    s.add_argument("--address", help="Ray cluster for the fine-tuning sweep (default: local Ray)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. pretrain.base.epochs=1",
    )
    s.set_defaults(func=_cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"harness: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
