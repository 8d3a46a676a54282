"""Per-block fine-tuning: the block-level layer registry, parameter fractions of the presets, SCL's
refusal of the block whose pooled output is the penultimate features, whole-stage selection,
`layer: auto`, the budget-sized validation set and the paper spec's sweep on every architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness import data, models
from harness import finetune as ft
from harness.cluster import sweep
from harness.errors import HarnessError
from harness.nc.measure import measure_model
from harness.spec import config
from harness.spec import study as studyspec
from harness.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("resnet_tiny", "vit_tiny")
MID_BLOCK = {"resnet_tiny": "layer3.2", "vit_tiny": "blocks.7"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(arch: str, size: int = 28, num_classes: int = 10) -> models.PretrainNet:
    torch.manual_seed(0)
    return models.build_network(arch, num_classes, 1, size)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm scales and statistics: timm zero-inits every residual branch's last BN,
    which makes a fresh ResNet's blocks identities (all pooled outputs alike)."""
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data = torch.rand(mod.weight.shape, generator=gen) + 0.5
            mod.running_mean = torch.randn(mod.running_mean.shape, generator=gen) * 0.1
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Layer registry and parameter fractions


def test_resnet_layers_are_blocks_and_stage_names_select_the_last_block():
    model = _net("resnet_tiny")
    names = [ly.name for ly in models.model_layers(model)]
    blocks = [
        f"layer{s}.{i}" for s, n in zip((1, 2, 3, 4), (2, 2, 5, 5), strict=True) for i in range(n)
    ]
    assert names == ["act1", *blocks, models.PRE_LOGITS]
    assert all(ly.stage == ly.name.split(".")[0] for ly in models.model_layers(model)[1:-1]), (
        "a residual block belongs to its stage"
    )
    assert [ly.name for ly in models.select_layers(model, "layer3")] == ["layer3.4"]
    assert [s.name for s in ft.decompose(model.backbone) if s.selectable] == names[:-1]


@pytest.mark.parametrize("arch", PRESETS)
def test_presets_fine_tune_at_most_a_tenth_per_block(arch):
    """Every block SCL may use holds ≤ 10% of the model's parameters, and SCL at a usable block
    trains ≤ 10% of what full FT trains (the max over usable blocks is reported)."""
    model = _net(arch)
    total = models.count_params(model.backbone)
    stages = ft.decompose(model.backbone)
    usable = [s for s in stages if s.selectable and s.name in ft.choices(stages, skip=True)]
    share = {s.name: sum(p.numel() for p in s.parameters()) / total for s in usable}
    assert max(share.values()) <= 0.10, share
    full = models.count_params(ft.build_net(_net(arch), "full", None, 10, (1, 28, 28)))
    scl = {
        name: models.count_params(
            ft.build_net(_net(arch), "scl", name, 10, (1, 28, 28)), trainable_only=True
        )
        / full
        for name in ft.scl_blocks(model)
    }
    print(f"{arch}: SCL trains {min(scl.values()):.1%}..{max(scl.values()):.1%} of full FT")
    assert min(scl.values()) <= 0.10 and max(scl.values()) <= 0.10, scl


# ---------------------------------------------------------------------------------------------
# What trains


@pytest.mark.parametrize("arch", PRESETS)
def test_one_scl_step_changes_only_the_block_and_the_classifier(arch):
    block = MID_BLOCK[arch]
    net = ft.build_net(_net(arch), "scl", block, 10, (1, 28, 28))
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(net.prefix(x)), y).backward()
    opt.step()
    after = net.state_dict()
    own = (f"backbone.{block}.", "classifier.")
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(own) for k in changed), sorted(changed - set(own))
    assert any(k.startswith("classifier.") for k in changed)
    assert any(k.startswith(f"backbone.{block}.") for k in changed)
    # frozen BatchNorm statistics included: only the trained block runs in train mode
    assert all(
        torch.equal(v, after[k]) for k, v in before.items() if "running" in k and k not in changed
    )
    if arch == "resnet_tiny":
        assert f"backbone.{block}.bn1.running_mean" in changed


