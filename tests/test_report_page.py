"""The report as a person sees it: a realistic synthetic store and findings, the report written,
and report.html rendered in headless Chromium: every figure loads, the page is not blank, and
the first screen holds the findings (table and forest plot).

Chromium is a Debian package (``make setup-slurm`` installs it); without it the test skips,
unless ``HARNESS_REQUIRE_CHROMIUM=1`` (``make test``, CI), where a missing browser fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import analysis, store
from harness.analysis.findings import Estimate, Finding

SCREENSHOT = Path("/tmp/report_screenshot.png")  # kept for a person to look at
ARCHS = {"resnet": 5, "vit": 4, "convnext": 4}  # architecture: layers measured
LOSSES = {"ce": 0.0, "mse": 0.6, "supcon": 0.3}  # loss: how much less source NC1 collapses
SEEDS = 3
BUDGETS = (5, 20, None)


def _run_rows(rid: str, arch: str, loss: str, rng: np.random.Generator) -> dict[str, list]:
    """Rows of one pre-training run in every table: NC per layer on the source and the
    downstream data, fine-tuning trials (four methods, three budgets, two seeds), scores."""
    n_layers, ck = ARCHS[arch], f"/ck/{rid}.pt"
    src_acc = 0.9 - 0.05 * LOSSES[loss] + rng.normal(0, 0.01)
    rows: dict[str, list] = {k: [] for k in ("pretrain", "nc", "finetune", "scores")}
    rows["pretrain"].append(
        dict(run_id=rid, arch=arch, dataset="fashion_mnist", loss=loss, augment="none",
             epochs=10, train_acc=0.99, test_acc=float(src_acc), checkpoint=ck, wall_s=60.0)
    )  # fmt: skip
    down = []
    for j in range(n_layers):
        frac = (j + 1) / n_layers
        src = 10 ** (1.2 - 1.8 * frac + LOSSES[loss] * frac + rng.normal(0, 0.05))
        down.append(10 ** (1.0 - 0.9 * frac + 0.3 * LOSSES[loss] + rng.normal(0, 0.05)))
        for ds, v in (("fashion_mnist", src), ("mnist5k", down[-1])):
            rows["nc"].append(
                dict(run_id=rid, checkpoint=ck, model=arch, dataset=ds, split="train",
                     layer=f"blocks.{j}", layer_index=j, depth_frac=frac, metric="nc1",
                     variant="pinv", value=float(v), n=500)
            )  # fmt: skip
    total = 320_000 if arch == "resnet" else 210_000
    methods = [("linear_probe", None, 0.85 - 0.02 * np.log10(down[-1]), 1_290)]
    methods.append(("full", None, 0.95, total))
    for j in range(n_layers):
        acc = 0.93 - 0.03 * np.log10(down[j])
        methods.append(("layer", f"blocks.{j}", acc, total // 20 * (j + 1)))
        methods.append(("scl", f"blocks.{j}", acc + 0.01, total // 20 * (j + 1) + 2_000))
    for per_class, gain in zip(BUDGETS, (-0.12, -0.04, 0.0), strict=True):
        for seed in range(2):
            for method, layer, acc, params in methods:
                acc = float(acc + gain + rng.normal(0, 0.01))
                rows["finetune"].append(
                    dict(trial_id=f"{rid}/{method}/{layer}/{per_class}/{seed}", run_id=rid,
                         checkpoint=ck, arch=arch, dataset="mnist5k", method=method, layer=layer,
                         per_class=per_class, epochs=5, lr=0.01, weight_decay=0.0, seed=seed,
                         status="done", train_acc=1.0, val_acc=acc, test_acc=acc,
                         trainable_params=params, total_params=total, wall_s=4.0)
                )  # fmt: skip
    base = dict(run_id=rid, checkpoint=ck, arch=arch, dataset="mnist5k", n=500, wall_s=0.4)
    rows["scores"] += [
        dict(base, score="logme", value=float(-1 - 0.4 * np.log10(down[-1]) + rng.normal(0, 0.1))),
        dict(base, score="leep", value=float(-0.8 - 0.2 * down[-1] + rng.normal(0, 0.2))),
    ]
    for part, v in (("seli", 5 - down[-1]), ("ncc", 0.9 - 0.02 * down[-1]), ("vc", 1.0)):
        rows["scores"].append(dict(base, score="ncti", part=part, value=float(v)))
    return rows


def build_study(root: Path) -> list[str]:
    """Fourteen runs of one study (2 architectures × 2 losses × 3 seeds, and 2 runs of a third
    architecture) and two runs of another study in the same root; returns the study's ids."""
    rng = np.random.default_rng(7)
    tables: dict[str, list] = {}
    ids = []
    grid = [(a, loss, s) for a in ("resnet", "vit") for loss in ("ce", "mse") for s in range(SEEDS)]
    for arch, loss, s in [*grid, ("convnext", "ce", 0), ("convnext", "ce", 1)]:
        ids.append(f"{arch}-{loss}-{s}")
        for t, rows in _run_rows(ids[-1], arch, loss, rng).items():
            tables.setdefault(t, []).extend(rows)
    for s in range(2):  # another study's runs: never in this report
        for t, rows in _run_rows(f"stranger-{s}", "resnet", "supcon", rng).items():
            tables.setdefault(t, []).extend(rows)
    for t, rows in tables.items():
        store.append(t, rows, root)
    return ids


