"""Command line: parses arguments and calls the library.

Each subcommand is one small class below (its name, help, arguments and the call it makes),
listed in ``COMMANDS``; the parser is built from that table. Nothing heavy is imported at
start-up: a command imports its library module only when it runs (``harness --help`` stays
fast). ``--results DIR`` is accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from harness.errors import HarnessError as CLIError
from harness.spec import bounds
from harness.spec.registry import EXECUTOR_CHOICES


def _bounded(field: str) -> Callable[[str], int | float]:
    """An argparse ``type``: a number in ``bounds.FIELDS[field]``, so that a flag accepts what
    the spec key of the same name accepts (``--bootstrap 3`` is refused like ``bootstrap: 3``)."""
    rng = bounds.FIELDS[field]

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if rng.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rng.describe()} (got {text!r})") from None
        problem = rng.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = field  # what argparse calls the type in its messages
    return parse


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr, like every other bad input (exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"harness: {where}{message}; see `{self.prog} --help`\n")


class _Refused(argparse.Action):
    """An option the command does not take, refused with ``message`` saying what to do instead
    (an option users reach for by analogy with another command)."""

    def __init__(self, *args: object, message: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.message = message

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        raise argparse.ArgumentError(self, self.message)


def _add_set(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a spec value, e.g. {example}",
    )


def _add_spec(p: argparse.ArgumentParser, what: str, executor_help: str | None = None) -> None:
    """The spec file argument, and ``--executor`` for commands that run jobs."""
    p.add_argument("spec", help=f"YAML spec: {what}")
    if executor_help:
        p.add_argument("--executor", choices=EXECUTOR_CHOICES, default=None, help=executor_help)


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        type=_bounded("bootstrap"),
        default=1000,
        metavar="N",
        help="resamples for CIs",
    )
    p.add_argument("--seed", type=_bounded("seed"), default=0, help="bootstrap seed")


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study",
        default=None,
        metavar="SPEC",
        help="read only this study's runs and trials (a `harness run` spec); a shared results "
        "root holds many studies",
    )


def _add_allow_damaged(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-damaged",
        action="store_true",
        help="exit 0 even when damaged parts were left out (the output still says so)",
    )


def _study_scope(path: str | None) -> list[str] | None:
    """The pre-training run ids of the study spec at ``path`` (None: the whole root)."""
    if path is None:
        return None
    from harness.spec import study as studyspec
    from harness.spec.load import load_spec

    return load_spec(path, kind=studyspec.StudySpec).run_ids()


class Command:
    """One subcommand: ``arguments`` declares its options, ``run`` calls the library."""

    name = ""
    help = ""
    description: str | None = None
    # what it does with the results root: "read" (it must be a folder, and exist when named by
    # --results) or "write" (a folder, created if missing); checked before it runs
    root_use: str | None = None

    def arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


# resource flags of `harness submit`: flag, spec field (resources.<field>), type, help
RESOURCE_FLAGS = (
    ("--nodes", "nodes", int, "nodes per run (multi-node DDP)"),
    ("--tasks-per-node", "tasks_per_node", int, "processes per node (one per GPU)"),
    ("--cpus-per-task", "cpus_per_task", int, "CPUs per process"),
    ("--mem", "mem_gb", float, "memory per node in GB"),
    ("--time", "timeout_min", int, "time limit in minutes"),
    ("--partition", "partition", str, "SLURM partition"),
)


class Submit(Command):
    name = "submit"
    help = "run a pre-training grid through submitit (SLURM arrays or local)"
    root_use = "write"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        for flag, field, kind, text in RESOURCE_FLAGS:  # their ranges: the spec's check
            p.add_argument(flag, dest=field, type=kind, help=f"{text} (resources.{field})")
        _add_spec(
            p,
            "base config, grid of lists, resources",
            "default: the spec's, else slurm when sbatch is reachable, else local",
        )
        _add_set(p, "base.epochs=3 or grid.loss=[ce,mse]")
        p.add_argument("--wait", action="store_true", help="wait for SLURM jobs to finish")
        p.add_argument(
            "--hold", action="store_true", help="submit SLURM jobs held (release: scontrol release)"
        )
        p.add_argument(
            "--retry-failed",
            action="store_true",
            help="submit failed runs again (pre-training always does: every run not done)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from harness.cluster import submit
        from harness.spec.load import load_spec

        flags = [(f, getattr(args, f)) for _, f, _, _ in RESOURCE_FLAGS]
        overrides = [f"resources.{k}={v}" for k, v in flags if v is not None] + args.set
        spec = load_spec(args.spec, overrides)
        executor = args.executor or spec.executor
        submit.submit(
            spec,
            executor,
            root=args.results,
            wait=args.wait,
            hold=args.hold,
            retry_failed=args.retry_failed,
        )
        return 0


class QueryFlag(Command):
    """A store command with one on/off option: calls ``query.<name>(results, flag)``."""

    root_use = "read"

    def __init__(self, name: str, help: str, flag: str, flag_help: str) -> None:
        self.name, self.help, self.flag, self.flag_help = name, help, flag, flag_help

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(f"--{self.flag}", action="store_true", help=self.flag_help)

    def run(self, args: argparse.Namespace) -> int:
        from harness.cli import output as query

        return getattr(query, self.name)(args.results, getattr(args, self.flag))


class Measure(Command):
    name = "measure"
    help = "per-layer NC metrics of a model on a dataset"
    root_use = "write"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="timm architecture or preset name (random or pretrained)")
        p.add_argument("--checkpoint", help="a harness checkpoint (.pt), loaded with weights_only")
        p.add_argument("--dataset", required=True, help="dataset name")
        p.add_argument("--split", default="train", choices=["train", "val", "test"])
        p.add_argument("--layers", default="all", help="'all', or comma list of names / indices")
        p.add_argument("--batch-size", type=_bounded("batch_size"), default=256)
        p.add_argument(
            "--limit", type=_bounded("limit"), default=None, help="use at most this many samples"
        )
        p.add_argument(
            "--pool",
            default="auto",
            choices=["auto", "avg", "cls", "mean"],
            help="ViT tokens: cls or mean (avg = mean); auto = what the model's classifier reads "
            "(cls for a ViT classifying from CLS); CNN maps are always averaged",
        )
        p.add_argument(
            "--seed",
            type=_bounded("seed"),
            default=0,
            help="seed of a randomly initialised --model",
        )
        p.add_argument(
            "--ncc",
            action="store_true",
            help="second pass over the data for ncc_acc and nc4 (needs final class means)",
        )
        p.add_argument("--no-progress", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from harness.nc import measure

        return measure.main(args)


class Sweep(Command):
    name = "sweep"
    help = "Ray Tune fine-tuning sweep (local Ray by default)"
    root_use = "write"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        _add_spec(p, "checkpoints, grid of trial fields, search")
        p.add_argument(
            "--executor",
            nargs="?",
            action=_Refused,
            help=argparse.SUPPRESS,
            message="a sweep runs on Ray, not through an executor: local Ray by default, "
            "--address HOST:PORT to join a running Ray cluster, --slurm for a Ray cluster in a "
            "SLURM allocation",
        )
        p.add_argument("--address", help="join a running Ray cluster (host:port)")
        _add_set(p, "grid.epochs=[2]")
        p.add_argument(
            "--slurm",
            action="store_true",
            help="run on a Ray cluster inside a SLURM allocation (cluster/templates/ray-sweep.sbatch)",
        )
        for flag, field, default, text in (
            ("--nodes", "nodes", 2, "nodes of the allocation"),
            ("--cpus-per-task", "cpus_per_task", 1, "CPUs per node"),
            ("--time", "timeout_min", 60, "time limit in minutes"),
        ):
            p.add_argument(
                flag, type=_bounded(field), default=default, help=f"with --slurm: {text}"
            )
        p.add_argument("--partition", help="with --slurm: partition")
        p.add_argument("--wait", action="store_true", help="with --slurm: wait for the allocation")
        p.add_argument(
            "--retry-failed",
            action="store_true",
            help="run trials recorded as failed again (their new row supersedes the old)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from harness.spec.config import SweepSpec
        from harness.spec.load import load_spec

        spec = load_spec(args.spec, args.set, kind=SweepSpec)
        if args.slurm:
            from harness.cluster.slurm_sweep import submit_slurm

            keys = ("nodes", "cpus_per_task", "partition", "wait", "retry_failed")
            slurm = {k: getattr(args, k) for k in keys}
            return submit_slurm(args.spec, args.set, root=args.results, time_min=args.time, **slurm)
        from harness.cluster import sweep

        counts = sweep.run(
            spec, root=args.results, address=args.address, retry_failed=args.retry_failed
        )
        return 1 if counts["failed"] else 0


class Query(Command):
    name = "query"
    help = "SQL over the results tables (DuckDB, read-only)"
    root_use = "read"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("sql", nargs="?", help="one SELECT statement")
        p.add_argument(
            "--format",
            default="table",
            choices=["table", "csv", "json", "parquet"],
            help="json: strict JSON, NaN and infinities as null, DECIMAL as a number (exact when "
            "whole, else the nearest double), BLOB as base64; csv: LIST/STRUCT/MAP cells as "
            "their JSON text, BLOB as base64",
        )
        p.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
        p.add_argument("--tables", action="store_true", help="list tables, columns and row counts")

    def run(self, args: argparse.Namespace) -> int:
        from harness.cli import output as query

        if args.tables:
            return query.list_tables(args.results, out=sys.stdout)
        if not args.sql:
            raise CLIError('query: give SQL (e.g. harness query "SELECT 42") or --tables')
        return query.run(args.sql, root=args.results, fmt=args.format, output=args.output)


class Compact(Command):
    name = "compact"
    help = "merge each table's small Parquet parts into one sorted part (safe while others run)"
    root_use = "read"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("tables", nargs="*", metavar="TABLE", help="default: every table")
        p.add_argument(
            "--vacuum",
            action="store_true",
            help="instead of merging, delete the files merged parts replaced (kept until then: "
            "`harness doctor --fix` restores a damaged merged part from them)",
        )
        p.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="DAYS",
            help="with --vacuum: only files replaced more than DAYS ago (default 7; 0: all)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from harness.cli import output as query

        return query.compact(
            args.tables, root=args.results, vacuum=args.vacuum, older_than=args.older_than
        )


class Correlate(Command):
    name = "correlate"
    help = "correlate an NC metric with accuracy (Markdown table, scatter plot)"
    description = (
        "Correlate two columns of the analysis view: Pearson, Spearman, Kendall and weighted "
        "Kendall tau with bootstrap intervals, and an OLS fit, per group of --by."
    )
    root_use = "read"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--x", required=True, metavar="METRIC", help="e.g. source_nc1, down_nc1")
        p.add_argument("--y", required=True, metavar="METRIC", help="e.g. acc_linear_probe")
        p.add_argument("--by", default="", metavar="COLS", help="comma list of grouping columns")
        p.add_argument("--where", default=None, metavar="SQL", help="filter on the view's columns")
        p.add_argument(
            "--level",
            choices=["model", "layer", "trial"],
            default=None,
            help="one row per model and dataset, per layer, or per fine-tuning trial (default: "
            "layer when a layer column is named, else model)",
        )
        _add_study(p)
        _add_allow_damaged(p)
        p.add_argument(
            "--split", default="train", choices=["train", "val", "test"], help="NC split"
        )
        p.add_argument(
            "--plot",
            default=None,
            metavar="FILE.png",
            help="scatter with fit lines (.png/.pdf/.svg)",
        )
        p.add_argument("--format", default="markdown", choices=["markdown", "json"])
        _add_bootstrap(p)
        p.add_argument("--ci", type=_bounded("ci"), default=0.95, help="interval level")

    def run(self, args: argparse.Namespace) -> int:
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
            scope=_study_scope(args.study),
            allow_damaged=args.allow_damaged,
        )


class Report(Command):
    name = "report"
    help = "Markdown/HTML report with tables and figures"
    root_use = "read"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="default: ./reports/latest (an existing report folder is rewritten)",
        )
        _add_bootstrap(p)
        _add_study(p)
        _add_allow_damaged(p)

    def run(self, args: argparse.Namespace) -> int:
        from harness import analysis
        from harness.store.fileio import check_path

        if args.out or args.study is None:  # a study's default folder is its spec's
            check_path(args.out or analysis.DEFAULT_REPORT_DIR, "dir", "--out")
        if args.study is None:
            return analysis.run_report(
                args.results,
                args.out,
                n_boot=args.bootstrap,
                seed=args.seed,
                allow_damaged=args.allow_damaged,
            )
        from harness import store, study
        from harness.spec import study as studyspec
        from harness.spec.load import load_spec

        spec = load_spec(args.study, kind=studyspec.StudySpec)
        report = {"bootstrap": args.bootstrap, "seed": args.seed}
        report.update({"out": args.out} if args.out else {})
        spec = spec.model_copy(update={"report": spec.report.model_copy(update=report)})
        root = store.results_root(args.results)
        study.stage_report(spec, root, print, allow_damaged=args.allow_damaged)
        return 0


class Run(Command):
    name = "run"
    help = "the whole study: submit, measure, sweep, correlate, report"
    root_use = "write"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        _add_spec(
            p,
            "the study (e.g. benchmarks/quick.yaml)",
            "default: the spec's; auto = slurm when sbatch is reachable, else local",
        )
        p.add_argument("--address", help="Ray cluster for the fine-tuning sweep (default: local)")
        _add_set(p, "pretrain.base.epochs=1")
        _add_allow_damaged(p)

    def run(self, args: argparse.Namespace) -> int:
        from harness import study
        from harness.spec import study as studyspec
        from harness.spec.load import load_spec

        spec = load_spec(args.spec, args.set, kind=studyspec.StudySpec)
        executor = None if args.executor in (None, "auto") else args.executor
        study.run(
            spec,
            root=args.results,
            executor=executor,
            address=args.address,
            allow_damaged=args.allow_damaged,
        )
        return 0


COMMANDS: tuple[Command, ...] = (
    Submit(),
    QueryFlag(
        "status",
        "runs by status (pending / running / requeued / failed / done)",
        "all",
        "list every run, not only the counts",
    ),
    Measure(),
    Sweep(),
    Query(),
    Compact(),
    QueryFlag(
        "doctor",
        "list damaged parts (compacted ones checked against their checksums), stray files, job "
        "records and checkpoints; --fix repairs",
        "fix",
        "restore a damaged compacted part from the parts it replaced; move the rest to "
        "<results>/quarantine/ (nothing is deleted)",
    ),
    Correlate(),
    Report(),
    Run(),
)

RESULTS_HELP = "results root (default: $HARNESS_RESULTS or ./results)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Neural-collapse transfer-learning benchmark harness.")
    p.add_argument("--results", default=None, help=RESULTS_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        s = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.arguments(s)
        # also after the subcommand; SUPPRESS keeps a value given before it
        s.add_argument("--results", default=argparse.SUPPRESS, help=RESULTS_HELP)
        s.set_defaults(func=cmd.run, root_use=cmd.root_use)
    return p


def _results_arg(args: argparse.Namespace) -> str:
    """The results root a command was given (as ``harness.store.results_root`` reads it)."""
    import os

    return getattr(args, "results", None) or os.environ.get("HARNESS_RESULTS") or "results"


def _check_root(args: argparse.Namespace) -> None:
    """The results root, checked before a command runs (``fileio.check_path``): one it reads
    must be a folder, and must exist when --results names it (a missing default or
    $HARNESS_RESULTS root is a store with nothing in it yet); one it writes must be a folder
    that can be created or written."""
    import os

    from harness.store.fileio import check_path

    root, given = _results_arg(args), getattr(args, "results", None) is not None
    env = os.environ.get("HARNESS_RESULTS")
    what = "--results" if given else "$HARNESS_RESULTS" if env else "the results root"
    if args.root_use == "write":
        check_path(root, "dir", what)
    elif args.root_use == "read" and (given or os.path.lexists(root)):
        check_path(root, "root", what)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_root(args)
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"harness: {e}", file=sys.stderr)
        return e.code
    except Exception as e:  # a full disk anywhere (a folder, a log, a lock): one line, exit 1
        from harness.store.fileio import disk_full_cause, disk_full_message

        cause = disk_full_cause(e)
        if cause is None:
            raise
        where = cause.filename or _results_arg(args)
        print(f"harness: {disk_full_message(where, cause.errno)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
