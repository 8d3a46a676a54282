"""Sweeps on a real local Ray when processes die: a killed driver leaves no Ray process behind,
a killed trial worker is retried, a trial's own failure is recorded once and runs again only
with ``--retry-failed``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_sweep import make_checkpoint
from tests_util import HARNESS

from harness import store
from harness.cluster import orphans, sweep
from harness.spec import config
from harness.spec.load import load_spec

pytestmark = pytest.mark.slow  # every test starts a local Ray and a sweep


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


SLOW_EPOCHS = 300


def spec_file(tmp_path: Path, checkpoint: str, epochs: int, include: list[dict]) -> Path:
    spec = dict(
        name="rel",
        checkpoints={"paths": [checkpoint]},
        base=dict(dataset="digits", method="linear_probe", per_class=5, batch_size=32, nc=False),
        grid=dict(epochs=[epochs]),
        include=include,
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait_for(what, seconds: float, proc: subprocess.Popen | None = None):
    """Poll ``what()`` until it returns something truthy."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        got = what()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"driver ended early ({proc.returncode}): {out[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds} s waiting for {what.__name__}")


def running_markers(results: Path) -> list[dict]:
    out = []
    for p in results.glob("ray/rel-*/running/*.json"):
        try:
            out.append(dict(json.loads(p.read_text()), trial_id=p.stem))
        except (OSError, ValueError):
            continue
    return out


def session_processes(session: str, node: str) -> list[int]:
    """Processes of this user that name the Ray session or carry its node id."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not orphans.alive(int(name)):
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if session.encode() in cmdline or f"RAY_NODE_ID={node}".encode() in environ:
            found.append(int(name))
    return found


def program(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return b""  # gone meanwhile


def rows(results: Path) -> list[tuple]:
    con = store.connect(results)
    return con.execute("SELECT trial_id, lr, status, error FROM finetune ORDER BY lr").fetchall()


@pytest.mark.ray
def test_killed_sweep_driver_leaves_no_ray_process(results, tmp_path, checkpoint):
    spec = spec_file(tmp_path, checkpoint, epochs=5000, include=[])
    driver = subprocess.Popen(
        [HARNESS, "sweep", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    record_path = results / "ray" / f"driver-{driver.pid}.json"
    record: dict = {}
    try:

        def ray_up_and_trial_running():
            if not record_path.exists() or not running_markers(results):
                return None
            return json.loads(record_path.read_text()).get("session_dir")

        wait_for(ray_up_and_trial_running, 300, driver)
        record = json.loads(record_path.read_text())
        pids = [(p, s) for p, s in record["pids"]]
        worker = running_markers(results)[0]["pid"]
        names_by_pid = {p: program(p) for p, s in pids if orphans.alive(p, s)}
        names = set(names_by_pid.values())
        assert any(b"raylet" in n for n in names) and any(b"gcs_server" in n for n in names)
        node = record["marks"]["environ"][0].split("=", 1)[1]
        raylet = {p for p in names_by_pid if b"raylet" in names_by_pid[p]}
        ppid = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid in raylet  # the trial's worker: a descendant of a recorded process
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()

        def session_gone():
            left = [p for p, s in pids if orphans.alive(p, s)] + (
                [worker] if orphans.alive(worker) else []
            )
            return not left and not session_processes(record["session_dir"], node)

        def reaped():  # the watchdog stops the processes, then removes the record and logs
            log = results / "ray" / orphans.LOG
            return session_gone() and not record_path.exists() and log.exists()

        wait_for(reaped, 30)
        took = time.monotonic() - t0
        print(f"no process of the killed driver's Ray session after {took:.1f} s")
        assert session_gone() and not record_path.exists()
        assert "Ray session" in (results / "ray" / orphans.LOG).read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
        if record:
            orphans.stop({p: s for p, s in record["pids"]}, grace=1)


@pytest.mark.ray
def test_killed_worker_is_retried_and_failures_recorded_once(results, tmp_path, checkpoint):
    # one slow trial whose worker gets killed; one that diverges (NaN loss: a failure of its own)
    diverging = dict(method="full", lr=100.0, weight_decay=10.0, epochs=3)
    # 300 cached linear-probe epochs: about 10 s on an idle core, so the kill 2 s after the
    # trial starts lands mid-trial (at 40 epochs it took 1.5 s: the trial could end first)
    spec = spec_file(tmp_path, checkpoint, epochs=SLOW_EPOCHS, include=[diverging])
    driver = subprocess.Popen(
        [HARNESS, "sweep", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    trials = sweep.expand(load_spec(spec, kind=config.SweepSpec), results)
    slow_id = next(t["trial_id"] for t in trials if t["trial"]["epochs"] == SLOW_EPOCHS)
    try:

        def slow_trial_running():
            return [m for m in running_markers(results) if m["trial_id"] == slow_id]

        (slow,) = wait_for(slow_trial_running, 300, driver)
        time.sleep(2)  # mid-trial
        os.kill(slow["pid"], signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out[-3000:]  # the diverging trial failed
    assert "2 trials in rel: 2 to run" in out, out[-3000:]
    assert "1 done, 1 failed, 1 run again after their process died" in out, out[-3000:]
    got = rows(results)
    assert [(r[1], r[2]) for r in got] == [(0.01, "done"), (100.0, "failed")], got
    assert "nan" in got[1][3].lower()
    con = store.connect(results)
    n_runs = con.execute("SELECT count(*) FROM runs WHERE kind = 'finetune'").fetchone()[0]
    assert n_runs == 2  # one attempt each recorded: the killed one left nothing
    assert not running_markers(results)

    r = subprocess.run([HARNESS, "sweep", str(spec)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "0 to run, 2 recorded" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [HARNESS, "sweep", str(spec), "--retry-failed"], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 1 and "1 to run, 1 recorded" in r.stdout, r.stdout + r.stderr
    assert "0 done, 1 failed" in r.stdout, r.stdout
    again = rows(results)
    assert [(x[1], x[2]) for x in again] == [(0.01, "done"), (100.0, "failed"), (100.0, "failed")]


@pytest.mark.ray
def test_sweep_stopped_while_ray_starts_leaves_nothing(results, tmp_path, checkpoint):
    spec = spec_file(tmp_path, checkpoint, epochs=5000, include=[])
    driver = subprocess.Popen([HARNESS, "sweep", str(spec)], stdout=subprocess.PIPE, text=True)
    seen: dict[int, int] = {}
    try:
        wait_for(lambda: list((results / "ray").glob("driver-*.json")), 300, driver)
        stop_at = time.monotonic() + 1.5  # Ray half started
        while driver.poll() is None:  # follow what the driver starts, as the watchdog does
            seen.update(orphans.descendants([driver.pid], orphans._table()))
            if stop_at and time.monotonic() > stop_at:
                driver.send_signal(signal.SIGTERM)
                stop_at = 0
            time.sleep(0.05)
        seen.pop(driver.pid, None)
        assert len(seen) >= 2, seen  # Ray processes had started

        def all_gone():
            return not [p for p, s in seen.items() if orphans.alive(p, s)]

        wait_for(all_gone, 30)
        assert not list((results / "ray").glob("driver-*.json"))
    finally:
        if driver.poll() is None:
            driver.kill()
        orphans.stop(seen, grace=1)
