"""Fine-tuning a pre-trained backbone on a downstream dataset (DESIGN §4).

Every method puts a fresh linear classifier on the backbone and trains some of it:

- ``linear_probe``: the classifier only, on the penultimate (``pre_logits``) features;
- ``full``: everything;
- ``layer`` (Layer FT): block L and the classifier;
- ``scl`` (SCL FT): block L and the classifier, which reads concat(pool(block L), pre_logits), a
  skip connection from the fine-tuned block straight to the classifier.

A backbone is split into an ordered list of ``Stage``s (a registry keyed by timm model class) so
that the frozen prefix before the first trained stage, the trained block and the rest can run on
their own. Without augmentation the frozen prefix is deterministic, so its outputs are computed once
per (checkpoint, data, stage) and kept in an ``ActivationCache`` (RAM up to a budget, then
memory-mapped files on disk), shared by every epoch and every later trial of the process.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import numbers
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from harness import data, models
from harness.errors import HarnessError
from harness.nc import nc_metrics
from harness.schedule import cosine_lr

CACHE_MB_ENV = "HARNESS_CACHE_MB"
CACHE_DIR_ENV = "HARNESS_CACHE"
DEFAULT_CACHE_MB = 2048
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


# ---------------------------------------------------------------------------------------------
# Stages: a backbone as an ordered list of separately runnable pieces


@dataclass
class Stage:
    """One piece of a backbone: ``run`` maps the previous stage's output to this stage's output.

    ``modules`` and ``params`` own its weights (what freezing and train/eval mode act on).
    ``selectable`` stages are the layer-registry blocks a method may fine-tune; glue stages (the
    ViT embedding, the head pooling named ``pre_logits``) are not."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    modules: tuple[nn.Module, ...] = ()
    params: tuple[nn.Parameter, ...] = ()
    selectable: bool = True

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()] + list(self.params)

    def tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers (e.g. BatchNorm running statistics)."""
        return self.parameters() + [b for m in self.modules for b in m.buffers()]

    def train(self, mode: bool) -> None:
        for m in self.modules:
            m.train(mode)


DECOMPOSERS: dict[type, Callable[[Any], list[Stage]]] = {}


def register_stages(cls: type) -> Callable[[Callable[[Any], list[Stage]]], Callable]:
    """Register ``fn(backbone) -> stages`` for timm model class ``cls`` (and its subclasses)."""

    def deco(fn: Callable[[Any], list[Stage]]) -> Callable[[Any], list[Stage]]:
        DECOMPOSERS[cls] = fn
        return fn

    return deco


@register_stages(ResNet)
def _resnet_stages(m: ResNet) -> list[Stage]:
    """Stem (conv1, bn1, act1) as block ``act1``; the max-pool opens ``layer1``; then the head's
    global pooling (``forward_head(pre_logits=True)``)."""
    stages = [
        Stage("act1", lambda x: m.act1(m.bn1(m.conv1(x))), (m.conv1, m.bn1, m.act1)),
        Stage("layer1", lambda x: m.layer1(m.maxpool(x)), (m.maxpool, m.layer1)),
    ]
    stages += [Stage(n, getattr(m, n), (getattr(m, n),)) for n in ("layer2", "layer3", "layer4")]
    head = (m.global_pool, m.fc)
    stages.append(
        Stage(models.PRE_LOGITS, lambda x: m.forward_head(x, pre_logits=True), head, (), False)
    )
    return stages


@register_stages(VisionTransformer)
def _vit_stages(m: VisionTransformer) -> list[Stage]:
    """Patch embedding + position embedding + patch dropout + pre-norm as a glue stage before
    ``blocks.0``; each block; then the final norm and the head's token pooling."""

    def embed(x: torch.Tensor) -> torch.Tensor:
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    tokens = tuple(p for p in (m.cls_token, m.reg_token, m.pos_embed) if p is not None)
    embed_mods = (m.patch_embed, m.pos_drop, m.patch_drop, m.norm_pre)
    stages = [Stage("embed", embed, embed_mods, tokens, False)]
    stages += [Stage(f"blocks.{i}", blk, (blk,)) for i, blk in enumerate(m.blocks)]
    head = tuple(
        mod for mod in (m.norm, m.attn_pool, m.fc_norm, m.head_drop, m.head) if mod is not None
    )
    stages.append(
        Stage(
            models.PRE_LOGITS,
            lambda x: m.forward_head(m.norm(x), pre_logits=True),
            head,
            (),
            False,
        )
    )
    return stages