@pytest.mark.parametrize("method", ["layer", "scl"])
def test_whole_stage_trains_exactly_its_blocks(method):
    net = ft.build_net(_net("resnet_tiny"), method, "layer3", 10, (1, 28, 28))
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    want = {
        n for n, _ in net.named_parameters() if n.startswith(("backbone.layer3.", "classifier."))
    }
    assert trained == want and any(".layer3.4." in n for n in trained)
    assert net.read_layer == "layer3.4"  # the skip reads the stage's last block
    skip = 32 if method == "scl" else 0
    assert net.classifier.in_features == net.backbone.num_features + skip


# ---------------------------------------------------------------------------------------------
# SCL refused where its skip would repeat the penultimate features


def test_scl_refused_at_the_last_resnet_block_whose_pool_is_pre_logits():
    model = _perturbed(_net("resnet_tiny"))
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    sel = models.select_layers(model, "layer4.3,layer4.4,pre_logits")
    feats, _ = models.LayerFeatures(model, sel)(x)
    assert (feats["layer4.4"] - feats[models.PRE_LOGITS]).abs().max().item() == 0
    assert (feats["layer4.3"] - feats[models.PRE_LOGITS]).abs().max().item() > 1e-3
    for layer in ("layer4.4", "layer4"):
        with pytest.raises(HarnessError) as e:
            ft.check_layer(model, "scl", layer)
        msg = str(e.value)
        assert "\n" not in msg and f"cannot use layer {layer!r}" in msg, msg
        assert "valid: act1, layer1.0" in msg and "layer4.3, layer1, layer2, layer3" in msg, msg
    with pytest.raises(HarnessError, match="penultimate"):
        ft.build_net(model, "scl", "layer4.4", 10, (1, 28, 28))
    ft.check_layer(model, "layer", "layer4.4")  # Layer FT there is fine: no skip
    ft.check_layer(model, "scl", "layer4.3")
    vit = _net("vit_tiny")  # the final norm follows the last ViT block: usable
    assert ft.scl_blocks(vit)[-1] == "blocks.11"


def test_trial_validation_refuses_scl_at_the_last_block():
    cfg = ft.TrialConfig("x.pt", "digits", "scl", "layer4.4", per_class=5)
    with pytest.raises(HarnessError, match="cannot use layer 'layer4.4' of ResNet"):
        ft.validate(cfg, _net("resnet_tiny", 8))


# ---------------------------------------------------------------------------------------------
# layer: auto


def test_layer_auto_picks_lowest_nc1_on_the_trials_own_samples():
    model = _perturbed(_net("resnet_tiny", 8))
    cfg = ft.TrialConfig("x.pt", "digits", "scl", sweep.AUTO, per_class=5, seed=3)
    layer, why = sweep.auto_layer(cfg, model)
    usable = ft.scl_blocks(model)
    assert layer in usable and layer != "layer4.4" and "act1" not in usable
    assert len(usable) == 13
    ds = data.load("digits", "train", per_class=5, seed=3)
    results, n = measure_model(model, ds, models.select_layers(model, usable))
    assert n == 50
    nc1 = {r.layer: r.metrics["nc1"] for r in results}
    assert layer == min(nc1, key=nc1.get)
    assert why.startswith(
        "auto: lowest nc1 of pre-trained features on digits train, 5 per class (seed 3), "
        f"among 13 SCL-usable blocks: {layer} nc1="
    )
    assert "runner-up" in why
    assert sweep.auto_layer(cfg, model) == (layer, why)  # deterministic


def _resnet_checkpoint(tmp_path: Path) -> Path:
    """A seeded random resnet_tiny checkpoint for 8x8 single-channel inputs, 10 classes."""
    torch.manual_seed(0)
    return models.save_checkpoint(
        tmp_path / "r.pt",
        _net("resnet_tiny", 8),
        arch="resnet_tiny",
        num_classes=10,
        in_chans=1,
        img_size=8,
    )


