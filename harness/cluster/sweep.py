"""Fine-tuning sweeps on Ray Tune (`harness sweep`).

A sweep is checkpoints × the spec's grid (method, layer, budget, lr, epochs, ...). Every trial has
an id (hash of its full config); the store is the source of truth: trials with a row in
`finetune` are never run again, each finished trial writes its row at once (one atomic Parquet
part, from the trial's own process), and a trial that raises or hits a NaN loss is recorded as
``failed`` with its reason, once, while the others go on. A trial whose process or node died
(signal, OOM kill, lost Ray worker) is retried up to ``max_retries`` times by Tune; a running
trial names its process in ``<experiment>/running/<trial id>.json``. ``retry_failed`` runs the
recorded failures again (a done row wins over failed ones). The Ray experiment folder lives under
``<results>/ray/<name>-<hash of the pending trial set>``: re-running an interrupted sweep with the
same pending trials restores it (``Tuner.restore``, errored trials restarted). The local Ray
runtime never outlives the driver (``harness.cluster.rayrun``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from harness import store
from harness.errors import HarnessError
from harness.store.fileio import atomic_write_text

AUTO = "auto"
LAYER_METHODS = ("layer", "scl")


def trial_id(trial: dict[str, Any]) -> str:
    return store.run_id({"kind": "finetune", **trial})


def select_checkpoints(spec: Any, root: str | os.PathLike | None) -> list[dict[str, Any]]:
    """[{checkpoint, run_id, arch}] from the spec's query over the store and/or paths. A path
    the query returns is read against the results root (the store records checkpoints relative
    to it: ``store.resolve_path``); a listed path as given."""
    from harness import models

    out: dict[str, dict[str, Any]] = {}
    if spec.checkpoints.query:
        table = store.execute(spec.checkpoints.query, root)
        if "checkpoint" not in table.column_names:
            raise HarnessError(
                f"checkpoints.query must return a 'checkpoint' column; got {', '.join(table.column_names)}"
            )
        for row in table.to_pylist():
            if row["checkpoint"] is not None:
                out.setdefault(str(store.resolve_path(row["checkpoint"], root)), {})
    for p in spec.checkpoints.paths:
        out.setdefault(str(p), {})
    if not out:
        raise HarnessError("no checkpoints selected (the query returned no rows)", code=1)
    rows = []
    for path in out:
        info = models.read_checkpoint(path)  # clear error for a missing or bad file
        meta = info.get("meta", {})
        rows.append(dict(checkpoint=path, run_id=meta.get("run_id"), arch=info["arch"]))
    return rows


def auto_layer(cfg: Any, model: Any) -> tuple[str, str]:
    """(layer, why) for ``layer: auto``: among the single blocks SCL can use on ``model``
    (``finetune.scl_blocks``: no stem, no whole stage, not the block whose pooled output is the
    penultimate features), the one whose *pre-trained* features collapse most, i.e. the lowest
    NC1 (pinv), measured on the trial's own training samples: ``cfg``'s dataset, per_class
    budget and seed (every train sample when per_class is None), unaugmented, pooled as the
    model's classifier pools. Deterministic (same data, eval mode, ties by name), so a re-run
    chooses the same block; the caller computes it once per (checkpoint, data, budget, seed)."""
    from harness import data, finetune, models
    from harness.nc.measure import measure_model

    candidates = finetune.scl_blocks(model)
    if not candidates:
        raise HarnessError(f"layer auto: {type(model).__name__} has no block SCL can use")
    ds = data.load(
        cfg.dataset,
        "train",
        root=cfg.data_root,
        seed=cfg.seed,
        per_class=cfg.per_class,
        **cfg.data_kwargs,
    )
    results, n = measure_model(model, ds, models.select_layers(model, candidates))
    ranked = sorted((r.metrics["nc1"], r.layer) for r in results if math.isfinite(r.metrics["nc1"]))
    if not ranked:
        raise HarnessError(f"layer auto: no finite nc1 for {cfg.checkpoint} on {cfg.dataset}")
    budget = f"{cfg.per_class} per class" if cfg.per_class is not None else f"all {n} samples"
    (v, best), rest = ranked[0], ranked[1:]
    runner = f"; runner-up {rest[0][1]} nc1={rest[0][0]:.4g}" if rest else ""
    why = (
        f"auto: lowest nc1 of pre-trained features on {cfg.dataset} train, {budget} "
        f"(seed {cfg.seed}), among {len(candidates)} SCL-usable blocks: {best} nc1={v:.4g}{runner}"
    )
    return best, why


def resolve_layer(
    cfg: Any, model: Any, autos: dict[tuple, tuple[str, str]]
) -> tuple[str | None, str | None]:
    """(block name, why) for the trial's ``layer`` of a layer method: ``auto`` (once per
    checkpoint, data, budget and seed), an integer index (a position in ``model``'s layer
    list, so one spec fits every architecture), or the name as given (validated later)."""
    layer = cfg.layer
    if cfg.method not in LAYER_METHODS:
        return None, None
    if layer == AUTO:
        opts = json.dumps(cfg.data_kwargs, sort_keys=True, default=str)
        key = (cfg.checkpoint, cfg.dataset, cfg.data_root, opts, cfg.per_class, cfg.seed)
        if key not in autos:
            autos[key] = auto_layer(cfg, model)
        return autos[key]
    if str(layer).lstrip("-").isdigit():
        from harness import models

        (ly,) = models.select_layers(model, str(layer))
        return ly.name, f"index {layer}"
    return layer, None


def expand(spec: Any, root) -> list[dict[str, Any]]:
    """Every trial of the sweep as a TrialConfig field dict (+ run_id/arch/layer_choice), with
    `layer: auto` and layer indices resolved and every trial validated (SCL at a block whose
    pooled output is the penultimate features is refused here) before anything starts."""
    from harness import data, finetune, models

    ckpts = select_checkpoints(spec, root)
    names = {f.name for f in fields(finetune.TrialConfig)}
    trials: dict[str, dict[str, Any]] = {}
    autos: dict[tuple, tuple[str, str]] = {}
    model_cache: dict[str, Any] = {}
    for ck in ckpts:
        for point in spec.points():
            unknown = sorted(set(point) - names)
            if unknown:
                raise HarnessError(
                    f"{spec.name}: unknown trial field {unknown[0]!r}; valid: {', '.join(sorted(names))}"
                )
            try:
                cfg = finetune.TrialConfig(**dict(point, checkpoint=ck["checkpoint"]))
            except TypeError as e:
                raise HarnessError(f"{spec.name}: bad trial {point}: {e}") from None
            if ck["checkpoint"] not in model_cache:
                model_cache[ck["checkpoint"]] = models.load_checkpoint(ck["checkpoint"])[0]
            model = model_cache[ck["checkpoint"]]
            data.info(cfg.dataset, root=cfg.data_root, **cfg.data_kwargs)
            given = cfg.layer
            try:
                cfg.layer, choice = resolve_layer(cfg, model, autos)
                if cfg.method in LAYER_METHODS:
                    finetune.check_layer(model, cfg.method, cfg.layer)
            except HarnessError as e:  # name the user's key and value, e.g. -1 (pre_logits)
                shown = f": {given} ({cfg.layer})" if str(given) != str(cfg.layer) else ""
                raise HarnessError(f"{spec.key_path('layer', given)}{shown}: {e}") from None
            cfg.validate(model)
            # the checkpoint enters the id as its pre-training run when known: results that move
            # with their store keep their ids
            tid = trial_id({**asdict(cfg), "checkpoint": ck["run_id"] or cfg.checkpoint})
            trials.setdefault(
                tid,
                dict(
                    trial=asdict(cfg),
                    trial_id=tid,
                    run_id=ck["run_id"],
                    arch=ck["arch"],
                    layer_choice=choice,
                    # what its rows record: relative to the results root when under it
                    checkpoint=store.store_path(cfg.checkpoint, root),
                ),
            )
    return list(trials.values())


PENDING_FILE = "harness-pending.txt"


@functools.cache
def _pending_ids(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(Path(path).read_text().split())


def _is_pending(experiment: str, tid: str) -> bool:
    """Whether the driver that started (or restored) this experiment still had ``tid`` to run:
    read once per worker from the experiment folder, never by scanning the store."""
    path = Path(experiment) / PENDING_FILE
    try:
        return tid in _pending_ids(str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return True


RUNNING = "running"  # <experiment>/running/<trial id>.json: the process running a trial


def _claim(experiment: str, tid: str) -> int:
    """Name this process as the one running ``tid``; return the attempt number (1, or more
    after attempts whose process died: their file is still there)."""
    path = Path(experiment) / RUNNING / f"{tid}.json"
    try:
        attempt = int(json.loads(path.read_text())["attempt"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        attempt = 1
    mark = dict(pid=os.getpid(), host=socket.gethostname(), attempt=attempt, started=time.time())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(mark))
    except (OSError, HarnessError):  # a full disk: the trial itself will say so
        pass
    return attempt


def _earlier_rows(root: str, tid: str, rows_before: int) -> tuple[str | None, bool]:
    """What an earlier attempt whose process died left: the status of a `finetune` row it
    recorded (None if none), and whether it wrote the trial's `nc` rows."""
    status = None
    if store.parts("finetune", root):
        sql = "SELECT bool_or(status = 'done'), count(*) FROM finetune WHERE trial_id = ?"
        ((done, n),) = store.fetch(sql, [tid], root, ["finetune"])
        if n > rows_before:
            status = "done" if done else "failed"
    nc = bool(store.parts("nc", root)) and bool(
        store.fetch("SELECT count(*) FROM nc WHERE run_id = ?", [tid], root, ["nc"])[0][0]
    )
    return status, nc