def decompose(backbone: nn.Module) -> list[Stage]:
    """The stages of a timm backbone, checked against its layer registry and its weights: the
    selectable stages are exactly the ``feature_info`` modules, and every parameter and buffer
    belongs to exactly one stage."""
    fn = next((DECOMPOSERS[c] for c in type(backbone).__mro__ if c in DECOMPOSERS), None)
    if fn is None:
        known = ", ".join(sorted(c.__name__ for c in DECOMPOSERS))
        raise HarnessError(
            f"no stage decomposition for {type(backbone).__name__}; supported: {known}"
        )
    stages = fn(backbone)
    registry = [f["module"] for f in backbone.feature_info]
    names = [s.name for s in stages if s.selectable]
    if names != registry:
        raise HarnessError(
            f"{type(backbone).__name__}: stages {names} do not match its layers {registry}"
        )
    owned = [id(t) for s in stages for t in s.tensors()]
    every = [*backbone.parameters(), *backbone.buffers()]
    if sorted(owned) != sorted(id(t) for t in every):
        raise HarnessError(f"{type(backbone).__name__}: stages do not cover its weights once each")
    return stages


def run_stages(
    stages: list[Stage], x: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Run ``stages[start:stop]`` in sequence."""
    for st in stages[start:stop]:
        x = st.run(x)
    return x


# ---------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: which stages train (given the stages and block L's index), and
    whether the classifier also reads block L (the SCL skip connection)."""

    name: str
    needs_layer: bool
    trains: Callable[[list[Stage], int | None], set[int]]
    skip: bool = False
    doc: str = ""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("linear_probe", False, lambda st, L: set(), doc="classifier on frozen features"),
        Method("full", False, lambda st, L: set(range(len(st))), doc="every parameter"),
        Method("layer", True, lambda st, L: {L}, doc="block L + classifier"),
        Method("scl", True, lambda st, L: {L}, skip=True, doc="block L + classifier on [L, pre]"),
    )
}


