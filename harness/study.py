"""The main job (`harness run SPEC`): the whole NC-transfer study, end to end and resumable.

Stages: pre-training grid (submit, wait) → NC per layer on source (during pre-training) and on
every downstream dataset → fine-tuning sweep → transferability scores → correlations → report
opening with the study's three findings. Every stage asks the store what is already done and
does only the rest, so a second run recomputes nothing and an interrupted run, started again,
ends with the same tables.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import store
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.analysis.findings import Finding
    from harness.spec.study import StudySpec

Echo = Callable[[str], None]


def _checkpoints(spec: StudySpec, root: Path) -> list[dict[str, Any]]:
    """The study's finished pre-training runs: run_id, arch, dataset, checkpoint (the file where
    the root now is: the store records it relative to the root)."""
    ids = spec.run_ids()
    if not store.parts("pretrain", root):
        return []
    con = store.connect(root)
    try:
        cur = con.execute(
            "SELECT run_id, any_value(arch), any_value(dataset), any_value(checkpoint) "
            "FROM pretrain WHERE run_id IN (SELECT unnest(?)) GROUP BY run_id ORDER BY run_id",
            [ids],
        )
        return [
            dict(run_id=r[0], arch=r[1], dataset=r[2], checkpoint=_resolved(r[3], root))
            for r in cur.fetchall()
        ]
    finally:
        con.close()


def _resolved(stored: str | None, root: Path) -> str | None:
    return None if stored is None else str(store.resolve_path(stored, root))


# ---------------------------------------------------------------------------------------------
# Stages


def stage_pretrain(spec: StudySpec, root: Path, executor: str, echo: Echo) -> None:
    from harness.cluster import submit

    sub = spec.pretrain_spec()
    jobs = submit.submit(sub, executor, root=root, wait=False, echo=echo, cancel_on_interrupt=True)
    if jobs and executor == "slurm":
        wait_live(root, spec.run_ids(), echo)


def wait_live(root: Path, run_ids: list[str], echo: Echo, poll_s: float = 5.0) -> None:
    """Live table of the study's runs by state until none is pending/running/requeued."""
    from rich.live import Live
    from rich.table import Table

    from harness.cluster import ledger

    def snapshot() -> dict[str, int]:
        states = {r["run_id"]: r["status"] for r in ledger.run_states(root)}
        counts: dict[str, int] = {}
        for rid in run_ids:
            s = states.get(rid, "submitted")
            counts[s] = counts.get(s, 0) + 1
        return counts

    def table(counts: dict[str, int]) -> Table:
        t = Table(title="pre-training runs")
        for k in counts:
            t.add_column(k)
        t.add_row(*(str(v) for v in counts.values()))
        return t

    def active(c: dict[str, int]) -> bool:
        return any(
            c.get(s, 0) for s in ("pending", "running", "requeued", "completing", "submitted")
        )

    def line(c: dict[str, int]) -> str:
        return "pre-training runs: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))

    counts = snapshot()
    if sys.stdout.isatty():
        with Live(table(counts), refresh_per_second=1, transient=True) as live:
            while active(counts):
                time.sleep(poll_s)
                counts = snapshot()
                live.update(table(counts))
    else:  # logs and pipes: one line per change
        echo(line(counts))
        while active(counts):
            time.sleep(poll_s)
            new = snapshot()
            if new != counts:
                echo(line(new))
            counts = new
    echo(line(counts))
    if counts.get("failed"):
        raise HarnessError(f"{counts['failed']} pre-training runs failed (see `harness status`)", 1)


def stage_measure(spec: StudySpec, root: Path, echo: Echo) -> None:
    """Per-layer NC of every checkpoint on every downstream dataset (source NC comes with
    pre-training)."""
    from harness.nc.measure import MeasureSpec, measure

    todo = [(ck, ds) for ck in _checkpoints(spec, root) for ds in spec.downstream]
    new = 0
    for ck, ds in todo:
        res = measure(
            MeasureSpec(
                dataset=ds,
                checkpoint=ck["checkpoint"],
                split=spec.measure.split,
                limit=spec.measure.limit,
                layers=spec.measure.layers,
                batch_size=spec.measure.batch_size,
            ),
            root=root,
        )
        new += bool(res)
    echo(f"downstream NC: {len(todo)} checkpoint x dataset pairs, {new} measured now")


def stage_sweep(spec: StudySpec, root: Path, echo: Echo, address: str | None) -> None:
    from harness.cluster import sweep

    if not _checkpoints(spec, root):
        raise HarnessError("no finished pre-training run to fine-tune", code=1)
    counts = sweep.run(spec.sweep_spec(), root=root, address=address, echo=echo)
    if counts["failed"]:
        echo(f"fine-tuning: {counts['failed']} trials failed (recorded in finetune)")


def stage_scores(spec: StudySpec, root: Path, echo: Echo) -> None:
    """Transferability scores (LogME, LEEP, NCTI parts, NC metrics) of each checkpoint's
    penultimate features on each downstream dataset."""
    import numpy as np
    import torch

    from harness import analysis, data, models

    done: set[tuple[str, str]] = set()
    if store.parts("scores", root):
        con = store.connect(root)
        done = {
            (r[0], r[1])
            for r in con.execute(
                "SELECT DISTINCT run_id, dataset FROM scores WHERE layer IS NULL"
            ).fetchall()
        }
        con.close()
    new = 0
    for ck in _checkpoints(spec, root):
        for ds_name in spec.downstream:
            if (ck["run_id"], ds_name) in done:
                continue
            model, _ = models.load_checkpoint(ck["checkpoint"])
            model.eval()
            ds = data.load(ds_name, "train", limit=spec.scores.limit, seed=0)
            feats, probs, labels = [], [], []
            loader = torch.utils.data.DataLoader(ds, batch_size=256)
            with torch.no_grad():
                for x, y in loader:
                    pre = (
                        model.features(x)
                        if isinstance(model, models.PretrainNet)
                        else model.forward_head(model.forward_features(x), pre_logits=True)
                    )
                    feats.append(pre.double().numpy())
                    probs.append(torch.softmax(model(x).double(), 1).numpy())
                    labels.append(y.numpy())
            rows = analysis.score_rows(
                np.concatenate(feats),
                np.concatenate(labels),
                np.concatenate(probs),
                run_id=ck["run_id"],
                dataset=ds_name,
                checkpoint=store.store_path(ck["checkpoint"], root),
                arch=ck["arch"],
            )
            analysis.write_scores(rows, root)
            new += 1
    echo(f"scores: {new} checkpoint x dataset pairs scored now")


