"""Fine-tuning sweeps on a real local Ray and on Ray inside a SLURM allocation."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from tests_util import HARNESS

from harness import models, store
from harness.cluster import progress

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path) -> str:
    """A small random resnet_tiny checkpoint (8x8, one channel) in ``folder``."""
    import torch

    torch.manual_seed(0)
    net = models.build_network("resnet_tiny", 10, 1, 8)
    path = folder / "resnet_tiny.pt"
    models.save_checkpoint(
        path,
        net,
        arch="resnet_tiny",
        num_classes=10,
        in_chans=1,
        img_size=8,
        model_kwargs=dict(head_depth=0, head_dim=128),
        meta=dict(dataset="synthetic"),
    )
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def spec_file(tmp_path: Path, checkpoint: str, **kw) -> Path:
    spec = dict(
        name="t",
        checkpoints={"paths": [checkpoint]},
        base=dict(dataset="digits", epochs=2, batch_size=32, nc=True),
    )
    spec.update(kw)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def harness(*args, timeout=900):
    return subprocess.run([HARNESS, *args], capture_output=True, text=True, timeout=timeout)


FINETUNE_COLUMNS = (
    "trial_id, method, layer, per_class, lr, status, error, test_acc, trainable_params, "
    "total_params"
)


PROGRESS = re.compile(r"progress: (\d+)/(\d+) trials finished \((\d+) failed\), (\d+) running, ")


def progress_counts(stdout: str) -> list[tuple[int, int, int, int]]:
    """(finished, total, failed, running) of each progress line of a sweep, checked to sit
    between its "ray: local" and "ran N trials" lines and to end at N trials finished, with
    the failures that line counts; not piped to a terminal, they are plain lines."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ray: local"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("ran "))
    found = [(i, PROGRESS.match(ln)) for i, ln in enumerate(lines) if ln.startswith("progress:")]
    assert found and all(m for _, m in found), stdout
    assert all(start < i < end for i, _ in found), stdout
    counts = [tuple(int(g) for g in m.groups()) for _, m in found]
    ran = re.match(r"ran (\d+) trials: .*?(\d+) failed", lines[end])
    n, failed = int(ran.group(1)), int(ran.group(2))
    assert counts[-1] == (n, n, failed, 0), (counts, lines[end])
    assert "took " in lines[found[-1][0]] and "\r" not in stdout
    grows = zip(counts, counts[1:], strict=False)  # finished and failed never go down
    assert all(a[0] <= b[0] and a[2] <= b[2] for a, b in grows), counts
    return counts


def finetune_rows(root, columns: str = FINETUNE_COLUMNS) -> list[dict]:
    con = store.connect(root)
    cur = con.execute(f"SELECT {columns} FROM finetune ORDER BY method")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_sweep_records_every_trial_once(results, tmp_path, checkpoint):
    spec = spec_file(
        tmp_path,
        checkpoint,
        grid=dict(method=["linear_probe", "layer", "scl", "full"], layer=["layer3"], per_class=[5]),
        # two trials made to fail for real: full fine-tuning on batches of one sample (BatchNorm
        # cannot train on one value per channel) and a diverging learning rate (NaN loss)
        include=[
            dict(method="full", per_class=5, batch_size=1),
            dict(method="full", per_class=5, lr=100.0, weight_decay=10.0, epochs=3),
        ],
    )
    r = harness("sweep", str(spec))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]  # some trials failed
    assert "6 trials in t: 6 to run" in r.stdout
    assert "4 done, 2 failed" in r.stdout
    assert progress_counts(r.stdout)[-1] == (6, 6, 2, 0)
    rows = finetune_rows(results)
    assert len(rows) == 6 and len({row["trial_id"] for row in rows}) == 6
    done = [row for row in rows if row["status"] == "done"]
    failed = {row["lr"]: row for row in rows if row["status"] == "failed"}
    assert len(done) == 4 and len(failed) == 2
    assert "nan" in failed[100.0]["error"].lower()
    other = next(row for lr, row in failed.items() if lr != 100.0)
    assert "Expected more than 1 value per channel" in other["error"]
    for row in done:
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["trainable_params"] <= row["total_params"]
    by = {row["method"]: row for row in done}
    assert by["linear_probe"]["trainable_params"] < by["layer"]["trainable_params"]
    assert by["scl"]["trainable_params"] < by["full"]["trainable_params"]
    # downstream NC of the fine-tuned features lands in `nc` under the trial id
    con = store.connect(results)
    n_nc = con.execute(
        "SELECT count(DISTINCT run_id) FROM nc WHERE run_id IN "
        "(SELECT trial_id FROM finetune WHERE status = 'done')"
    ).fetchone()[0]
    assert n_nc == 4
    # again: nothing runs, nothing is written
    before = sorted(p.name for p in results.rglob("part-*.parquet"))
    r = harness("sweep", str(spec))
    assert r.returncode == 0 and "0 to run, 6 recorded" in r.stdout, r.stdout + r.stderr
    assert "ray:" not in r.stdout
    assert sorted(p.name for p in results.rglob("part-*.parquet")) == before


