"""One fine-tuning trial, step by step: ``validate`` its settings (``harness.spec.trial.TrialConfig``)
against the model and data, then ``run_trial``.

``run_trial`` loads the checkpoint, builds the network for the method, opens the splits behind the
frozen prefix (from the activation cache where the data is unaugmented), trains with SGD on a
cosine schedule keeping the best-validation epoch, evaluates, and measures NC of the fine-tuned
features.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness import data, models
from harness.errors import HarnessError
from harness.finetune.cache import ActivationCache, Activations, default_cache
from harness.finetune.methods import METHODS, FinetuneNet, build_net, check_layer
from harness.nc import nc_metrics
from harness.spec.trial import TrialConfig
from harness.train.schedule import cosine_lr

EVAL_BATCH = 256  # batch for passes without gradients (cache fill, evaluation, NC)
NC_MAX_SAMPLES = 2000  # downstream NC is measured on at most this many train samples
# The `finetune` table columns run_trial fills; the caller adds the rest (trial_id, run_id,
# status, error, and whatever else the sweep records).
ROW_COLUMNS = (
    "checkpoint",
    "arch",
    "dataset",
    "method",
    "layer",
    "per_class",
    "epochs",
    "lr",
    "weight_decay",
    "seed",
    "train_acc",
    "val_acc",
    "test_acc",
    "best_epoch",
    "trainable_params",
    "total_params",
    "wall_s",
)


def validate(cfg: TrialConfig, model: nn.Module | None = None) -> None:
    """Raise a one-line HarnessError for a bad setting of ``cfg``: its own settings, then its
    layer on ``model`` (the loaded checkpoint, loaded here when not given) and its budget on
    the data."""
    cfg.check_settings()
    _validate_layer(cfg, model)
    _validate_budget(cfg)


def _validate_layer(cfg: TrialConfig, model: nn.Module | None) -> None:
    if not METHODS[cfg.method].needs_layer:
        if cfg.layer is not None:
            raise HarnessError(
                f"method {cfg.method} fine-tunes no single layer; leave layer unset "
                f"(got {cfg.layer!r})"
            )
        return
    if model is None:
        model, _ = models.load_checkpoint(cfg.checkpoint)
    check_layer(model, cfg.method, cfg.layer)


def _validate_budget(cfg: TrialConfig) -> None:
    if cfg.per_class is None:
        return
    ds = load_split(cfg, "train")
    counts = np.bincount(ds.targets, minlength=ds.info.num_classes)
    c = int(counts.argmin())
    if counts[c] < cfg.per_class:
        name = ds.info.class_names[c] if ds.info.class_names else str(c)
        raise HarnessError(
            f"per_class={cfg.per_class} is more than {cfg.dataset}/train has of class "
            f"{name!r} ({counts[c]} samples, the smallest class)"
        )


def load_val(cfg: TrialConfig) -> data.ArrayDataset:
    """The validation set of the trial's budget (``VAL_PER_CLASS``): stratified, seeded."""
    ds = load_split(cfg, "val")
    k = cfg.val_per_class()
    if k is None:
        return ds
    rng = np.random.default_rng(cfg.seed)
    targets = np.asarray(ds.targets)
    keep = [rng.permutation(np.flatnonzero(targets == c))[:k] for c in np.unique(targets)]
    rows = np.sort(np.concatenate(keep))
    sub = copy.copy(ds)
    sub.ids, sub.targets = ds.ids[rows], targets[rows]
    return sub


def load_split(cfg: TrialConfig, split: str, **kw: Any) -> data.ArrayDataset:
    """Split ``split`` of the trial's dataset (its root, options and seed)."""
    return data.load(cfg.dataset, split, root=cfg.data_root, seed=cfg.seed, **kw, **cfg.data_kwargs)


class _Split:
    """One split as the first trained stage sees it: cached prefix outputs, or images run through
    the frozen prefix batch by batch."""

    def __init__(self, ds: data.ArrayDataset, net: FinetuneNet, acts: Activations | None):
        self.ds = ds
        self.net = net
        self.acts = acts
        self.targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        if self.acts is not None:
            return self.acts.rows(idx)
        return self.net.prefix(torch.stack([self.ds[int(i)][0] for i in idx]))


def _prefix_batches(net: FinetuneNet, ds: data.ArrayDataset) -> Iterator[torch.Tensor]:
    for s in range(0, len(ds), EVAL_BATCH):
        idx = range(s, min(s + EVAL_BATCH, len(ds)))
        yield net.prefix(torch.stack([ds[i][0] for i in idx]))


