"""Per-layer features of timm models and `harness measure` (single process, CLI, DDP on SLURM)."""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
import torch
from nc_reference import reference_nc
from tests_util import HARNESS

from harness import models, store
from harness.cluster import launch
from harness.errors import HarnessError
from harness.nc.measure import MeasureSpec, measure
from harness.spec import config

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", params=["resnet_tiny", "vit_tiny"])
def model(request):
    torch.manual_seed(0)
    return models.create_model(request.param, 10, 1, 28).eval()


def _blocks(model) -> list[str]:
    """timm's feature_info modules, a stage of blocks (nn.Sequential) listed block by block."""
    out = []
    for f in model.feature_info:
        mod = model.get_submodule(f["module"])
        seq = isinstance(mod, torch.nn.Sequential)
        out += [f"{f['module']}.{i}" for i in range(len(mod))] if seq else [f["module"]]
    return out


def test_layers_are_the_blocks_of_timm_feature_info(model):
    layers = models.model_layers(model)
    assert [ly.name for ly in layers[:-1]] == _blocks(model)
    assert layers[-1].name == models.PRE_LOGITS
    assert [ly.index for ly in layers] == list(range(len(layers)))
    assert layers[-1].depth_frac == 1.0 and all(0 < ly.depth_frac <= 1 for ly in layers)
    sel = models.select_layers(model, f"{layers[1].name},-1,0")
    assert [ly.index for ly in sel] == [0, 1, len(layers) - 1]
    with pytest.raises(HarnessError, match="unknown layer 'nope'.*valid: all, 0:"):
        models.select_layers(model, "nope")
    with pytest.raises(HarnessError, match="unknown layer '99'"):
        models.select_layers(model, "99")


def _hooked_outputs(model, x):
    """Independent path: forward hooks on every block during a plain forward."""
    caught = {}
    mods = dict(model.named_modules())
    hs = [
        mods[name].register_forward_hook(lambda _m, _i, o, n=name: caught.__setitem__(n, o))
        for name in _blocks(model)
    ]
    with torch.no_grad():
        logits = model(x)
    for h in hs:
        h.remove()
    return caught, logits


def test_features_match_hooks_and_pooling(model):
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    caught, logits = _hooked_outputs(model, x)
    layers = models.select_layers(model, "all")
    for pool in ("avg", "cls"):
        feats, lg = models.LayerFeatures(model, layers, pool)(x)
        torch.testing.assert_close(lg, logits, rtol=1e-5, atol=1e-5)
        for name, out in caught.items():
            if out.ndim == 4:  # CNN map: global average pool, pool argument irrelevant
                want = out.mean((2, 3))
            elif pool == "cls":  # ViT tokens B×L×C, CLS first
                want = out[:, 0]
            else:  # mean of patch tokens (prefix tokens excluded, as timm's avg pool)
                want = out[:, model.num_prefix_tokens :].mean(1)
            torch.testing.assert_close(feats[name], want, rtol=1e-5, atol=1e-5)
        assert feats[models.PRE_LOGITS].shape == (6, model.num_features)
    # the hook fallback (models without forward_intermediates) agrees and leaves no hooks behind
    fx = models.LayerFeatures(model, layers, "avg")
    fx.use_fi = False
    f2, _ = fx(x)
    f1, _ = models.LayerFeatures(model, layers, "avg")(x)
    for k in f1:
        torch.testing.assert_close(f1[k], f2[k])
    assert all(not m._forward_hooks for m in model.modules())


def _features_by_hand(model, ds, layer):
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    fx = models.LayerFeatures(model, models.select_layers(model, layer))
    xs, ys = [], []
    for x, y in loader:
        f, _ = fx(x)
        xs.append(f[layer])
        ys.append(y)
    return torch.cat(xs).double().numpy(), torch.cat(ys).numpy()


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(3)
    m = models.create_model("resnet_tiny", 10, 1, 8)
    return models.save_checkpoint(
        tmp_path / "ckpt.pt",
        m,
        arch="resnet_tiny",
        num_classes=10,
        in_chans=1,
        img_size=8,
        meta={"dataset": "digits"},
    )


