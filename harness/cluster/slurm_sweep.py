"""`harness sweep --slurm`: submit a sweep as one SLURM job that starts a Ray cluster over its
nodes (a Ray head on the first, a worker on each other) and runs the sweep driver on the head.
The job script is package data (``templates/ray-sweep.sbatch``); this module imports no Ray or
torch: the submitting process only calls ``sbatch``."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from harness import store
from harness.errors import HarnessError

# The folder holding the harness package: the job runs ``python -m harness.cli`` from there, so
# it imports this copy of the package even when it is not installed.
IMPORT_ROOT = Path(__file__).resolve().parents[2]


def slurm_script() -> Traversable:
    """The sbatch script that runs a sweep on a Ray cluster inside a SLURM allocation."""
    return resources.files("harness.cluster") / "templates" / "ray-sweep.sbatch"


def submit_slurm(
    spec_path: str,
    overrides: list[str],
    *,
    nodes: int,
    root=None,
    cpus_per_task: int = 1,
    time_min: int = 60,
    partition: str | None = None,
    wait: bool = False,
    retry_failed: bool = False,
    echo=print,
) -> int:
    """`harness sweep --slurm`: sbatch the Ray-on-SLURM script for this spec."""
    base = store.results_root(root).resolve()
    logs = base / "logs" / "sweeps"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "sbatch",
        "--parsable",
        f"--nodes={nodes}",
        f"--cpus-per-task={cpus_per_task}",
        f"--time={time_min}",
        f"--output={logs}/%x-%j.out",
    ]
    if partition:
        cmd.append(f"--partition={partition}")
    if wait:
        cmd.append("--wait")
    args = [str(Path(spec_path).resolve())]
    for o in overrides:
        args += ["--set", o]
    if retry_failed:
        args.append("--retry-failed")
    env = dict(os.environ, HARNESS_RESULTS=str(base), HARNESS_PYTHON=sys.executable)
    # sbatch takes the script's arguments only after a script file: a real path (the package's
    # own file when installed as files; sbatch copies the script when it submits)
    with resources.as_file(slurm_script()) as script:
        r = subprocess.run(
            [*cmd, str(script), *args], capture_output=True, text=True, env=env, cwd=IMPORT_ROOT
        )
    job = r.stdout.strip().split(";")[0]
    if job:
        echo(f"submitted Ray sweep as SLURM job {job}; log {logs}/harness-ray-sweep-{job}.out")
    if r.returncode != 0:
        raise HarnessError(f"sbatch failed: {' '.join(r.stderr.split())[:300]}", code=1)
    return 0
