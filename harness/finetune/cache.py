"""The activation cache: outputs of the frozen prefix, computed once and reused.

Without augmentation the stages before the first trained one are deterministic, so their outputs
for a split are computed once per (checkpoint, data, stage) and shared by every epoch and every
later trial of the process: in RAM up to a budget, then as memory-mapped files on disk.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHE_MB_ENV = "HARNESS_CACHE_MB"
CACHE_DIR_ENV = "HARNESS_CACHE"
DEFAULT_CACHE_MB = 2048


class Activations:
    """Cached prefix outputs (N × ...) of one split: a float32 tensor in RAM, or a float32 .npy
    file memory-mapped from disk. ``rows`` reads one batch."""

    def __init__(self, array: torch.Tensor | np.ndarray, path: Path | None = None):
        self.array = array
        self.path = path

    def __len__(self) -> int:
        return self.array.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.array.shape)) * 4

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.path is None:
            return self.array.index_select(0, idx)
        return torch.from_numpy(np.ascontiguousarray(self.array[idx.numpy()]))


def _write_rows(
    shape: tuple[int, ...], batches: Iterable[torch.Tensor], path: Path | None
) -> Activations:
    """Activations filled from ``batches`` (``shape[0]`` rows in all, in order): a float32
    tensor in RAM, or with ``path`` a float32 .npy file, reopened memory-mapped read-only."""
    n = shape[0]
    if path is None:
        array: Any = torch.empty(shape, dtype=torch.float32)
    else:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    s = 0
    for b in batches:
        b = b.detach().to(torch.float32)
        if path is None:
            array[s : s + len(b)] = b
        else:
            array[s : s + len(b)] = b.numpy()
        s += len(b)
    if s != n:
        raise RuntimeError(f"activation cache: expected {n} rows, got {s}")
    if path is not None:
        array.flush()
        del array
        array = np.load(path, mmap_mode="r")
    return Activations(array, path)


class ActivationCache:
    """Prefix activations by key, shared across epochs and trials of a process.

    Entries stay in RAM while their total is within ``budget_mb`` (default ``$HARNESS_CACHE_MB``
    or 2048); an entry that does not fit is written to a memory-mapped file under ``cache_dir``
    (default ``$HARNESS_CACHE``, else the system temp dir), in a per-process folder removed on
    ``clear()`` or at exit. ``enabled=False`` caches nothing (the prefix runs every step)."""

    def __init__(
        self,
        budget_mb: float | None = None,
        cache_dir: str | os.PathLike | None = None,
        enabled: bool = True,
    ):
        mb = os.environ.get(CACHE_MB_ENV, DEFAULT_CACHE_MB) if budget_mb is None else budget_mb
        self.budget_bytes = int(float(mb) * 2**20)
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.ram_bytes = 0
        self.builds = 0
        self.hits = 0
        self._entries: dict[tuple, Activations] = {}
        self._dir: Path | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: tuple, n: int, batches: Callable[[], Iterable[torch.Tensor]]
    ) -> Activations | None:
        """The entry for ``key``, built from ``batches()`` (``n`` rows in order) when missing;
        None when the cache is disabled."""
        if not self.enabled:
            return None
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        acts = self._build(n, iter(batches()))
        self._entries[key] = acts
        self.builds += 1
        if acts.path is None:
            self.ram_bytes += acts.nbytes
        return acts

    def _build(self, n: int, it: Iterator[torch.Tensor]) -> Activations:
        """An entry of ``n`` rows: in RAM while the budget allows, else spilled to disk."""
        first = next(it)
        shape = (n, *first.shape[1:])
        nbytes = int(np.prod(shape)) * 4
        path = None
        if self.ram_bytes + nbytes > self.budget_bytes:
            path = self.directory() / f"acts-{uuid.uuid4().hex}.npy"
        return _write_rows(shape, (first, *it), path)

    def directory(self) -> Path:
        """This process's spill folder (created on first use)."""
        if self._dir is None:
            base = self.cache_dir or os.environ.get(CACHE_DIR_ENV) or None
            if base is not None:
                Path(base).mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f"harness-acts-{os.getpid()}-", dir=base))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def clear(self) -> None:
        """Drop every entry and delete the spill folder."""
        self._entries.clear()
        self.ram_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


_DEFAULT_CACHE: ActivationCache | None = None


def default_cache() -> ActivationCache:
    """The process-wide cache ``run_trial`` uses when none is given."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = ActivationCache()
    return _DEFAULT_CACHE