@pytest.mark.slow
@pytest.mark.ray
def test_asha_records_stopped_and_finished_trials_once(results, tmp_path, checkpoint):
    spec = spec_file(
        tmp_path,
        checkpoint,
        grid=dict(method=["linear_probe"], per_class=[5], lr=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001]),
        scheduler="asha",
        grace_period=1,
        reduction_factor=3,
    )
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 4"))
    r = harness("sweep", str(spec))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = finetune_rows(results)
    assert len(rows) == 6 and len({row["trial_id"] for row in rows}) == 6  # one row each
    stopped = [row for row in rows if row["status"] == "stopped"]
    done = [row for row in rows if row["status"] == "done"]
    assert stopped and done and len(stopped) + len(done) == 6, [row["status"] for row in rows]
    epochs = {row["trial_id"]: row["epochs"] for row in finetune_rows(results, "trial_id, epochs")}
    assert all(epochs[row["trial_id"]] < 4 for row in stopped)
    assert f"{len(stopped)} stopped early by ASHA" in r.stdout
    assert progress_counts(r.stdout)[-1] == (6, 6, 0, 0)  # a stopped trial has finished
    again = harness("sweep", str(spec))
    assert again.returncode == 0 and "0 to run, 6 recorded" in again.stdout, again.stdout
    assert not list((results / "ray").rglob("running/*.json"))


@pytest.mark.slow
@pytest.mark.ray
def test_layer_auto_picks_lowest_nc1_on_the_trials_own_samples(results, tmp_path, checkpoint):
    from harness import data, finetune
    from harness.nc.measure import measure_model

    spec = spec_file(
        tmp_path,
        checkpoint,
        grid=dict(method=["scl"], layer=["auto"], per_class=[5]),
        base=dict(dataset="digits", epochs=1, batch_size=32, nc=False),
    )
    r = harness("sweep", str(spec))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # NC1 of the pre-trained features on the trial's own 5 per class (seed 0), at the blocks
    # SCL can use (not the stem, not the last block: its pooled output is pre_logits)
    model, _ = models.load_checkpoint(checkpoint)
    usable = finetune.scl_blocks(model)
    assert "act1" not in usable and "layer4.4" not in usable
    ds = data.load("digits", "train", per_class=5, seed=0)
    res, _ = measure_model(model, ds, models.select_layers(model, usable))
    nc1 = {x.layer: x.metrics["nc1"] for x in res}
    con = store.connect(results)
    layer, why = con.execute("SELECT layer, layer_choice FROM finetune").fetchone()
    assert layer == min(sorted(nc1), key=nc1.get)
    assert why.startswith(
        "auto: lowest nc1 of pre-trained features on digits train, 5 per class (seed 0), "
        f"among {len(usable)} SCL-usable blocks: {layer} nc1="
    ), why


@pytest.mark.slow
@pytest.mark.parametrize(
    "grid, words",
    [
        (dict(method=["finetune_everything"]), "unknown method 'finetune_everything'"),
        (dict(method=["scl"], layer=["layer9"]), "layer9"),
        (dict(method=["scl"], layer=["layer4"]), "cannot use layer 'layer4' of ResNet"),
        (dict(method=["full"], per_class=[100000]), "per_class"),
    ],
)
def test_bad_sweep_specs_start_nothing(results, tmp_path, checkpoint, grid, words):
    spec = spec_file(tmp_path, checkpoint, grid=grid)
    r = harness("sweep", str(spec))
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "ray:" not in r.stdout
    assert not store.parts("finetune", results)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ray
def test_ray_on_slurm_runs_trials_on_both_nodes(slurm_cluster, results, tmp_path, checkpoint):
    spec = spec_file(
        tmp_path,
        checkpoint,
        grid=dict(method=["linear_probe", "layer"], layer=["layer4.4"], per_class=[5, 10]),
        base=dict(dataset="digits", epochs=2, batch_size=32, nc=False),
    )
    r = harness("sweep", str(spec), "--slurm", "--nodes", "2", "--wait", "--time", "15")
    log = next((results / "logs" / "sweeps").glob("*.out"), None)
    text = log.read_text() if log else ""
    assert r.returncode == 0, r.stdout + r.stderr + text[-3000:]
    assert "2 of 2 nodes alive" in text, text[-3000:]
    con = store.connect(results)
    n, nodes = con.execute(
        "SELECT count(*), count(DISTINCT node) FROM finetune WHERE status = 'done'"
    ).fetchone()
    assert n == 4 and nodes == 2, text[-3000:]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_plain_lines_at_each_tenth_a_heartbeat_and_the_end():
    clock, lines = Clock(), []
    p = progress.Progress(20, lines.append, tty=False, clock=clock)
    p.update(0, 0, 2)
    assert lines == ["progress: 0/20 trials finished (0 failed), 2 running, 0.00 trials/min, ETA ?"]
    clock.t = 1.0
    p.update(2, 0, 2)  # a new tenth, but within min_interval of the last line
    clock.t = 12.0
    p.update(1, 0, 2)  # due, but neither a new tenth nor a heartbeat
    assert len(lines) == 1
    p.update(2, 1, 2)  # a new tenth
    assert (
        lines[-1]
        == "progress: 2/20 trials finished (1 failed), 2 running, 10.0 trials/min, ETA 1m48s"
    )
    clock.t = 41.0
    p.update(3, 1, 2)  # same tenth: nothing until the heartbeat (30 s after the last line)
    clock.t = 42.0
    p.update(3, 1, 2)
    assert len(lines) == 3 and lines[-1].startswith("progress: 3/20 ")
    clock.t = 60.0
    p.update(20, 1, 0)  # all finished: the final line follows
    assert len(lines) == 3
    p.update(20, 1, 0, final=True)  # the end: always, once
    p.update(20, 1, 0, final=True)
    assert (
        lines[-1]
        == "progress: 20/20 trials finished (1 failed), 0 running, 20.0 trials/min, took 1m00s"
    )
    assert len(lines) == 4