def test_layer_auto_resolves_once_per_checkpoint_data_budget_and_seed(tmp_path, monkeypatch):
    path = _resnet_checkpoint(tmp_path)
    calls = []
    monkeypatch.setattr(
        sweep,
        "auto_layer",
        lambda cfg, model: calls.append(cfg.per_class) or ("layer2.1", "auto: x"),
    )
    spec = config.SweepSpec.model_validate(
        dict(
            name="t",
            checkpoints={"paths": [str(path)]},
            base=dict(dataset="digits", epochs=1),
            grid=dict(
                method=["linear_probe", "layer", "scl"],
                layer=["auto"],
                lr=[0.1, 0.01],
                per_class=[5, 10],
            ),
        )
    )
    trials = sweep.expand(spec, tmp_path / "results")
    assert sorted(calls) == [5, 10]
    layered = [t for t in trials if t["trial"]["method"] != "linear_probe"]
    assert len(layered) == 8 and all(t["trial"]["layer"] == "layer2.1" for t in layered)
    assert all(t["layer_choice"] == "auto: x" for t in layered)


# ---------------------------------------------------------------------------------------------
# Validation set follows the budget


@pytest.mark.parametrize("per_class, size", [(5, 4 * 5), (60, 4 * ft.VAL_PER_CLASS), (None, 540)])
def test_validation_set_size_follows_the_budget(per_class, size):
    cfg = ft.TrialConfig("x.pt", "synthetic_hier", "full", per_class=per_class)
    val = ft.load_val(cfg)
    assert len(val) == size
    counts = np.bincount(val.targets)
    if per_class is not None:
        assert len(set(counts)) == 1  # stratified
        again = ft.TrialConfig("x.pt", "synthetic_hier", "full", per_class=per_class, seed=1)
        assert np.array_equal(ft.load_val(cfg).ids, val.ids)  # seeded
        assert not np.array_equal(ft.load_val(again).ids, val.ids)


def test_a_trial_validates_on_its_budget(tmp_path):
    path = _resnet_checkpoint(tmp_path)
    cache = ft.ActivationCache()
    ft.run_trial(
        ft.TrialConfig(str(path), "digits", "linear_probe", per_class=5, epochs=1, nc=False),
        cache=cache,
    )
    sizes = {key[6]: len(acts) for key, acts in cache._entries.items()}
    assert sizes == {"train": 50, "val": 50, "test": len(data.load("digits", "test"))}


# ---------------------------------------------------------------------------------------------
# The paper spec on every architecture of its pre-training grid


def test_paper_sweep_is_valid_for_every_architecture():
    spec = load_spec(REPO / "benchmarks" / "paper.yaml", kind=studyspec.StudySpec)
    archs = sorted({run.arch for run in spec.pretrain_spec().runs()})
    pairs = {
        (p["method"], p.get("layer"))
        for p in spec.sweep_spec().points()
        if ft.METHODS[p["method"]].needs_layer
    }
    assert pairs and {m for m, _ in pairs} == {"layer", "scl"}
    for arch in archs:
        torch.manual_seed(0)
        model = models.create_model(arch, 100, 3, 32)
        for method, layer in sorted(pairs, key=str):
            cfg = ft.TrialConfig("x.pt", "cifar10", method, layer)
            if layer == sweep.AUTO:
                candidates = ft.scl_blocks(model)
                assert candidates, arch
                for block in candidates:
                    ft.check_layer(model, method, block)
                continue
            name, _ = sweep.resolve_layer(cfg, model, {})
            ft.check_layer(model, method, name)


# ---------------------------------------------------------------------------------------------
# One pooling for NC and for the classifier


@pytest.mark.parametrize("global_pool, want", [("token", "cls"), ("avg", "avg")])
def test_vit_block_features_are_pooled_as_its_classifier_pools(global_pool, want):
    torch.manual_seed(0)
    vit = models.create_model("vit_tiny", 10, 1, 28, global_pool=global_pool).eval()
    assert models.default_pool(vit) == want
    x = torch.randn(3, 1, 28, 28)
    layer = models.select_layers(vit, "blocks.11")
    auto, _ = models.LayerFeatures(vit, layer)(x)
    explicit, _ = models.LayerFeatures(vit, layer, want)(x)
    torch.testing.assert_close(auto["blocks.11"], explicit["blocks.11"], rtol=0, atol=0)
    net = ft.build_net(vit, "scl", "blocks.11", 10, (1, 28, 28))
    assert net.pool == want
    assert models.default_pool(_net("resnet_tiny")) == "avg"