def _trainable(config: dict[str, Any]) -> None:
    """One trial, inside a Ray worker: run it, write its rows, report to Tune. A failure of
    the trial itself is recorded and ends the trial normally (Tune does not retry it); only a
    dead process errors the trial, and Tune runs it again."""
    from ray import tune

    meta, experiment = config["t"]["meta"], config["experiment"]
    tid = meta["trial_id"]
    if not _is_pending(experiment, tid):  # a restored experiment re-offering a recorded trial
        tune.report({"val_acc": math.nan, "skipped": 1})
        return
    attempt = _claim(experiment, tid)
    status, nc_written = (None, False)
    if attempt > 1:
        status, nc_written = _earlier_rows(config["root"], tid, meta.get("rows", 0))
    try:
        if status is None:  # not recorded by an earlier attempt: run it
            if _run_and_record(config, attempt, write_nc=not nc_written) == "failed":
                tune.report({"val_acc": math.nan, "failed": 1, "attempt": attempt})
        else:  # an earlier attempt recorded it, then its process died
            failed = int(status == "failed")
            tune.report({"val_acc": math.nan, "skipped": 1, "failed": failed, "attempt": attempt})
    finally:  # also when the scheduler stops the trial (SystemExit inside tune.report)
        (Path(experiment) / RUNNING / f"{tid}.json").unlink(missing_ok=True)


