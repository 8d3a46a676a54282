"""Augmentation levels ``none``/``weak``/``strong``: level -> (image size, flip allowed) -> a
transform on the raw uint8 image and one on the normalised float image.

torchvision is imported only when a level that needs it is built, so importing the package stays
light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from harness.spec import registry

if TYPE_CHECKING:
    import torch

Transform: TypeAlias = "Callable[[torch.Tensor], torch.Tensor] | None"


def aug_none(size: int, flip: bool) -> tuple[Transform, Transform]:
    return None, None


def aug_weak(size: int, flip: bool) -> tuple[Transform, Transform]:
    from torchvision.transforms import v2

    ops = [v2.RandomCrop(size, padding=2)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops), None


def aug_strong(size: int, flip: bool) -> tuple[Transform, Transform]:
    from torchvision.transforms import v2

    weak, _ = aug_weak(size, flip)
    affine = v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1))
    # Erasing runs after normalisation, so the erased patch is the dataset mean (value 0).
    return v2.Compose([weak, affine]), v2.RandomErasing(p=0.5, scale=(0.02, 0.2), value=0)


# the names (and what each does) are declared in the spec's registry, one entry per function
AUGMENTATIONS = registry.AUGMENTATIONS
