"""Cluster scale, measured in one run (needs `slurm/up`; nothing trains on SLURM):

1. `harness submit` of a 10,000-run grid, held (then cancelled): time and peak RSS; the arrays;
2. the same submit again while every task is pending: time, RSS, duplicates (goal 0);
3. `harness status --all` over it;
4. a store of 100,000 `finetune` rows in 100,000 parts written through the store API:
   `harness query` GROUP BY before and after `harness compact`, and the compaction itself;
5. a real Ray sweep of >= 500 tiny trials (digits, linear probe, 1 per class, 1 epoch): the
   harness's overhead per trial (wall time x concurrency - the trials' own time, per trial), and
   the time of running the finished sweep again.

Goals (issue): submit <= 10 s, re-submit <= 5 s with 0 duplicates, status <= 3 s, query after
compaction <= 1 s and <= 300 MB, overhead <= 0.5 s per trial, re-run <= 10 s.
Run: .venv/bin/python benchmarks/bench_scale.py [--runs 10000] [--parts 100000] [--trials 500]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

HARNESS = str(Path(sys.executable).with_name("harness"))


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one command: its own rusage (wait4), not siblings'."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args[1:3])} failed: {err.strip()[-800:]}")
    return seconds, usage.ru_maxrss / 1024, out


def bench_submit(tmp: Path, n_runs: int, env: dict[str, str]) -> None:
    from harness.cluster import ledger

    seeds = -(-n_runs // 24)
    spec = tmp / "grid.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="scale",
                executor="slurm",
                resources=dict(timeout_min=10, array_parallelism=16),
                base=dict(arch="resnet_tiny", dataset="digits", limit=100, epochs=1),
                grid=dict(
                    loss=["ce", "label_smoothing", "mse", "supcon"],
                    augment=["none", "weak", "strong"],
                    head_depth=[0, 1],
                    seed=list(range(seeds)),
                ),
            )
        )
    )
    results = env["HARNESS_RESULTS"]
    try:
        s, rss, _ = run([HARNESS, "submit", str(spec), "--hold"], env)
        recs = ledger.read_jobs(results)
        arrays = sorted({r.array_id for r in recs}, key=int)
        print(f"submit {len(recs):,} runs (held)      : {s:6.2f} s  peak RSS {rss:6.0f} MB")
        print(
            f"  arrays: {len(arrays)} ({', '.join(arrays[:3])}{', ...' if len(arrays) > 3 else ''})"
        )
        s, rss, out = run([HARNESS, "submit", str(spec), "--hold"], env)
        dup = len(ledger.read_jobs(results)) - len(recs)
        print(
            f"re-submit while all pending      : {s:6.2f} s  peak RSS {rss:6.0f} MB  duplicates {dup}"
        )
        s, rss, out = run([HARNESS, "status", "--all"], env)
        print(f"status --all ({out.splitlines()[0]}) : {s:6.2f} s  peak RSS {rss:6.0f} MB")
    finally:
        ids = sorted({r.array_id for r in ledger.read_jobs(results) if r.array_id})
        if ids:
            subprocess.run(["scancel", *ids], check=False)


def _write_parts(args: tuple[str, int, int]) -> None:
    from harness import store

    root, start, n = args
    methods = ("linear_probe", "full", "layer", "scl")
    for i in range(start, start + n):
        store.append(
            "finetune",
            [
                dict(
                    trial_id=f"t{i:06d}",
                    dataset=("mnist5k", "animal_mnist")[i % 2],
                    method=methods[i % 4],
                    per_class=(5, 20, 100)[i % 3],
                    status="done",
                    test_acc=(i % 997) / 997,
                    wall_s=1.0,
                )
            ],
            root,
        )


def bench_store(tmp: Path, n_parts: int, env: dict[str, str]) -> None:
    root = tmp / "store"
    t = time.perf_counter()
    workers = os.cpu_count() or 2
    step = -(-n_parts // (workers * 8))
    chunks = [(str(root), i, min(step, n_parts - i)) for i in range(0, n_parts, step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_parts, chunks))
    print(f"wrote {n_parts:,} parts through store.append: {time.perf_counter() - t:6.1f} s")
    e = dict(env, HARNESS_RESULTS=str(root))
    sql = (
        "SELECT dataset, method, per_class, count(*) AS n, round(avg(test_acc), 9) AS acc "
        "FROM finetune GROUP BY ALL ORDER BY ALL"
    )
    s1, rss1, out1 = run([HARNESS, "query", sql, "--format", "csv"], e)
    print(f"query GROUP BY, {n_parts:,} parts          : {s1:6.2f} s  peak RSS {rss1:6.0f} MB")
    s, rss, out = run([HARNESS, "compact", "finetune"], e)
    print(f"compact ({out.strip()}) : {s:6.2f} s  peak RSS {rss:6.0f} MB")
    s2, rss2, out2 = run([HARNESS, "query", sql, "--format", "csv"], e)
    print(f"query GROUP BY, after compaction      : {s2:6.2f} s  peak RSS {rss2:6.0f} MB")
    print(
        f"  ratio before/after: time {s1 / s2:.1f}x, RSS {rss1 / rss2:.1f}x; same answer: {out1 == out2}"
    )


def bench_sweep(tmp: Path, n_trials: int, env: dict[str, str]) -> None:
    from harness import store

    root = tmp / "sweep"
    e = dict(env, HARNESS_RESULTS=str(root))
    pre = tmp / "pre.yaml"
    pre.write_text(
        yaml.safe_dump(
            dict(
                name="tiny",
                executor="local",
                base=dict(arch="resnet_tiny", dataset="digits", epochs=1, nc_limit=200),
            )
        )
    )
    run([HARNESS, "submit", str(pre), "--executor", "local"], e)
    spec = tmp / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            dict(
                name="many",
                checkpoints=dict(query="SELECT checkpoint FROM pretrain"),
                base=dict(
                    dataset="digits", method="linear_probe", per_class=1, epochs=1, batch_size=32
                ),
                grid=dict(seed=list(range(n_trials))),
                cpus_per_trial=1,
            )
        )
    )
    s, _, out = run([HARNESS, "sweep", str(spec)], e)
    rows = store.fetch(
        "SELECT count(*), sum(wall_s) FROM finetune WHERE status = 'done'", None, root
    )[0]
    conc = os.cpu_count() or 1
    overhead = (s * conc - rows[1]) / max(1, rows[0])
    print(
        f"sweep of {rows[0]} trials: {s:6.1f} s wall on {conc} CPUs; trials' own time "
        f"{rows[1]:.1f} s; harness overhead {overhead:.3f} s per trial (Ray start included)"
    )
    s, _, out = run([HARNESS, "sweep", str(spec)], e)
    print(f"re-run of the finished sweep         : {s:6.2f} s ({out.splitlines()[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--parts", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--only", choices=["submit", "store", "sweep"], default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir="/tmp") as d:
        tmp = Path(d)
        env = dict(os.environ, HARNESS_RESULTS=str(tmp / "results"), RAY_AUTH_MODE="disabled")
        if a.only in (None, "submit"):
            bench_submit(tmp, a.runs, env)
        if a.only in (None, "store"):
            bench_store(tmp, a.parts, env)
        if a.only in (None, "sweep"):
            bench_sweep(tmp, a.trials, env)


if __name__ == "__main__":
    main()