def _run_and_record(config: dict[str, Any], attempt: int, write_nc: bool = True) -> str:
    """Run the trial and write its rows; return ``done``, or ``failed`` for an exception of the
    trial (recorded with its reason). A trial the scheduler stops early (ASHA ends it inside
    ``tune.report``) gets a ``stopped`` row with the epochs it ran and its best validation
    accuracy so far. MemoryError propagates: Tune retries it."""
    import ray
    from ray import tune

    from harness import finetune

    root, meta, trial = config["root"], config["t"]["meta"], config["t"]["trial"]
    tid = meta["trial_id"]
    prov = store.Provenance.collect({"kind": "finetune", **trial}, "finetune")
    base = _row_base(trial, meta, ray.get_runtime_context().get_node_id())
    t0 = time.perf_counter()
    seen: dict[str, Any] = dict(epochs=0, val_acc=None, best_epoch=None)

    def report(**m: Any) -> None:
        seen["epochs"] = m["epoch"]
        if seen["val_acc"] is None or m["val_acc"] > seen["val_acc"]:
            seen["val_acc"], seen["best_epoch"] = m["val_acc"], m["epoch"]
        tune.report(dict(m, attempt=attempt))

    try:
        row = finetune.run_trial(finetune.TrialConfig(**trial), report=report)
    except MemoryError:
        raise
    except SystemExit:  # the scheduler stopped the trial at a rung: record how far it got
        why = f"stopped early by the scheduler after {seen['epochs']} of {trial['epochs']} epochs"
        stopped = dict(base, status="stopped", error=why, wall_s=time.perf_counter() - t0)
        stopped.update(
            epochs=seen["epochs"], val_acc=seen["val_acc"], best_epoch=seen["best_epoch"]
        )
        store.append("finetune", [stopped], root)
        store.record_run(prov, "stopped", root, error=why)
        raise
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        store.append(
            "finetune",
            [dict(base, status="failed", error=reason, wall_s=time.perf_counter() - t0)],
            root,
        )
        store.record_run(prov, "failed", root, error=reason)
        return "failed"
    nc = row.pop("nc", {}) or {}
    if nc and write_nc:
        store.append("nc", _nc_rows_after(trial, tid, meta, nc), root)
    names = store.SCHEMAS["finetune"].names
    extra = {k: v for k, v in row.items() if k in names and k not in base}
    store.append("finetune", [dict(base, **extra, status="done")], root)
    store.record_run(prov, "done", root)
    return "done"


