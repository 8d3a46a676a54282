"""Datasets by their registered name (``harness.spec.registry.DATASETS``): ``load``, ``info``
and ``names``; ``builder`` makes a decoding function the ``Builder`` an entry names.

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

from harness.data.augment import AUGMENTATIONS
from harness.data.dataset_info import DatasetInfo, RawData
from harness.data.splits import SPLITS, Prepared, prepare, subset
from harness.errors import HarnessError
from harness.spec import registry

if TYPE_CHECKING:
    from harness.data.dataset import ArrayDataset

DATA_ROOT_ENV = "HARNESS_DATA_ROOT"


@dataclass(frozen=True)
class Builder:
    """How one dataset of ``harness.spec.registry.DATASETS`` is decoded: ``fn(root, **kw) ->
    RawData``, plus an optional cheap ``describe``."""

    fn: Callable[..., RawData]
    describe: Callable[..., DatasetInfo] | None = None
    root_env: bool = False  # ``root`` falls back to $HARNESS_DATA_ROOT
    seeded: bool = False  # generation takes ``data_seed``, defaulting to ``load``'s ``seed``

    def __call__(self, root: str | None, **kw: Any) -> RawData:
        return self.fn(root, **kw)


def builder(
    *,
    describe: Callable[..., DatasetInfo] | None = None,
    root_env: bool = False,
    seeded: bool = False,
) -> Callable[[Callable[..., RawData]], Builder]:
    """Make a decoding function the ``Builder`` a registry entry's target names (decorator)."""

    def deco(fn: Callable[..., RawData]) -> Builder:
        return Builder(fn, describe, root_env, seeded)

    return deco


def get_builder(name: str) -> Builder:
    """The ``Builder`` of registered dataset ``name`` (its module imported on first use)."""
    found = registry.DATASETS.load(name)
    if not isinstance(found, Builder):
        raise TypeError(f"dataset {name!r}: {registry.DATASETS[name].target} is not a Builder")
    return found


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
        raise HarnessError(registry.AUGMENTATIONS.unknown(augment))
    base, builder, root, kw = _resolve(name, root, kw, seed)
    prep = prepared(base, root, tuple(sorted(kw.items())))
    rows = prep.splits[split]
    rows = subset(prep, rows, split, seed, per_class, limit)
    pre, post = AUGMENTATIONS.load(augment)(prep.info.image_size, prep.flip)
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
    base, builder, root, kw = _resolve(name, root, kw, seed=0)
    if builder.describe is not None:
        return builder.describe(root, **kw)
    return prepared(base, root, tuple(sorted(kw.items()))).info


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(registry.DATASETS)


def _resolve(
    name: str, root: str | None, kw: dict[str, Any], seed: int
) -> tuple[str, Builder, str | None, dict[str, Any]]:
    """Registry lookup plus argument normalisation shared by ``load`` and ``info``."""
    base, sep, inline_root = name.partition(":")
    if base not in registry.DATASETS:
        raise HarnessError(registry.DATASETS.unknown(name))
    builder = get_builder(base)
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
    return base, builder, (str(root) if root is not None else None), kw


@functools.lru_cache(maxsize=16)
def prepared(name: str, root: str | None, kw_items: tuple[tuple[str, Any], ...]) -> Prepared:
    """Decode once per (name, root, options): the pool, fixed splits and normalisation stats."""
    return prepare(get_builder(name)(root, **dict(kw_items)))
