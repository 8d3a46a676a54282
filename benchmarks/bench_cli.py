"""CLI start-up: median wall time of `harness --help` relative to `python -c pass`.

Goal: <= 3x (the CLI imports no torch/timm/ray/duckdb before a subcommand needs them).
Run: .venv/bin/python benchmarks/bench_cli.py [--repeat 21]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_time(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=21)
    a = ap.parse_args()
    harness = str(Path(sys.executable).with_name("harness"))
    median_time([harness, "--help"], 3)  # warm the file cache
    base = median_time([sys.executable, "-c", "pass"], a.repeat)
    cli = median_time([harness, "--help"], a.repeat)
    print(f"python -c pass : {base * 1e3:7.1f} ms (median of {a.repeat})")
    print(f"harness --help : {cli * 1e3:7.1f} ms (median of {a.repeat})")
    print(f"ratio          : {cli / base:7.2f}x  (goal <= 3x)")


if __name__ == "__main__":
    main()