# ---------------------------------------------------------------------------------------------
# Findings


def findings(spec: StudySpec, root: Path) -> list[Finding]:
    """The study's findings (``analysis.findings.evaluate``): each finding's primary test as the
    spec declares it, on the study's own runs and trials only."""
    from harness.analysis import findings as study_findings

    return study_findings.evaluate(
        spec.primary_tests(),
        root,
        spec.run_ids(),
        n_boot=spec.report.bootstrap,
        seed=spec.report.seed,
    )


def _write_report(spec: StudySpec, root: Path, out: Path, found: list[Finding]) -> dict[str, Any]:
    """The report with the findings first, scoped to the study's runs."""
    from harness import analysis

    return analysis.write_report(
        root,
        out,
        findings=found,
        n_boot=spec.report.bootstrap,
        seed=spec.report.seed,
        scope=spec.run_ids(),
    )


def _store_fingerprint(root: Path, spec: StudySpec) -> str:
    """What the report depends on: the set of committed parts, the report settings, each
    finding's primary test, and the code that writes it (the saved queries and the analysis
    modules: a newer harness rewrites an older report)."""
    import hashlib
    import json

    from harness import analysis

    code = [
        *analysis.saved_queries(),
        *sorted(Path(analysis.__file__).parent.glob("*.py")),
    ]  # the saved queries, then the modules, each by name: where they live does not count
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in code)).hexdigest()
    names = sorted(str(p.relative_to(root)) for t in store.TABLES for p in store.parts(t, root))
    names.append(digest)
    names.append(spec.report.model_dump_json())
    tests = {k: t.model_dump(mode="json") for k, t in spec.primary_tests().items()}
    names.append(json.dumps(tests, sort_keys=True))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def stage_report(
    spec: StudySpec, root: Path, echo: Echo, allow_damaged: bool = False
) -> dict[str, Any]:
    """Findings, correlations and the report; skipped when the store has not changed since the
    report in ``out`` was written (its fingerprint is kept next to it). A report that left
    damaged parts out says so at its top, is never up to date, and then fails (exit 1) unless
    ``allow_damaged`` (``store.check_left_out``)."""
    out = Path(spec.report.out or f"reports/{spec.name}")
    stamp, saved = out / ".fingerprint", out / "findings.txt"
    fp = _store_fingerprint(root, spec)
    if stamp.exists() and saved.exists() and stamp.read_text() == fp:
        lines = saved.read_text().splitlines()
        paths = {"markdown": out / "report.md", "html": out / "report.html", "figures": []}
        echo(f"report: up to date ({paths['markdown']}; the store has not changed)")
    else:
        found = findings(spec, root)
        lines = [f.line() for f in found]
        paths = _write_report(spec, root, out, found)
        saved.write_text("\n".join(lines) + "\n")
        if paths["left_out"]:
            stamp.unlink(missing_ok=True)
        else:
            stamp.write_text(fp)
        echo(f"report: {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures)")
    for ln in lines:
        echo(f"  {ln}")
    store.check_left_out(paths.get("left_out", []), "report", allow_damaged)
    return paths


# ---------------------------------------------------------------------------------------------


def run(
    spec: StudySpec,
    *,
    root=None,
    executor: str | None = None,
    address: str | None = None,
    echo: Echo = print,
    allow_damaged: bool = False,
) -> dict[str, Any]:
    """`harness run`: every stage in order; each skips what the store says is done; first,
    what a killed earlier run left running is stopped (its local jobs by the pre-training
    stage). ``allow_damaged``: the report stage exits 0 over a damaged store."""
    from harness.cluster import launch, orphans

    base = store.results_root(root).resolve()
    requested = executor or (None if spec.executor == "auto" else spec.executor)
    kind, why = launch.choose_executor(requested)
    echo(f"harness run {spec.name}: executor {kind} ({why}); results {base}")
    launch.sigterm_as_interrupt()
    orphans.reap_dead(orphans.guard_dir(base, "ray"), echo)  # a dead driver's Ray runtime
    t0 = time.perf_counter()
    stages = [
        ("pre-training", lambda: stage_pretrain(spec, base, kind, echo)),
        ("downstream NC", lambda: stage_measure(spec, base, echo)),
        ("fine-tuning sweep", lambda: stage_sweep(spec, base, echo, address)),
        ("transferability scores", lambda: stage_scores(spec, base, echo)),
    ]
    for i, (name, fn) in enumerate(stages, 1):
        echo(f"[{i}/5] {name}")
        fn()
    line = store.compaction_line(store.compact_tables(None, base))
    if line:  # before the report: the report's fingerprint is the list of parts
        echo(line)
    echo("[5/5] correlations and report")
    paths = stage_report(spec, base, echo, allow_damaged)
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    os.environ.pop("HARNESS_THREADS", None)
    return paths
