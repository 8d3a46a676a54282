"""Every pluggable name, declared once: model presets, losses, datasets, augmentations,
fine-tuning methods, transferability scores, NC metrics and executors.

One generic ``Registry[M]`` (after lm-evaluation-harness's ``api/registry.py``): each ``Entry``
has its name, its metadata ``M`` (options, valid values, what it needs), a one-line doc and a
lazy ``"module:attr"`` target that is imported only when the thing itself is used. Validation,
CLI choices, the analysis views and error messages read the entries, so none of them imports
torch, and an unknown name is one line naming the valid ones wherever it is met.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, Literal, TypeVar

from harness.errors import HarnessError

M = TypeVar("M")


@dataclass(frozen=True)
class Entry(Generic[M]):
    """One registered name: its metadata, a doc line and where its implementation lives."""

    name: str
    meta: M
    target: str | None = None  # "package.module:attribute", imported by ``load``
    doc: str = ""

    def load(self) -> object:
        """The implementation (imports its module on first use)."""
        if self.target is None:
            raise TypeError(f"{self.name!r} has no implementation to load")
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry(Generic[M]):
    """Names of one kind, in declaration order. ``others`` is what else a value may be, for the
    message about an unknown name (e.g. ``or any timm model name``)."""

    def __init__(self, kind: str, *entries: Entry[M], others: str = ""):
        self.kind = kind
        self.others = others
        self._entries: dict[str, Entry[M]] = {}
        for e in entries:
            if e.name in self._entries:
                raise ValueError(f"{kind} {e.name!r} is declared twice")
            self._entries[e.name] = e

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The names in declaration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[M], ...]:
        return tuple(self._entries.values())

    def valid(self) -> str:
        """The valid names in declaration order, for a message (plus ``others``)."""
        names = ", ".join(self._entries)
        return f"{names}, {self.others}" if self.others else names

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; valid: {self.valid()}"

    def problem(self, name: object) -> str | None:
        """``unknown(name)`` when ``name`` is not registered, else None."""
        return None if name in self else self.unknown(name)

    def checked(self, name: str) -> str:
        """``name`` when registered, else ValueError with ``unknown(name)`` (a field validator)."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return name

    def __getitem__(self, name: str) -> Entry[M]:
        """The entry of ``name``; an unknown name is one HarnessError line."""
        if name not in self:
            raise HarnessError(self.unknown(name))
        return self._entries[name]

    def meta(self, name: str) -> M:
        return self[name].meta

    def load(self, name: str) -> object:
        """The implementation of ``name`` (see ``Entry.load``)."""
        return self[name].load()


def _options(**defaults: float) -> Mapping[str, float]:
    return MappingProxyType(defaults)


# --------------------------------------------------------------------------------------------
# Metadata of each kind


@dataclass(frozen=True)
class LossMeta:
    """A pre-training loss: its keyword options with their defaults (the constructor's
    keyword-only parameters; a test keeps them equal), the augmented views per image it expects
    and whether it reads the classifier's logits (else the projection head's embeddings)."""

    options: Mapping[str, float] = field(default_factory=_options)
    views: int = 1
    needs_classifier_logits: bool = True


@dataclass(frozen=True)
class DatasetMeta:
    """A dataset source: ``takes_path`` when it is named ``<name>:<path>`` (an image folder)."""

    takes_path: bool = False


@dataclass(frozen=True)
class MethodMeta:
    """A fine-tuning method (DESIGN §4): what trains (``none``: the classifier only, ``all``:
    every stage, ``layer``: the block(s) of layer L), whether it needs layer L and whether the
    classifier also reads block L (the SCL skip connection)."""

    trains: Literal["none", "all", "layer"]
    needs_layer: bool = False
    skip: bool = False


@dataclass(frozen=True)
class ScoreMeta:
    """A transferability score: its direction, whether it needs the source classifier's
    probabilities, and, for a combined score, each raw part with its sign."""

    higher_is_better: bool = True
    needs_source: bool = False
    parts: Mapping[str, float] | None = None


@dataclass(frozen=True)
class MetricMeta:
    """An NC metric of one layer's features: lower is more collapsed unless ``higher_is_better``;
    ``variant`` names the store's (metric, variant) pair for the long-format ``nc`` table."""

    higher_is_better: bool = False
    variant: tuple[str, str] | None = None


@dataclass(frozen=True)
class ExecutorMeta:
    """A submitit executor: whether it can span several nodes."""

    multi_node: bool = False


@dataclass(frozen=True)
class NoMeta:
    """A name with nothing more to say than its doc and target."""


# --------------------------------------------------------------------------------------------
# The names

ARCHS: Registry[NoMeta] = Registry(
    "architecture",
    Entry(
        "resnet_tiny",
        NoMeta(),
        "harness.models:resnet_tiny",
        "timm ResNet, BasicBlock [2,2,5,5], widths 16-24-32-32",
    ),
    Entry("vit_tiny", NoMeta(), "harness.models:vit_tiny", "timm ViT, 8 blocks, dim 64"),
    others="or any timm model name",
)

