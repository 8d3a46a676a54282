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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from harness import store
from harness.errors import HarnessError
from harness.store.fileio import disk_full_cause
from harness.train.schedule import cosine_lr


def _sgd(params: Any, cfg: Any) -> Any:
    import torch

    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _adamw(params: Any, cfg: Any) -> Any:
    import torch

    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# optimiser by name (``PretrainConfig.optimizer``): fn(parameters, config); the learning rate is
# then set per epoch by the cosine schedule. AdamW is what ViTs are trained with; SGD+momentum
# what ResNets are.
OPTIMIZERS: dict[str, Any] = {"sgd": _sgd, "adamw": _adamw}

CHECKPOINT_NAME = "last.pt"  # the newest epoch checkpoint; the final one once the run is done
PREVIOUS_NAME = "prev.pt"  # the one before it, kept in case ``last.pt`` turns out unreadable


def _log(msg: str) -> None:
    """One line to the job log; a log on a full disk loses the line, not the run (the next
    checkpoint or result write reports the full disk)."""
    try:
        print(f"[harness.train.pretrain] {msg}", flush=True)
    except OSError as e:
        if disk_full_cause(e) is None:
            raise


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


@dataclass
class _Run:
    """Everything one training run works with, built once by ``_set_up``."""

    cfg: Any
    config: dict[str, Any]
    prov: Any
    dist: Any
    device: Any
    ds: Any  # the training set (one view per image)
    train_ds: Any  # what the loop reads: two views per image for two-view losses
    batch: int  # global batch
    steps: int  # per epoch
    net: Any
    opt: Any
    loss_fn: Any
    views: int
    ckpt_path: Path
    rotate: bool = True  # whether ``last.pt`` is good: the next save keeps it as ``prev.pt``


