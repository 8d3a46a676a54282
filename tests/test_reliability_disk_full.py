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

from harness import cli, models, store
from harness.errors import HarnessError
from harness.store import fileio

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
    from harness.cli import output as query

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


SPEC = dict(arch="vit_tiny", dataset="digits", epochs=2, batch_size=64, lr=0.01, nc_limit=300)


class Killed(BaseException):
    """Stops a training loop with nothing after it run (no `failed` row)."""


def epoch_checkpoint_size(root: Path) -> int:
    """The size of the run's epoch-1 ``last.pt``, measured: the same run, in process, into a
    scratch ``root``, stopped right after that checkpoint (weights, SGD momentum and meta)."""
    from harness.spec import config
    from harness.train import pretrain

    save = pretrain._save

    def save_then_stop(run, epochs_done, loss):
        save(run, epochs_done, loss)
        raise Killed

    cfg = config.PretrainConfig(**SPEC)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(pretrain, "_save", save_then_stop)
        pretrain.train(cfg, root)
    return (pretrain.run_dir(root, cfg.run_id()) / pretrain.CHECKPOINT_NAME).stat().st_size


@pytest.mark.slow
def test_full_results_root_fails_in_one_line_and_resumes(small_root, tmp_path, monkeypatch):
    # One run of 2 epochs. Its epoch-1 save writes one checkpoint (size C); its epoch-2 save
    # writes a second as a temporary before ``last.pt`` becomes ``prev.pt`` (a hard link: no
    # space), so it needs C more. Free C + C/2: the job records, logs and parquet parts (a few
    # pages each) fit in the C/2, a second checkpoint never does.
    size = epoch_checkpoint_size(tmp_path / "scratch")
    spec = tmp_path / "full.yaml"
    spec.write_text(yaml.safe_dump(dict(name="full", executor="local", base=SPEC)))
    monkeypatch.setenv("HARNESS_RESULTS", str(small_root))
    ballast = fill(small_root, size + size // 2)
    r = subprocess.run([HARNESS, "submit", str(spec)], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    ckpts = small_root / "checkpoints"
    (run_dir,) = ckpts.iterdir()
    last = run_dir / "last.pt"
    assert r.stderr == f"harness: {last}: {FULL}\n", r.stderr  # the epoch-2 save failed
    # what the resume depends on: epoch 1's checkpoint, whole, the size measured; nothing else
    assert visible(run_dir) == ["last.pt"]
    assert last.stat().st_size == size
    assert models.read_checkpoint(last)["epoch"] == 1
    assert not [p for p in small_root.rglob("*") if p.name.endswith(".tmp")]
    for part in small_root.rglob("*.parquet"):
        pq.read_table(part)  # every visible part is whole
    q = store.fetch
    failed = q("SELECT run_id, status, error FROM runs")
    assert [(rid, st) for rid, st, _ in failed] == [(run_dir.name, "failed")], failed
    assert failed[0][2].endswith(f"{last}: {FULL}"), failed
    ballast.unlink()
    r = subprocess.run([HARNESS, "submit", str(spec)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert q("SELECT count(*), count(DISTINCT run_id) FROM pretrain") == [(1, 1)]
    done = q("SELECT run_id, resumed_from FROM runs WHERE status = 'done'")
    assert done == [(run_dir.name, "last.pt epoch 1")], done
    assert q(
        "SELECT count(*) = count(DISTINCT (run_id, layer, metric, variant)), "
        "count(DISTINCT run_id) FROM nc"
    ) == [(True, 1)]
    assert visible(run_dir) == ["last.pt", "prev.pt"]
    assert models.read_checkpoint(last)["epoch"] == 2
