"""Processes a driver starts that must not outlive it: a local Ray runtime, local jobs.

A *guard* is a record ``driver-<pid>.json`` in a folder of the results root (``ray/`` for the
Ray runtime of a sweep, ``jobs/local/`` for local-executor jobs): this host, the driver's pid
and start time, the pids (with start times) of the processes it started, and marks that name
the rest of them (a Ray session folder in a command line, a Ray node id in an environment).
While the guard is open a small watchdog process waits for the driver; when the driver dies by
any signal, SIGKILL included, the watchdog stops every process of the guard and every
descendant of the driver. Failing that, the next command stops them (``reap_dead``) before it
starts its own. A clean exit removes the record and the watchdog.

Processes are stopped by pid only (SIGTERM, then SIGKILL after a grace period), never by name,
and only while a pid still belongs to the guard: same start time as recorded (pid reuse), or
carrying one of its marks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store.fileio import atomic_write_text

Echo = Callable[[str], None]
FOLDERS = {"ray": ("ray",), "local": ("jobs", "local")}  # guards of each kind, in the root
GRACE_S = 3.0  # SIGTERM to SIGKILL
LOG = "reaped.log"


def guard_dir(root: str | os.PathLike, kind: str) -> Path:
    """The folder of the guards of ``kind`` (``ray`` or ``local``) in a results root."""
    return Path(root).joinpath(*FOLDERS[kind])


# ---------------------------------------------------------------------------------------------
# Processes, from /proc


def start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if rest[0] in (b"Z", b"X") else int(rest[19])


def now_ticks() -> int:
    """Clock ticks after boot now: the unit of start times."""
    with open("/proc/uptime") as fh:
        return int(float(fh.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``start``, is still the process that started then)."""
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def _table() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, start time)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    rest = fh.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if rest[0] not in (b"Z", b"X"):
                out[int(name)] = (int(rest[1]), int(rest[19]))
    return out


