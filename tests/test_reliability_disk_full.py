"""A results root that fills up: one line naming the path, nothing torn or temporary left in
sight, and the same command completes the work (every row once) after space is freed."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from tests_util import HARNESS

from harness import cli, fileio, models, store
from harness.errors import HarnessError

FULL = "no space left on device; free space and run the same command again"


def enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if path else []))


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("stage", ["write", "fsync", "keep-previous", "rename"])
def test_atomic_write_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch, stage):
    dest, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    dest.write_text("old")

    def writer(tmp: Path) -> None:
        tmp.write_text("new, half writ")
        if stage == "write":
            raise RuntimeError("file write failed") from enospc()  # as torch.save wraps it

    real_replace = os.replace
    if stage == "fsync":
        monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(enospc()))
    elif stage == "keep-previous":
        monkeypatch.setattr(fileio.os, "link", lambda a, b: (_ for _ in ()).throw(enospc(b)))
    elif stage == "rename":

        def replace(a, b):
            if Path(b) == dest:
                raise enospc(b)
            real_replace(a, b)

        monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(HarnessError) as err:
        fileio.atomic_write(dest, writer, fsync=True, previous=prev)
    assert str(err.value) == f"{dest}: {FULL}" and err.value.code == 1
    assert dest.read_text() == "old"  # the last good file is untouched
    assert visible(tmp_path) == (["last.pt", "prev.pt"] if stage == "rename" else ["last.pt"])


def test_other_write_errors_pass_through(tmp_path):
    def writer(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError):
        fileio.atomic_write(tmp_path / "x", writer)
    assert visible(tmp_path) == []


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_keep_previous_rotates(tmp_path, monkeypatch, links):
    if not links:  # a file system without hard links: the old file is renamed aside instead
        monkeypatch.setattr(fileio.os, "link", lambda a, b: (_ for _ in ()).throw(PermissionError))
    dest, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    for text in ("1", "2", "3"):
        fileio.atomic_write(dest, lambda p, t=text: p.write_text(t), previous=prev)
    assert (dest.read_text(), prev.read_text()) == ("3", "2")
    assert visible(tmp_path) == ["last.pt", "prev.pt"]


def test_disk_full_line_of_a_failed_job():
    trace = (
        "Traceback (most recent call last):\n  ...\n"
        f"harness.errors.HarnessError: /r/checkpoints/a/last.pt: {FULL}\n\n"
        "You can check full logs with 'job.stderr(0)'\n"
    )
    assert fileio.disk_full_line(trace, "/r") == f"/r/checkpoints/a/last.pt: {FULL}"
    raw = "OSError: [Errno 28] No space left on device: '/r/logs/x.out'"
    assert fileio.disk_full_line(raw, "/r") == f"/r/logs/x.out: {FULL}"
    quota = "OSError: [Errno 122] Disk quota exceeded"
    assert fileio.disk_full_line(quota, "/r").startswith("/r: disk quota exceeded; free space")
    assert fileio.disk_full_line("RuntimeError: non-finite loss", "/r") is None


def test_cli_prints_a_full_disk_anywhere_as_one_line(monkeypatch, capsys):
    from harness import query

    def status(*a, **k):
        raise RuntimeError("write failed") from enospc("/r/jobs/x.json")

    monkeypatch.setattr(query, "status", status)
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().err == f"harness: /r/jobs/x.json: {FULL}\n"


# ---------------------------------------------------------------------------------------------
# A real full disk: a small tmpfs as the results root


@pytest.fixture
def small_root(tmp_path) -> Path:
    """A 30 MB tmpfs mounted as the results root (needs root, as in CI); unmounted after."""
    root = tmp_path / "results"
    root.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        msg = f"cannot mount a tmpfs results root: {(r.stderr or r.stdout).strip()}"
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    yield root
    if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(root)], check=True)


def fill(root: Path, leave: int) -> Path:
    """A ballast file that leaves ``leave`` bytes free under ``root``."""
    st = os.statvfs(root)
    ballast = root / "ballast"
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return ballast


def test_full_results_root_fails_in_one_line_and_resumes(small_root, tmp_path, monkeypatch):
    # two runs of 2 epochs, side by side: each keeps two ~1.1 MB checkpoints and writes a third
    # as a temporary, so 4 MB free cannot hold both (one fails writing its epoch-2 checkpoint)
    spec = tmp_path / "full.yaml"
    base = dict(arch="vit_tiny", dataset="digits", epochs=2, batch_size=64, lr=0.01, nc_limit=300)
    spec.write_text(
        yaml.safe_dump(dict(name="full", executor="local", base=base, grid={"loss": ["ce", "mse"]}))
    )
    monkeypatch.setenv("HARNESS_RESULTS", str(small_root))
    ballast = fill(small_root, 4 * 2**20)
    r = subprocess.run([HARNESS, "submit", str(spec)], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"harness: {small_root}/") and r.stderr.endswith(f"{FULL}\n")
    assert not [p for p in small_root.rglob("*") if p.name.endswith(".tmp")]
    for part in small_root.rglob("*.parquet"):
        pq.read_table(part)  # every visible part is whole
    for ckpt in small_root.rglob("*.pt"):
        models.read_checkpoint(ckpt)  # and every visible checkpoint
    ballast.unlink()
    r = subprocess.run([HARNESS, "submit", str(spec)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    q = store.fetch
    assert q("SELECT count(*), count(DISTINCT run_id) FROM pretrain") == [(2, 2)]
    assert q("SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'done'") == [(2, 2)]
    assert q(
        "SELECT count(*) = count(DISTINCT (run_id, layer, metric, variant)), "
        "count(DISTINCT run_id) FROM nc"
    ) == [(True, 2)]
    resumed = q("SELECT resumed_from FROM runs WHERE status = 'done' AND resumed_from IS NOT NULL")
    assert resumed and all(rf.startswith("last.pt epoch ") for (rf,) in resumed), resumed
