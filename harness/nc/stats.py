"""Pass 2 in float64, block by block: nearest class centre, the classifier's agreement with it,
and the projected scatter (pass 1 of both modes is ``scatter.ScatterBlock``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.nc.formulas import _centred_means, _spectrum
from harness.nc.inputs import _check_finite

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
