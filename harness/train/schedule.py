"""Learning-rate schedules shared by pre-training and fine-tuning."""

from __future__ import annotations

import math


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay over epochs (0-based ``epoch``) from ``base`` towards 0: a pure function of
    the epoch, so a resumed run needs no scheduler state."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
