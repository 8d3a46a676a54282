"""Shared pieces of the sweep benchmarks (bench_asha, bench_layer_auto): a temporary results
root, tiny pre-trained checkpoints made through the harness's own submit path, and store rows
as dicts. Not a benchmark itself."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def temp_results(prefix: str) -> Iterator[Path]:
    """A temporary folder used as ``$HARNESS_RESULTS`` for the duration (never ./results);
    removed afterwards, the previous value restored."""
    from harness.store.parts import RESULTS_ENV

    old = os.environ.get(RESULTS_ENV)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ[RESULTS_ENV] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop(RESULTS_ENV, None)
            else:
                os.environ[RESULTS_ENV] = old


def rows(sql: str, root: Path, table: str) -> list[dict[str, Any]]:
    """The rows of one query over ``table`` of the store at ``root`` (none while the table
    has no part)."""
    from harness import store

    if not store.parts(table, root):
        return []
    return store.execute(sql, root).to_pylist()


def pretrain(
    root: Path,
    archs: list[str],
    *,
    dataset: str = "fashion_mnist",
    epochs: int = 2,
    limit: int = 2000,
    study: str | None = None,
    echo=print,
) -> tuple[list[dict[str, Any]], float]:
    """Pre-train one checkpoint per architecture as ``harness submit --executor local`` does
    (a one-axis grid over ``arch``), or, with ``study`` (a study spec's path), as that study
    pre-trains its plain cross-entropy run of each architecture; returns
    ([{checkpoint, arch, run_id}], seconds)."""
    from harness import store
    from harness.cluster.submit import submit
    from harness.spec.config import SubmitSpec

    resources = dict(nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=4, timeout_min=60)
    if study is None:
        base = dict(dataset=dataset, limit=limit, epochs=epochs, batch_size=128, lr=0.02)
        points: dict[str, Any] = dict(grid=dict(arch=list(archs)), base=base | dict(nc_limit=500))
    else:
        points = study_ce_runs(study, archs)
    spec = SubmitSpec.from_dict(
        dict(name="bench-pretrain", resources=resources, **points), "bench pre-training spec"
    )
    t0 = time.perf_counter()
    submit(spec, "local", root=root, echo=lambda line: echo(f"  {line}"))
    took = time.perf_counter() - t0
    found = rows("SELECT checkpoint, arch, run_id FROM pretrain ORDER BY arch", root, "pretrain")
    for r in found:  # the store records checkpoints relative to its root
        r["checkpoint"] = str(store.resolve_path(r["checkpoint"], root))
    missing = set(archs) - {r["arch"] for r in found}
    if missing:
        raise SystemExit(f"pre-training recorded no checkpoint for {', '.join(sorted(missing))}")
    return found, took


def study_ce_runs(study: str, archs: list[str]) -> dict[str, Any]:
    """The ``base`` and ``include`` of a study's pre-training that give its plain cross-entropy
    run (no augmentation, no projection head) of each of ``archs``, first listed wins."""
    from harness.spec.load import load_yaml

    pre = load_yaml(study)["pretrain"]
    base = dict(pre.get("base", {}))
    plain: dict[str, dict[str, Any]] = {}
    for point in pre.get("include", []) or [{}]:
        run = base | point
        variant = run.get("augment", "none") != "none" or run.get("head_depth", 0)
        if run.get("loss", "ce") == "ce" and not variant and run.get("arch") in archs:
            plain.setdefault(run["arch"], point)
    missing = [a for a in archs if a not in plain]
    if missing:
        raise SystemExit(f"{study}: no plain cross-entropy pre-training run of {missing}")
    return dict(base=base, include=[plain[a] for a in archs])


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