class FinetuneNet(nn.Module):
    """A backbone (run as stages) plus a fresh linear classifier, set up for one method.

    Stages before ``start`` (the first trained stage) are frozen: ``prefix`` runs them in eval
    mode without gradients, and their output is what ``forward`` takes (and what the activation
    cache stores). Frozen stages stay in eval mode also under ``train()``."""

    def __init__(
        self,
        backbone: nn.Module,
        method: str,
        layer: str | None,
        num_classes: int,
        example: torch.Tensor,
        pool: str = "cls",
    ):
        super().__init__()
        self.backbone = backbone
        if method not in METHODS:
            raise HarnessError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        self.method = METHODS[method]
        self.pool = pool
        self.n_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        self.stages = decompose(backbone)
        blocks = [s.name for s in self.stages if s.selectable]
        if (layer is not None) != self.method.needs_layer or (layer and layer not in blocks):
            need = f"one of {', '.join(blocks)}" if self.method.needs_layer else "none"
            raise HarnessError(f"method {method}: layer {layer!r}; it takes {need}")
        self.layer = layer
        names = [s.name for s in self.stages]
        self.layer_index = names.index(layer) if layer is not None else None
        self.trainable = sorted(self.method.trains(self.stages, self.layer_index))
        self.start = self.trainable[0] if self.trainable else len(self.stages)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for i in self.trainable:
            for p in self.stages[i].parameters():
                p.requires_grad_(True)
        backbone.eval()
        with torch.no_grad():
            h = run_stages(self.stages, example, 0, self.start)
            width = self.classifier_input(self.features(h)).shape[1]
        self.classifier = nn.Linear(width, num_classes)
        self.train()

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        trains = set(self.trainable)
        for i, st in enumerate(self.stages):
            st.train(mode and i in trains)
        # timm's ResNet.forward_head reads the container's own flag (head dropout): it belongs
        # to the head stage.
        self.backbone.training = mode and len(self.stages) - 1 in trains
        return self

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen stages before ``start`` (deterministic: eval mode, no grad)."""
        return run_stages(self.stages, x, 0, self.start).float()

    def features(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """From the prefix output: {block L: pooled output (when L is set), pre_logits: ...}."""
        out: dict[str, torch.Tensor] = {}
        for i in range(self.start, len(self.stages)):
            h = self.stages[i].run(h)
            if i == self.layer_index:
                out[self.stages[i].name] = models._pool(h, self.pool, self.n_prefix_tokens)
        out[models.PRE_LOGITS] = h.flatten(1)
        return out

    def classifier_input(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """pre_logits, or concat(pool(block L), pre_logits) for the skip connection."""
        if self.method.skip:
            return torch.cat([feats[self.layer], feats[models.PRE_LOGITS]], dim=1)
        return feats[models.PRE_LOGITS]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the prefix output ``h`` (the input itself when nothing is frozen first)."""
        return self.classifier(self.classifier_input(self.features(h)))

    def trained_state(self) -> dict[str, torch.Tensor]:
        """A copy of the tensors training can change (trained stages, classifier)."""
        own = {id(t) for i in self.trainable for t in self.stages[i].tensors()}
        own |= {id(t) for t in [*self.classifier.parameters(), *self.classifier.buffers()]}
        state = self.state_dict(keep_vars=True)
        return {k: v.detach().clone() for k, v in state.items() if id(v) in own}


def build_net(
    model: nn.Module,
    method: str,
    layer: str | None,
    num_classes: int,
    input_shape: tuple[int, int, int],
    pool: str = "cls",
) -> FinetuneNet:
    """The fine-tuning network of ``model`` (a ``PretrainNet`` or a timm model; its own head is
    dropped) for ``method``; ``input_shape`` (C, H, W) sizes the classifier by a dry run."""
    backbone = model.backbone if isinstance(model, models.PretrainNet) else model
    backbone.reset_classifier(0)
    example = torch.zeros(1, *input_shape)
    try:
        return FinetuneNet(backbone, method, layer, num_classes, example, pool)
    except (RuntimeError, AssertionError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(
            f"{type(backbone).__name__} cannot run on {'×'.join(map(str, input_shape))} "
            f"inputs: {first[:160]}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Activation cache


class Activations:
    """Cached prefix outputs (N × ...) of one split: a float32 tensor in RAM, or a float32 .npy
    file memory-mapped from disk. ``rows`` reads one batch."""

    def __init__(self, array: torch.Tensor | np.ndarray, path: Path | None = None):
        self.array = array
        self.path = path

    def __len__(self) -> int:
        return self.array.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.array.shape)) * 4

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.path is None:
            return self.array.index_select(0, idx)
        return torch.from_numpy(np.ascontiguousarray(self.array[idx.numpy()]))


