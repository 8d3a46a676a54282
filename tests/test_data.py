"""The dataset registry: shapes, fixed disjoint stratified splits, budget sampling, augmentation
and the error messages for missing data. Everything is offline; decoded data is cached per process
so Fashion-MNIST is decoded once for the whole file."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from harness import data
from harness.errors import HarnessError
from harness.spec import registry

# name -> (train, val, test sizes, image shape, num_classes). The sizes pin the fixed splits.
EXPECTED = {
    "fashion_mnist": ((54000, 6000, 10000), (1, 28, 28), 10),
    "mnist5k": ((3500, 750, 750), (1, 28, 28), 10),
    "animal_mnist": ((7000, 1500, 1500), (1, 28, 28), 10),
    "digits": ((1259, 269, 269), (1, 8, 8), 10),
    "synthetic_hier": ((2520, 540, 540), (1, 28, 28), 4),
}
BUILTIN = list(EXPECTED)
SMALL = ["mnist5k", "animal_mnist", "digits", "synthetic_hier"]


def _splits(name: str, **kw) -> dict[str, data.ArrayDataset]:
    return {s: data.load(name, s, **kw) for s in data.SPLITS}


def _digest(ds: data.ArrayDataset) -> list[str]:
    return [hashlib.sha1(ds[i][0].numpy().tobytes()).hexdigest() for i in range(len(ds))]


@pytest.mark.parametrize("name", BUILTIN)
def test_shapes_labels_and_split_sizes(name):
    sizes, shape, num_classes = EXPECTED[name]
    splits = _splits(name)
    for (split, ds), size in zip(splits.items(), sizes, strict=True):
        assert len(ds) == size, split
        assert ds.info == data.info(name)
        assert (ds.info.num_classes, ds.info.in_chans, ds.info.image_size) == (
            num_classes,
            shape[0],
            shape[1],
        )
        assert ds.targets.dtype == np.int64
        assert set(np.unique(ds.targets)) == set(range(num_classes)), split
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            assert x.dtype == torch.float32 and tuple(x.shape) == shape
            assert isinstance(y, int) and y == ds.targets[i]
    x, y = next(iter(DataLoader(splits["train"], batch_size=8)))
    assert x.shape == (8, *shape) and y.dtype == torch.int64


@pytest.mark.parametrize("name", BUILTIN)
def test_splits_disjoint_and_cover_the_pool(name):
    ids = [ds.ids for ds in _splits(name).values()]
    union = np.concatenate(ids)
    assert len(np.unique(union)) == len(union) == sum(EXPECTED[name][0])


@pytest.mark.parametrize("name", ["mnist5k", "synthetic_hier"])
def test_splits_disjoint_by_content(name):
    hashes = [set(_digest(ds)) for ds in _splits(name).values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])


@pytest.mark.parametrize("name", SMALL)
def test_splits_are_deterministic(name):
    a, b = data.load(name, "val"), data.load(name, "val", seed=7)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.targets, b.targets)
    if name != "synthetic_hier":  # its data follows ``seed`` (checked below)
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(0, len(a), 37))
    # A fresh decode (bypassing the process cache) gives the same splits and pixels.
    kw = (("data_seed", 0),) if name == "synthetic_hier" else ()
    fresh = data.prepared.__wrapped__(name, None, kw)
    cached = data.prepared(name, None, kw)
    assert all(np.array_equal(fresh.splits[s], cached.splits[s]) for s in data.SPLITS)
    assert torch.equal(fresh.pool, cached.pool)


@pytest.mark.parametrize("name", BUILTIN)
def test_per_class_budget(name):
    n = 5
    ds = data.load(name, "train", per_class=n, seed=1)
    assert len(ds) == n * ds.info.num_classes
    assert np.array_equal(np.bincount(ds.targets), [n] * ds.info.num_classes)
    assert set(ds.ids) <= set(data.load(name, "train").ids)
    assert np.array_equal(ds.ids, data.load(name, "train", per_class=n, seed=1).ids)
    assert not np.array_equal(ds.ids, data.load(name, "train", per_class=n, seed=2).ids)
    with pytest.raises(HarnessError, match=rf"{name}/val: class 0 .*has \d+ samples") as e:
        data.load(name, "val", per_class=10**6)
    assert "per_class=1000000" in str(e.value)


def test_limit_is_a_seeded_subset():
    full = data.load("mnist5k", "test")
    a = data.load("mnist5k", "test", limit=100, seed=3)
    assert len(a) == 100 and set(a.ids) <= set(full.ids)
    assert np.array_equal(a.ids, data.load("mnist5k", "test", limit=100, seed=3).ids)
    assert not np.array_equal(a.ids, data.load("mnist5k", "test", limit=100, seed=4).ids)
    b = data.load("mnist5k", "train", per_class=20, limit=50)
    assert len(b) == 50
    with pytest.raises(HarnessError, match="limit"):
        data.load("mnist5k", limit=0)


def test_normalisation_is_roughly_standard():
    for name in SMALL:
        ds = data.load(name, "train")
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3, name


def test_synthetic_hier_coarse_and_fine_labels_agree():
    coarse = data.load("synthetic_hier", "train", label="coarse")
    fine = data.load("synthetic_hier", "train", label="fine")
    assert coarse.info.num_classes == 4 and fine.info.num_classes == 12
    assert fine.info.class_names[4] == "c1f1"
    assert np.array_equal(coarse.ids, fine.ids)
    assert np.array_equal(fine.targets // 3, coarse.targets)
    assert torch.equal(coarse[10][0], fine[10][0])
    other = data.info("synthetic_hier", coarse=2, fine_per_coarse=5, label="fine")
    assert other.num_classes == 10
    small = data.load("synthetic_hier", "test", coarse=2, fine_per_coarse=2, n_per_fine=20)
    assert len(small) == 4 * 3 and set(small.targets) == {0, 1}


def test_synthetic_hier_follows_the_seed():
    a = data.load("synthetic_hier", "train", seed=1)
    b = data.load("synthetic_hier", "train", seed=1)
    c = data.load("synthetic_hier", "train", seed=2)
    pinned = data.load("synthetic_hier", "train", seed=9, data_seed=1)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][0], pinned[0][0])
    assert not torch.equal(a[0][0], c[0][0])
    with pytest.raises(HarnessError, match="label"):
        data.load("synthetic_hier", label="medium")


def test_unknown_names_splits_and_options():
    with pytest.raises(HarnessError) as e:
        data.load("imagenet")
    assert all(n in str(e.value) for n in registry.DATASETS.names()) and "\n" not in str(e.value)
    with pytest.raises(HarnessError, match="train, val, test"):
        data.load("digits", "validation")
    with pytest.raises(HarnessError, match="bad dataset option"):
        data.load("digits", colour=True)
    with pytest.raises(HarnessError, match="per_class"):
        data.load("digits", per_class=0)


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(HarnessError, match="dataset-fashion-mnist") as e:
        data.load("fashion_mnist", root=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)


@pytest.mark.parametrize("name", ["digits", "mnist5k", "animal_mnist"])
def test_augmentation(name):
    plain = data.load(name, "train", augment="none")
    assert torch.equal(plain[3][0], plain[3][0])
    torch.manual_seed(0)
    for level in ("weak", "strong"):
        ds = data.load(name, "train", augment=level)
        draws = [ds[3][0] for _ in range(8)]
        assert all(d.shape == plain[3][0].shape for d in draws)
        assert any(not torch.equal(d, plain[3][0]) for d in draws), level
        assert ds[3][1] == plain[3][1]
    with pytest.raises(HarnessError, match="none, weak, strong"):
        data.load(name, augment="heavy")


# name -> (folder, train files, test files, label key, (meta file, meta key)), as torchvision reads.
CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        ("batches.meta", "label_names"),
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "fine_labels",
        ("meta", "fine_label_names"),
    ),
}


def _write_fake_cifar(root: Path, name: str) -> tuple[int, int]:
    """A tiny CIFAR-format folder: pixel value = label * 10 + channel so layout errors show."""
    folder, train_files, test_files, label_key, meta = CIFAR_LAYOUT[name]
    base = root / folder
    base.mkdir(parents=True)
    n_classes, per_file = 3, 30

    def batch() -> dict:
        labels = [i % n_classes for i in range(per_file)]
        img = np.zeros((per_file, 3, 32, 32), dtype=np.uint8)
        img += (np.array(labels)[:, None, None, None] * 10 + np.arange(3)[:, None, None]).astype(
            np.uint8
        )
        return {"data": img.reshape(per_file, -1), label_key: labels}

    for f in train_files + test_files:
        (base / f).write_bytes(pickle.dumps(batch()))
    (base / meta[0]).write_bytes(pickle.dumps({meta[1]: ["a", "b", "c"]}))
    return per_file * len(train_files), per_file * len(test_files)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_a_local_root_only(name, tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    with pytest.raises(HarnessError, match=data.DATA_ROOT_ENV):
        data.load(name)
    with pytest.raises(HarnessError, match="not found") as e:
        data.load(name, root=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty" / CIFAR_LAYOUT[name][0]).mkdir(parents=True)
    with pytest.raises(HarnessError, match="missing or corrupted"):
        data.load(name, root=str(tmp_path / "empty"))

    # Real CIFAR files are not here; fake ones pass torchvision's md5 checks when patched out.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    n_train, n_test = _write_fake_cifar(tmp_path / "fake", name)
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "fake"))
    splits = _splits(name)
    assert [len(d) for d in splits.values()] == [n_train - n_train // 10, n_train // 10, n_test]
    ds = splits["train"]
    assert ds.info == data.DatasetInfo(name, 3, 3, 32, ("a", "b", "c"))
    raw = ds._pool[int(ds.ids[0])]
    assert raw.shape == (3, 32, 32)
    assert raw[:, 5, 7].tolist() == [ds.targets[0] * 10 + c for c in range(3)]


def _png_folder(root: Path, classes: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            size = (20 + i, 24)
            mode = "L" if i % 2 else "RGB"
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    _png_folder(tmp_path / "imgs", {"cat": 6, "dog": 7, "owl": 8})
    splits = _splits(f"imagefolder:{tmp_path / 'imgs'}", image_size=16)
    ds = splits["train"]
    assert ds.info == data.DatasetInfo("imagefolder", 3, 3, 16, ("cat", "dog", "owl"))
    assert ds.info == data.info("imagefolder", root=str(tmp_path / "imgs"), image_size=16)
    assert sum(len(d) for d in splits.values()) == 21
    for split, d in splits.items():
        assert set(d.targets) == {0, 1, 2}, split
        assert d[0][0].shape == (3, 16, 16)
    same = data.load("imagefolder", "train", root=str(tmp_path / "imgs"), image_size=16)
    assert np.array_equal(same.ids, ds.ids)

    _png_folder(tmp_path / "tt" / "train", {"a": 10, "b": 10})
    _png_folder(tmp_path / "tt" / "test", {"a": 2, "b": 3})
    tt = _splits(f"imagefolder:{tmp_path / 'tt'}")
    assert [len(d) for d in tt.values()] == [18, 2, 5]
    assert tt["test"][0][0].shape == (3, 32, 32)

    with pytest.raises(HarnessError, match="nope"):
        data.load(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(HarnessError, match="needs a path"):
        data.load("imagefolder")
