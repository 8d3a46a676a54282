"""What a dataset is, before and after decoding: ``DatasetInfo`` (what a model needs to know)
and ``RawData`` (a decoded dataset as a builder returns it). Imports nothing else from ``data``,
so every data module can use them without a circle (timm's ``data/dataset_info.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
