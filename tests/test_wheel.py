"""The wheel a cluster admin installs works outside a checkout: it carries the saved queries and
the sbatch template (package data), and ``harness report`` / ``harness sweep --slurm`` read them
from the installed package."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_analysis import build_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _sources(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to ``dest``: the wheel is built
    from there, so the build writes nothing into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's python, the wheel): the wheel built offline and installed, without its
    dependencies, into a new venv; the dependencies come from this interpreter's site-packages,
    appended to the new venv's path (their own .pth files, this checkout's editable install
    among them, are not read)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp / "src")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--no-index", "-q", "-w", str(tmp / "dist"), str(src)], check=True)
    (wheel,) = (tmp / "dist").glob("harness-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    (Path(purelib) / "harness_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return py, wheel


def _outside(tmp_path: Path, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=tmp_path, capture_output=True, text=True)


def test_the_wheel_carries_the_package_data(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {f"harness/analysis/sql/{p.name}" for p in (REPO / "harness/analysis/sql").glob("*.sql")}
    assert sql and sql <= names, sorted(sql - names)
    assert "harness/cluster/templates/ray-sweep.sbatch" in names


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    py, _ = installed
    r = _outside(tmp_path, py, "-c", "import harness; print(harness.__file__)")
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip())
    assert where.is_relative_to(py.parents[1]) and not where.is_relative_to(REPO), where


def test_report_outside_the_checkout(installed, tmp_path):
    py, _ = installed
    root = tmp_path / "results"
    build_store(root)
    out = tmp_path / "report"
    harness = py.with_name("harness")
    r = _outside(tmp_path, harness, "--results", root, "report", "--out", out, "--bootstrap", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "report.md").read_text()
    for name in ("common", "source_nc_vs_linear_probe", "methods_vs_budget"):
        assert (REPO / f"harness/analysis/sql/{name}.sql").read_text().strip() in md, name


def test_sweep_slurm_outside_the_checkout(installed, tmp_path):
    py, _ = installed
    r = _outside(tmp_path, py.with_name("harness"), "sweep", "--slurm", "--help")
    assert r.returncode == 0 and "--slurm" in r.stdout, r.stderr[-2000:]
    code = "from harness.cluster import slurm_sweep; print(slurm_sweep.slurm_script().read_text())"
    r = _outside(tmp_path, py, "-c", code)
    assert r.returncode == 0, r.stderr[-2000:]
    template = REPO / "harness/cluster/templates/ray-sweep.sbatch"
    assert r.stdout == template.read_text() + "\n"
