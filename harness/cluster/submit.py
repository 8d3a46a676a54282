"""`harness submit`: a pre-training grid through submitit, exactly once per run.

Steps: build and validate every run config, check data roots, then under the results root's
submit lock ask the ledger which runs are new, check that the cluster can take them, submit them
(SLURM: job arrays within ``MaxArraySize``; local: waves that fit this machine) and record which
run went to which task. The submitting process imports no torch: it only builds configs and
calls submitit.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import store
from harness.cluster import ledger, orphans
from harness.errors import HarnessError

Echo = Callable[[str], None]


def preflight(runs: Sequence[Any]) -> None:
    """Check what a job would only find out on the cluster (dataset roots) before submitting."""
    from harness import data

    seen = set()
    for cfg in runs:
        key = (cfg.dataset, cfg.data_root, tuple(sorted(cfg.data_kwargs.items())))
        if key not in seen:
            seen.add(key)
            data.info(cfg.dataset, root=cfg.data_root, **cfg.data_kwargs)


def array_chunks(n: int, max_array_size: int) -> list[range]:
    """Index ranges of ``n`` tasks in arrays of at most ``max_array_size`` tasks each."""
    size = max(1, max_array_size)
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def check_capacity(n: int, limits: Any, queued: int) -> None:
    """One clear line, before anything is submitted, when the cluster cannot queue ``n`` jobs."""
    room = limits.max_job_count - queued
    caps = [
        (
            room,
            f"MaxJobCount {limits.max_job_count} with {queued} job records in the controller now",
        )
    ]
    if limits.max_submit_jobs is not None:
        caps.append((limits.max_submit_jobs, f"your MaxSubmitJobs {limits.max_submit_jobs}"))
    can, why = min(caps)
    if n > can:
        raise HarnessError(
            f"{n} runs to submit but the cluster takes at most {max(0, can)} more jobs ({why}); "
            "nothing submitted: split the grid (e.g. by seed) or wait for the queue to drain",
            code=1,
        )


def sbatch_message(e: BaseException) -> str:
    """sbatch's own error lines out of submitit's exception, as one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errs = [ln.removeprefix("sbatch: error: ") for ln in lines if "error" in ln.lower()]
    text = "; ".join(dict.fromkeys(errs or lines[-1:])) or type(e).__name__
    return " ".join(text.split())[:400]


def launch_error(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errs[-1] if errs else (lines[-1] if lines else type(e).__name__))[:300]


def _submit_array(ex: Any, cfgs: Sequence[Any], base: Path, threads: int) -> list[Any]:
    """One submitit batch (one SLURM array); on failure remove the pickles it left behind."""
    from harness.train.pretrain import PretrainJob

    folder = Path(ex.folder)
    before = set(folder.glob("*.pkl")) if folder.exists() else set()
    try:  # submitit prints sbatch's stderr on failure: it comes back in the one-line error
        with contextlib.redirect_stderr(io.StringIO()), ex.batch():
            return [
                ex.submit(PretrainJob(threads), c.model_dump(mode="json"), str(base)) for c in cfgs
            ]
    except Exception:
        for p in set(folder.glob("*.pkl")) - before:
            if len(p.stem) == 32:  # submitit's temporary <uuid>.pkl of this batch
                p.unlink(missing_ok=True)
        raise


