"""The loss registry (``harness.train.losses``): hand-computed values, torch and slow references, a tiny
training run per loss, validation of names/options/values, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.train.losses import LOSSES, LossSpec, build_loss

ALL = ("ce", "label_smoothing", "mse", "supcon")


# ---------------------------------------------------------------- registry


def test_registry_specs() -> None:
    assert set(ALL) <= set(LOSSES)
    for name in ALL:
        spec = LOSSES[name]
        assert isinstance(spec, LossSpec) and spec.name == name and spec.summary
    assert LOSSES["supcon"].views == 2 and not LOSSES["supcon"].needs_classifier_logits
    for name in ("ce", "label_smoothing", "mse"):
        assert LOSSES[name].views == 1 and LOSSES[name].needs_classifier_logits
    assert dict(LOSSES["ce"].defaults) == {}
    assert dict(LOSSES["label_smoothing"].defaults) == {"smoothing": 0.1}
    assert dict(LOSSES["mse"].defaults) == {"scale": 1.0}
    assert dict(LOSSES["supcon"].defaults) == {"temperature": 0.1}
    # the defaults really are what the built modules use
    assert build_loss("label_smoothing", 3).smoothing == 0.1
    assert build_loss("mse", 3).scale == 1.0
    assert build_loss("supcon", 3).temperature == 0.1


# ---------------------------------------------------------------- classifier losses


def test_mse_hand_value() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2])
    # scale 2: sample 0: (1-2)^2 + 0^2 + 0^2 = 1; sample 1: 0^2 + 2^2 + (1-2)^2 = 5; mean = 3
    assert build_loss("mse", 3, scale=2.0)(logits, labels).item() == pytest.approx(3.0)
    # scale 1 (default): sample 0: 0 + 0 + 0 = 0; sample 1: 0 + 4 + 0 = 4; mean = 2
    assert build_loss("mse", 3)(logits, labels).item() == pytest.approx(2.0)


def test_ce_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (10,), generator=g)
    got = build_loss("ce", 5)(logits, labels)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.37, 0.9])
def test_label_smoothing_matches_torch(eps: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 7, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (12,), generator=g)
    got = build_loss("label_smoothing", 7, smoothing=eps)(logits, labels)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, label_smoothing=eps))


def test_label_smoothing_hand_value() -> None:
    # logits (0, ln 3) -> softmax (1/4, 3/4); label 1, eps 0.2, K 2 -> targets (0.1, 0.9)
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = -(0.1 * math.log(1 / 4) + 0.9 * math.log(3 / 4))
    got = build_loss("label_smoothing", 2, smoothing=0.2)(logits, torch.tensor([1]))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # and smoothing changes the value (unsmoothed: -log(3/4))
    assert expected != pytest.approx(-math.log(3 / 4))


# ---------------------------------------------------------------- supcon


def test_supcon_hand_value_three_points() -> None:
    # z_a = (1,0) y=0, z_b = (0,1) y=0, z_c = (-1,0) y=1 (a given unnormalised: the loss
    # normalises). Dots: a.b = 0, a.c = -1, b.c = 0. c has no positive -> excluded.
    # loss_a = -log(e^0 / (e^0 + e^{-1/t})),  loss_b = -log(e^0 / (e^0 + e^0)) = log 2
    t = 0.5
    emb = torch.tensor([[[3.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss_a = -math.log(math.exp(0 / t) / (math.exp(0 / t) + math.exp(-1 / t)))
    loss_b = -math.log(math.exp(0 / t) / (math.exp(0 / t) + math.exp(0 / t)))
    expected = (loss_a + loss_b) / 2
    got = build_loss("supcon", 2, temperature=t)(emb, labels)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_supcon_hand_value_two_images_two_views() -> None:
    # image 0: views (1,0), (0,1); image 1: views (-1,0), (0,-1). Every anchor sees its other view
    # at dot 0, one embedding at dot 0 and one at dot -1 (the opposite vector).
    t = 0.25
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]])
    denom = math.exp(0 / t) + math.exp(0 / t) + math.exp(-1 / t)
    loss = build_loss("supcon", 2, temperature=t)
    # different labels: one positive (the other view, dot 0) for all four anchors
    expected = -math.log(math.exp(0 / t) / denom)
    assert loss(emb, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    # same label: three positives at dots 0, 0, -1 for every anchor
    expected_same = (
        -(
            math.log(math.exp(0 / t) / denom)
            + math.log(math.exp(0 / t) / denom)
            + math.log(math.exp(-1 / t) / denom)
        )
        / 3
    )
    assert loss(emb, torch.tensor([3, 3])).item() == pytest.approx(expected_same, rel=1e-6)
    assert expected != pytest.approx(expected_same)


def supcon_reference(emb: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """Slow straightforward L_out: plain Python loops over anchors, positives and the denominator."""
    b, v, _ = emb.shape
    zs, ys = [], []
    for i in range(b):
        for j in range(v):
            vec = [float(x) for x in emb[i, j]]
            norm = math.sqrt(sum(x * x for x in vec))
            zs.append([x / norm for x in vec])
            ys.append(int(labels[i]))
    n = len(zs)

    def dot(p: list[float], q: list[float]) -> float:
        return sum(x * y for x, y in zip(p, q, strict=True))

    losses = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and ys[p] == ys[i]]
        if not pos:
            continue
        denom = sum(math.exp(dot(zs[i], zs[a]) / t) for a in range(n) if a != i)
        losses.append(
            -sum(math.log(math.exp(dot(zs[i], zs[p]) / t) / denom) for p in pos) / len(pos)
        )
    return sum(losses) / len(losses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_matches_reference(dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(6, 2, 5, generator=g).to(dtype)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # label 2 appears once (its 2 views pair up)
    t = 0.3
    got = build_loss("supcon", 3, temperature=t)(emb, labels)
    assert got.dtype == dtype
    ref = supcon_reference(emb.double(), labels, t)
    assert got.item() == pytest.approx(ref, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_supcon_single_view_singleton_excluded() -> None:
    # V=1: the singleton label (3) has no positive and must not count in the mean.
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 3])
    got = build_loss("supcon", 4, temperature=0.2)(emb, labels)
    assert got.item() == pytest.approx(supcon_reference(emb, labels, 0.2), rel=1e-12)


def test_supcon_no_positives_is_zero_with_grad() -> None:
    emb = torch.randn(3, 1, 4, requires_grad=True)
    out = build_loss("supcon", 3)(emb, torch.tensor([0, 1, 2]))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert emb.grad is not None and torch.all(emb.grad == 0)


def test_supcon_stable_at_small_temperature() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(6, 2, 5, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    out = build_loss("supcon", 3, temperature=1e-3)(emb, labels)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(emb.grad).all()
    # a naive exp(1/1e-3) = exp(1000) overflows even float64; float32 must agree with float64
    out64 = build_loss("supcon", 3, temperature=1e-3)(emb.detach().double(), labels)
    assert torch.isfinite(out64) and out64.item() > 1.0
    assert out.item() == pytest.approx(out64.item(), rel=1e-3)


# ---------------------------------------------------------------- training decreases the loss


def _blobs(k: int, n: int = 64, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed Gaussian blobs: n samples, k classes (n/k each), well separated centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 3
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g), y


# (loss, classes, SGD lr). supcon uses 32 classes × 2 images: with m images per class and 2 views
# each anchor has 2m−1 positives and the loss cannot go below log(2m−1); with 4 classes of 16
# that floor (log 31 ≈ 3.43) is above 0.7 × any initial value (≤ log 127 ≈ 4.84).
TRAIN = [("ce", 4, 0.1), ("label_smoothing", 4, 0.1), ("mse", 4, 0.05), ("supcon", 32, 0.1)]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded few-core host the thread
    pool makes these runs many times slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("name", "k", "lr"), TRAIN)
def test_training_decreases_loss(name: str, k: int, lr: float, one_thread: None) -> None:
    torch.manual_seed(0)
    x, y = _blobs(k)
    spec = LOSSES[name]
    out_dim = k if spec.needs_classifier_logits else 16
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, out_dim))
    loss_fn = build_loss(name, k)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    noise = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(30):
        if spec.needs_classifier_logits:
            out = model(x)
        else:  # views: the same input plus small noise
            views = [x] + [
                x + 0.05 * torch.randn(x.shape, generator=noise) for _ in range(spec.views - 1)
            ]
            out = torch.stack([model(v) for v in views], dim=1)
        loss = loss_fn(out, y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


# ---------------------------------------------------------------- validation


def _one_line_error(excinfo: pytest.ExceptionInfo[HarnessError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and excinfo.value.code == 2
    return msg


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(HarnessError) as ei:
        build_loss("crossentropy", 10)
    msg = _one_line_error(ei)
    assert "crossentropy" in msg and all(name in msg for name in ALL)


@pytest.mark.parametrize(
    ("name", "kwargs", "valid"),
    [
        ("mse", {"smoothing": 0.1}, "scale"),
        ("supcon", {"tau": 0.1}, "temperature"),
        ("label_smoothing", {"eps": 0.1}, "smoothing"),
        ("ce", {"smoothing": 0.1}, "(none)"),
    ],
)
def test_unknown_kwarg_names_it_and_valid(name: str, kwargs: dict, valid: str) -> None:
    with pytest.raises(HarnessError) as ei:
        build_loss(name, 10, **kwargs)
    msg = _one_line_error(ei)
    assert next(iter(kwargs)) in msg and valid in msg


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("label_smoothing", {"smoothing": 1.0}),
        ("label_smoothing", {"smoothing": -0.1}),
        ("label_smoothing", {"smoothing": float("nan")}),
        ("label_smoothing", {"smoothing": "0.1"}),
        ("supcon", {"temperature": 0.0}),
        ("supcon", {"temperature": -1.0}),
        ("supcon", {"temperature": float("inf")}),
        ("mse", {"scale": float("nan")}),
        ("mse", {"scale": True}),
    ],
)
def test_bad_values(name: str, kwargs: dict) -> None:
    with pytest.raises(HarnessError) as ei:
        build_loss(name, 10, **kwargs)
    msg = _one_line_error(ei)
    assert next(iter(kwargs)) in msg


@pytest.mark.parametrize("k", [0, -3, 2.5])
def test_bad_num_classes(k: object) -> None:
    with pytest.raises(HarnessError):
        build_loss("ce", k)  # type: ignore[arg-type]


def test_boundary_values_accepted() -> None:
    assert build_loss("label_smoothing", 3, smoothing=0).smoothing == 0.0
    assert build_loss("supcon", 3, temperature=1e-6).temperature == 1e-6


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ALL)
def test_gradient_flows_float32(name: str) -> None:
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    if LOSSES[name].needs_classifier_logits:
        out = torch.randn(8, 4, generator=g, requires_grad=True)
    else:
        out = torch.randn(8, LOSSES[name].views, 6, generator=g, requires_grad=True)
    loss = build_loss(name, 4)(out, labels)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    loss.backward()
    assert out.grad is not None
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
