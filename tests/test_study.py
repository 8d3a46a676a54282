"""The main job: `harness run` end to end on the real local SLURM cluster and Ray, re-runs,
interruption, and the paper-scale spec."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests_util import HARNESS

from harness import store
from harness.spec import study as studyspec
from harness.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]

REDUCED = dict(
    name="mini",
    executor="auto",
    pretrain=dict(
        resources=dict(timeout_min=20),
        base=dict(
            dataset="fashion_mnist",
            limit=300,
            epochs=1,
            batch_size=100,
            lr=0.02,
            nc_limit=200,
            nc_layers="all",
        ),
        grid=dict(arch=["resnet_tiny", "vit_tiny"]),
        include=[dict(arch="resnet_tiny", loss="label_smoothing")],
    ),
    downstream=["mnist5k"],
    measure=dict(limit=200),
    finetune=dict(
        base=dict(epochs=1, batch_size=32, lr=0.01, dataset="mnist5k"),
        grid=dict(method=["linear_probe", "full", "layer", "scl"], layer=["auto"], per_class=[5]),
    ),
    scores=dict(limit=200),
    report=dict(bootstrap=50),
)


def write(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def tables(root: Path) -> dict[str, list[tuple]]:
    """The study's results, without timings: what must not depend on how the run went."""
    con = store.connect(root)
    q = {
        "pretrain": "SELECT run_id, arch, loss, round(train_acc, 6), round(test_acc, 6) "
        "FROM pretrain ORDER BY ALL",
        # measure rows are keyed by the checkpoint file's hash: compare them by content
        "nc": "SELECT dataset, split, layer, metric, variant, round(value, 6), n FROM nc "
        "ORDER BY ALL",
        "finetune": "SELECT trial_id, method, layer, status, round(test_acc, 6), trainable_params "
        "FROM finetune ORDER BY ALL",
        "scores": "SELECT run_id, dataset, score, part, round(value, 6) FROM scores ORDER BY ALL",
    }
    return {k: con.execute(v).fetchall() for k, v in q.items()}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ray