def _cache_key(cfg: TrialConfig, split: str, per_class: int | None, stage: str) -> tuple:
    """Identity of a split's prefix activations: checkpoint file (path, mtime, size), data
    (dataset, root, options, split, budget, seed) and the last frozen stage. The ViT pool does
    not enter: the cache holds unpooled stage outputs."""
    st = os.stat(cfg.checkpoint)
    opts = json.dumps(cfg.data_kwargs, sort_keys=True, default=str)
    ckpt = (os.path.realpath(cfg.checkpoint), st.st_mtime_ns, st.st_size)
    return (*ckpt, cfg.dataset, cfg.data_root, opts, split, per_class, cfg.seed, stage)


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle cut into batches; a last batch of one sample joins the one before
    (BatchNorm cannot train on a single 1×1 sample)."""
    parts = list(torch.randperm(n, generator=gen).split(size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


@torch.no_grad()
def _collect(net: FinetuneNet, split: _Split, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eval-mode features (and logits, under key ``logits``) of ``split`` rows ``idx``."""
    net.eval()
    out: dict[str, list[torch.Tensor]] = {}
    for b in idx.split(EVAL_BATCH):
        feats = net.features(split.inputs(b))
        feats["logits"] = net.classifier(net.classifier_input(feats))
        for k, v in feats.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def _accuracy(net: FinetuneNet, split: _Split) -> float:
    logits = _collect(net, split, torch.arange(len(split)))["logits"]
    return float((logits.argmax(1) == split.targets).float().mean())


def _downstream_nc(
    net: FinetuneNet, split: _Split, num_classes: int, seed: int
) -> dict[str, dict[str, float]]:
    """NC of the fine-tuned features on (at most NC_MAX_SAMPLES of) the train split; the
    classifier enters for the features it reads directly (pre_logits, except under SCL)."""
    n = len(split)
    idx = torch.arange(n)
    if n > NC_MAX_SAMPLES:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:NC_MAX_SAMPLES].sort().values
    feats = _collect(net, split, idx)
    y = split.targets[idx]
    W, b = net.classifier.weight.detach(), net.classifier.bias.detach()
    out = {}
    for name in [models.PRE_LOGITS] + ([net.read_layer] if net.read_layer is not None else []):
        direct = name == models.PRE_LOGITS and not net.method.skip
        cls = (W, b) if direct else (None, None)
        out[name] = nc_metrics(feats[name], y, *cls, num_classes=num_classes)
    return out


@dataclass
class _Splits:
    """The data of a trial as the first trained stage sees it. ``train`` is what SGD reads
    (augmented when ``cfg.augment`` is set); ``train_eval`` is the same samples unaugmented."""

    train: _Split
    train_eval: _Split
    val: _Split
    test: _Split


