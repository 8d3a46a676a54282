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
# The layers, lowest first (ARCHITECTURE.md): a module's layer is its folder (or, at the top of
# the package, its name); it may import from its own layer or any layer below.
LAYERS = (
    ("foundation", ("errors", "distributed", "spec")),
    ("store", ("store",)),
    ("science", ("data", "models", "nc", "analysis")),
    ("machinery", ("train", "finetune")),
    ("dispatch", ("cluster",)),
    ("face", ("cli", "study")),
)
LAYER_OF = {room: i for i, (_, rooms) in enumerate(LAYERS) for room in rooms}
CLUSTER = {"ray", "submitit"}
HEAVY = ("torch", "torchvision", "timm", "ray")
# Who may import the cluster libraries at all (anywhere in the file): the dispatch layer, the
# job's process group (submitit's environment), pre-training (a submitit Checkpointable) and the
# fine-tuning trial's Ray worker.
MAY_IMPORT_CLUSTER = ("cluster/", "distributed.py", "train/pretrain.py", "finetune/worker.py")
# The one heavy library the spec layer reads, and only inside the function that asks timm
# whether it knows an architecture name: loading a spec of presets never imports it.
LAZY_HEAVY = {("spec/config.py", "timm")}


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def room(path: Path) -> str | None:
    """The folder (or top-level module) a file belongs to; None for the package's own
    ``__init__``."""
    rel = path.relative_to(PKG)
    if rel == Path("__init__.py"):
        return None
    return rel.parts[0].removesuffix(".py")


FUNC = ast.FunctionDef | ast.AsyncFunctionDef


def imports(path: Path, *, top_only: bool = False) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative ones resolved);
    ``top_only``: only those run when the module is imported (outside any function)."""
    found = set()
    here = ["harness", *path.relative_to(PKG).with_suffix("").parts]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree)
    if top_only:
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, FUNC) for n in ast.walk(f)}
        nodes = [n for n in ast.walk(tree) if id(n) not in inside]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[: len(here) - node.level]
                base = ".".join([*up, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def harness_room(module: str) -> str | None:
    """The room of an imported ``harness.*`` name (``harness.cluster.sweep`` -> cluster), or
    None when it is not a room (the package itself, or a name imported from it)."""
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYER_OF else None


def test_every_room_has_a_layer():
    rooms = {room(p) for p in modules()} - {None}
    assert rooms == set(LAYER_OF), f"rooms without a layer: {sorted(rooms - set(LAYER_OF))}"


def test_every_import_points_down():
    up = set()
    for f in modules():
        mine = room(f)
        if mine is None:
            continue
        for m in imports(f):
            other = harness_room(m)
            if other is not None and LAYER_OF[other] > LAYER_OF[mine]:
                up.add((str(f.relative_to(PKG)), m))
    assert not up, "imports that point up: " + ", ".join(f"{f} -> {m}" for f, m in sorted(up))


def module_graph() -> dict[str, set[str]]:
    """Module -> the harness modules it imports (anywhere in the file, function-level and
    type-only imports included); a module importing its own package is not an edge."""
    names = {".".join(("harness", *p.relative_to(PKG).with_suffix("").parts)): p for p in modules()}
    names = {n.removesuffix(".__init__"): p for n, p in names.items()}
    graph = {}
    for name, p in names.items():
        graph[name] = {
            m for m in imports(p) if m in names and m != name and not name.startswith(m + ".")
        }
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    found = circles(module_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cluster_libraries_only_where_jobs_run():
    for f in modules():
        rel = str(f.relative_to(PKG))
        if rel.startswith(MAY_IMPORT_CLUSTER):
            continue
        bad = {m for m in imports(f) if m.split(".")[0] in CLUSTER}
        assert not bad, f"{rel} imports {sorted(bad)}"


def test_spec_and_store_know_nothing_of_torch_ray_or_slurm():
    for f in [*(PKG / "spec").rglob("*.py"), *(PKG / "store").rglob("*.py")]:
        rel = str(f.relative_to(PKG))
        for m in imports(f):
            top = m.split(".")[0]
            if (rel, top) in LAZY_HEAVY:
                assert m not in imports(f, top_only=True), f"{rel} imports {m} at module level"
                continue
            assert top not in (*HEAVY, *CLUSTER), f"{rel} imports {m}"


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
    assert not loaded_after("import harness.spec.load, harness.spec.registry") & {*HEAVY, *CLUSTER}
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
from harness.spec.load import load_spec
from harness.cluster import ledger
from harness.cluster import launch
from harness.cluster import submit
s = load_spec({str(spec)!r})
submit.preflight(s.runs())
ledger.plan({str(tmp_path / "r")!r}, [c.run_id() for c in s.runs()])
launch.make_executor("local", {str(tmp_path / "logs")!r}, s.resources)
from harness.train.pretrain import PretrainJob  # what submitit pickles
"""
    assert not loaded_after(code) & set(HEAVY)


def test_no_module_over_600_lines_and_no_function_over_80():
    for f in modules():
        text = f.read_text()
        assert text.count("\n") <= 600, f"{f.relative_to(PKG)}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                assert n <= 80 or "long because" in doc, f"{f.relative_to(PKG)}:{node.name} {n}"