class ActivationCache:
    """Prefix activations by key, shared across epochs and trials of a process.

    Entries stay in RAM while their total is within ``budget_mb`` (default ``$HARNESS_CACHE_MB``
    or 2048); an entry that does not fit is written to a memory-mapped file under ``cache_dir``
    (default ``$HARNESS_CACHE``, else the system temp dir), in a per-process folder removed on
    ``clear()`` or at exit. ``enabled=False`` caches nothing (the prefix runs every step)."""

    def __init__(
        self,
        budget_mb: float | None = None,
        cache_dir: str | os.PathLike | None = None,
        enabled: bool = True,
    ):
        mb = os.environ.get(CACHE_MB_ENV, DEFAULT_CACHE_MB) if budget_mb is None else budget_mb
        self.budget_bytes = int(float(mb) * 2**20)
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.ram_bytes = 0
        self.builds = 0
        self.hits = 0
        self._entries: dict[tuple, Activations] = {}
        self._dir: Path | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: tuple, n: int, batches: Callable[[], Iterable[torch.Tensor]]
    ) -> Activations | None:
        """The entry for ``key``, built from ``batches()`` (``n`` rows in order) when missing;
        None when the cache is disabled."""
        if not self.enabled:
            return None
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        acts = self._build(n, iter(batches()))
        self._entries[key] = acts
        self.builds += 1
        if acts.path is None:
            self.ram_bytes += acts.nbytes
        return acts

    def _build(self, n: int, it: Iterator[torch.Tensor]) -> Activations:
        first = next(it)
        shape = (n, *first.shape[1:])
        nbytes = int(np.prod(shape)) * 4
        path = None
        if self.ram_bytes + nbytes <= self.budget_bytes:
            array: Any = torch.empty(shape, dtype=torch.float32)
        else:
            path = self.directory() / f"acts-{uuid.uuid4().hex}.npy"
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        s = 0
        for b in (first, *it):
            b = b.detach().to(torch.float32)
            if path is None:
                array[s : s + len(b)] = b
            else:
                array[s : s + len(b)] = b.numpy()
            s += len(b)
        if s != n:
            raise RuntimeError(f"activation cache: expected {n} rows, got {s}")
        if path is not None:
            array.flush()
            del array
            array = np.load(path, mmap_mode="r")
        return Activations(array, path)

    def directory(self) -> Path:
        """This process's spill folder (created on first use)."""
        if self._dir is None:
            base = self.cache_dir or os.environ.get(CACHE_DIR_ENV) or None
            if base is not None:
                Path(base).mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f"harness-acts-{os.getpid()}-", dir=base))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def clear(self) -> None:
        """Drop every entry and delete the spill folder."""
        self._entries.clear()
        self.ram_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


_DEFAULT_CACHE: ActivationCache | None = None


