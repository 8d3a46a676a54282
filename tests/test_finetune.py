"""Fine-tuning methods: stage decomposition, which weights train, the activation cache, trials."""

from __future__ import annotations

import math

import pytest
import torch

from harness import finetune as ft
from harness import models, store
from harness.errors import HarnessError

LAYER = {"resnet_tiny": "layer3.1", "vit_tiny": "blocks.1"}
ARCHS = tuple(LAYER)


def _save(path, arch: str, head_depth: int = 0, plain: bool = False):
    torch.manual_seed(1)
    if plain:  # a bare timm model, as `harness measure` checkpoints are
        net, kw = models.create_model(arch, 10, 1, 8), {}
    else:
        net = models.build_network(arch, 10, 1, 8, head_depth=head_depth, head_dim=32)
        kw = dict(head_depth=head_depth, head_dim=32)
    return str(
        models.save_checkpoint(
            path,
            net,
            arch=arch,
            num_classes=10,
            in_chans=1,
            img_size=8,
            model_kwargs=kw,
            meta=dict(dataset="digits"),
        )
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "resnet_tiny": _save(d / "resnet.pt", "resnet_tiny", head_depth=2),
        "vit_tiny": _save(d / "vit.pt", "vit_tiny"),
        "plain": _save(d / "plain.pt", "resnet_tiny", plain=True),
    }


def _cfg(ckpt: str, method: str = "layer", layer: str | None = "layer3", **kw) -> ft.TrialConfig:
    base = dict(per_class=10, epochs=2, batch_size=32, lr=0.05)
    return ft.TrialConfig(ckpt, "digits", method, layer, **{**base, **kw})


def _backbone(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_network(arch, 10, 1, 8).backbone


# ---------------------------------------------------------------------------------------------
# Stages


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_reproduce_backbone_features(arch):
    bb = _backbone(arch).eval()
    x = torch.randn(5, 1, 8, 8)
    stages = ft.decompose(bb)
    with torch.no_grad():
        want = bb.forward_head(bb.forward_features(x), pre_logits=True)
        got = ft.run_stages(stages, x)
        # and split anywhere: prefix, one block, suffix
        mid = len(stages) // 2
        h = ft.run_stages(stages, x, 0, mid)
        split = ft.run_stages(stages, stages[mid].run(h), mid + 1)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    assert torch.allclose(split, want, atol=1e-6, rtol=1e-5)
    registry = [ly.name for ly in models.model_layers(bb) if ly.kind == "feature"]
    assert [s.name for s in stages if s.selectable] == registry


def test_unknown_backbone_class_is_one_line_error():
    with pytest.raises(HarnessError, match="no stage decomposition for Linear; supported"):
        ft.decompose(torch.nn.Linear(2, 2))
    model = models.build_network("resnet_tiny", 10, 1, 8)
    with pytest.raises(
        HarnessError, match="unknown layer 'pre_logits' for method layer on ResNet; valid: act1, "
    ):
        ft.build_net(model, "layer", models.PRE_LOGITS, 10, (1, 8, 8))


# ---------------------------------------------------------------------------------------------
# Which weights train


def _expected_trainable(method: str, layer: str) -> tuple[str, ...]:
    return {
        "linear_probe": ("classifier.",),
        "full": ("backbone.", "classifier."),
        "layer": (f"backbone.{layer}.", "classifier."),
        "scl": (f"backbone.{layer}.", "classifier."),
    }[method]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(ft.METHODS))
