"""Atomic file writes: write a hidden temporary next to the target, then rename over it, so a
reader (or a crash) never sees a half-written file. Used for Parquet parts, checkpoints, job
records, exports and reports; and a lock file that works on a shared file system."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _holder_alive(text: str) -> bool | None:
    """Whether the process named in a lock file (``host pid time``) still runs: True/False when
    it ran on this host, None when it ran elsewhere (we cannot see its processes)."""
    import socket

    try:
        host, pid, _ = text.split()
        pid_n = int(pid)
    except ValueError:
        return False  # torn or foreign content: nobody holds it
    if host != socket.gethostname():
        return None
    try:
        with open(f"/proc/{pid_n}/status") as fh:
            return not any(ln.startswith("State:") and "Z" in ln.split()[1:2] for ln in fh)
    except OSError:
        return False


@contextmanager
def file_lock(
    path: str | os.PathLike, *, timeout: float = 600.0, stale_after: float = 3600.0
) -> Iterator[Path]:
    """Hold an exclusive lock file while the block runs; works on shared file systems.

    The lock is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+) and
    holds ``host pid time``. A lock left by a dead process of this host, or one older than
    ``stale_after`` seconds from another host, is broken (by renaming it aside and checking that
    what was moved is what was judged stale). Waits up to ``timeout`` seconds, then raises
    HarnessError naming the lock and its holder.
    """
    import socket
    import time
    import uuid

    from harness.errors import HarnessError

    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()} {time.time():.3f}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = lock.read_text()
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue  # released between our two calls
            alive = _holder_alive(held)
            if alive is False or (alive is None and age > stale_after):
                aside = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(lock, aside)
                except FileNotFoundError:
                    continue
                if aside.read_text() != held:  # a fresh lock was taken meanwhile: put it back
                    try:
                        os.link(aside, lock)
                    except FileExistsError:
                        pass
                aside.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{lock}: held by {held.split()[:2]} for {age:.0f} s; waited {timeout:.0f} s",
                    code=1,
                ) from None
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        break
    try:
        yield lock
    finally:
        try:
            if lock.read_text() == me:
                lock.unlink()
        except FileNotFoundError:
            pass
