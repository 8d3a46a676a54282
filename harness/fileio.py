"""Atomic file writes: write a hidden temporary next to the target, then rename over it, so a
reader (or a crash) never sees a half-written file. Used for Parquet parts, checkpoints, job
records, exports and reports."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    path: str | os.PathLike, writer: Callable[[Path], object], *, fsync: bool = False
) -> Path:
    """Call ``writer(tmp)`` on a temporary beside ``path``, then rename it to ``path``; the
    temporary is removed if anything fails. ``fsync`` flushes the data before the rename."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        writer(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))