def run_trial(
    cfg: TrialConfig,
    *,
    report: Callable[..., Any] | None = None,
    cache: ActivationCache | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.checkpoint`` on ``cfg.dataset`` with ``cfg.method``.

    SGD (momentum, weight decay) with a cosine learning rate over epochs; validation accuracy
    after every epoch (passed to ``report(epoch=, val_acc=, train_loss=)`` when given); the
    best-validation epoch's weights give the train and test accuracy. Returns a ``finetune``
    table row with the ``ROW_COLUMNS`` (the caller adds trial_id, status, ...), plus ``nc``: {layer: NC
    metrics} of the fine-tuned features on the train split (empty with ``cfg.nc`` off).
    Raises FloatingPointError on a NaN/inf loss."""
    t0 = time.perf_counter()
    model, info = models.load_checkpoint(cfg.checkpoint)
    validate(cfg, model)
    train_ds = load_split(cfg, "train", per_class=cfg.per_class, augment=cfg.augment)
    net = _build_trial_net(cfg, model, info, train_ds)
    splits = _open_splits(cfg, net, train_ds, default_cache() if cache is None else cache)
    best_val, best_epoch = _fit(cfg, net, splits, report)
    row = _result_row(cfg, info, net, splits, best_val, best_epoch)
    num_classes = train_ds.info.num_classes
    row["nc"] = _downstream_nc(net, splits.train_eval, num_classes, cfg.seed) if cfg.nc else {}
    row["wall_s"] = time.perf_counter() - t0
    return row


def _build_trial_net(
    cfg: TrialConfig, model: nn.Module, info: dict[str, Any], train_ds: data.ArrayDataset
) -> FinetuneNet:
    """The network for ``cfg.method`` on the checkpoint's backbone, sized for the dataset; the
    classifier's initial weights follow ``cfg.seed``."""
    di = train_ds.info
    if info["in_chans"] != di.in_chans:
        raise HarnessError(
            f"checkpoint {cfg.checkpoint}: {info['in_chans']} input channels, "
            f"dataset {cfg.dataset} has {di.in_chans}"
        )
    torch.manual_seed(cfg.seed)
    shape = (di.in_chans, di.image_size, di.image_size)
    return build_net(model, cfg.method, cfg.layer, di.num_classes, shape, cfg.pool)


def _open_splits(
    cfg: TrialConfig, net: FinetuneNet, train_ds: data.ArrayDataset, cache: ActivationCache
) -> _Splits:
    """Train (as loaded, maybe augmented), unaugmented train, val and test behind the frozen
    prefix; unaugmented data behind a frozen prefix comes from the cache."""
    boundary = net.stages[net.start - 1].name if net.start > 0 else None

    def split(name: str, ds: data.ArrayDataset, per_class: int | None = None) -> _Split:
        acts = None
        if boundary is not None and not (ds is train_ds and cfg.augment != "none"):
            key = _cache_key(cfg, name, per_class, boundary)
            acts = cache.get(key, len(ds), functools.partial(_prefix_batches, net, ds))
        return _Split(ds, net, acts)

    train = split("train", train_ds, cfg.per_class)
    train_eval = train
    if cfg.augment != "none":
        train_eval = split(
            "train", load_split(cfg, "train", per_class=cfg.per_class), cfg.per_class
        )
    val = split("val", load_val(cfg), cfg.val_per_class())
    test = split("test", load_split(cfg, "test"))
    return _Splits(train, train_eval, val, test)


def _fit(
    cfg: TrialConfig, net: FinetuneNet, splits: _Splits, report: Callable[..., Any] | None
) -> tuple[float, int]:
    """Train for ``cfg.epochs``, validating after each, and load the best-validation epoch's
    weights into ``net``. Returns (best validation accuracy, its epoch)."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    best_val, best_epoch, best_state = -1.0, 0, net.trained_state()
    for epoch in range(1, cfg.epochs + 1):
        train_loss = _train_epoch(cfg, net, opt, splits.train, epoch)
        val_acc = _accuracy(net, splits.val)
        if val_acc > best_val:
            best_val, best_epoch, best_state = val_acc, epoch, net.trained_state()
        if report is not None:
            report(epoch=epoch, val_acc=val_acc, train_loss=train_loss)
    net.load_state_dict(best_state, strict=False)
    return best_val, best_epoch


def _train_epoch(
    cfg: TrialConfig, net: FinetuneNet, opt: torch.optim.Optimizer, train: _Split, epoch: int
) -> float:
    """One pass of SGD over seeded shuffled batches at the cosine learning rate of ``epoch``
    (1-based); returns the mean training loss."""
    net.train()
    for g in opt.param_groups:
        g["lr"] = cosine_lr(cfg.lr, epoch - 1, cfg.epochs)
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # augmentation, dropout
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    total, seen = 0.0, 0
    for idx in _batches(len(train), cfg.batch_size, gen):
        loss = F.cross_entropy(net(train.inputs(idx)), train.targets[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"NaN/inf loss at epoch {epoch} (lr={cfg.lr:g}): training diverged"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / seen


def _result_row(
    cfg: TrialConfig,
    info: dict[str, Any],
    net: FinetuneNet,
    splits: _Splits,
    best_val: float,
    best_epoch: int,
) -> dict[str, Any]:
    """The ``finetune`` row of a trained net (every ROW_COLUMNS entry but ``wall_s``)."""
    return dict(
        checkpoint=str(cfg.checkpoint),
        arch=info["arch"],
        dataset=cfg.dataset,
        method=cfg.method,
        layer=cfg.layer,
        per_class=cfg.per_class,
        epochs=cfg.epochs,
        lr=float(cfg.lr),
        weight_decay=float(cfg.weight_decay),
        seed=cfg.seed,
        train_acc=_accuracy(net, splits.train_eval),
        val_acc=best_val,
        test_acc=_accuracy(net, splits.test),
        best_epoch=best_epoch,
        trainable_params=models.count_params(net, trainable_only=True),
        total_params=models.count_params(net),
    )
