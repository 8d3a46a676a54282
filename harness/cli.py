"""Command line: parses arguments and calls the library. Imports nothing heavy at start-up:
each subcommand imports its module only when it runs (``harness --help`` stays fast)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from harness.errors import HarnessError as CLIError


def _not_built(name: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise CLIError(f"`harness {name}` is not built yet ({issue})")

    return handler


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


def _cmd_measure(args: argparse.Namespace) -> int:
    from harness import measure

    return measure.main(args)


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

    s = sub.add_parser("sweep", help="Ray Tune fine-tuning sweep")
    s.add_argument("spec")
    s.set_defaults(func=_not_built("sweep", "fine-tuning issue"))

    s = sub.add_parser("query", help="SQL over the results tables (DuckDB)")
    s.add_argument("sql", nargs="?")
    s.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"])
    s.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    s.add_argument("--tables", action="store_true", help="list tables, columns and row counts")
    s.set_defaults(func=_cmd_query)

    s = sub.add_parser("correlate", help="correlate an NC metric with accuracy")
    s.set_defaults(func=_not_built("correlate", "analysis issue"))

    s = sub.add_parser("report", help="Markdown/HTML report with tables and figures")
    s.set_defaults(func=_not_built("report", "analysis issue"))

    s = sub.add_parser("run", help="the whole study: submit, measure, sweep, correlate, report")
    s.add_argument("spec")
    s.set_defaults(func=_not_built("run", "main-job issue"))
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
