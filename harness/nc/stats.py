"""Per-batch statistics in float64: pass 1 of projected mode (counts, means, sums of squares) and
pass 2 (nearest class centre, projected scatter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.nc.formulas import _centred_means, _spectrum
from harness.nc.inputs import _check_finite

ONEHOT_MAX_CLASSES = 64  # class sums by a one-hot GEMM up to this K (O(B·K·D)), index_add above


def _class_sums(
    x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class counts, per-class sums of the rows of x), in x's dtype: a one-hot GEMM for few
    classes (faster than index_add on CPU), index_add (O(B·D), no K factor) for many."""
    if num_classes <= ONEHOT_MAX_CLASSES:
        onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
        return onehot.sum(0), onehot.T @ x
    n = torch.bincount(y, minlength=num_classes).to(x.dtype)
    return n, torch.zeros(num_classes, x.shape[1], dtype=x.dtype).index_add_(0, y, x)


def _batch_stats(
    x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, μ, ss) of one float64 batch, every sample centred on its own class mean; raises on
    NaN/inf features."""
    n_b, sums = _class_sums(x, y, num_classes)
    if not torch.isfinite(sums).all():  # any NaN/inf in x reaches its class sum
        _check_finite(x)
    mu_b = sums / n_b.clamp(min=1)[:, None]
    xc = x - mu_b[y]
    sq = torch.linalg.vector_norm(xc, dim=1).square()
    return n_b, mu_b, torch.zeros(num_classes, dtype=x.dtype).index_add_(0, y, sq)


# ---------------------------------------------------------------------------------------------
# Pass 2: nearest class centre and, in projected mode, Σ_W on the span of the class means


@dataclass(frozen=True)
class _SecondPassPlan:
    """What pass 2 needs, frozen from the final pass-1 means: the present classes, the basis V
    (D×r) of the between-class span, P = [Mᵀ V], μ_G·M_c, ‖M_c‖² and μ_c·V for every class."""

    classes: torch.Tensor
    basis: torch.Tensor
    P: torch.Tensor
    gM: torch.Tensor
    norms2: torch.Tensor
    muV: torch.Tensor


def _plan_second_pass(n: torch.Tensor, mu: torch.Tensor) -> _SecondPassPlan:
    present, mu_g, M = _centred_means(n, mu)
    _, basis = _spectrum(M)
    return _SecondPassPlan(
        classes=present.nonzero().flatten(),
        basis=basis,
        P=torch.cat([M.T, basis], 1).contiguous(),
        gM=mu_g @ M.T,
        norms2=(M * M).sum(1),
        muV=mu @ basis,
    )


def _second_pass_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    plan: _SecondPassPlan,
    cls: tuple[torch.Tensor, torch.Tensor | None] | None,
    projected: bool,
) -> tuple[int, int, torch.Tensor | None]:
    """(NCC hits, NCC/classifier disagreements, projected scatter ZᵀZ or None) of one batch."""
    # One GEMM gives both x·M_c (nearest class centre) and x·V (projection on Σ_B's span).
    G = x @ plan.P
    if not torch.isfinite(G).all():
        _check_finite(x)
    k = plan.classes.numel()
    # argmin_c ‖x−μ_c‖² = argmin_c ‖M_c‖² − 2 (x−μ_G)·M_c
    d = plan.norms2 - 2 * (G[:, :k] - plan.gM)
    ncc = plan.classes[d.argmin(1)]
    disagree = 0
    if cls is not None:
        W, b = cls
        logits = x @ W.T + (b if b is not None else 0)
        disagree = int((logits.argmax(1) != ncc).sum())
    scatter = None
    if projected:
        z = G[:, k:] - plan.muV[y]  # (x − μ_y)·V
        scatter = z.T @ z
    return int((ncc == y).sum()), disagree, scatter
