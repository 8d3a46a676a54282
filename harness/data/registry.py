"""The dataset registry and its public API: ``register`` (builders add themselves by name),
``load``, ``info`` and ``names``.

A builder decodes a dataset once per process (``_prepared``) into a uint8 pool (N, C, H, W) with
int64 labels; ``load`` then picks a fixed split, an optional seeded per-class budget / limit
subset and an augmentation level. Images come out as float32 C x H x W normalised per channel with
the mean/std of that dataset's train split.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.data.augment import AUGMENTATIONS
from harness.data.splits import SPLITS, _prepare, _Prepared, _subset
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.data.dataset import ArrayDataset

DATA_ROOT_ENV = "HARNESS_DATA_ROOT"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing any sample."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RawData:
    """A decoded dataset as a builder returns it.

    ``images`` is uint8 (N, C, H, W) with pixel values in [0, ``scale``]; ``is_test`` marks the
    source's own test set (None when the source is a single set); ``strata`` is what splits are
    stratified by (defaults to the labels); ``flip`` says whether a horizontal flip keeps the label.
    """

    info: DatasetInfo
    images: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray | None = None
    strata: np.ndarray | None = None
    scale: float = 255.0
    flip: bool = True


@dataclass(frozen=True)
class Builder:
    """A registry entry: ``fn(root, **kw) -> RawData``, plus an optional cheap ``describe``."""

    name: str
    fn: Callable[..., RawData]
    describe: Callable[..., DatasetInfo] | None = None
    root_env: bool = False  # ``root`` falls back to $HARNESS_DATA_ROOT
    seeded: bool = False  # generation takes ``data_seed``, defaulting to ``load``'s ``seed``

    def __call__(self, root: str | None, **kw: Any) -> RawData:
        return self.fn(root, **kw)


DATASETS: dict[str, Builder] = {}


def register(
    name: str,
    *,
    describe: Callable[..., DatasetInfo] | None = None,
    root_env: bool = False,
    seeded: bool = False,
) -> Callable[[Callable[..., RawData]], Callable[..., RawData]]:
    """Add a builder to ``DATASETS`` under ``name`` (decorator)."""

    def deco(fn: Callable[..., RawData]) -> Callable[..., RawData]:
        DATASETS[name] = Builder(name, fn, describe, root_env, seeded)
        return fn

    return deco


def load(
    name: str,
    split: str = "train",
    *,
    root: str | None = None,
    seed: int = 0,
    per_class: int | None = None,
    augment: str = "none",
    limit: int | None = None,
    **kw: Any,
) -> ArrayDataset:
    """Dataset ``name`` (``imagefolder:<path>`` style allowed), split ``split``.

    ``per_class``: exactly that many samples of every class (seeded by ``seed``); ``limit``: the
    first ``limit`` samples after a seeded shuffle; ``augment``: one of ``AUGMENTATIONS``; ``kw``:
    dataset options (e.g. ``label="fine"`` for ``synthetic_hier``, ``image_size`` for image
    folders).
    """
    from harness.data.dataset import ArrayDataset  # imports torch

    if split not in SPLITS:
        raise HarnessError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if augment not in AUGMENTATIONS:
        raise HarnessError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    builder, root, kw = _resolve(name, root, kw, seed)
    prep = _prepared(builder.name, root, tuple(sorted(kw.items())))
    rows = prep.splits[split]
    rows = _subset(prep, rows, split, seed, per_class, limit)
    pre, post = AUGMENTATIONS[augment](prep.info.image_size, prep.flip)
    return ArrayDataset(
        prep.pool,
        rows,
        prep.labels[rows],
        prep.info,
        split,
        prep.scale,
        prep.mean,
        prep.std,
        pre,
        post,
    )


def info(name: str, root: str | None = None, **kw: Any) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name``, without decoding the data where the builder allows."""
    builder, root, kw = _resolve(name, root, kw, seed=0)
    if builder.describe is not None:
        return builder.describe(root, **kw)
    return _prepared(builder.name, root, tuple(sorted(kw.items()))).info


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def _resolve(
    name: str, root: str | None, kw: dict[str, Any], seed: int
) -> tuple[Builder, str | None, dict[str, Any]]:
    """Registry lookup plus argument normalisation shared by ``load`` and ``info``."""
    base, sep, inline_root = name.partition(":")
    builder = DATASETS.get(base)
    if builder is None:
        raise HarnessError(f"unknown dataset {name!r}; valid: {', '.join(names())}")
    if sep:
        if root is not None and root != inline_root:
            raise HarnessError(f"{name}: root given twice ({inline_root!r} and {root!r})")
        root = inline_root
    if root is None and builder.root_env:
        root = os.environ.get(DATA_ROOT_ENV) or None
    kw = dict(kw)
    if builder.seeded:
        kw.setdefault("data_seed", seed)
    try:
        inspect.signature(builder.fn).bind(root, **kw)
    except TypeError as e:
        raise HarnessError(f"{base}: bad dataset option(s) {sorted(kw)}: {e}") from None
    return builder, (str(root) if root is not None else None), kw


@functools.lru_cache(maxsize=16)
def _prepared(name: str, root: str | None, kw_items: tuple[tuple[str, Any], ...]) -> _Prepared:
    """Decode once per (name, root, options): the pool, fixed splits and normalisation stats."""
    return _prepare(DATASETS[name](root, **dict(kw_items)))