def _slurm(ex: Any, todo: list[Any], spec: Any, base: Path, hold: bool, echo: Echo) -> list[Any]:
    """Submit ``todo`` as arrays within the cluster's limits, recording each array at once.
    When a grid needs several arrays, each waits for the previous one (``afterany``) so that
    ``array_parallelism`` bounds the whole grid, not each array."""
    from harness.cluster import launch

    limits = launch.slurm_limits()
    queued = launch.job_records()
    check_capacity(len(todo), limits, queued)
    chunks = array_chunks(len(todo), limits.max_array_size)
    par = spec.resources.array_parallelism
    res = spec.resources
    jobs: list[Any] = []
    prev: str | None = None
    for k, idx in enumerate(chunks):
        extra: dict[str, Any] = {"requeue": True} if res.requeue else {}
        if hold:
            extra["hold"] = True
        if prev and par < len(todo):
            extra["dependency"] = f"afterany:{prev}"
        ex.update_parameters(slurm_array_parallelism=par, slurm_additional_parameters=extra)
        cfgs = [todo[i] for i in idx]
        try:
            sub = _submit_array(ex, cfgs, base, res.cpus_per_task)
        except Exception as e:  # noqa: BLE001 - sbatch's message, as one line
            done = f"{len(jobs)} runs in {k} arrays were submitted" if jobs else "nothing submitted"
            raise HarnessError(
                f"sbatch refused array {k + 1} of {len(chunks)} ({len(cfgs)} runs): "
                f"{sbatch_message(e)}; {done}",
                code=1,
            ) from None
        prev = str(sub[0].job_id).split("_")[0]
        ledger.record_submission(
            base,
            executor="slurm",
            name=spec.name,
            folder=ex.folder,
            tasks=[(c.run_id(), str(j.job_id)) for c, j in zip(cfgs, sub, strict=True)],
        )
        echo(f"  array {prev}: {len(sub)} runs{' (held)' if hold else ''}")
        jobs += sub
    return jobs


def submit(
    spec: Any,
    executor: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    wait: bool = False,
    hold: bool = False,
    echo: Echo = print,
    cancel_on_interrupt: bool = True,
    retry_failed: bool = True,
) -> list[Any]:
    """Submit every run of ``spec`` (a ``SubmitSpec``) that is neither done nor live.

    ``slurm`` submits job arrays and returns (``wait`` to block; ``hold`` submits them held);
    ``local`` runs jobs in waves that fit this machine's cores and waits (a job whose process
    died is submitted again, up to ``resources.max_retries`` times); ``debug`` runs them in
    this process. Local jobs left by a submitter that died are stopped first. Failed runs are
    always submitted again (``retry_failed`` is accepted for symmetry with the sweep). Returns
    the submitted submitit jobs (empty when everything is done or live).
    """
    from harness.cluster import launch

    base = store.results_root(root).resolve()
    kind, why = launch.choose_executor(None if executor in (None, "auto") else executor)
    echo(f"executor: {kind} ({why})")
    runs = spec.runs()
    preflight(runs)
    by_id = {c.run_id(): c for c in runs}
    folder = base / "logs" / spec.name
    orphans.reap_dead(orphans.guard_dir(base, "local"), echo)
    with ledger.submit_lock(base):
        p = ledger.plan(base, list(by_id))
        echo(
            f"{len(runs)} runs in {spec.name}: {len(p.todo)} to submit, {len(p.done)} done, "
            f"{len(p.live)} already queued or running"
        )
        if not p.todo:
            return []
        todo = [by_id[r] for r in p.todo]
        ex = launch.make_executor(kind, folder, spec.resources, name=f"harness-{spec.name}")
        if kind == "slurm":
            jobs = _slurm(ex, todo, spec, base, hold, echo)
        else:  # claim the runs: a concurrent submit sees them live while this process runs them
            ledger.record_submission(
                base,
                executor=kind,
                name=spec.name,
                folder=folder,
                tasks=[(r, None) for r in p.todo],
            )
    if kind == "slurm":
        echo(f"logs: {folder}")
        if wait:
            _raise_failed(_wait(jobs, echo), len(jobs), base)
        return jobs
    jobs = _run_waves(ex, todo, spec, base, kind, echo, cancel_on_interrupt)
    echo(f"logs: {folder}")
    return jobs


def _raise_failed(failed: list[str], total: int, base: Path) -> None:
    """One line for the failed jobs (their error texts): a full disk's own line (free space,
    run again), else how many failed."""
    from harness.store.fileio import disk_full_line

    full = [line for line in (disk_full_line(t, base) for t in failed) if line]
    if full:
        raise HarnessError(full[0], code=1)
    if failed:
        raise HarnessError(f"{len(failed)} of {total} jobs failed (see `harness status`)", code=1)


