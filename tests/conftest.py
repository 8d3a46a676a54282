"""Shared fixtures. SLURM tests need the local cluster (``slurm/up``); under
``HARNESS_REQUIRE_SLURM=1`` (set by the README's test command and CI) a missing cluster is an
error, never a silent skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    from harness.cluster.launch import slurm_reachable

    if not slurm_reachable():
        msg = "local SLURM cluster is not up (run slurm/up)"
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """An empty results root, also exported as HARNESS_RESULTS for subprocesses."""
    root = tmp_path / "results"
    monkeypatch.setenv("HARNESS_RESULTS", str(root))
    return root


@pytest.fixture
def shared_tmp(tmp_path) -> Path:
    """A folder SLURM jobs can read and write (both fake nodes share this host's /tmp)."""
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: thread start-up costs more than it saves, and far more on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
