"""``synthetic_hier``: generated images whose coarse classes are made of fine sub-classes, the
controlled case for transfer (pre-train on coarse labels, transfer to fine ones).

Generation is seeded by ``data_seed`` (``load``'s ``seed`` unless given), so the data follows the
run's seed while the splits stay fixed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.dataset_info import DatasetInfo, RawData
from harness.data.registry import builder
from harness.errors import HarnessError


def _synthetic_check(
    coarse: int, fine_per_coarse: int, n_per_fine: int, image_size: int, label: str
) -> None:
    if label not in ("coarse", "fine"):
        raise HarnessError(f"synthetic_hier: label must be 'coarse' or 'fine', got {label!r}")
    for key, value, minimum in (
        ("coarse", coarse, 1),
        ("fine_per_coarse", fine_per_coarse, 1),
        ("n_per_fine", n_per_fine, 1),
        ("image_size", image_size, 8),
    ):
        if value < minimum:
            raise HarnessError(f"synthetic_hier: {key} must be >= {minimum}, got {value}")


def _random_waves(rng: np.random.Generator, n: int, size: int, lo: int, hi: int) -> np.ndarray:
    """``n`` unit-std periodic images, each a random sum of 2-D cosines of every orientation whose
    frequency (cycles per image, max over axes) lies in ``[lo, hi]``."""
    grid = np.arange(size) / size
    out = np.zeros((n, size, size))
    for kx in range(hi + 1):
        for ky in range(-hi, hi + 1):
            if not lo <= max(kx, abs(ky)) <= hi or (kx == 0 and ky < 0):
                continue  # out of band, or the same wave as (0, -ky)
            amp = rng.normal(size=(n, 1, 1))
            phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
            out += amp * np.cos(2 * np.pi * (kx * grid[:, None] + ky * grid[None, :]) + phase)
    out -= out.mean(axis=(1, 2), keepdims=True)
    return out / out.std(axis=(1, 2), keepdims=True)


def _fft_shift(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Circularly translate periodic images by real-valued (dy, dx) pixel ``shifts``."""
    size = images.shape[-1]
    k = np.fft.fftfreq(size) * size
    phase = (
        k[None, :, None] * shifts[:, 0, None, None] + k[None, None, :] * shifts[:, 1, None, None]
    )
    return np.fft.ifft2(np.fft.fft2(images) * np.exp(-2j * np.pi * phase / size)).real


def _synthetic_info(root: str | None, **options: Any) -> DatasetInfo:
    """``synthetic_hier``'s info for ``options`` (checked like the builder's), generating nothing."""
    return synthetic_hier.fn(root, False, **options).info


@builder(describe=_synthetic_info, seeded=True)
def synthetic_hier(
    root: str | None,
    generate: bool = True,
    /,
    *,
    coarse: int = 4,
    fine_per_coarse: int = 3,
    n_per_fine: int = 300,
    image_size: int = 28,
    label: str = "coarse",
    data_seed: int = 0,
) -> RawData:
    """Coarse classes of fine sub-classes. A fine prototype is its coarse class's low-frequency
    pattern (1-2 cycles) plus 0.6x its own higher-frequency pattern (3-5 cycles); a sample is its
    prototype translated by up to +-2 px (sub-pixel, circular), scaled by 0.8..1.2 and given unit
    Gaussian pixel noise (prototypes have std ~1.17), then quantised (127.5 + 40x, clipped).

    Fine class id is ``coarse_id * fine_per_coarse + f``, so ``fine // fine_per_coarse == coarse``;
    splits are stratified by fine class whatever ``label`` is, so both label levels share splits.
    ``generate=False`` (positional only, so never a dataset option) returns the info with no
    samples, for ``describe``.
    """
    _synthetic_check(coarse, fine_per_coarse, n_per_fine, image_size, label)
    if label == "coarse":
        class_names = tuple(f"c{c}" for c in range(coarse))
    else:
        class_names = tuple(f"c{c}f{f}" for c in range(coarse) for f in range(fine_per_coarse))
    info_ = DatasetInfo("synthetic_hier", len(class_names), 1, image_size, class_names)
    if not generate:
        empty = np.zeros((0, 1, image_size, image_size), dtype=np.uint8)
        return RawData(info_, empty, np.zeros(0, dtype=np.int64), flip=False)
    rng = np.random.default_rng(data_seed)
    n_fine = coarse * fine_per_coarse
    coarse_pat = _random_waves(rng, coarse, image_size, 1, 2)
    fine_hi = min(5, (image_size - 1) // 2)  # stay below Nyquist on small images
    fine_pat = _random_waves(rng, n_fine, image_size, 3, fine_hi)
    protos = coarse_pat[np.arange(n_fine) // fine_per_coarse] + 0.6 * fine_pat
    fine_ids = np.repeat(np.arange(n_fine), n_per_fine)
    shifts = rng.uniform(-2.0, 2.0, size=(len(fine_ids), 2)) * image_size / 28
    gain = rng.uniform(0.8, 1.2, size=(len(fine_ids), 1, 1))
    x = gain * _fft_shift(protos[fine_ids], shifts)
    x += rng.normal(size=x.shape)
    images = np.clip(np.rint(127.5 + 40.0 * x), 0, 255).astype(np.uint8)[:, None]
    labels = fine_ids // fine_per_coarse if label == "coarse" else fine_ids
    return RawData(info_, images, labels, strata=fine_ids, flip=False)