def test_progress_on_a_terminal_rewrites_one_line(capsys):
    clock = Clock()
    p = progress.Progress(4, tty=True, clock=clock)
    for t, done in [(0.0, 0), (0.5, 1), (2.0, 1), (4.0, 2)]:
        clock.t = t
        p.update(done, 0, 1)  # every min_interval, tenths or not
    p.close()  # stopped before the end: the line is ended
    out = capsys.readouterr().out
    assert out.count("\r") == 3 and out.endswith("\x1b[K\n") and out.count("\n") == 1
    assert "progress: 2/4 trials finished (0 failed), 1 running, 30.0 trials/min, ETA 4s" in out
    p = progress.Progress(4, tty=True, clock=clock)
    with progress.reporting(p):
        p.update(4, 0, 0, final=True)
    assert capsys.readouterr().out.count("\n") == 1  # the final line ends itself; close adds none


def test_tunes_restore_warning_is_hidden_and_its_other_warnings_are_not(monkeypatch):
    from ray import tune

    from harness.cluster import sweep

    seen = []
    monkeypatch.setattr(tune.Tuner, "can_restore", staticmethod(lambda path: True))
    monkeypatch.setattr(tune.Tuner, "restore", staticmethod(lambda *a, **k: seen.append(a)))
    spec = type("Spec", (), dict(cpus_per_trial=1))()
    trial = dict(trial=dict(epochs=1), trial_id="a", run_id="r", arch="x", layer_choice=None)
    sweep._tuner(spec, Path("."), Path("exp"), [dict(trial, checkpoint="c", rows=0)], print)
    assert seen  # the restore path, which installs the filter
    log, got = logging.getLogger(sweep.RESTORE_NOISE[0]), []
    handler = logging.Handler()  # Ray's loggers do not propagate to the root (caplog)
    handler.emit = lambda record: got.append(record.getMessage())
    log.addHandler(handler)
    try:
        log.warning("Failed to fetch metrics for 2 trial(s):\n- t_00000: FileNotFoundError(...)")
        log.warning("Trials did not complete")
    finally:
        log.removeHandler(handler)
        log.removeFilter(sweep._not_restore_noise)
    assert got == ["Trials did not complete"]


def test_trial_meta_round_trips_through_tunes_grid_and_old_metas_still_read():
    from harness.finetune import worker

    trial = dict(checkpoint="/abs/ck.pt", dataset="digits", method="layer", layer="layer3", seed=1)
    t = dict(trial=trial, trial_id="f1", run_id="r1", arch="resnet_tiny", layer_choice="index -2")
    t |= dict(checkpoint="ck.pt", rows=2)
    point = worker.grid_point(t)
    # what Tune holds (and saves with the experiment): plain dicts, keys as before TrialMeta
    assert point == {
        "trial": trial,
        "meta": dict(
            trial_id="f1",
            run_id="r1",
            arch="resnet_tiny",
            layer_choice="index -2",
            checkpoint="ck.pt",
            rows=2,
        ),
    }
    got_trial, meta = worker.read_point({"t": point, "root": "r", "experiment": "e"})
    assert got_trial is trial and meta == worker.TrialMeta.of(t) and meta.rows == 2
    base = worker.row_base(trial, meta, "node-1")
    assert base["checkpoint"] == "ck.pt" and base["trial_id"] == "f1" and base["node"] == "node-1"
    # an experiment interrupted before metas carried the stored checkpoint and the row count
    old = {k: v for k, v in point["meta"].items() if k not in ("checkpoint", "rows")}
    _, meta = worker.read_point({"t": dict(trial=trial, meta=old)})
    assert meta.checkpoint is None and meta.rows == 0
    assert worker.row_base(trial, meta, None)["checkpoint"] == "/abs/ck.pt"


def test_ray_sweep_sbatch_script_is_package_data():
    from importlib import resources

    from harness.cluster import slurm_sweep

    with resources.as_file(slurm_sweep.slurm_script()) as path:
        text = Path(path).read_text()
    assert text.startswith("#!/usr/bin/env bash") and "#SBATCH --job-name=harness-ray-sweep" in text
    assert "-m harness.cli sweep" in text