def train(cfg: Any, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or resume) one pre-training run on this process; DDP when launched with several tasks.

    ``cfg`` is a ``harness.spec.config.PretrainConfig`` (or a dict of its fields). Returns a summary
    dict (same on every rank).
    """
    from harness import distributed
    from harness.spec.config import PretrainConfig

    if isinstance(cfg, dict):
        cfg = PretrainConfig.from_dict(cfg)
    config = cfg.identity()  # what the run id hashes, so the job and ``submit`` agree on it
    prov = store.Provenance.collect(config, "pretrain")
    dist = distributed.init_distributed()
    t0 = time.perf_counter()
    try:
        run = _set_up(cfg, config, prov, dist, run_dir(root, prov.run_id) / CHECKPOINT_NAME)
        start = _resume(run)
        last_loss, images_per_s = _train_epochs(run, start)
        return _finish(run, root, last_loss, images_per_s, t0)
    except Exception as e:
        if dist.rank == 0:
            _record_failure(prov, root, e)
        raise
    finally:
        distributed.shutdown_distributed()


def _record_failure(prov: Any, root: Any, e: Exception) -> None:
    """The failed attempt's ``runs`` row. A store that cannot take it (a full disk) is only
    logged: the job reports the error that failed the run."""
    line = " ".join(f"{type(e).__name__}: {e}".split())
    try:
        store.record_run(prov, "failed", root, error=line[:500], log_path=_log_path())
    except (HarnessError, OSError) as err:
        _log(f"could not record the failed attempt: {err}")


def _load_split(cfg: Any, split: str, **kw: Any) -> Any:
    """One split of the run's dataset with the run's data options."""
    from harness import data

    return data.load(cfg.dataset, split, root=cfg.data_root, **kw, **cfg.data_kwargs)


def _set_up(cfg: Any, config: dict[str, Any], prov: Any, dist: Any, ckpt_path: Path) -> _Run:
    """Device and threads, the training data, the network (SyncBN on GPU DDP) and optimiser."""
    import torch

    from harness import models
    from harness.train import losses

    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    threads = os.environ.get("HARNESS_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if device.type == "cpu" and threads:
        torch.set_num_threads(max(1, int(threads)))
    views = losses.LOSSES[cfg.loss].views
    ds = _load_split(
        cfg, "train", seed=cfg.seed, per_class=cfg.per_class, augment=cfg.augment, limit=cfg.limit
    )
    info = ds.info
    G = cfg.batch_size
    if G % dist.world_size:
        raise HarnessError(f"batch_size {G} is not divisible by the {dist.world_size} ranks")
    G = min(G, len(ds) - len(ds) % dist.world_size)
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
    opt = OPTIMIZERS[cfg.optimizer](net.parameters(), cfg)
    return _Run(
        cfg=cfg,
        config=config,
        prov=prov,
        dist=dist,
        device=device,
        ds=ds,
        train_ds=_TwoViews(ds) if views == 2 else ds,
        batch=G,
        steps=len(ds) // G,
        net=net,
        opt=opt,
        loss_fn=losses.build_loss(cfg.loss, info.num_classes, **cfg.loss_kwargs),
        views=views,
        ckpt_path=ckpt_path,
    )


def _resume(run: _Run) -> int:
    """Start from the newest readable epoch checkpoint: ``last.pt``, else ``prev.pt``, else
    epoch 0. Which one, and why, goes to the log and to the run's ``runs`` row
    (``resumed_from``); an unreadable checkpoint never fails the run (no requeue loop)."""
    import copy

    last = run.ckpt_path
    if not last.exists() and not last.with_name(PREVIOUS_NAME).exists():
        return 0  # a fresh run
    initial = copy.deepcopy(run.net.state_dict()), copy.deepcopy(run.opt.state_dict())
    why: list[str] = []
    for path in (last, last.with_name(PREVIOUS_NAME)):
        try:
            epoch = _load(run, path)
        except Exception as e:  # noqa: BLE001 - any failure means "not usable": try the next
            run.net.load_state_dict(initial[0])
            run.opt.load_state_dict(initial[1])
            why.append(f"{path.name} {_unusable(e, path)}")
            continue
        note = f" ({'; '.join(why)})" if why else ""
        run.prov.resumed_from = _one_line(f"{path.name} epoch {epoch}{note}")
        run.rotate = path == last
        _log(f"resumed {run.prov.run_id} from epoch {epoch} ({path}){note}")
        return epoch
    run.prov.resumed_from = _one_line(f"scratch (no readable checkpoint: {'; '.join(why)})")
    run.rotate = False
    _log(f"resumed {run.prov.run_id} from epoch 0: {run.prov.resumed_from}")
    return 0


def _load(run: _Run, path: Path) -> int:
    """Load one epoch checkpoint of this run into the network and optimiser; its epoch."""
    from harness import models

    if not path.exists():
        raise FileNotFoundError(path)
    obj = models.read_checkpoint(path)
    owner = obj.get("meta", {}).get("run_id")
    if owner != run.prov.run_id:
        raise HarnessError(f"checkpoint {path}: belongs to run {owner}")
    epoch = int(obj["epoch"])
    if not 0 <= epoch <= run.cfg.epochs:
        raise HarnessError(f"checkpoint {path}: epoch {epoch} of {run.cfg.epochs}")
    run.net.load_state_dict(obj["state_dict"])
    run.opt.load_state_dict(obj["optimizer"])
    return epoch


def _unusable(e: Exception, path: Path) -> str:
    """Why a checkpoint could not be used, in a few words ("missing", "unreadable: ...")."""
    if isinstance(e, FileNotFoundError):
        return "missing"
    text = str(e).removeprefix(f"checkpoint {path}: ") or type(e).__name__
    return f"unreadable: {text.splitlines()[0][:160]}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _step_loss(run: _Run, model: Any, x: Any, y: Any) -> Any:
    """The loss of one batch (two-view losses add an online linear probe's cross-entropy)."""
    import torch
    import torch.nn.functional as F

    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
        if run.views == 2:
            emb, logits = model(x.flatten(0, 1), embed=True)
            emb = emb.float().view(len(y), 2, -1)
            return run.loss_fn(emb, y) + F.cross_entropy(
                logits.float().view(len(y), 2, -1)[:, 0], y
            )
        return run.loss_fn(model(x).float(), y)


def _train_epochs(run: _Run, start: int) -> tuple[float, float | None]:
    """The epoch loop from ``start``: seeded order and augmentation, a checkpoint per epoch.
    Returns (last epoch's mean loss, images/s; None when resumed after the last epoch)."""
    import torch

    cfg, dist, G = run.cfg, run.dist, run.batch
    model = torch.nn.parallel.DistributedDataParallel(run.net) if dist.initialized else run.net
    last_loss, seen, t_train = float("nan"), 0, time.perf_counter()
    for epoch in range(start, cfg.epochs):
        model.train()
        for g in run.opt.param_groups:
            g["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
        perm = torch.randperm(
            len(run.ds), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        )
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + dist.rank)  # augmentation
        total = torch.zeros(2, dtype=torch.float64)
        for s in range(run.steps):
            idx = perm[s * G + dist.rank : (s + 1) * G : dist.world_size].tolist()
            items = [run.train_ds[i] for i in idx]
            x = torch.stack([it[0] for it in items]).to(run.device)
            y = torch.tensor([int(it[1]) for it in items], device=run.device)
            loss = _step_loss(run, model, x, y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss at epoch {epoch} step {s}")
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
            seen += len(idx) * dist.world_size
        if dist.initialized:
            torch.distributed.all_reduce(total)
        last_loss = float(total[0] / total[1])
        if dist.rank == 0:
            _save(run, epoch + 1, last_loss)
        if dist.initialized:
            torch.distributed.barrier()
    elapsed = time.perf_counter() - t_train
    return last_loss, (seen / elapsed if seen else None)


def _save(run: _Run, epochs_done: int, loss: float) -> None:
    from harness import models

    cfg, info = run.cfg, run.ds.info
    keep = run.ckpt_path.with_name(PREVIOUS_NAME) if run.rotate else None
    models.save_checkpoint(
        run.ckpt_path,
        run.net,
        arch=cfg.arch,
        num_classes=info.num_classes,
        in_chans=info.in_chans,
        img_size=info.image_size,
        model_kwargs=dict(head_depth=cfg.head_depth, head_dim=cfg.head_dim),
        meta=dict(dataset=cfg.dataset, run_id=run.prov.run_id, config=run.config),
        extra=dict(optimizer=run.opt.state_dict(), epoch=epochs_done, loss=loss),
        previous=keep,  # an unreadable last.pt is overwritten, never kept as prev.pt
    )
    run.rotate = True
    _log(f"epoch {epochs_done}/{cfg.epochs} loss {loss:.4f}")


def _finish(
    run: _Run, root: Any, last_loss: float, images_per_s: float | None, t0: float
) -> dict[str, Any]:
    """Source accuracies and per-layer source NC; rank 0 writes `nc`, `pretrain` and `runs`."""
    from harness import models
    from harness.nc.measure import measure_model

    cfg, dist, net = run.cfg, run.dist, run.net
    net.eval()
    clean_train = _load_split(cfg, "train", seed=cfg.seed, per_class=cfg.per_class, limit=cfg.limit)
    train_acc = _accuracy(net, clean_train, dist, run.device)
    test_acc = _accuracy(net, _load_split(cfg, "test"), dist, run.device)
    nc_ds = _load_split(cfg, cfg.nc_split, seed=cfg.seed, limit=cfg.nc_limit)
    net.cpu()
    results, n = measure_model(
        net,
        nc_ds,
        models.select_layers(net, cfg.nc_layers),
        classifier=models.classifier_weights(net),
        ncc=True,
        dist=dist,
        desc=f"{cfg.dataset}/{cfg.nc_split}",
    )
    summary = dict(
        run_id=run.prov.run_id,
        train_acc=train_acc,
        test_acc=test_acc,
        final_loss=last_loss,
        world_size=dist.world_size,
        images_per_s=images_per_s,
        checkpoint=str(run.ckpt_path),
        nc={r.layer: r.metrics for r in results},
    )
    if dist.rank == 0:
        _record(run, root, results, n, summary, time.perf_counter() - t0)
    return summary


def _record(run: _Run, root: Any, results: Any, n: int, summary: dict, wall_s: float) -> None:
    """The run's rows: per-layer source NC, the `pretrain` row, and its `runs` row (done), which
    commits the run; tables a failed earlier attempt already wrote are not written again. The
    checkpoint is recorded relative to the results root (``store.store_path``)."""
    from harness import models
    from harness.nc.measure import nc_rows

    cfg, ckpt = run.cfg, store.store_path(run.ckpt_path, root)
    rid = run.prov.run_id
    have = _recorded(run, root)
    if "nc" not in have:
        rows = nc_rows(
            results,
            n,
            run_id=rid,
            checkpoint=ckpt,
            source_run_id=rid,
            model=cfg.arch,
            dataset=cfg.dataset,
            split=cfg.nc_split,
            num_classes=run.ds.info.num_classes,
        )
        store.append("nc", rows, root)
    row = {k: getattr(cfg, k) for k in ("arch", "dataset", "loss", "augment", "head_depth")}
    row.update({k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "seed")})
    keep = ("train_acc", "test_acc", "final_loss", "world_size", "images_per_s")
    row.update({k: summary[k] for k in keep})
    row.update(run_id=rid, params=models.count_params(run.net), checkpoint=ckpt, wall_s=wall_s)
    if "pretrain" not in have:
        store.append("pretrain", [row], root)
    store.record_run(run.prov, "done", root, log_path=_log_path())


def _recorded(run: _Run, root: Any) -> set[str]:
    """Which of `nc` and `pretrain` already hold this run's rows. Only a resumed attempt can
    find some: one whose predecessor wrote a part and then failed (say, on a full disk) before
    its `runs` row; it must not write them twice."""
    rid, cfg = run.prov.run_id, run.cfg
    if run.prov.resumed_from is None or not (
        store.parts("nc", root) or store.parts("pretrain", root)
    ):
        return set()
    ((n_nc, n_pre),) = store.fetch(
        "SELECT (SELECT count(*) FROM nc WHERE run_id = $r AND dataset = $d AND split = $s),"
        " (SELECT count(*) FROM pretrain WHERE run_id = $r)",
        dict(r=rid, d=cfg.dataset, s=cfg.nc_split),
        root,
        ["nc", "pretrain"],
    )
    return {t for t, n in (("nc", n_nc), ("pretrain", n_pre)) if n}


def _log_path() -> str | None:
    """This job's submitit log (``record_run`` stores it relative to the results root)."""
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