def test_reduced_study_on_slurm_then_rerun_adds_nothing(slurm_cluster, results, tmp_path):
    spec = write(tmp_path, REDUCED)
    out = tmp_path / "report"
    r = subprocess.run(
        [HARNESS, "run", str(spec), "--set", f"report.out={out}"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    assert "executor slurm (sbatch is reachable)" in first
    t = tables(results)
    assert len(t["pretrain"]) == 3
    con = store.connect(results)
    jobs = con.execute(
        "SELECT count(DISTINCT slurm_job_id) FROM runs WHERE kind = 'pretrain' AND status = 'done'"
    ).fetchone()[0]
    assert jobs == 3  # pre-training ran as SLURM jobs
    assert len(t["finetune"]) == 3 * 4 and all(row[3] == "done" for row in t["finetune"])
    assert {row[0] for row in t["nc"]} == {"fashion_mnist", "mnist5k"}  # source + downstream NC
    assert {row[2] for row in t["scores"]} >= {"logme", "leep", "ncti"}
    report = (out / "report.md").read_text()
    for finding in (
        "1. Source NC1 vs transfer accuracy",
        "2a. Fine-tuned downstream NC1 vs accuracy",
        "2b. Downstream NC1 vs SCL accuracy across the layers",
        "3. SCL FT vs full FT",
    ):
        assert finding in report, report[:3000]
    # three pre-training runs: below every primary test's minimum, so no verdict is claimed
    assert "too few runs" in (out / "findings.txt").read_text()
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    # again: nothing is recomputed and nothing is added
    parts = sorted(p.name for p in results.rglob("part-*.parquet"))
    t0 = time.monotonic()
    r = subprocess.run(
        [HARNESS, "run", str(spec), "--set", f"report.out={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 to submit, 3 done" in r.stdout and "0 to run" in r.stdout
    assert sorted(p.name for p in results.rglob("part-*.parquet")) == parts
    assert tables(results) == t
    del t0


@pytest.mark.slow
@pytest.mark.ray
def test_interrupted_run_completes_with_the_same_tables(tmp_path):
    spec_dict = dict(REDUCED, name="intr", executor="local")
    spec_dict["pretrain"] = dict(REDUCED["pretrain"], grid=dict(arch=["resnet_tiny"]), include=[])
    spec = write(tmp_path, spec_dict)
    env = {**os.environ}

    def run(root: Path, stop_at: str | None = None) -> subprocess.CompletedProcess | None:
        e = dict(env, HARNESS_RESULTS=str(root))
        args = [HARNESS, "run", str(spec), "--set", f"report.out={root / 'report'}"]
        if stop_at is None:
            return subprocess.run(args, capture_output=True, text=True, env=e, timeout=900)
        p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e
        )
        seen = []
        for line in p.stdout:
            seen.append(line)
            if stop_at in line:
                time.sleep(3)  # mid-stage
                p.send_signal(signal.SIGTERM)
                break
        rest, _ = p.communicate(timeout=120)
        assert p.returncode != 0, "".join(seen) + rest
        return None

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    root = tmp_path / "interrupted"
    run(root, stop_at="[3/5] fine-tuning sweep")
    again = run(root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert tables(root) == tables(tmp_path / "straight")


def test_paper_spec_is_valid():
    spec = load_spec(REPO / "benchmarks" / "paper.yaml", kind=studyspec.StudySpec)
    runs = spec.pretrain_spec().runs()
    assert {c.arch for c in runs} == {"resnet18", "resnet50", "vit_base_patch8_224"}
    assert {c.dataset for c in runs} == {"cifar100"}
    assert {c.loss for c in runs} == {"ce", "label_smoothing", "mse", "supcon"}
    assert spec.downstream[0] == "cifar10" and spec.downstream[1].startswith("imagefolder:")
    points = spec.sweep_spec().points()
    assert {p["method"] for p in points} == {"linear_probe", "full", "layer", "scl"}
    assert None in {p["per_class"] for p in points}  # full budget


def test_quick_spec_shape():
    spec = load_spec(REPO / "benchmarks" / "quick.yaml", kind=studyspec.StudySpec)
    runs = spec.pretrain_spec().runs()
    assert {c.arch for c in runs} >= {"resnet_tiny", "vit_tiny"}
    assert len(runs) >= 8 and {c.dataset for c in runs} == {"fashion_mnist"}
    assert set(spec.downstream) == {"mnist5k", "animal_mnist"}
    points = spec.sweep_spec().points()
    assert {p["method"] for p in points} == {"linear_probe", "full", "layer", "scl"}
    assert len({p["per_class"] for p in points}) >= 2


def test_cpu_spec_is_sized_for_verdicts():
    """benchmarks/cpu.yaml: >= 12 pre-training variants for each of >= 2 architecture families,
    >= 3 fine-tuning seeds, >= 2 downstream datasets, every variant distinct."""
    spec = load_spec(REPO / "benchmarks" / "cpu.yaml", kind=studyspec.StudySpec)
    runs = spec.pretrain_spec().runs()
    per_arch = {a: sum(c.arch == a for c in runs) for a in {c.arch for c in runs}}
    assert len(per_arch) >= 2 and min(per_arch.values()) >= 12, per_arch
    assert len({c.run_id() for c in runs}) == len(runs)
    points = spec.sweep_spec().points()
    assert len({p["seed"] for p in points if p["method"] == "full"}) >= 3
    assert len(spec.downstream) >= 2 and {p["dataset"] for p in points} == set(spec.downstream)


@pytest.mark.slow
def test_bad_study_spec_one_line(tmp_path):
    bad = dict(REDUCED, downstream=["nope"])
    r = subprocess.run([HARNESS, "run", str(write(tmp_path, bad))], capture_output=True, text=True)
    assert r.returncode == 2 and "downstream" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    bad = dict(REDUCED, finetune=dict(grid=dict(method=["magic"])))
    r = subprocess.run([HARNESS, "run", str(write(tmp_path, bad))], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