LOSSES: Registry[LossMeta] = Registry(
    "loss",
    Entry("ce", LossMeta(), "harness.train.losses:CrossEntropy", "cross-entropy"),
    Entry(
        "label_smoothing",
        LossMeta(_options(smoothing=0.1)),
        "harness.train.losses:LabelSmoothingCE",
        "cross-entropy against smoothed targets",
    ),
    Entry(
        "mse",
        LossMeta(_options(scale=1.0)),
        "harness.train.losses:MSELoss",
        "squared error to scaled one-hot targets",
    ),
    Entry(
        "supcon",
        LossMeta(_options(temperature=0.1), views=2, needs_classifier_logits=False),
        "harness.train.losses:SupConLoss",
        "supervised contrastive loss on two views",
    ),
)

DATASETS: Registry[DatasetMeta] = Registry(
    "dataset",
    Entry("fashion_mnist", DatasetMeta(), "harness.data.mnist_like:fashion_mnist", "Fashion-MNIST"),
    Entry("mnist5k", DatasetMeta(), "harness.data.mnist_like:mnist5k", "5,000 MNIST digits"),
    Entry("animal_mnist", DatasetMeta(), "harness.data.mnist_like:animal_mnist", "Animal-MNIST"),
    Entry("digits", DatasetMeta(), "harness.data.mnist_like:digits", "scikit-learn 8x8 digits"),
    Entry(
        "synthetic_hier",
        DatasetMeta(),
        "harness.data.synthetic:synthetic_hier",
        "generated hierarchical classes",
    ),
    Entry("cifar10", DatasetMeta(), "harness.data.local:cifar10", "CIFAR-10 from a folder"),
    Entry("cifar100", DatasetMeta(), "harness.data.local:cifar100", "CIFAR-100 from a folder"),
    Entry(
        "imagefolder",
        DatasetMeta(takes_path=True),
        "harness.data.local:imagefolder",
        "a folder of class sub-folders of images",
    ),
    others="or imagefolder:<path>",
)

AUGMENTATIONS: Registry[NoMeta] = Registry(
    "augment",
    Entry("none", NoMeta(), "harness.data.augment:aug_none", "no augmentation"),
    Entry("weak", NoMeta(), "harness.data.augment:aug_weak", "random crop (+ flip)"),
    Entry("strong", NoMeta(), "harness.data.augment:aug_strong", "weak + affine + erasing"),
)

METHODS: Registry[MethodMeta] = Registry(
    "method",
    Entry("linear_probe", MethodMeta("none"), doc="classifier on frozen features"),
    Entry("full", MethodMeta("all"), doc="every parameter"),
    Entry("layer", MethodMeta("layer", needs_layer=True), doc="block(s) L + classifier"),
    Entry(
        "scl",
        MethodMeta("layer", needs_layer=True, skip=True),
        doc="block L + classifier on [L, pre]",
    ),
)

SCORES: Registry[ScoreMeta] = Registry(
    "score",
    Entry("logme", ScoreMeta(), "harness.analysis.scores:logme", "LogME evidence"),
    Entry("leep", ScoreMeta(needs_source=True), "harness.analysis.scores:leep", "LEEP"),
    Entry(
        "ncti",
        ScoreMeta(parts=MappingProxyType({"seli": 1.0, "ncc": 1.0, "vc": -1.0})),
        "harness.analysis.scores:ncti_parts",
        "NCTI = seli + ncc - vc",
    ),
    Entry("nc", ScoreMeta(), "harness.analysis.scores:nc_scores", "the NC metrics (a family)"),
)

NC_METRICS: Registry[MetricMeta] = Registry(
    "NC metric",
    Entry("nc1", MetricMeta(variant=("nc1", "pinv")), doc="tr(Σ_W Σ_B⁺)/K"),
    Entry("nc1_svd", MetricMeta(variant=("nc1", "svd")), doc="nc1 by SVD"),
    Entry("nc1_quotient", MetricMeta(variant=("nc1", "quotient")), doc="tr Σ_W / tr Σ_B"),
    Entry("cdnv", MetricMeta(), doc="class-distance normalised variance"),
    Entry("nc2_equinorm", MetricMeta(), doc="spread of class-mean norms"),
    Entry("nc2_equiangular", MetricMeta(), doc="spread of class-mean cosines"),
    Entry("nc2_etf", MetricMeta(), doc="distance of the means from a simplex ETF"),
    Entry("nc3", MetricMeta(), doc="classifier-means alignment"),
    Entry("nc4", MetricMeta(), doc="classifier vs nearest class centre disagreement"),
    Entry("ncc_acc", MetricMeta(higher_is_better=True), doc="nearest class centre accuracy"),
)

EXECUTORS: Registry[ExecutorMeta] = Registry(
    "executor",
    Entry("slurm", ExecutorMeta(multi_node=True), doc="SLURM through submitit"),
    Entry("local", ExecutorMeta(), doc="local processes through submitit"),
    Entry("debug", ExecutorMeta(), doc="in this process (submitit's debug executor)"),
)
# the methods that fine-tune block(s) L of the backbone (a sweep gives them a layer, the views
# report their accuracy per layer)
LAYER_METHODS = tuple(e.name for e in METHODS.entries() if e.meta.needs_layer)
# what ``executor:`` / ``--executor`` may say: an executor, or ``auto`` (SLURM when reachable)
AUTO_EXECUTOR = "auto"
EXECUTOR_CHOICES = (AUTO_EXECUTOR, *EXECUTORS.names())
