"""Datasets read from a folder the user names, never downloaded: ``cifar10`` and ``cifar100``
(python batches under a root, falling back to ``$HARNESS_DATA_ROOT``) and ``imagefolder:<path>``
(one subfolder per class, optionally split into ``train/`` and ``test/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.dataset_info import DatasetInfo, RawData
from harness.data.registry import DATA_ROOT_ENV, builder
from harness.errors import HarnessError


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


@builder(root_env=True)
def cifar10(root: str | None) -> RawData:
    """CIFAR-10 from ``root/cifar-10-batches-py``."""
    return _cifar(root, "CIFAR10", "cifar-10-batches-py", "cifar10")


@builder(root_env=True)
def cifar100(root: str | None) -> RawData:
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


@builder(describe=_imagefolder_info)
def imagefolder(root: str | None, *, image_size: int = 32) -> RawData:
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