def _row_base(trial: dict[str, Any], meta: dict[str, Any], node: str | None) -> dict[str, Any]:
    """The `finetune` columns every row of a trial has, done or failed: the trial's settings
    and its ids, as the table names them (``meta`` wins: its checkpoint is the stored form)."""
    names = set(store.SCHEMAS["finetune"].names)
    return {**{k: v for src in (trial, meta) for k, v in src.items() if k in names}, "node": node}


def _nc_rows_after(
    trial: dict[str, Any], tid: str, meta: dict[str, Any], nc: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """`nc` rows of the fine-tuned features (run_id = trial id) with the layer's registry
    index and depth fraction from the checkpoint's model."""
    from harness import data, finetune, models
    from harness.nc.measure import LayerResult, nc_rows

    model, _ = models.load_checkpoint(trial["checkpoint"])
    layers = {ly.name: ly for ly in models.model_layers(model)}
    train = data.load(
        trial["dataset"],
        "train",
        root=trial["data_root"],
        seed=trial["seed"],
        per_class=trial["per_class"],
        **trial["data_kwargs"],
    )
    n = min(finetune.NC_MAX_SAMPLES, len(train))
    results = [
        LayerResult(name, layers[name].index, layers[name].depth_frac, 0, m)
        for name, m in nc.items()
    ]
    rows = nc_rows(
        results,
        n,
        run_id=tid,
        # an experiment interrupted before metas carried the stored form: the trial's path
        checkpoint=meta.get("checkpoint", trial["checkpoint"]),
        model=meta["arch"],
        dataset=trial["dataset"],
        split="train",
        num_classes=train.info.num_classes,
    )
    for r in rows:
        r["dim"] = None
    return rows


def _experiment(spec: Any, base: Path, pending: list[dict[str, Any]]) -> Path:
    """The experiment folder of this pending set, with the set written into it."""
    ids = sorted(t["trial_id"] for t in pending)
    # a trial run again after recorded failures gets a new experiment, never a finished one
    keys = sorted(
        f"{t['trial_id']}:{t['rows']}" if t.get("rows") else t["trial_id"] for t in pending
    )
    digest = hashlib.sha256(",".join(keys).encode()).hexdigest()[:10]
    path = base / "ray" / f"{spec.name}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / PENDING_FILE, "\n".join(ids) + "\n")
    return path


# Tune's warning when it builds the results of a restored experiment: the trials it restored
# (finished, or run again) left no result file of its own. Their rows are in the store.
RESTORE_NOISE = ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics for ")


def _not_restore_noise(record: Any) -> bool:
    """A logging filter: False for Tune's restore warning only (``RESTORE_NOISE``)."""
    return not record.getMessage().startswith(RESTORE_NOISE[1])


def _tuner(spec: Any, base: Path, path: Path, pending: list[dict[str, Any]], echo: Any) -> Any:
    """A new Tuner over the pending trials, or the interrupted one restored."""
    import logging

    from ray import tune

    from harness.cluster import progress

    noisy = logging.getLogger(RESTORE_NOISE[0])
    if _not_restore_noise not in noisy.filters:
        noisy.addFilter(_not_restore_noise)

    trainable = tune.with_resources(_trainable, {"cpu": spec.cpus_per_trial})
    metas = ("trial_id", "run_id", "arch", "layer_choice", "checkpoint", "rows")
    space = {
        "t": tune.grid_search(
            [{"trial": t["trial"], "meta": {k: t[k] for k in metas}} for t in pending]
        ),
        "root": str(base),
        "experiment": str(path),
    }
    if tune.Tuner.can_restore(str(path)):
        echo(f"restoring interrupted experiment {path}")
        return tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, restart_errored=True, param_space=space
        )
    scheduler = None
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            metric="val_acc",
            mode="max",
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
            max_t=max(t["trial"]["epochs"] for t in pending),
            stop_last_trials=False,  # a trial that reaches max_t finishes and records `done`
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        # reuse_actors: a worker keeps torch/timm imported and its activation cache warm
        tune_config=tune.TuneConfig(
            scheduler=scheduler, reuse_actors=True, max_concurrent_trials=spec.max_concurrent
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            verbose=0,
            callbacks=[progress.tune_callback()],  # the live line (restored with the experiment)
            # a trial whose process died runs again; its own failures end it normally
            failure_config=tune.FailureConfig(max_failures=_retries(spec), fail_fast=False),
        ),
    )


