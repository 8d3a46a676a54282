"""Fixed stratified train/val/test splits, the seeded per-class budget / limit subsets and the
per-channel normalisation stats: pure functions over a decoded dataset's arrays.

Splits use a fixed seed (``SPLIT_SEED``), so they never move whatever ``load``'s ``seed`` is; only
subsets follow that seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

    from harness.data.dataset_info import DatasetInfo, RawData

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # splits are fixed for all time; ``seed`` only drives subsets and generation
VAL_FRACTION = 0.1  # val carved out of a source train set
SINGLE_SET_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class Prepared:
    info: DatasetInfo
    pool: torch.Tensor  # uint8 (N, C, H, W), shared by every split
    labels: np.ndarray  # int64 (N,)
    splits: dict[str, np.ndarray]  # split -> sorted pool rows
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool


def prepare(raw: RawData) -> Prepared:
    """A decoded dataset's pool, fixed splits and train-split normalisation stats."""
    import torch  # only once data is decoded, so importing the package stays light

    labels = np.asarray(raw.labels, dtype=np.int64)
    strata = labels if raw.strata is None else np.asarray(raw.strata)
    rows = np.arange(len(labels))
    if raw.is_test is None:
        splits = _stratified_split(strata, rows, SINGLE_SET_FRACTIONS)
    else:
        is_test = np.asarray(raw.is_test, dtype=bool)
        fractions = {"train": 1 - VAL_FRACTION, "val": VAL_FRACTION}
        splits = _stratified_split(strata, rows[~is_test], fractions)
        splits["test"] = rows[is_test]
    images = np.ascontiguousarray(raw.images, dtype=np.uint8)
    for array in (labels, *splits.values()):
        array.flags.writeable = False  # shared by every dataset built from the cache
    mean, std = _channel_stats(images[splits["train"]], raw.scale)
    return Prepared(
        raw.info,
        torch.from_numpy(images),
        labels,
        splits,
        raw.scale,
        mean,
        std,
        raw.flip,
    )


def _stratified_split(
    strata: np.ndarray, rows: np.ndarray, fractions: dict[str, float], seed: int = SPLIT_SEED
) -> dict[str, np.ndarray]:
    """Split ``rows`` per stratum by ``fractions`` (first split takes the remainder).

    Every split gets at least one sample of a stratum that has at least one per split.
    """
    rng = np.random.default_rng(seed)
    names_ = list(fractions)
    out: dict[str, list[np.ndarray]] = {s: [] for s in names_}
    for value in np.unique(strata[rows]):
        members = rng.permutation(rows[strata[rows] == value])
        n = len(members)
        counts = [round(n * fractions[s]) for s in names_[1:]]
        if n >= len(names_):
            counts = [max(1, c) for c in counts]
        start = n - sum(counts)
        out[names_[0]].append(members[:start])
        for s, c in zip(names_[1:], counts, strict=True):
            out[s].append(members[start : start + c])
            start += c
    return {s: np.sort(np.concatenate(parts)).astype(np.int64) for s, parts in out.items()}


def subset(
    prep: Prepared,
    rows: np.ndarray,
    split: str,
    seed: int,
    per_class: int | None,
    limit: int | None,
) -> np.ndarray:
    """Apply the seeded per-class budget, then the seeded limit, to a split's rows."""
    rng = np.random.default_rng(seed)
    if per_class is not None:
        if per_class < 1:
            raise HarnessError(f"per_class must be >= 1, got {per_class}")
        labels = prep.labels[rows]
        chosen = []
        for c in range(prep.info.num_classes):
            members = rows[labels == c]
            if len(members) < per_class:
                raise HarnessError(
                    f"{prep.info.name}/{split}: class {_class_name(prep.info, c)} has "
                    f"{len(members)} samples, fewer than per_class={per_class}"
                )
            chosen.append(rng.choice(members, per_class, replace=False))
        rows = np.sort(np.concatenate(chosen))
    if limit is not None:
        if limit < 1:
            raise HarnessError(f"limit must be >= 1, got {limit}")
        rows = np.sort(rng.permutation(rows)[:limit])
    return rows


def _class_name(info_: DatasetInfo, c: int) -> str:
    if info_.class_names is None:
        return str(c)
    return f"{c} ({info_.class_names[c]})"


def _channel_stats(images: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std in [0, 1] units, from value histograms (no float copy)."""
    values = np.arange(256, dtype=np.float64) / scale
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        m = float(hist @ values / n)
        var = float(hist @ (values - m) ** 2 / n)
        means.append(m)
        stds.append(max(var**0.5, 1e-6))
    return tuple(means), tuple(stds)