def test_only_intended_weights_train(arch, method):
    layer = LAYER[arch] if ft.METHODS[method].needs_layer else None
    torch.manual_seed(0)
    net = ft.build_net(models.build_network(arch, 10, 1, 8), method, layer, 7, (1, 8, 8))
    prefixes = _expected_trainable(method, LAYER[arch])
    grads = {n for n, p in net.named_parameters() if p.requires_grad}
    assert grads == {n for n, _ in net.named_parameters() if n.startswith(prefixes)}
    assert grads, "something must train"
    assert models.count_params(net, trainable_only=True) == sum(
        p.numel() for n, p in net.named_parameters() if n in grads
    )

    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    net.train()
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 7
    for _ in range(2):  # timm zero-inits each residual branch's last BN: step 1 opens the branch
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(net.prefix(x)), y).backward()
        opt.step()
    after = net.state_dict()
    for k, v in before.items():
        if k in grads:
            assert not torch.equal(v, after[k]), f"{k} should train"
        elif not k.startswith(prefixes):  # frozen weights and frozen BatchNorm statistics
            assert torch.equal(v, after[k]), f"{k} must stay bit-identical"
    if arch == "resnet_tiny" and method in ("layer", "scl"):
        assert not net.backbone.bn1.training and net.backbone.layer3[1].training
        assert not net.backbone.layer3[0].training, "a frozen block of the same stage"
        assert not torch.equal(
            before["backbone.layer3.1.bn1.running_mean"],
            after["backbone.layer3.1.bn1.running_mean"],
        ), "the trained block runs in train mode"


@pytest.mark.parametrize("arch", ARCHS)
def test_scl_classifier_reads_block_and_penultimate(arch):
    torch.manual_seed(0)
    model = models.build_network(arch, 10, 1, 8)
    layer = LAYER[arch]
    feats, _ = models.LayerFeatures(model.eval(), models.select_layers(model, layer))(
        torch.zeros(1, 1, 8, 8)
    )
    block_width = feats[layer].shape[1]
    net = ft.build_net(model, "scl", layer, 10, (1, 8, 8), pool="mean")
    assert net.classifier.in_features == block_width + model.num_features
    plain = ft.build_net(models.build_network(arch, 10, 1, 8), "layer", layer, 10, (1, 8, 8))
    assert plain.classifier.in_features == model.num_features
    # the block-L features are the pooled block output (ViT: mean of the patch tokens)
    x = torch.randn(3, 1, 8, 8)
    caught = {}
    hook = net.backbone.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: caught.setdefault("o", o)
    )
    net.eval()
    with torch.no_grad():
        feats = net.features(net.prefix(x))
    hook.remove()
    o = caught["o"]
    want = o.mean((2, 3)) if o.ndim == 4 else o[:, net.n_prefix_tokens :].mean(1)
    assert torch.allclose(feats[layer], want)


# ---------------------------------------------------------------------------------------------
# Activation cache


@pytest.fixture
def prefix_calls(monkeypatch):
    """Count runs of the frozen prefix (cache fills and uncached steps alike)."""
    calls = []
    orig = ft.FinetuneNet.prefix

    def counted(self, x):
        calls.append(len(x))
        return orig(self, x)

    monkeypatch.setattr(ft.FinetuneNet, "prefix", counted)
    return calls


def _losses(cfg: ft.TrialConfig, cache: ft.ActivationCache) -> tuple[list[float], dict]:
    seen: list[float] = []
    row = ft.run_trial(cfg, cache=cache, report=lambda **kw: seen.append(kw["train_loss"]))
    return seen, row