def default_cache() -> ActivationCache:
    """The process-wide cache ``run_trial`` uses when none is given."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = ActivationCache()
    return _DEFAULT_CACHE


# ---------------------------------------------------------------------------------------------
# Trials


@dataclass
class TrialConfig:
    """One fine-tuning trial. ``layer`` is block L (a layer-registry name, required for
    ``layer``/``scl``, None otherwise); ``per_class`` is the downstream training budget (None:
    all); ``pool`` pools block-L tokens of a ViT (``cls`` or ``mean``; CNN maps are averaged)."""

    checkpoint: str
    dataset: str
    method: str
    layer: str | None = None
    per_class: int | None = None
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0
    augment: str = "none"
    pool: str = "cls"
    data_root: str | None = None
    data_kwargs: dict = field(default_factory=dict)
    nc: bool = True

    def validate(self, model: nn.Module | None = None) -> None:
        """Raise a one-line HarnessError for a bad setting; ``model`` (the loaded checkpoint)
        is loaded here when the layer check needs it and it is not given."""
        if self.method not in METHODS:
            raise HarnessError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if not isinstance(self.epochs, numbers.Integral) or self.epochs < 1:
            raise HarnessError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not 0 < self.lr < math.inf:
            raise HarnessError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise HarnessError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise HarnessError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise HarnessError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.augment not in data.AUGMENTATIONS:
            raise HarnessError(
                f"unknown augment {self.augment!r}; valid: {', '.join(data.AUGMENTATIONS)}"
            )
        if self.pool not in models.POOLS:
            raise HarnessError(f"unknown pool {self.pool!r}; valid: {', '.join(models.POOLS)}")
        self._validate_layer(model)
        self._validate_budget()

    def _validate_layer(self, model: nn.Module | None) -> None:
        method = METHODS[self.method]
        if not method.needs_layer:
            if self.layer is not None:
                raise HarnessError(
                    f"method {self.method} fine-tunes no single layer; leave layer unset "
                    f"(got {self.layer!r})"
                )
            return
        if model is None:
            model, _ = models.load_checkpoint(self.checkpoint)
        valid = [ly.name for ly in models.model_layers(model) if ly.kind == "feature"]
        if self.layer is None:
            raise HarnessError(f"method {self.method} needs a layer; valid: {', '.join(valid)}")
        if self.layer not in valid:
            raise HarnessError(
                f"unknown layer {self.layer!r} for method {self.method} on "
                f"{type(getattr(model, 'backbone', model)).__name__}; valid: {', '.join(valid)}"
            )

    def _validate_budget(self) -> None:
        if self.per_class is None:
            return
        if not isinstance(self.per_class, numbers.Integral) or self.per_class < 1:
            raise HarnessError(f"per_class must be an integer >= 1, got {self.per_class!r}")
        ds = self._load("train")
        counts = np.bincount(ds.targets, minlength=ds.info.num_classes)
        c = int(counts.argmin())
        if counts[c] < self.per_class:
            name = ds.info.class_names[c] if ds.info.class_names else str(c)
            raise HarnessError(
                f"per_class={self.per_class} is more than {self.dataset}/train has of class "
                f"{name!r} ({counts[c]} samples, the smallest class)"
            )

    def _load(self, split: str, **kw: Any) -> data.ArrayDataset:
        return data.load(
            self.dataset, split, root=self.data_root, seed=self.seed, **kw, **self.data_kwargs
        )


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
    for name in [models.PRE_LOGITS] + ([net.layer] if net.layer is not None else []):
        direct = name == models.PRE_LOGITS and not net.method.skip
        cls = (W, b) if direct else (None, None)
        out[name] = nc_metrics(feats[name], y, *cls, num_classes=num_classes)
    return out


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
    cfg.validate(model)
    train_ds = cfg._load("train", per_class=cfg.per_class, augment=cfg.augment)
    di = train_ds.info
    if info["in_chans"] != di.in_chans:
        raise HarnessError(
            f"checkpoint {cfg.checkpoint}: {info['in_chans']} input channels, "
            f"dataset {cfg.dataset} has {di.in_chans}"
        )
    torch.manual_seed(cfg.seed)
    shape = (di.in_chans, di.image_size, di.image_size)
    net = build_net(model, cfg.method, cfg.layer, di.num_classes, shape, cfg.pool)

    cache = default_cache() if cache is None else cache
    boundary = net.stages[net.start - 1].name if net.start > 0 else None

    def split(name: str, ds: data.ArrayDataset, per_class: int | None = None) -> _Split:
        """Unaugmented data behind a frozen prefix comes from the cache."""
        acts = None
        if boundary is not None and not (ds is train_ds and cfg.augment != "none"):
            key = _cache_key(cfg, name, per_class, boundary)
            acts = cache.get(key, len(ds), functools.partial(_prefix_batches, net, ds))
        return _Split(ds, net, acts)

    train = split("train", train_ds, cfg.per_class)
    train_eval = train
    if cfg.augment != "none":
        train_eval = split("train", cfg._load("train", per_class=cfg.per_class), cfg.per_class)
    val, test = split("val", cfg._load("val")), split("test", cfg._load("test"))

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    best_val, best_epoch, best_state = -1.0, 0, net.trained_state()
    for epoch in range(1, cfg.epochs + 1):
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
        val_acc = _accuracy(net, val)
        if val_acc > best_val:
            best_val, best_epoch, best_state = val_acc, epoch, net.trained_state()
        if report is not None:
            report(epoch=epoch, val_acc=val_acc, train_loss=total / seen)
    net.load_state_dict(best_state, strict=False)

    row: dict[str, Any] = dict(
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
        train_acc=_accuracy(net, train_eval),
        val_acc=best_val,
        test_acc=_accuracy(net, test),
        best_epoch=best_epoch,
        trainable_params=models.count_params(net, trainable_only=True),
        total_params=models.count_params(net),
    )
    row["nc"] = _downstream_nc(net, train_eval, di.num_classes, cfg.seed) if cfg.nc else {}
    row["wall_s"] = time.perf_counter() - t0
    return row
