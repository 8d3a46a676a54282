"""benchmarks/gpu_check.py runs on the CPU (--tiny) without the cluster packages, so the GPU check
cannot rot while no GPU is at hand."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test runs the benchmark script in a fresh interpreter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CLUSTER = ("submitit", "ray", "duckdb")


def run_blocked(*blocked: str) -> subprocess.CompletedProcess:
    """``gpu_check.py --tiny --device cpu`` in a fresh interpreter where importing any of
    ``blocked`` fails, as on a machine without them installed."""
    code = (
        "import runpy, sys\n"
        f"for m in {blocked!r}:\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--tiny', '--device', 'cpu']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def test_tiny_run_prints_three_finite_ratios_without_cluster_packages():
    r = run_blocked(*CLUSTER)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    ratios = dict(re.findall(r"^\(([abc])\) .* -> ratio (\S+) \(.*goal", r.stdout, re.M))
    assert sorted(ratios) == ["a", "b", "c"], r.stdout
    for key, value in ratios.items():
        assert math.isfinite(float(value)) and float(value) > 0, f"({key}) ratio {value}"


def test_a_check_that_cannot_run_fails_the_script():
    r = run_blocked(*CLUSTER, "timm")  # (a) needs no timm; (b) and (c) build timm networks
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert re.search(r"^\(a\) .* -> ratio ", r.stdout, re.M), r.stdout
    assert re.findall(r"^\(([bc])\) FAILED: ", r.stdout, re.M) == ["b", "c"], r.stdout
