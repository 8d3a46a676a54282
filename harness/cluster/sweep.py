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
runtime never outlives the driver (``harness.cluster.rayrun``). What runs inside each trial's Ray
worker is ``harness.finetune.worker``; ``--slurm`` submission is ``harness.cluster.slurm_sweep``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import store
from harness.errors import HarnessError
from harness.spec.config import SweepSpec
from harness.spec.registry import LAYER_METHODS
from harness.spec.trial import TrialConfig, make_trial

if TYPE_CHECKING:
    from torch import nn

AUTO = "auto"


def trial_id(trial: dict[str, Any]) -> str:
    return store.run_id({"kind": "finetune", **trial})


def select_checkpoints(spec: SweepSpec, root: str | os.PathLike | None) -> list[dict[str, Any]]:
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


def auto_layer(cfg: TrialConfig, model: nn.Module) -> tuple[str, str]:
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
    cfg: TrialConfig, model: nn.Module, autos: dict[tuple, tuple[str, str]]
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


def expand(spec: SweepSpec, root) -> list[dict[str, Any]]:
    """Every trial of the sweep as a TrialConfig field dict (+ run_id/arch/layer_choice), with
    `layer: auto` and layer indices resolved and every trial validated (SCL at a block whose
    pooled output is the penultimate features is refused here) before anything starts."""
    from harness import data, finetune, models

    ckpts = select_checkpoints(spec, root)
    names = {f.name for f in fields(TrialConfig)}
    trials: dict[str, dict[str, Any]] = {}
    autos: dict[tuple, tuple[str, str]] = {}
    model_cache: dict[str, nn.Module] = {}
    for ck in ckpts:
        for point in spec.points():
            unknown = sorted(set(point) - names)
            if unknown:
                raise HarnessError(
                    f"{spec.name}: unknown trial field {unknown[0]!r}; valid: {', '.join(sorted(names))}"
                )
            try:
                cfg = make_trial(dict(point, checkpoint=ck["checkpoint"]))
            except HarnessError as e:
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
            finetune.validate(cfg, model)
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


def _experiment(spec: SweepSpec, base: Path, pending: list[dict[str, Any]]) -> Path:
    """The experiment folder of this pending set, with the set written into it."""
    from harness.finetune import worker

    # a trial run again after recorded failures gets a new experiment, never a finished one
    keys = sorted(
        f"{t['trial_id']}:{t['rows']}" if t.get("rows") else t["trial_id"] for t in pending
    )
    digest = hashlib.sha256(",".join(keys).encode()).hexdigest()[:10]
    path = base / "ray" / f"{spec.name}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    worker.write_pending(path, (t["trial_id"] for t in pending))
    return path


# Tune's warning when it builds the results of a restored experiment: the trials it restored
# (finished, or run again) left no result file of its own. Their rows are in the store.
RESTORE_NOISE = ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics for ")


def _not_restore_noise(record: Any) -> bool:
    """A logging filter: False for Tune's restore warning only (``RESTORE_NOISE``)."""
    return not record.getMessage().startswith(RESTORE_NOISE[1])


def _tuner(
    spec: SweepSpec, base: Path, path: Path, pending: list[dict[str, Any]], echo: Any
) -> Any:
    """A new Tuner over the pending trials, or the interrupted one restored."""
    import logging

    from ray import tune

    from harness.cluster import progress
    from harness.finetune import worker

    noisy = logging.getLogger(RESTORE_NOISE[0])
    if _not_restore_noise not in noisy.filters:
        noisy.addFilter(_not_restore_noise)

    trainable = tune.with_resources(worker.trainable, {"cpu": spec.cpus_per_trial})
    space = {
        "t": tune.grid_search([worker.grid_point(t) for t in pending]),
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


def _retries(spec: SweepSpec) -> int:
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


def _record_lost(
    errored: list[Any], pending: list[dict[str, Any]], base: Path, spec: SweepSpec
) -> None:
    """A `failed` row for each trial Tune gave up on (its process died more than
    ``max_retries`` times) that no attempt recorded."""
    from harness.cluster import ledger
    from harness.finetune import worker

    if not errored:
        return
    states = ledger.trial_states(base)
    by_id = {t["trial_id"]: t for t in pending}
    rows, provs = [], []
    for r in errored:
        t = by_id[worker.read_point(r.config)[1].trial_id]
        st = states.get(t["trial_id"])
        if st is not None and st.rows > t["rows"]:
            continue
        why = " ".join(f"{type(r.error).__name__}: {r.error}".split())[:400]
        reason = f"{why} (retried {_retries(spec)} times)"
        cols = worker.row_base(t["trial"], worker.TrialMeta.of(t), None)
        rows.append(dict(cols, status="failed", error=reason))
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
    spec: SweepSpec,
    *,
    root=None,
    address: str | None = None,
    echo=print,
    retry_failed: bool = False,
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
