"""Guards of processes a driver starts: stopped by pid when the driver dies (watchdog, or the
next command), never a process that merely reuses a recorded pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.cluster import orphans

DRIVER = """
import json, signal, subprocess, sys, time
from pathlib import Path
from harness.cluster import orphans

folder, mark = Path(sys.argv[1]), sys.argv[2]
g = orphans.Guard(folder, "test processes", marks={"cmdline": [mark]})
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
stubborn = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]
a = subprocess.Popen(sleeper)                       # tracked by pid
b = subprocess.Popen(stubborn)                      # tracked; ignores SIGTERM
c = subprocess.Popen([*sleeper, mark], start_new_session=True)  # found by its mark
g.track([a.pid, b.pid])
print(json.dumps(dict(pids=[a.pid, b.pid, c.pid], watchdog=g.watchdog.pid)), flush=True)
time.sleep(300)
"""


@contextmanager
def driver_running(folder: Path, mark: str) -> Iterator[tuple[subprocess.Popen, list[int], int]]:
    """A driver with three children under a guard: (driver, children, watchdog); whatever is
    left of them is killed at the end."""
    p = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(folder), mark], stdout=subprocess.PIPE, text=True
    )
    info = json.loads(p.stdout.readline())
    try:
        yield p, info["pids"], info["watchdog"]
    finally:
        for pid in [p.pid, *info["pids"], info["watchdog"]]:
            if orphans.alive(pid):
                os.kill(pid, signal.SIGKILL)
        p.wait()


def gone_within(pids: list[int], seconds: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not any(orphans.alive(pid) for pid in pids):
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def test_watchdog_stops_the_processes_of_a_killed_driver(tmp_path):
    folder = tmp_path / "guards"
    with driver_running(folder, f"mark-{os.getpid()}-a") as (driver, pids, watchdog):
        assert all(orphans.alive(p) for p in pids)
        record = json.loads((folder / f"driver-{driver.pid}.json").read_text())
        assert record["host"] == socket.gethostname() and record["driver"][0] == driver.pid
        driver.kill()  # SIGKILL: no cleanup of its own
        driver.wait()
        took = gone_within([*pids, watchdog], 15)
        assert took is not None, [p for p in pids if orphans.alive(p)]
        assert not (folder / f"driver-{driver.pid}.json").exists()
        assert "stopped 3 processes of test processes" in (folder / orphans.LOG).read_text()


def test_next_command_stops_what_a_dead_driver_left(tmp_path):
    folder = tmp_path / "guards"
    with driver_running(folder, f"mark-{os.getpid()}-b") as (driver, pids, watchdog):
        os.kill(watchdog, signal.SIGKILL)  # no watchdog: the next command must do it
        driver.kill()
        driver.wait()
        time.sleep(0.5)
        assert all(orphans.alive(p) for p in pids)  # orphans now
        lines: list[str] = []
        assert orphans.reap_dead(folder, lines.append) == 3
        assert not any(orphans.alive(p) for p in pids)
        assert lines and "stopped 3 processes left by driver" in lines[0]
        assert not list(folder.glob("driver-*.json"))


def test_a_reused_pid_or_a_live_driver_is_left_alone(tmp_path):
    folder = tmp_path / "guards"
    folder.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        start = orphans.start_time(other.pid)
        host = socket.gethostname()
        # recorded with another start time: the pid was reused by an unrelated process
        rec = dict(host=host, driver=[dead.pid, 1], what="x", marks={}, pids=[[other.pid, 7]])
        (folder / "driver-1.json").write_text(json.dumps(rec))
        # a live driver (this test) keeps its processes
        live = dict(rec, driver=[os.getpid(), orphans.start_time(os.getpid())])
        live["pids"] = [[other.pid, start]]
        (folder / "driver-2.json").write_text(json.dumps(live))
        # another host's guard is not ours to judge
        away = dict(rec, host=host + "-elsewhere", pids=[[other.pid, start]])
        (folder / "driver-3.json").write_text(json.dumps(away))
        assert orphans.reap_dead(folder) == 0
        assert orphans.alive(other.pid, start)
        assert sorted(p.name for p in folder.glob("driver-*.json")) == [
            "driver-2.json",
            "driver-3.json",
        ]
    finally:
        other.kill()
        other.wait()
