"""What a spec may name, known without importing torch: the tiny model presets and each loss
with its options. Specs are validated in the submitting process, which must stay light (it only
builds configs and calls submitit); the registries in ``models`` and ``losses`` check on import
that what they register agrees with this catalog, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESET_ARCHS: set[str] = {"resnet_tiny", "vit_tiny"}

# loss name -> its keyword options and their defaults
LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "ce": {},
    "label_smoothing": {"smoothing": 0.1},
    "mse": {"scale": 1.0},
    "supcon": {"temperature": 0.1},
}


def agree(
    kind: str, name: str, declared: Mapping[str, Any] | None, found: Mapping[str, Any]
) -> None:
    """Raise if a registry entry disagrees with the catalog (a developer error, at import)."""
    if declared is not None and dict(declared) != dict(found):
        raise TypeError(
            f"{kind} {name!r}: options {dict(found)} differ from the catalog's {declared}"
        )