def est(label: str, stat: str, v: float, half: float, n: int, unit: str) -> Estimate:
    return Estimate(label, stat, v, v - half, v + half, n, unit, n * 3)


def findings() -> list[Finding]:
    rho, run, model = "Spearman ρ", "pre-training run", "model"
    pair, diff = "(checkpoint, seed) pair", "SCL − full (accuracy)"
    return [
        Finding("1", "Source NC1 vs transfer accuracy", "Less source collapse transfers better.",
                "ρ(source NC1, linear-probe acc), per architecture, runs resampled, expect > 0",
                est("per architecture, pooled (fixed effect)", rho, 0.41, 0.22, 12, run),
                "agrees", "excludes 0 at 95 %",
                [est("Pearson r, pooled", "Pearson r", 0.35, 0.3, 12, run),
                 est("per dataset", rho, 0.28, 0.4, 12, run),
                 est("nc1_svd instead of nc1", rho, 0.44, 0.25, 12, run)]),
        Finding("2a", "Downstream NC1 vs accuracy across models", "More collapse, better.",
                "ρ(downstream NC1, full FT acc) across models, expect < 0",
                est("across models", rho, -0.18, 0.45, 12, model), "inconclusive",
                "≈ 90 models would exclude 0 at ρ = −0.18",
                [est("linear probe accuracy", rho, -0.3, 0.4, 12, model)]),
        Finding("2b", "Layer-wise NC1 vs accuracy", "Layers that collapse more fine-tune "
                "better.", "ρ across the layers of each model, averaged, expect < 0",
                est("within model, averaged", rho, 0.52, 0.2, 12, model), "disagrees",
                "the sign is opposite to the paper's",
                [est("SCL FT instead of Layer FT", rho, 0.47, 0.22, 12, model)]),
        Finding("3", "SCL FT matches full FT", "SCL FT matches full FT with ≥ 70 % fewer "
                "trainable parameters.", "paired SCL − full per (checkpoint, dataset, budget, "
                "seed), non-inferiority margin 0.02", est("all budgets", diff, -0.012, 0.006,
                24, pair), "agrees", "trainable fraction 0.06", [est("5 per class", diff,
                -0.03, 0.015, 24, pair), est("all data", diff, -0.004, 0.005, 24, pair)],
                extra={"margin": 0.02, "trainable_frac": 0.06}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("report_page")
    root = base / "results"
    scope = build_study(root)
    paths = analysis.write_report(
        root, base / "report", findings=findings(), n_boot=50, seed=0, scope=scope
    )
    return paths


def test_report_content(report):
    md, page = report["markdown"].read_text(), report["html"].read_text()
    names = [p.name for p in report["figures"]]
    assert names[0] == "findings.png" and len(names) == len(set(names)) == 5
    assert md.index("## 1. Findings") < md.index("](findings.png)") < md.index("## 2.")
    for f in findings():  # 'key. title', as the console prints it
        assert f"| {f.key}. {f.title} |" in md
    for name in names:
        assert f"]({name})" in md  # the Markdown links the files next to it
    # self-contained: every image embedded, nothing fetched
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == len(names) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)
    assert "<link" not in page and "<script" not in page
    # findings: one row each, with badge, interval and units; notes under their rows
    assert page.count("class='badge v-agrees'") == 2 and "badge v-too-few-runs" not in page
    assert "badge v-inconclusive" in page and "badge v-disagrees" in page
    assert "+0.41 [+0.19, +0.63]" in page and "12 pre-training runs" in page
    assert "14 pre-training runs of this study" in md
    assert "24 (checkpoint, seed) pairs" in page and "≈ 90 models would exclude 0" in page
    # the other study's runs are not read
    assert "stranger" not in md and "supcon" not in md
    # groups of fewer than 3 runs are never tabulated; long tables are folded
    budget = re.findall(r"^\| mnist5k \| (\w+) \| \w+ \| [—\d]+ \| (\d+) \|", md, re.MULTILINE)
    assert len(budget) == 2 * 4 * 3 and all(int(n) == 6 for _, n in budget)
    assert "convnext" not in {a for a, _ in budget} and "fewer than 3 runs are plotted" in md
    assert "<details><summary>every run (14 runs)</summary>" in page
    assert "| score | rankings | models | mean_weighted_tau |" in md


def test_ranking_summary_and_interval():
    rows = [
        dict(score="a", n=4, weighted_tau=0.5, top1_hit=True, regret=0.0, speedup=10.0),
        dict(score="a", n=4, weighted_tau=0.1, top1_hit=False, regret=0.02, speedup=30.0),
        dict(score="b", n=4, weighted_tau=0.9, top1_hit=True, regret=0.0, speedup=5.0),
    ]
    got = analysis.ranking_summary(rows)
    assert [r["score"] for r in got] == ["b", "a"]
    assert got[1]["rankings"] == 2 and got[1]["mean_weighted_tau"] == pytest.approx(0.3)
    assert got[1]["top1_hit_rate"] == pytest.approx(0.5)
    import scipy.stats

    x = np.array([0.7, 0.8, 0.9, 0.75])
    want = scipy.stats.t.interval(0.95, 3, loc=x.mean(), scale=scipy.stats.sem(x))
    assert analysis.mean_interval(x.mean(), x.std(), 4) == pytest.approx(want)
    assert all(np.isnan(analysis.mean_interval(0.5, 0.0, 1)))


# ---------------------------------------------------------------------------------------------
# Rendered in headless Chromium

# Appended to a copy of the page: after load, the size of every image in a <pre id='probe'>.
PROBE = (
    "<script>window.addEventListener('load',()=>{const p=document.createElement('pre');"
    "p.id='probe';p.textContent=JSON.stringify([...document.images].map("
    "i=>[i.complete,i.naturalWidth,i.naturalHeight]));document.body.appendChild(p);});</script>"
)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (Debian package `chromium`; `make setup-slurm`)"
        if os.environ.get("HARNESS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _headless(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.slow
def test_report_renders_in_chromium(report, tmp_path):
    exe = _chromium()
    page = report["html"]
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _headless(exe, tmp_path / "p1", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.DOTALL)
    assert found, "the probe did not run: " + dom[-500:]
    sizes = json.loads(found.group(1))
    assert len(sizes) == len(report["figures"])
    assert all(done and w > 100 and h > 100 for done, w, h in sizes), sizes

    shot = tmp_path / "shot.png"
    _headless(
        exe, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()
    )
    shutil.copyfile(shot, SCREENSHOT)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2000, 1280)
    assert img.std() > 20  # text, tables and figures, not a blank page
    top = img[:900]  # the first screen: title, findings table, forest plot
    assert (top < 200).mean() > 0.03
    # the forest plot is on the first screen: coloured markers (verdict colours) up there
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)[:1000]
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    assert (chroma > 60).sum() > 200