def _retries(spec: Any) -> int:
    return int(getattr(spec, "max_retries", 2))


def pending_trials(
    trials: list[dict[str, Any]], root, retry_failed: bool = False
) -> list[dict[str, Any]]:
    """The trials to run, each with ``rows`` (how many rows it has already): those without a
    `finetune` row, and with ``retry_failed`` those whose rows are all failures."""
    from harness.cluster import ledger

    states = ledger.trial_states(root)
    out = []
    for t in trials:
        st = states.get(t["trial_id"])
        if st is None or (retry_failed and st.status == "failed"):
            out.append(dict(t, rows=st.rows if st else 0))
    return out


def _record_lost(errored: list[Any], pending: list[dict[str, Any]], base: Path, spec: Any) -> None:
    """A `failed` row for each trial Tune gave up on (its process died more than
    ``max_retries`` times) that no attempt recorded."""
    from harness.cluster import ledger

    if not errored:
        return
    states = ledger.trial_states(base)
    by_id = {t["trial_id"]: t for t in pending}
    rows, provs = [], []
    for r in errored:
        t = by_id[r.config["t"]["meta"]["trial_id"]]
        st = states.get(t["trial_id"])
        if st is not None and st.rows > t["rows"]:
            continue
        why = " ".join(f"{type(r.error).__name__}: {r.error}".split())[:400]
        reason = f"{why} (retried {_retries(spec)} times)"
        rows.append(dict(_row_base(t["trial"], t, None), status="failed", error=reason))
        provs.append(
            (store.Provenance.collect({"kind": "finetune", **t["trial"]}, "finetune"), reason)
        )
    store.append("finetune", rows, base)
    for prov, reason in provs:
        store.record_run(prov, "failed", base, error=reason)


