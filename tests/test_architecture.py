"""The package's shape (ARCHITECTURE.md): import rules between layers, a light front door, and
module / function sizes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests_util import HARNESS

PKG = Path(__file__).resolve().parents[1] / "harness"
SCIENCE = ("nc", "losses", "models", "data", "analysis", "schedule", "catalog", "bounds")
STORE = ("store", "fileio", "errors")
CLUSTER = {"ray", "submitit"}
DISPATCH = {
    f"harness.{m}"
    for m in (
        "study",
        "submit",
        "sweep",
        "ledger",
        "launch",
        "cli",
        "rayrun",
        "orphans",
        "progress",
    )
}
HEAVY = ("torch", "torchvision", "timm", "ray")


def files(*modules: str) -> list[Path]:
    out = []
    for m in modules:
        p = PKG / m
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
    return out


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_science_knows_nothing_of_clusters():
    for f in files(*SCIENCE):
        bad = {m for m in imports(f) if m.split(".")[0] in CLUSTER or m in DISPATCH}
        assert not bad, f"{f.relative_to(PKG)} imports {sorted(bad)}"


def test_store_knows_nothing_of_torch_ray_or_slurm():
    allowed_harness = {"harness.store", "harness.fileio", "harness.errors"}
    for f in files(*STORE):
        for m in imports(f):
            top = m.split(".")[0]
            assert top not in (*HEAVY, *CLUSTER), f"{f.relative_to(PKG)} imports {m}"
            if top == "harness":
                assert any(m == a or m.startswith(a + ".") for a in allowed_harness), (
                    f"{f.relative_to(PKG)} imports {m}"
                )


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {m.split(".")[0] for m in out}


def test_importing_store_and_nc_loads_no_cluster_code():
    assert not loaded_after("import harness.store") & {*HEAVY, *CLUSTER}
    assert not loaded_after("import harness.nc, harness.data, harness.analysis") & CLUSTER


def heavy_imports(stderr: str) -> set[str]:
    """Top-level heavy packages in a ``-X importtime`` listing."""
    names = {ln.rsplit("|", 1)[-1].strip() for ln in stderr.splitlines() if "|" in ln}
    return {n for n in names if n in HEAVY}


@pytest.mark.parametrize(
    "args",
    [["--help"], ["status"], ["query", "SELECT 42"], ["compact"], ["query", "--tables"]],
)
def test_front_door_imports_no_torch_timm_or_ray(results, args):
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    r = subprocess.run([HARNESS, *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-500:]
    assert heavy_imports(r.stderr) == set()


def test_submitting_path_imports_no_torch(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nbase: {arch: resnet_tiny, dataset: digits, epochs: 1}\n"
        "grid: {loss: [ce, supcon, label_smoothing], seed: [0, 1]}\n"
    )
    code = f"""
from harness import config, ledger, launch, submit
s = config.load_spec({str(spec)!r})
submit.preflight(s.runs())
ledger.plan({str(tmp_path / "r")!r}, [c.run_id() for c in s.runs()])
launch.make_executor("local", {str(tmp_path / "logs")!r}, s.resources)
from harness.pretrain import PretrainJob  # what submitit pickles
"""
    assert not loaded_after(code) & set(HEAVY)


def test_no_module_over_600_lines_and_no_function_over_80():
    for f in files(*(p.stem for p in PKG.iterdir() if p.suffix == ".py" or p.is_dir())):
        if "__pycache__" in f.parts:
            continue
        text = f.read_text()
        assert text.count("\n") <= 600, f"{f.relative_to(PKG)}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                assert n <= 80 or "long because" in doc, f"{f.relative_to(PKG)}:{node.name} {n}"
