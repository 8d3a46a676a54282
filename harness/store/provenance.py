"""Provenance: run ids (hash of the canonical config), git state, package versions, SLURM ids;
one ``runs`` row per attempt; and how rows record files (``store_path``, ``resolve_path``)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.spec.identity import canonical_json, run_id
from harness.store.parts import append, results_root

_PACKAGES = (
    "harness",
    "torch",
    "torchvision",
    "timm",
    "submitit",
    "ray",
    "numpy",
    "pyarrow",
    "duckdb",
)


@functools.cache
def _versions() -> str:
    return json.dumps(package_versions(), sort_keys=True)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (read from metadata, not imported)."""
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit sha, dirty flag) of the checkout holding the harness package, or (None, None).
    Asked once per process (every trial of a Ray worker shares the answer)."""
    return _git_state(str(Path(path).resolve()) if path else str(Path(__file__).resolve().parent))


@functools.cache
def _git_state(where: str) -> tuple[str | None, bool | None]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Provenance:
    """Where and how a run executed; becomes one row of the ``runs`` table per attempt."""

    run_id: str
    kind: str
    config: str
    git_sha: str | None
    git_dirty: bool | None
    slurm_job_id: str | None
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_restart_count: int | None
    host: str
    versions: str
    started_at: dt.datetime
    resumed_from: str | None = None  # the checkpoint a resumed attempt started from, and why

    @classmethod
    def collect(cls, config: Mapping[str, Any], kind: str) -> Provenance:
        env = os.environ
        sha, dirty = git_state()
        restart = env.get("SLURM_RESTART_COUNT")
        return cls(
            run_id=run_id(config),
            kind=kind,
            config=canonical_json(config),
            git_sha=sha,
            git_dirty=dirty,
            slurm_job_id=env.get("SLURM_JOB_ID"),
            slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            slurm_restart_count=int(restart) if restart and restart.isdigit() else None,
            host=socket.gethostname(),
            versions=_versions(),
            started_at=utcnow(),
        )

    def row(
        self,
        status: str,
        *,
        error: str | None = None,
        log_path: str | None = None,
        attempt: int | None = None,
        resumed_from: str | None = None,
    ) -> dict[str, Any]:
        """The ``runs`` row for this attempt with its final status (``resumed_from``, when
        given, overrides the attempt's own)."""
        d = dict(self.__dict__)
        if resumed_from is not None:
            d["resumed_from"] = resumed_from
        d.update(
            status=status,
            error=error,
            log_path=log_path,
            attempt=attempt if attempt is not None else (self.slurm_restart_count or 0),
            ended_at=utcnow() if status != "running" else None,
        )
        return d


def record_run(
    prov: Provenance, status: str, root: str | os.PathLike | None = None, **kw: Any
) -> Path | None:
    """Append the provenance row of one attempt to ``runs`` (its ``log_path`` as ``store_path``
    records it)."""
    if kw.get("log_path"):
        kw["log_path"] = store_path(kw["log_path"], root)
    return append("runs", [prov.row(status, **kw)], root)


# ---------------------------------------------------------------------------------------------
# Paths in rows


def store_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """How a row records a file: relative to the results root when the file lies under it (so a
    root copied or moved elsewhere still finds its own checkpoints and logs), else absolute.
    A relative ``path`` is taken from the working directory, as a user typed it."""
    p = Path(os.path.abspath(path))
    base = Path(os.path.abspath(results_root(root)))
    for file, under in ((p, base), (p.resolve(), base.resolve())):  # then through symlinks
        if file.is_relative_to(under) and file != under:
            return file.relative_to(under).as_posix()
    return str(p)


def resolve_path(stored: str, root: str | os.PathLike | None = None) -> Path:
    """The file a stored path names: a relative one against the results root it is read from
    (wherever that root now lives), an absolute one (a file outside the root, or a row written
    before paths were stored relative) as it is."""
    p = Path(stored)
    return p if p.is_absolute() else Path(os.path.abspath(results_root(root))) / p