def _stopped(base: Path, pending: list[dict[str, Any]]) -> int:
    """How many of the trials just run the scheduler stopped early (their `stopped` rows)."""
    from harness.cluster import ledger

    states = ledger.trial_states(base)
    return sum(1 for t in pending if getattr(states.get(t["trial_id"]), "status", "") == "stopped")


def run(
    spec: Any, *, root=None, address: str | None = None, echo=print, retry_failed: bool = False
) -> dict[str, int]:
    """Run the sweep's pending trials on Ray Tune; compact what they wrote; return counts.
    ``retry_failed``: trials whose recorded rows are failures run again."""
    from harness.cluster import progress, rayrun

    base = store.results_root(root).resolve()
    trials = expand(spec, base)
    pending = pending_trials(trials, base, retry_failed)
    echo(
        f"{len(trials)} trials in {spec.name}: {len(pending)} to run, "
        f"{len(trials) - len(pending)} recorded"
    )
    if not pending:
        return dict(total=len(trials), ran=0, failed=0)
    if spec.scheduler == "asha":  # in grid order each new trial tends to beat its rung: shuffle
        import random

        random.Random(spec.search_seed).shuffle(pending)
    with rayrun.runtime(address, base, echo):
        path = _experiment(spec, base, pending)
        with progress.reporting(progress.Progress(len(pending), echo)):
            grid = list(_tuner(spec, base, path, pending, echo).fit())
    errored = [r for r in grid if r.error is not None]
    _record_lost(errored, pending, base, spec)
    failed = len(errored) + sum(
        1 for r in grid if r.error is None and (r.metrics or {}).get("failed")
    )
    retried = sum(1 for r in grid if (r.metrics or {}).get("attempt", 1) > 1)
    again = f", {retried} run again after their process died" if retried else ""
    stopped = _stopped(base, pending) if spec.scheduler == "asha" else 0
    early = f", {stopped} stopped early by ASHA" if stopped else ""
    echo(
        f"ran {len(grid)} trials: {len(grid) - failed - stopped} done{early}, {failed} failed{again} "
        f"(rows in {base / 'finetune'}; experiment {path})"
    )
    line = store.compaction_line(store.compact_tables(("finetune", "nc", "runs"), base))
    if line:
        echo(line)
    return dict(total=len(trials), ran=len(grid), failed=failed)


def slurm_script() -> Path:
    """The sbatch script that runs a sweep on a Ray cluster inside a SLURM allocation."""
    return Path(__file__).resolve().parents[2] / "slurm" / "ray-sweep.sbatch"


def submit_slurm(
    spec_path: str,
    overrides: list[str],
    *,
    nodes: int,
    root=None,
    cpus_per_task: int = 1,
    time_min: int = 60,
    partition: str | None = None,
    wait: bool = False,
    retry_failed: bool = False,
    echo=print,
) -> int:
    """`harness sweep --slurm`: sbatch the Ray-on-SLURM script for this spec."""
    import subprocess
    import sys

    base = store.results_root(root).resolve()
    logs = base / "logs" / "sweeps"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "sbatch",
        "--parsable",
        f"--nodes={nodes}",
        f"--cpus-per-task={cpus_per_task}",
        f"--time={time_min}",
        f"--output={logs}/%x-%j.out",
    ]
    if partition:
        cmd.append(f"--partition={partition}")
    if wait:
        cmd.append("--wait")
    cmd += [str(slurm_script()), str(Path(spec_path).resolve())]
    for o in overrides:
        cmd += ["--set", o]
    if retry_failed:
        cmd.append("--retry-failed")
    env = dict(os.environ, HARNESS_RESULTS=str(base), HARNESS_PYTHON=sys.executable)
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=str(slurm_script().parents[1])
    )
    job = r.stdout.strip().split(";")[0]
    if job:
        echo(f"submitted Ray sweep as SLURM job {job}; log {logs}/harness-ray-sweep-{job}.out")
    if r.returncode != 0:
        raise HarnessError(f"sbatch failed: {' '.join(r.stderr.split())[:300]}", code=1)
    return 0
