"""Pre-training: DDP on the real SLURM cluster, requeue/resume, idempotent grids, bad specs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
import yaml
from tests_util import HARNESS

from harness import models, store
from harness.cluster import launch
from harness.spec import config
from harness.train import pretrain

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = dict(arch="vit_tiny", dataset="digits", epochs=2, batch_size=64, lr=0.01, nc_limit=300)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return models.read_checkpoint(path)["state_dict"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()
    )


def write_spec(path: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(kw, sort_keys=False))
    return path


def _train_job(cfg: dict, root: str) -> dict:
    return pretrain.train(cfg, root)


@pytest.mark.slow
@pytest.mark.slurm
def test_two_node_ddp_equals_one_process(slurm_cluster, shared_tmp):
    cfg = config.PretrainConfig(**TINY)
    ex = launch.make_executor(
        "slurm", shared_tmp / "jobs", config.Resources(nodes=2, tasks_per_node=1, timeout_min=10)
    )
    job = ex.submit(pretrain.PretrainJob(), cfg.model_dump(mode="json"), str(shared_tmp / "ddp"))
    torch.set_num_threads(1)  # as each SLURM task (1 cpu): same reduction order in GEMMs
    try:
        single = pretrain.train(cfg, shared_tmp / "one")
    finally:
        torch.set_num_threads(2)
    ranks = job.results()
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["train_acc"] == ranks[1]["train_acc"]
    d = max_diff(weights(Path(ranks[0]["checkpoint"])), weights(Path(single["checkpoint"])))
    # same global batches and mean gradient; only float summation order differs
    assert d < 1e-4, d
    assert abs(ranks[0]["train_acc"] - single["train_acc"]) <= 0.01
    con = store.connect(shared_tmp / "ddp")
    assert con.execute("SELECT world_size, count(*) FROM pretrain GROUP BY 1").fetchall() == [
        (2, 1)
    ]
    layers = models.model_layers(
        models.create_model("vit_tiny", num_classes=10, in_chans=1, img_size=8)
    )
    assert len(layers) == 13  # 12 transformer blocks and pre_logits
    assert con.execute("SELECT count(DISTINCT layer) FROM nc").fetchone()[0] == len(layers)


@pytest.mark.slow
@pytest.mark.slurm
def test_preempted_job_requeues_and_resumes(slurm_cluster, shared_tmp):
    cfg = config.PretrainConfig(
        arch="resnet_tiny",
        dataset="fashion_mnist",
        limit=2400,
        epochs=4,
        batch_size=100,
        nc_limit=500,
    )
    root = shared_tmp / "pre"
    ex = launch.make_executor("slurm", shared_tmp / "jobs", config.Resources(timeout_min=60))
    job = ex.submit(pretrain.PretrainJob(), cfg.model_dump(mode="json"), str(root))
    ckpt = pretrain.run_dir(root, cfg.run_id()) / pretrain.CHECKPOINT_NAME
    deadline = time.monotonic() + 240
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ckpt.exists(), job.stderr()
    subprocess.run(["scancel", "-s", "USR2", str(job.job_id)], check=True)  # as a preemption
    result = job.result()
    log = Path(job.paths.stdout).read_text()
    resumed = [ln for ln in log.splitlines() if "resumed" in ln]
    assert resumed and "from epoch 0" not in resumed[0], log[-2000:]
    for _ in range(120):  # the result lands a moment before SLURM records the end
        rows = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-P", "-j", str(job.job_id), "-o", "State"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if rows and rows[-1] == "COMPLETED":
            break
        time.sleep(0.5)
    assert "REQUEUED" in rows and rows[-1] == "COMPLETED", rows
    torch.set_num_threads(1)
    try:
        straight = pretrain.train(cfg, shared_tmp / "straight")
    finally:
        torch.set_num_threads(2)
    assert (
        max_diff(weights(Path(result["checkpoint"])), weights(Path(straight["checkpoint"]))) < 1e-5
    )
    con = store.connect(root)
    assert con.execute("SELECT count(*) FROM pretrain").fetchone()[0] == 1
    assert con.execute("SELECT max(attempt) FROM runs WHERE status='done'").fetchone()[0] >= 1


def harness(*args, env=None):
    return subprocess.run([HARNESS, *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_finished_grid_submits_nothing(results, tmp_path):
    spec = write_spec(
        tmp_path / "g.yaml",
        name="g",
        executor="local",
        base=dict(TINY, epochs=1),
        grid={"loss": ["ce", "mse"]},
    )
    r = harness("submit", str(spec))
    assert r.returncode == 0, r.stderr
    assert "2 to submit" in r.stdout
    con = store.connect(results)
    assert con.execute("SELECT count(*) FROM pretrain").fetchone()[0] == 2
    before = sorted(p.name for p in results.rglob("part-*.parquet"))
    r = harness("submit", str(spec))
    assert r.returncode == 0 and "0 to submit, 2 done" in r.stdout, r.stdout
    assert sorted(p.name for p in results.rglob("part-*.parquet")) == before
    out = harness("status").stdout
    assert out.startswith("done: 2"), out


@pytest.mark.parametrize(
    "base, grid, words",
    [
        (dict(TINY, colour="red"), {}, "base.colour"),
        (dict(TINY, arch="resnet_nope"), {}, "resnet_tiny"),
        (dict(TINY, dataset="nope"), {}, "fashion_mnist"),
        (TINY, {"loss": ["ce", "hinge"]}, "supcon"),
        (dict(TINY, epochs=-1), {}, "epochs"),
        (dict(TINY, dataset="cifar10", data_root="/nonexistent/cifar"), {}, "/nonexistent/cifar"),
    ],
)
def test_bad_specs_submit_nothing(results, tmp_path, base, grid, words):
    spec = write_spec(tmp_path / "bad.yaml", name="bad", executor="local", base=base, grid=grid)
    r = harness("submit", str(spec))
    assert r.returncode != 0
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not results.exists() or not any(results.rglob("*"))


@pytest.mark.slow
@pytest.mark.slurm
def test_status_reports_failed_slurm_job(slurm_cluster, results, tmp_path):
    spec = write_spec(
        tmp_path / "f.yaml",
        name="f",
        executor="slurm",
        resources=dict(timeout_min=5),
        base=dict(TINY, lr=100, epochs=1),  # diverges within the spec bounds
    )
    r = harness("submit", str(spec), "--wait")
    assert r.returncode == 1 and "1 of 1 jobs failed" in r.stderr, r.stderr
    out = harness("status").stdout
    assert out.startswith("failed: 1"), out
    assert "non-finite loss" in out and "_log.err" in out