def test_measure_matches_reference_on_collected_features(checkpoint, results):
    from harness import data

    spec = MeasureSpec(
        dataset="digits",
        checkpoint=str(checkpoint),
        split="train",
        limit=400,
        batch_size=37,
        ncc=True,
    )
    res = {r.layer: r for r in measure(spec, root=results)}
    model, _ = models.load_checkpoint(checkpoint)
    model.eval()
    ds = data.load("digits", "train", limit=400)
    for layer in ("layer2.1", models.PRE_LOGITS):
        X, y = _features_by_hand(model, ds, layer)
        cls = None
        if layer == models.PRE_LOGITS:  # the checkpoint's own head: nc3 / nc4 are measured
            W, b = models.classifier_weights(model)
            cls = (W.double().numpy(), b.double().numpy())
        ref = reference_nc(X, y, 10, *(cls or (None, None)))
        got = res[layer].metrics
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (layer, k)
    assert "nc3" in res[models.PRE_LOGITS].metrics and "nc3" not in res["layer2.1"].metrics
    # rows in the store: long format, one per metric, with layer index and depth fraction
    con = store.connect(results)
    n_rows = con.execute("SELECT count(*) FROM nc").fetchone()[0]
    assert n_rows == sum(len(r.metrics) for r in res.values())
    row = con.execute(
        "SELECT layer_index, depth_frac, n, variant FROM nc "
        "WHERE layer='layer2.1' AND metric='nc1' AND variant='pinv'"
    ).fetchone()
    n_layers = len(models.model_layers(model))  # act1, 14 residual blocks, pre_logits
    assert row == (4, pytest.approx(5 / n_layers), 400, "pinv")
    assert (
        con.execute("SELECT count(*) FROM runs WHERE kind='measure' AND status='done'").fetchone()[
            0
        ]
        == 1
    )


def harness(*args):
    return subprocess.run([HARNESS, *args], capture_output=True, text=True)


@pytest.mark.slow
def test_measure_cli_writes_once_and_skips_repeat(results):
    args = [
        "measure",
        "--model",
        "vit_tiny",
        "--dataset",
        "digits",
        "--limit",
        "200",
        "--layers",
        "blocks.1,pre_logits",
        "--pool",
        "cls",
        "--no-progress",
    ]
    r = harness(*args)
    assert r.returncode == 0, r.stderr
    assert "blocks.1" in r.stdout and "pre_logits" in r.stdout
    con = store.connect(results)
    first = con.execute("SELECT count(*), count(DISTINCT layer) FROM nc").fetchone()
    assert first == (2 * 7, 2)  # nc1 x3, cdnv, nc2 x3 per layer (no --ncc, random head: no nc3)
    r = harness(*args)
    assert r.returncode == 0 and "already measured" in r.stdout
    con = store.connect(results)
    assert con.execute("SELECT count(*) FROM nc").fetchone()[0] == first[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--model", "resnet_tiny", "--dataset", "digits", "--layers", "layer9"],
            "unknown layer 'layer9'",
        ),
        (["--model", "resnet_nope", "--dataset", "digits"], "unknown architecture 'resnet_nope'"),
        (["--model", "resnet_tiny", "--dataset", "nope"], "nope"),
        (["--dataset", "digits"], "exactly one of --model"),
        (["--checkpoint", "MISSING.pt", "--dataset", "digits"], "no such file"),
    ],
)
def test_measure_bad_input_one_line(results, args, words):
    r = harness("measure", *args, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (results / "nc").exists()


@pytest.mark.slow
def test_not_a_checkpoint(results, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04 definitely not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    for path, words in (
        (junk, "not a loadable torch checkpoint"),
        (plain, "not a harness checkpoint"),
    ):
        r = harness("measure", "--checkpoint", str(path), "--dataset", "digits", "--no-progress")
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (results / "nc").exists()


def _measure_job(spec: MeasureSpec, root: str):
    res = measure(spec, root=root)
    return {r.layer: r.metrics for r in res}


@pytest.mark.slow
@pytest.mark.slurm
def test_ddp_measure_on_slurm_equals_one_process(slurm_cluster, checkpoint, shared_tmp):
    spec = MeasureSpec(
        dataset="digits", checkpoint=str(checkpoint), limit=501, batch_size=50, ncc=True
    )
    ex = launch.make_executor(
        "slurm", shared_tmp / "jobs", config.Resources(nodes=2, tasks_per_node=1, timeout_min=10)
    )
    ddp_root = shared_tmp / "ddp"
    job = ex.submit(_measure_job, spec, str(ddp_root))
    single = _measure_job(spec, str(shared_tmp / "single"))
    per_rank = job.results()
    assert len(per_rank) == 2
    # the ranks' float32 scatter blocks hold other rows than the single process's, so sums are
    # rounded in another order: equal within the engine's documented bound (harness.nc.scatter)
    for got in per_rank:  # every rank ends with the reduced (global) metrics
        assert got.keys() == single.keys()
        for layer, metrics in single.items():
            assert got[layer].keys() == metrics.keys()
            for k, v in metrics.items():
                assert got[layer][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (layer, k)
    # rank 0 alone wrote, and counted all 501 samples once
    con = store.connect(ddp_root)
    assert con.execute("SELECT count(DISTINCT run_id), min(n), max(n) FROM nc").fetchone() == (
        1,
        501,
        501,
    )
    n_rows = con.execute("SELECT count(*) FROM nc").fetchone()[0]
    assert n_rows == sum(len(m) for m in single.values())
    host = con.execute("SELECT slurm_job_id FROM runs").fetchone()[0]
    assert host == str(job.job_id)
    np.testing.assert_equal(len(per_rank), 2)
