"""Atomic file writes: write a hidden temporary next to the target, then rename over it, so a
reader (or a crash) never sees a half-written file. Used for Parquet parts, checkpoints, job
records, exports and reports; a lock file that works on a shared file system; and the one
check every path a command writes or reads a store from goes through first (``check_path``)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_AGAIN = "free space and run the same command again"


def disk_full_cause(e: BaseException | None) -> OSError | None:
    """The OSError of a full disk or quota (ENOSPC, EDQUOT) that is ``e`` or that ``e`` was
    raised from (torch wraps the OSError of a file object in a RuntimeError); else None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def disk_full_message(path: str | os.PathLike, code: int | None = errno.ENOSPC) -> str:
    """The one line that says ``path`` could not be written for want of space."""
    return f"{path}: {DISK_FULL.get(code or errno.ENOSPC, DISK_FULL[errno.ENOSPC])}; {_AGAIN}"


def disk_full_line(text: str, where: str | os.PathLike) -> str | None:
    """The disk-full line in a failed job's error text: its own harness line when it has one,
    else one naming the file in an OSError's text, or ``where``; None for other failures."""
    lines = text.splitlines()
    for ln in reversed(lines):
        if ln.rstrip().endswith(_AGAIN):
            return ln.split("HarnessError: ", 1)[-1].strip()
    for ln in reversed(lines):
        for code, words in DISK_FULL.items():
            if words in ln.lower():
                path = re.search(r"'(/[^']+)'", ln)
                return disk_full_message(path.group(1) if path else where, code)
    return None


def atomic_write(
    path: str | os.PathLike,
    writer: Callable[[Path], object],
    *,
    fsync: bool = False,
    previous: str | os.PathLike | None = None,
) -> Path:
    """Call ``writer(tmp)`` on a temporary beside ``path``, then rename it to ``path``; the
    temporary is removed if anything fails. ``fsync`` flushes the data before the rename.

    ``previous``: the file ``path`` held until now becomes ``previous`` (a hard link renamed
    into place) before the new one is renamed over ``path``, so at every instant ``path`` and
    then also ``previous`` hold complete files. A full disk or quota (at write, fsync or rename)
    raises HarnessError naming ``path``, and leaves no temporary behind."""
    from harness.errors import HarnessError

    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        writer(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if previous is not None:
            _keep_previous(dest, Path(previous))
        os.replace(tmp, dest)
    except Exception as e:
        cause = disk_full_cause(e)
        if cause is None:
            raise
        raise HarnessError(disk_full_message(dest, cause.errno), code=1) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _keep_previous(dest: Path, previous: Path) -> None:
    """Make ``previous`` the file ``dest`` holds now (if any), atomically, keeping ``dest``."""
    link = previous.with_name(f".{previous.name}.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(dest, link)
    except FileNotFoundError:
        return  # nothing to keep yet
    except OSError as e:
        if disk_full_cause(e) is not None:
            raise
        try:  # no hard links here: rename (``dest`` is briefly absent)
            os.replace(dest, previous)
        except FileNotFoundError:
            pass
        return
    try:
        os.replace(link, previous)
    finally:
        link.unlink(missing_ok=True)


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


PATH_KINDS = ("file", "dir", "root")
_NOUNS = {"file": "file name", "dir": "folder", "root": "results folder"}


def check_path(
    path: str | os.PathLike,
    kind: str = "file",
    what: str = "--output",
    suffixes: Sequence[str] = (),
) -> Path:
    """Refuse, before any work is done, a path a command could not use; returns it as a Path.

    Every path a command writes, or reads a store from, goes through here, so that a bad one is
    one line naming the flag (``what``), the path, why, and what would do, instead of a
    traceback after the work. ``kind``:

    * ``file``: a file to write (an export, a plot). Its folder must exist and be writable (it
      is not created: a typo in it should not make folders); the path must not be a folder or
      anything but a regular file (a device is never replaced). An existing file is
      overwritten. ``suffixes`` (e.g. ``(".png", ".pdf")``): the extensions allowed.
    * ``dir``: a folder to write into (a report, a results root). Missing folders are created
      by the command, so only the nearest existing one must be a writable folder; an existing
      folder is fine (a report folder is rewritten in place), an existing file is refused.
    * ``root``: a results root to read: an existing folder. A missing one is ``no results
      under ROOT`` with code 1, the line ``harness query`` prints for it.

    Writability is tried, not read from permission bits (root may write where the bits say no,
    and nobody may write to /proc or a read-only mount): a hidden probe file is created in the
    folder and removed at once. Raises HarnessError (code 2, 1 for a missing root)."""
    from harness.errors import HarnessError

    if kind not in PATH_KINDS:
        raise ValueError(f"kind must be one of {PATH_KINDS}, got {kind!r}")
    if not str(path).strip():
        raise HarnessError(f"{what}: empty path; give a {_NOUNS[kind]}")
    target = Path(path)

    def refuse(why: str, instead: str) -> HarnessError:
        return HarnessError(f"{what} {target}: {why}; {instead}")

    blocked = _file_above(target)
    if blocked is not None:
        raise refuse(f"{blocked} is a file, not a folder", f"give a path outside {blocked}")
    if kind == "root":
        if not target.exists():
            raise HarnessError(f"no results under {target}", code=1)
        if not target.is_dir():
            raise refuse("is a file, not a folder", "give the folder that holds the results")
        return target
    if kind == "file":
        if target.is_dir():
            raise refuse("is a folder", f"give a file name in it, e.g. {target / 'out'}")
        if target.exists() and not target.is_file():
            raise refuse("is not a regular file", "give the name of a file to write")
        if suffixes and target.suffix.lower() not in suffixes:
            why = (
                f"extension {target.suffix!r} is not supported" if target.suffix else "no extension"
            )
            raise refuse(why, f"valid: {', '.join(suffixes)}")
        folder = target.parent
        if not folder.is_dir():
            raise refuse(f"folder {folder} does not exist", "create it or choose another")
    else:
        if target.exists() and not target.is_dir():
            raise refuse("is a file, not a folder", "give a folder (created if missing)")
        folder = target
        while not folder.exists():
            folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=folder)
    except OSError as e:
        why = f"cannot write in {folder} ({e.strerror.lower()})"
        raise refuse(why, "choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)
    return target


def _file_above(path: Path) -> Path | None:
    """The nearest existing folder-to-be above ``path`` that is a regular file, if any."""
    for above in path.parents:
        if above.exists():
            return None if above.is_dir() else above
    return None