def _run_waves(
    ex: Any, todo: list[Any], spec: Any, base: Path, kind: str, echo: Echo, cancel: bool
) -> list[Any]:
    """Local / debug: jobs in waves as wide as this machine's cores allow, each awaited. Local
    jobs are guarded (``harness.cluster.orphans``): they are stopped if this process dies."""
    res = spec.resources
    per_job = res.cpus_per_task * res.tasks_per_node
    width = max(1, (os.cpu_count() or 1) // per_job) if kind == "local" else 1
    jobs: list[Any] = []
    failed: list[str] = []
    guard = (
        orphans.guard(orphans.guard_dir(base, "local"), f"local jobs of {spec.name}")
        if kind == "local"
        else contextlib.nullcontext()
    )
    with guard as g:
        for i in range(0, len(todo), width):
            live: list[Any] = []
            try:
                jobs += _run_wave(ex, todo[i : i + width], spec, base, kind, echo, g, live, failed)
            except KeyboardInterrupt:
                if cancel and kind == "local":  # local jobs would outlive us
                    for job in live:
                        job.cancel(check=False)
                    echo(
                        f"interrupted: cancelled {len(live)} local jobs (they resume from "
                        "their last epoch next time)"
                    )
                raise
    _raise_failed(failed, len(todo), base)
    return jobs


def _run_wave(
    ex: Any,
    wave: list[Any],
    spec: Any,
    base: Path,
    kind: str,
    echo: Echo,
    guard: Any,
    live: list[Any],
    failed: list[str],
) -> list[Any]:
    """Submit one wave and wait for it (``live``: the jobs being awaited; failures' texts are
    added to ``failed``). A job whose process died (signal, OOM kill) is submitted again up to
    ``max_retries`` times; a job that raised is not. Returns every job submitted."""
    res = spec.resources
    retries = int(getattr(spec.resources, "max_retries", 2))
    jobs: list[Any] = []
    for attempt in range(retries + 1):
        sub = _submit_array(ex, wave, base, res.cpus_per_task)
        live[:] = sub
        jobs += sub
        ledger.record_submission(
            base,
            executor=kind,
            name=spec.name,
            folder=ex.folder,
            tasks=[(c.run_id(), str(j.job_id)) for c, j in zip(wave, sub, strict=True)],
        )
        if guard is not None:
            guard.track(int(j.job_id) for j in sub if str(j.job_id).isdigit())
        for c, j in zip(wave, sub, strict=True):
            echo(f"  {j.job_id}  {c.short_name()}  run {c.run_id()}  log {j.paths.stderr}")
        lost: dict[int, str] = {}
        failed += _wait(sub, echo, lost)
        wave = [wave[k] for k in lost]
        if not wave:
            return jobs
        if attempt < retries:
            echo(f"  submitting {len(wave)} runs again (retry {attempt + 1} of {retries})")
    echo(f"  {len(wave)} runs lost their process {retries + 1} times: not retried again")
    failed += list(lost.values())
    return jobs


def _wait(jobs: list[Any], echo: Echo, lost: dict[int, str] | None = None) -> list[str]:
    """Wait for every job; report each failure in one line; return the failures' texts. With
    ``lost``, a job whose process died without a result (signal, OOM kill) is not returned but
    put in ``lost`` (index: text), to be submitted again."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    failed: list[str] = []
    for k, job in enumerate(jobs):
        try:
            job.results()
        except Exception as e:  # noqa: BLE001 - report every failed job, keep waiting for the rest
            # no result at all: the process died (FailedJobError, a subclass: the run raised)
            died = isinstance(e, UncompletedJobError) and not isinstance(e, FailedJobError)
            if died and lost is not None:
                lost[k] = str(e)
                echo(f"  job {job.job_id} lost its process (no result; state {job.state})")
            else:
                failed.append(str(e))
                echo(f"  job {job.job_id} failed: {launch_error(e)}")
    return failed