def descendants(roots: Iterable[int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """``roots`` that live and all their descendants: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = [p for p in roots if p in table]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = table[pid][1]
            todo += children.get(pid, [])
    return out


def _marked(marks: dict[str, list[str]], table: dict[int, tuple[int, int]]) -> set[int]:
    """Processes (of this user) whose command line holds one of the ``cmdline`` marks or whose
    environment has one of the ``environ`` entries (``NAME=value``, exactly)."""
    found: set[int] = set()
    wanted = {k: [m.encode() for m in marks.get(k, []) if m] for k in ("cmdline", "environ")}
    for pid in table:
        for kind, words in wanted.items():
            if not words:
                continue
            try:
                with open(f"/proc/{pid}/{kind}", "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            have = set(text.split(b"\0")) if kind == "environ" else None  # whole entries
            if any((w in have) if have is not None else (w in text) for w in words):
                found.add(pid)
                break
    return found


def stop(procs: dict[int, int], grace: float = GRACE_S) -> list[int]:
    """Stop these processes (pid -> start time) by pid: SIGTERM, then SIGKILL whatever still
    runs after ``grace`` seconds; a pid whose start time changed (reused) is left alone.
    Returns the pids that were signalled."""
    mine = {p: s for p, s in procs.items() if p > 1 and p != os.getpid() and alive(p, s)}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid, s in mine.items():
            if alive(pid, s):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p, s) for p, s in mine.items()):
            time.sleep(0.1)
    return sorted(mine)


# ---------------------------------------------------------------------------------------------
# Guards


def _record_targets(rec: dict[str, Any], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes of a guard record that still run: recorded pids with their recorded start
    time, processes with its marks, and the descendants of both."""
    roots = {int(p) for p, s in rec.get("pids", []) if table.get(int(p), (0, None))[1] == s}
    roots |= _marked(rec.get("marks", {}), table)
    roots.discard(os.getpid())
    return descendants(roots, table)


def _reap(path: Path, rec: dict[str, Any], extra: dict[int, int] | None = None) -> list[int]:
    """Stop what a dead driver's guard names (and ``extra``); remove the record; log a line."""
    t0 = time.monotonic()
    targets = _record_targets(rec, _table())
    targets.update({p: s for p, s in (extra or {}).items() if alive(p, s)})
    targets.pop(os.getpid(), None)
    stopped = stop(targets)
    path.unlink(missing_ok=True)
    if stopped:
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} driver {rec['driver'][0]} on {rec['host']} "
            f"died: stopped {len(stopped)} processes of {rec.get('what', '?')} in "
            f"{time.monotonic() - t0:.1f} s: {' '.join(map(str, stopped))}\n"
        )
        try:
            with open(path.parent / LOG, "a") as fh:
                fh.write(line)
        except OSError:
            pass  # the log is a courtesy
    return stopped


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def reap_dead(folder: str | os.PathLike, echo: Echo | None = None) -> int:
    """Stop the processes of every guard in ``folder`` whose driver died on this host; return
    how many processes were stopped. Guards of other hosts and of live drivers are left."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host, total = socket.gethostname(), 0
    for path in sorted(folder.glob("driver-*.json")):
        rec = _read(path)
        if rec is None or rec.get("host") != host or alive(*rec["driver"]):
            continue
        stopped = _reap(path, rec)
        total += len(stopped)
        if stopped and echo:
            echo(
                f"stopped {len(stopped)} processes left by driver {rec['driver'][0]}, which "
                f"died ({rec.get('what', '?')})"
            )
    return total


class Guard:
    """An open guard: ``track`` adds processes; ``close`` (a clean exit) forgets them. Best
    effort: where the record cannot be written (a full disk) the driver runs unguarded."""

    def __init__(self, folder: Path, what: str, marks: dict[str, list[str]] | None = None):
        pid = os.getpid()
        self.opened = now_ticks() - 1
        self.path = folder / f"driver-{pid}.json"
        self.rec: dict[str, Any] = dict(
            host=socket.gethostname(),
            driver=[pid, start_time(pid)],
            what=what,
            marks=marks or {},
            pids=[],
        )
        self.watchdog: subprocess.Popen | None = None
        if self._write():
            self.watchdog = _start_watchdog(self.path)

    def _write(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.rec))
        except (OSError, HarnessError):  # a full disk: HarnessError from the atomic write
            return False
        return True

    def update(
        self,
        *,
        what: str | None = None,
        marks: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Rename the guard, add marks or other fields to its record."""
        if what:
            self.rec["what"] = what
        for k, v in (marks or {}).items():
            self.rec["marks"].setdefault(k, []).extend(v)
        self.rec.update(extra or {})
        self._write()

    def track(self, pids: Iterable[int]) -> None:
        """Add these processes, their descendants and the processes with the guard's marks,
        as they are now, to the record."""
        table = _table()
        found = descendants(pids, table)
        found.update(descendants(_marked(self.rec["marks"], table), table))
        found.pop(os.getpid(), None)
        if self.watchdog is not None:
            found.pop(self.watchdog.pid, None)
        known = {p for p, _ in self.rec["pids"]}
        self.rec["pids"] += [[p, s] for p, s in sorted(found.items()) if p not in known]
        self._write()

    def track_children(self) -> None:
        """Add the driver's descendants started since the guard opened (the processes it is
        about; an interrupted start may have left them unnamed by any mark)."""
        table = _table()
        skip = {os.getpid(), self.watchdog.pid if self.watchdog else -1}
        mine = descendants([os.getpid()], table)
        self.track(p for p, s in mine.items() if s >= self.opened and p not in skip)

    def stop_remaining(self) -> list[int]:
        """Stop what the record still names (after the driver shut its processes down)."""
        return stop(_record_targets(self.rec, _table()))

    def close(self) -> None:
        """The driver is done with these processes: remove the record, stop the watchdog."""
        self.path.unlink(missing_ok=True)
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.terminate()
            try:
                self.watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()


@contextmanager
def guard(
    folder: str | os.PathLike, what: str, marks: dict[str, list[str]] | None = None
) -> Iterator[Guard]:
    """Open a guard for the processes this driver is about to start; closed on a clean exit
    (an exception included); a killed driver leaves it to its watchdog or the next command."""
    g = Guard(Path(folder), what, marks)
    try:
        yield g
    finally:
        g.close()


# ---------------------------------------------------------------------------------------------
# The watchdog


def _start_watchdog(record: Path) -> subprocess.Popen | None:
    """``python -m harness.cluster.orphans RECORD`` in its own session (no terminal signal reaches it)."""
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cluster.orphans", str(record)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    except OSError:
        return None  # the next command still reaps


def watch(record: Path, period: float = 1.0) -> int:
    """Wait for the driver of ``record`` to die, following its descendants meanwhile; then,
    unless the record was removed (a clean exit), stop them and the guard's processes."""
    rec = _read(record)
    if rec is None:
        return 0
    pid, start = rec["driver"]
    try:
        fd: int | None = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = None
    poller = select.poll()
    if fd is not None:
        poller.register(fd, select.POLLIN)
    seen: dict[int, int] = {}
    while alive(pid, start):
        seen.update(descendants([pid], _table()))
        seen.pop(os.getpid(), None)
        seen.pop(pid, None)
        if fd is not None:
            poller.poll(period * 1000)
        else:
            time.sleep(period)
    rec = _read(record)
    if rec is None:  # closed cleanly
        return 0
    _reap(record, rec, seen)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(watch(Path(sys.argv[1])))
