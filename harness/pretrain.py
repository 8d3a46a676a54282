"""Pre-training: a DDP training loop with per-epoch atomic checkpoints and resume, source accuracy
and per-layer source NC at the end, and rows to `pretrain`, `nc` and `runs`.

Determinism: the data order of epoch e is a permutation seeded by (seed, e); the global batch of
step s is ``perm[s·G:(s+1)·G]`` and rank r takes every world-th element of it, so a DDP run sees
exactly the batches of a 1-process run with the same global batch G, and the averaged gradient is
the same mean. Augmentation randomness is re-seeded per (seed, epoch, rank), so a run resumed
from its checkpoint continues exactly as an uninterrupted one would. BatchNorm: on GPU the model
uses SyncBatchNorm; on CPU (gloo) torch has no SyncBatchNorm, so BN statistics are per rank there
(models without BN, such as the ViT presets, match a 1-process run on CPU too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import submitit

from harness import store
from harness.errors import HarnessError
from harness.schedule import cosine_lr

CHECKPOINT_NAME = "last.pt"


def _log(msg: str) -> None:
    print(f"[harness.pretrain] {msg}", flush=True)


class _TwoViews:
    """Two independently augmented views of each image (for supcon): item → (2×C×H×W, label)."""

    def __init__(self, ds):
        self.ds = ds
        self.info = ds.info

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        import torch

        a, y = self.ds[i]
        b, _ = self.ds[i]
        return torch.stack([a, b]), y


def run_dir(root: str | os.PathLike | None, run_id: str) -> Path:
    """Where a run keeps its checkpoints: ``<results root>/checkpoints/<run id>/``."""
    return store.results_root(root) / "checkpoints" / run_id


def train(cfg: Any, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or resume) one pre-training run on this process; DDP when launched with several tasks.

    ``cfg`` is a ``harness.config.PretrainConfig`` (or a dict of its fields). Returns a summary
    dict (same on every rank).
    """
    import torch
    import torch.nn.functional as F

    from harness import data, launch, losses, models
    from harness.config import PretrainConfig
    from harness.measure import measure_model, nc_rows

    if isinstance(cfg, dict):
        cfg = PretrainConfig.from_dict(cfg)
    config = cfg.model_dump(mode="json")
    prov = store.Provenance.collect(config, "pretrain")
    dist = launch.init_distributed()
    out = run_dir(root, prov.run_id)
    ckpt_path = out / CHECKPOINT_NAME
    t0 = time.perf_counter()
    try:
        device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
        threads = os.environ.get("HARNESS_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
        if device.type == "cpu" and threads:
            torch.set_num_threads(max(1, int(threads)))
        spec = losses.LOSSES[cfg.loss]
        ds = data.load(
            cfg.dataset,
            "train",
            root=cfg.data_root,
            seed=cfg.seed,
            per_class=cfg.per_class,
            augment=cfg.augment,
            limit=cfg.limit,
            **cfg.data_kwargs,
        )
        info = ds.info
        train_ds = _TwoViews(ds) if spec.views == 2 else ds
        G = cfg.batch_size
        if G % dist.world_size:
            raise HarnessError(f"batch_size {G} is not divisible by the {dist.world_size} ranks")
        G = min(G, len(ds) - len(ds) % dist.world_size)
        steps = len(ds) // G

        torch.manual_seed(cfg.seed)
        net = models.build_network(
            cfg.arch,
            info.num_classes,
            info.in_chans,
            info.image_size,
            head_depth=cfg.head_depth,
            head_dim=cfg.head_dim,
        )
        if device.type == "cuda" and dist.initialized:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net.to(device)
        opt = torch.optim.SGD(
            net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        start = 0
        if ckpt_path.exists():
            obj = models.read_checkpoint(ckpt_path)
            net.load_state_dict(obj["state_dict"])
            opt.load_state_dict(obj["optimizer"])
            start = int(obj["epoch"])
            _log(f"resumed {prov.run_id} from epoch {start} ({ckpt_path})")
        model = torch.nn.parallel.DistributedDataParallel(net) if dist.initialized else net
        loss_fn = losses.build_loss(cfg.loss, info.num_classes, **cfg.loss_kwargs)
        use_amp = device.type == "cuda"

        last_loss = float("nan")
        t_train, seen = time.perf_counter(), 0
        for epoch in range(start, cfg.epochs):
            model.train()
            for g in opt.param_groups:
                g["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
            perm = torch.randperm(
                len(ds), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            )
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + dist.rank)  # augmentation
            total = torch.zeros(2, dtype=torch.float64)
            for s in range(steps):
                idx = perm[s * G + dist.rank : (s + 1) * G : dist.world_size].tolist()
                items = [train_ds[i] for i in idx]
                x = torch.stack([it[0] for it in items]).to(device)
                y = torch.tensor([int(it[1]) for it in items], device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    if spec.views == 2:
                        emb, logits = model(x.flatten(0, 1), embed=True)
                        emb = emb.float().view(len(idx), 2, -1)
                        loss = loss_fn(emb, y) + F.cross_entropy(
                            logits.float().view(len(idx), 2, -1)[:, 0], y
                        )
                    else:
                        loss = loss_fn(model(x).float(), y)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite loss at epoch {epoch} step {s}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
                seen += len(idx) * dist.world_size
            if dist.initialized:
                torch.distributed.all_reduce(total)
            last_loss = float(total[0] / total[1])
            if dist.rank == 0:
                models.save_checkpoint(
                    ckpt_path,
                    net,
                    arch=cfg.arch,
                    num_classes=info.num_classes,
                    in_chans=info.in_chans,
                    img_size=info.image_size,
                    model_kwargs=dict(head_depth=cfg.head_depth, head_dim=cfg.head_dim),
                    meta=dict(dataset=cfg.dataset, run_id=prov.run_id, config=config),
                    extra=dict(optimizer=opt.state_dict(), epoch=epoch + 1, loss=last_loss),
                )
                _log(f"epoch {epoch + 1}/{cfg.epochs} loss {last_loss:.4f}")
            if dist.initialized:
                torch.distributed.barrier()

        t_train = time.perf_counter() - t_train
        images_per_s = seen / t_train if seen else None  # None when resumed after the last epoch
        net.eval()
        train_acc = _accuracy(
            net,
            data.load(
                cfg.dataset,
                "train",
                root=cfg.data_root,
                seed=cfg.seed,
                per_class=cfg.per_class,
                limit=cfg.limit,
                **cfg.data_kwargs,
            ),
            dist,
            device,
        )
        test_acc = _accuracy(
            net, data.load(cfg.dataset, "test", root=cfg.data_root, **cfg.data_kwargs), dist, device
        )
        nc_ds = data.load(
            cfg.dataset,
            cfg.nc_split,
            root=cfg.data_root,
            seed=cfg.seed,
            limit=cfg.nc_limit,
            **cfg.data_kwargs,
        )
        net.cpu()
        layers = models.select_layers(net, cfg.nc_layers)
        cls = models.classifier_weights(net)
        results, n = measure_model(
            net,
            nc_ds,
            layers,
            classifier=cls,
            ncc=True,
            dist=dist,
            desc=f"{cfg.dataset}/{cfg.nc_split}",
        )
        summary = dict(
            run_id=prov.run_id,
            train_acc=train_acc,
            test_acc=test_acc,
            final_loss=last_loss,
            world_size=dist.world_size,
            images_per_s=images_per_s,
            checkpoint=str(ckpt_path),
            nc={r.layer: r.metrics for r in results},
        )
        if dist.rank == 0:
            store.append(
                "nc",
                nc_rows(
                    results,
                    n,
                    run_id=prov.run_id,
                    checkpoint=str(ckpt_path),
                    model=cfg.arch,
                    dataset=cfg.dataset,
                    split=cfg.nc_split,
                    num_classes=info.num_classes,
                ),
                root,
            )
            store.append(
                "pretrain",
                [
                    dict(
                        run_id=prov.run_id,
                        arch=cfg.arch,
                        dataset=cfg.dataset,
                        loss=cfg.loss,
                        augment=cfg.augment,
                        head_depth=cfg.head_depth,
                        epochs=cfg.epochs,
                        batch_size=cfg.batch_size,
                        lr=cfg.lr,
                        seed=cfg.seed,
                        world_size=dist.world_size,
                        train_acc=train_acc,
                        test_acc=test_acc,
                        final_loss=last_loss,
                        params=models.count_params(net),
                        checkpoint=str(ckpt_path),
                        images_per_s=images_per_s,
                        wall_s=time.perf_counter() - t0,
                    )
                ],
                root,
            )
            store.record_run(prov, "done", root, log_path=_log_path())
        return summary
    except Exception as e:
        if dist.rank == 0:
            line = " ".join(f"{type(e).__name__}: {e}".split())
            store.record_run(prov, "failed", root, error=line[:500], log_path=_log_path())
        raise
    finally:
        launch.shutdown_distributed()


def _log_path() -> str | None:
    try:
        return str(submitit.JobEnvironment().paths.stderr)
    except (RuntimeError, KeyError):  # not in a job, or submitit's debug executor (no folder)
        return None


def _accuracy(net, ds, dist, device) -> float:
    """Top-1 accuracy of the classifier over ``ds`` (rank shard, all-reduced)."""
    import torch

    idx = list(range(dist.rank, len(ds), dist.world_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=512)
    counts = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for x, y in loader:
            pred = net(x.to(device)).argmax(1).cpu()
            counts += torch.tensor([(pred == y).sum().item(), len(y)], dtype=torch.float64)
    if dist.initialized:
        torch.distributed.all_reduce(counts)
    return float(counts[0] / counts[1])


class PretrainJob(submitit.helpers.Checkpointable):
    """The callable submitit runs. On timeout or preemption submitit calls ``checkpoint``
    (inherited: resubmit the same call) and requeues; the new attempt resumes from the last
    epoch checkpoint on disk."""

    def __init__(self, threads: int | None = None):
        self.threads = threads  # CPU threads per task (local executor: SLURM sets its own)

    def __call__(self, config: dict[str, Any], root: str) -> dict[str, Any]:
        if self.threads:
            os.environ.setdefault("HARNESS_THREADS", str(self.threads))
        return train(config, root)


# ---------------------------------------------------------------------------------------------
# Submission of a grid


def _resources(spec_res: Any) -> Any:
    from harness import launch

    r = spec_res
    return launch.Resources(
        nodes=r.nodes,
        tasks_per_node=r.tasks_per_node,
        cpus_per_task=r.cpus_per_task,
        mem_gb=r.mem_gb,
        timeout_min=r.timeout_min,
        partition=r.partition,
        signal_delay_s=r.signal_delay_s,
        max_num_timeout=r.max_num_timeout,
        requeue=r.requeue,
    )


def submit(
    spec: Any,
    executor: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    wait: bool = False,
    echo=print,
    cancel_on_interrupt: bool = True,
) -> list[Any]:
    """Submit every run of ``spec`` (a ``SubmitSpec``) that is not done or already queued.

    ``slurm`` submits one job array and returns (``wait`` to block); ``local`` runs jobs in
    waves that fit this machine's cores and waits; ``debug`` runs them in this process. Returns
    the submitted submitit jobs (empty when everything is done).
    """
    from harness import launch

    base = store.results_root(root).resolve()
    kind, why = launch.choose_executor(None if executor in (None, "auto") else executor)
    echo(f"executor: {kind} ({why})")
    runs = spec.runs()
    preflight(runs)
    active = _active_run_ids(base)
    todo, skipped_done, skipped_active = [], 0, 0
    for cfg in runs:
        rid = cfg.run_id()
        if store.is_done(rid, base):
            skipped_done += 1
        elif rid in active:
            skipped_active += 1
        else:
            todo.append(cfg)
    echo(
        f"{len(runs)} runs in {spec.name}: {len(todo)} to submit, {skipped_done} done, "
        f"{skipped_active} already queued or running"
    )
    if not todo:
        return []
    res = _resources(spec.resources)
    folder = base / "logs" / spec.name
    ex = launch.make_executor(kind, folder, res, name=f"harness-{spec.name}")
    if kind == "slurm":
        ex.update_parameters(slurm_array_parallelism=spec.resources.array_parallelism)
        waves = [todo]
    else:
        per_job = res.cpus_per_task * res.tasks_per_node
        width = max(1, (os.cpu_count() or 1) // per_job) if kind == "local" else 1
        waves = [todo[i : i + width] for i in range(0, len(todo), width)]
    jobs, failed = [], 0
    for wave in waves:
        with ex.batch():
            sub = [
                ex.submit(PretrainJob(res.cpus_per_task), cfg.model_dump(mode="json"), str(base))
                for cfg in wave
            ]
        for cfg, job in zip(wave, sub, strict=True):
            launch.record_job(base, run_id=cfg.run_id(), job=job, executor=kind, name=spec.name)
            echo(f"  {job.job_id}  {cfg.short_name()}  run {cfg.run_id()}  log {job.paths.stderr}")
        jobs += sub
        if kind != "slurm" or wait:
            try:
                failed += _wait(sub, echo)
            except KeyboardInterrupt:
                if cancel_on_interrupt and kind == "local":  # local jobs would outlive us
                    for job in sub:
                        job.cancel(check=False)
                    echo(
                        f"interrupted: cancelled {len(sub)} local jobs (they resume from their "
                        "last epoch next time)"
                    )
                raise
    echo(f"logs: {folder}")
    if failed:
        raise HarnessError(f"{failed} of {len(jobs)} jobs failed (see `harness status`)", code=1)
    return jobs


def preflight(runs: list[Any]) -> None:
    """Check what a job would only find out on the cluster (dataset roots) before submitting."""
    from harness import data

    seen = set()
    for cfg in runs:
        key = (cfg.dataset, cfg.data_root, tuple(sorted(cfg.data_kwargs.items())))
        if key not in seen:
            seen.add(key)
            data.info(cfg.dataset, root=cfg.data_root, **cfg.data_kwargs)


def _wait(jobs: list[Any], echo) -> int:
    """Wait for every job; report each failure in one line; return how many failed."""
    failed = 0
    for job in jobs:
        try:
            job.results()
        except Exception as e:  # noqa: BLE001 - report every failed job, keep waiting for the rest
            failed += 1
            echo(f"  job {job.job_id} failed: {launch_error(e)}")
    return failed


def launch_error(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errs[-1] if errs else (lines[-1] if lines else type(e).__name__))[:300]


def _active_run_ids(root: Path) -> set[str]:
    """Run ids with a SLURM job that is pending, running or requeued."""
    from harness import launch

    recs = [r for r in launch.read_jobs(root) if r["executor"] == "slurm"]
    states = launch.slurm_states([r["job_id"] for r in recs])
    return {
        r["run_id"] for r in recs if states.get(r["job_id"]) in ("pending", "running", "requeued")
    }