def test_cache_runs_prefix_once_per_split(ckpts, prefix_calls):
    cache = ft.ActivationCache()
    ft.run_trial(_cfg(ckpts["resnet_tiny"], epochs=1), cache=cache)
    fill = len(prefix_calls)
    # train and val (10 per class each: validation follows the budget), test
    assert cache.builds == 3 and fill == sum(math.ceil(n / ft.EVAL_BATCH) for n in (100, 100, 269))
    # more epochs and another trial (other lr, other method with the same block) reuse it
    ft.run_trial(_cfg(ckpts["resnet_tiny"], "scl", epochs=3, lr=0.01), cache=cache)
    assert len(prefix_calls) == fill and cache.hits == 3 and cache.builds == 3
    # a fresh cache fills once whatever the number of epochs
    ft.run_trial(_cfg(ckpts["resnet_tiny"], epochs=3), cache=ft.ActivationCache())
    assert len(prefix_calls) == 2 * fill
    # another block is another prefix; without a cache the prefix runs every step
    ft.run_trial(_cfg(ckpts["resnet_tiny"], layer="layer4", epochs=1), cache=cache)
    assert cache.builds == 6
    del prefix_calls[:]
    ft.run_trial(_cfg(ckpts["resnet_tiny"], epochs=2), cache=ft.ActivationCache(enabled=False))
    assert len(prefix_calls) > fill + 2 * math.ceil(100 / 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_path_equals_uncached(ckpts, arch):
    cfg = _cfg(ckpts[arch], "scl", LAYER[arch], epochs=3)
    cached, row_c = _losses(cfg, ft.ActivationCache())
    plain, row_p = _losses(cfg, ft.ActivationCache(enabled=False))
    assert torch.allclose(torch.tensor(cached), torch.tensor(plain), rtol=1e-4, atol=1e-6)
    for k in ("train_acc", "val_acc", "test_acc", "best_epoch"):
        assert row_c[k] == row_p[k], k
    for layer, metrics in row_c["nc"].items():
        for name, v in metrics.items():
            assert math.isclose(v, row_p["nc"][layer][name], rel_tol=1e-3, abs_tol=1e-6), name


def test_cache_spills_to_disk_beyond_budget(ckpts, tmp_path):
    cfg = _cfg(ckpts["resnet_tiny"], "linear_probe", None, epochs=2)
    ram, row_ram = _losses(cfg, ft.ActivationCache())
    disk_cache = ft.ActivationCache(budget_mb=0, cache_dir=tmp_path / "c")
    disk, row_disk = _losses(cfg, disk_cache)
    files = list((tmp_path / "c").rglob("*.npy"))
    assert len(files) == 3 and disk_cache.ram_bytes == 0
    assert torch.allclose(torch.tensor(ram), torch.tensor(disk), rtol=1e-5)
    assert row_ram["test_acc"] == row_disk["test_acc"]
    # budget for exactly one entry (train and val are 100 rows of pre_logits each): the rest spills
    width = models.load_checkpoint(ckpts["resnet_tiny"])[0].num_features
    one = ft.ActivationCache(budget_mb=100 * width * 4 / 2**20, cache_dir=tmp_path / "d")
    ft.run_trial(cfg, cache=one)
    assert one.ram_bytes == 100 * width * 4 and len(list((tmp_path / "d").rglob("*.npy"))) == 2
    disk_cache.clear()
    assert not list((tmp_path / "c").rglob("*.npy")) and len(disk_cache) == 0


def test_augmented_training_runs_prefix_every_step(ckpts, prefix_calls):
    cache = ft.ActivationCache()
    row = ft.run_trial(_cfg(ckpts["resnet_tiny"], epochs=2, augment="weak"), cache=cache)
    # val, test and the unaugmented train set for evaluation are cached; training steps are not
    assert cache.builds == 3
    fill = sum(math.ceil(n / ft.EVAL_BATCH) for n in (100, 100, 269))
    assert len(prefix_calls) == fill + 2 * math.ceil(100 / 32)
    assert 0 <= row["test_acc"] <= 1


# ---------------------------------------------------------------------------------------------
# Trials


def test_row_columns_belong_to_the_finetune_table():
    columns = {f.name for f in store.SCHEMAS["finetune"]}
    assert set(ft.ROW_COLUMNS) <= columns
    assert {"trial_id", "run_id", "status", "error"} <= columns - set(ft.ROW_COLUMNS)


@pytest.mark.parametrize(
    "which,method,layer",
    [
        ("resnet_tiny", "linear_probe", None),
        ("plain", "full", None),
        ("resnet_tiny", "scl", "layer4.3"),
        ("vit_tiny", "layer", "blocks.0"),
    ],
)
def test_trial_row_is_a_valid_finetune_row(ckpts, which, method, layer):
    reports: list[dict] = []
    cfg = _cfg(ckpts[which], method, layer, epochs=3)
    row = ft.run_trial(cfg, report=lambda **kw: reports.append(kw))
    nc = row.pop("nc")
    assert set(row) == set(ft.ROW_COLUMNS)
    (clean,) = store.validate_rows("finetune", [{**row, "trial_id": "t0", "status": "done"}])
    assert clean["method"] == method and clean["layer"] == layer
    assert all(0 <= row[k] <= 1 for k in ("train_acc", "val_acc", "test_acc"))
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    vals = [r["val_acc"] for r in reports]
    assert row["val_acc"] == max(vals) and row["best_epoch"] == vals.index(max(vals)) + 1
    assert all(math.isfinite(r["train_loss"]) for r in reports)
    assert 0 < row["trainable_params"] <= row["total_params"]
    if method == "full":
        assert row["trainable_params"] == row["total_params"]
    assert list(nc) == [models.PRE_LOGITS] + ([layer] if layer else [])
    # the classifier enters pre_logits NC where it reads those features directly
    assert ("nc3" in nc[models.PRE_LOGITS]) == (method != "scl")
    assert all(math.isfinite(nc[models.PRE_LOGITS][k]) for k in ("nc1", "nc2_etf", "ncc_acc"))


def test_total_params_is_backbone_plus_new_classifier(ckpts):
    model, _ = models.load_checkpoint(ckpts["resnet_tiny"])  # has a 2-layer projection head
    bb = models.count_params(model.backbone)
    row = ft.run_trial(_cfg(ckpts["resnet_tiny"], "linear_probe", None, epochs=1, nc=False))
    assert row["total_params"] == bb + model.num_features * 10 + 10
    assert row["trainable_params"] == model.num_features * 10 + 10
    assert row["nc"] == {}


def test_trials_are_deterministic(ckpts):
    cfg = _cfg(ckpts["vit_tiny"], "full", None, epochs=2)
    a, b = ft.run_trial(cfg), ft.run_trial(cfg)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    c = ft.run_trial(_cfg(ckpts["vit_tiny"], "full", None, epochs=2, seed=1))
    assert c["nc"] != a["nc"]


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(method="lora"), ["unknown method 'lora'", "linear_probe, full, layer, scl"]),
        (
            dict(layer="layer9"),
            ["unknown layer 'layer9'", "act1, layer1.0", "layer2, layer3, layer4"],
        ),
        (
            dict(method="scl", layer="layer4.4"),
            ["cannot use layer 'layer4.4'", "penultimate", "layer4.3, layer1, layer2, layer3"],
        ),
        (dict(layer="pre_logits"), ["unknown layer 'pre_logits'", "layer4"]),
        (dict(method="scl", layer=None), ["method scl needs a layer", "layer3"]),
        (dict(method="full"), ["method full fine-tunes no single layer"]),
        (dict(per_class=500), ["per_class=500", "class", "smallest"]),
        (dict(epochs=0), ["epochs must be"]),
        (dict(lr=0.0), ["lr must be a positive"]),
        (dict(pool="max"), ["unknown pool 'max'"]),
        (dict(dataset="mnist5k"), ["cannot run on 1×28×28"]),
    ],
)
def test_bad_settings_are_one_line_errors(ckpts, change, words):
    cfg = _cfg(ckpts["resnet_tiny"])
    if "dataset" in change:  # a ViT cannot take other image sizes
        cfg = _cfg(ckpts["vit_tiny"], layer="blocks.0")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(HarnessError) as e:
        ft.run_trial(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_diverging_training_raises_nan_error(ckpts):
    # the largest allowed lr with heavy weight decay diverges (w <- w·(1 - lr·wd) each step)
    with pytest.raises(FloatingPointError, match="NaN"):
        ft.run_trial(
            _cfg(ckpts["resnet_tiny"], "full", None, lr=100.0, weight_decay=10.0, epochs=3)
        )
