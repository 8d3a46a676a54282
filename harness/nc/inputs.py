"""Input checks shared by both passes: 2-D finite features, integer labels in range, a classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError


def as_features(
    x: Any, where: str = "features", check: bool = True, convert: bool = True
) -> torch.Tensor:
    """A 2-D CPU tensor (float64 unless ``convert`` is false); ``check`` rejects NaN/inf."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
    if t.ndim != 2:
        raise HarnessError(f"{where}: expected a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if convert or not torch.is_floating_point(t):
        t = t.to("cpu", torch.float64)
    if check:
        check_finite(t, where)
    return t


def as_rows(x: Any) -> torch.Tensor:
    """A 2-D CPU tensor in float32 or float64 as given (float16/bfloat16 widened to float32,
    integers to float64), for the plans that choose their own arithmetic."""
    t = as_features(x, check=False, convert=False)
    keep = t.dtype in (torch.float32, torch.float64)
    return t.to("cpu", t.dtype if keep else torch.float32)


def check_finite(t: torch.Tensor, where: str = "features") -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(1).nonzero()[0, 0].item()
        raise HarnessError(
            f"{where}: NaN or inf values (first at row {bad}); features must be finite"
        )


def as_labels(y: Any, n: int, num_classes: int, where: str = "labels") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
    if t.ndim != 1:
        raise HarnessError(f"{where}: expected a 1-D array, got shape {tuple(t.shape)}")
    if t.numel() != n:
        raise HarnessError(f"{where}: length {t.numel()} does not match {n} feature rows")
    if torch.is_floating_point(t) or t.dtype == torch.bool:
        raise HarnessError(f"{where}: expected integer class labels, got {t.dtype}")
    t = t.long()
    if n and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise HarnessError(f"{where}: label {bad} out of range [0, {num_classes})")
    return t


def as_classifier(
    W: Any, b: Any, num_classes: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    Wt = as_features(W, where="classifier")
    if tuple(Wt.shape) != (num_classes, dim):
        raise HarnessError(
            f"classifier: shape {tuple(Wt.shape)} != (num_classes, dim) = ({num_classes}, {dim})"
        )
    bt = None
    if b is not None:
        bt = (
            torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b)
            .detach()
            .to("cpu", torch.float64)
        )
        if tuple(bt.shape) != (num_classes,):
            raise HarnessError(f"classifier bias: shape {tuple(bt.shape)} != ({num_classes},)")
    return Wt, bt
