"""Torn checkpoints at resume: the last two epoch checkpoints are kept, an unreadable ``last.pt``
falls back to ``prev.pt`` (or to epoch 0), the run completes and its ``runs`` row says which."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from harness import models, store
from harness.errors import HarnessError
from harness.spec import config
from harness.store.fileio import disk_full_message
from harness.train import pretrain

pytestmark = pytest.mark.slow  # every test trains (and resumes) a run

CFG = config.PretrainConfig(
    arch="vit_tiny", dataset="digits", epochs=3, batch_size=64, lr=0.01, nc_limit=300
)


class Killed(BaseException):
    """What a kill looks like to the training loop: nothing after it runs (no `failed` row)."""


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A results root whose 3-epoch run was killed right after its epoch-2 checkpoint."""
    root = tmp_path_factory.mktemp("interrupted")
    save = pretrain._save

    def save_then_die(run, epochs_done, loss):
        save(run, epochs_done, loss)
        if epochs_done == 2:
            raise Killed

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(pretrain, "_save", save_then_die)
        pretrain.train(CFG, root)
    return root


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The same run never interrupted: its results root and final weights."""
    root = tmp_path_factory.mktemp("straight")
    out = pretrain.train(CFG, root)
    return root, models.read_checkpoint(out["checkpoint"])["state_dict"]


def ckpt_dir(root: Path) -> Path:
    return pretrain.run_dir(root, CFG.run_id())


def epoch_of(path: Path) -> int:
    return int(models.read_checkpoint(path)["epoch"])


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_good_checkpoints_are_kept(interrupted):
    d = ckpt_dir(interrupted)
    assert sorted(p.name for p in d.iterdir()) == ["last.pt", "prev.pt"]  # no temporaries
    assert (epoch_of(d / "last.pt"), epoch_of(d / "prev.pt")) == (2, 1)
    assert not store.parts("runs", interrupted)  # killed: no row at all


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


@pytest.mark.parametrize(
    "damage, resumed_from, start",
    [
        ({}, "last.pt epoch 2", 2),
        ({"last.pt": truncate}, "prev.pt epoch 1 (last.pt unreadable: ", 1),
        ({"last.pt": garbage}, "prev.pt epoch 1 (last.pt unreadable: ", 1),
        ({"last.pt": Path.unlink}, "prev.pt epoch 1 (last.pt missing)", 1),
        (
            {"last.pt": garbage, "prev.pt": truncate},
            "scratch (no readable checkpoint: last.pt unreadable: ",
            0,
        ),
    ],
    ids=["intact", "truncated", "garbage", "missing", "both-unreadable"],
)
def test_resume_falls_back_to_a_readable_checkpoint(
    interrupted, straight, tmp_path, capsys, damage, resumed_from, start
):
    root = tmp_path / "results"
    shutil.copytree(interrupted, root)
    d = ckpt_dir(root)
    for name, fn in damage.items():
        fn(d / name)
    out = pretrain.train(CFG, root)  # completes in one attempt: no requeue loop
    log = [ln for ln in capsys.readouterr().out.splitlines() if "resumed" in ln]
    assert len(log) == 1 and f"from epoch {start}" in log[0], log
    rows = store.fetch("SELECT status, resumed_from FROM runs", root=root)
    assert len(rows) == 1 and rows[0][0] == "done", rows
    assert rows[0][1].startswith(resumed_from), rows
    if len(damage) == 2:
        assert "; prev.pt unreadable: " in rows[0][1], rows
    assert store.fetch("SELECT count(*) FROM pretrain", root=root) == [(1,)]
    # the same run as one never interrupted (per-epoch seeding), and two good checkpoints again
    assert same_weights(models.read_checkpoint(out["checkpoint"])["state_dict"], straight[1])
    assert Path(out["checkpoint"]) == d / "last.pt"
    assert (epoch_of(d / "last.pt"), epoch_of(d / "prev.pt")) == (3, 2)
    assert sorted(p.name for p in d.iterdir()) == ["last.pt", "prev.pt"]


def test_fresh_run_records_no_resume(straight):
    root, _ = straight
    assert store.fetch("SELECT status, resumed_from FROM runs", root=root) == [("done", None)]
    d = ckpt_dir(root)
    assert (epoch_of(d / "last.pt"), epoch_of(d / "prev.pt")) == (3, 2)


def test_rows_a_failed_attempt_wrote_are_not_written_twice(interrupted, tmp_path, monkeypatch):
    """An attempt that wrote its `nc` part and then hit a full disk: the next attempt writes the
    missing `pretrain` and `runs` rows only."""
    root = tmp_path / "results"
    shutil.copytree(interrupted, root)
    append = store.append

    def full_for_pretrain(table, rows, r=None):
        if table == "pretrain":
            raise HarnessError(disk_full_message(Path(r) / table / "part.parquet"), code=1)
        return append(table, rows, r)

    monkeypatch.setattr(store, "append", full_for_pretrain)
    with pytest.raises(HarnessError, match="no space left on device"):
        pretrain.train(CFG, root)
    monkeypatch.setattr(store, "append", append)
    n_nc = store.fetch("SELECT count(*) FROM nc", root=root)[0][0]
    assert n_nc > 0 and not store.parts("pretrain", root)
    pretrain.train(CFG, root)
    assert store.fetch("SELECT count(*) FROM nc", root=root)[0][0] == n_nc
    assert store.fetch("SELECT count(*) FROM pretrain", root=root) == [(1,)]
    rows = store.fetch("SELECT status, resumed_from FROM runs ORDER BY started_at", root=root)
    assert rows == [("failed", "last.pt epoch 2"), ("done", "last.pt epoch 3")], rows


@pytest.mark.slurm
def test_torn_checkpoint_on_the_cluster_resumes_from_the_previous_one(
    slurm_cluster, interrupted, tmp_path
):
    """The same fallback in a real SLURM job: a requeued or resubmitted run finds a torn
    ``last.pt`` and completes from ``prev.pt`` — once, not in a requeue loop."""
    import subprocess

    import yaml
    from tests_util import HARNESS

    root = tmp_path / "results"
    shutil.copytree(ckpt_dir(interrupted), pretrain.run_dir(root, CFG.run_id()))
    truncate(pretrain.run_dir(root, CFG.run_id()) / "last.pt")
    spec = tmp_path / "one.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="torn",
                executor="slurm",
                resources=dict(timeout_min=10),
                base=CFG.model_dump(mode="json"),
            )
        )
    )
    r = subprocess.run(
        [HARNESS, "submit", str(spec), "--wait", "--results", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rows = store.fetch("SELECT status, resumed_from FROM runs", None, root)
    assert len(rows) == 1 and rows[0][0] == "done", rows
    assert rows[0][1].startswith("prev.pt epoch 1 (last.pt unreadable"), rows
    assert store.fetch("SELECT count(*) FROM pretrain", None, root) == [(1,)]
