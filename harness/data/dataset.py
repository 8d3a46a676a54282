"""``ArrayDataset``: the torch view of one split (or subset) of a cached uint8 pool.

Kept apart from the registry because it is the only part that needs torch at import time; the
package loads it on first use, so ``import harness.data`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from harness.data.dataset_info import DatasetInfo


class ArrayDataset(Dataset):
    """One split (or subset of it) of a cached uint8 pool; items are ``(float32 CxHxW, int)``.

    ``ids`` are row numbers in the dataset's pool, unique per sample across train/val/test, so
    they identify samples (e.g. to check that splits are disjoint).
    """

    def __init__(
        self,
        pool: torch.Tensor,
        rows: np.ndarray,
        targets: np.ndarray,
        info: DatasetInfo,
        split: str,
        scale: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pre: Callable[[torch.Tensor], torch.Tensor] | None,
        post: Callable[[torch.Tensor], torch.Tensor] | None,
    ):
        self._pool = pool
        self.ids = rows
        self.targets = targets
        self.info = info
        self.split = split
        self.mean = mean
        self.std = std
        self._scale = scale
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._pre = pre
        self._post = post

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._pool[int(self.ids[i])]
        if self._pre is not None:
            x = self._pre(x)
        x = (x.to(torch.float32) / self._scale - self._mean) / self._std
        if self._post is not None:
            x = self._post(x)
        return x, int(self.targets[i])
