"""Pass 2 in float64, block by block: nearest class centre, the classifier's agreement with it,
and the projected scatter (pass 1 of both modes is ``scatter.ScatterBlock``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.nc.formulas import centred_means, spectrum
from harness.nc.inputs import check_finite

# ---------------------------------------------------------------------------------------------
# Pass 2: nearest class centre and, in projected mode, Σ_W on the span of the class means


@dataclass(frozen=True)
class SecondPassPlan:
    """What pass 2 needs, frozen from the final pass-1 means: the present classes, the basis V
    (D×r) of the between-class span, P = [Mᵀ V] (projected mode; Mᵀ alone in full mode),
    μ_G·M_c, ‖M_c‖² and μ_c·V for every class."""

    classes: torch.Tensor
    basis: torch.Tensor
    P: torch.Tensor
    gM: torch.Tensor
    norms2: torch.Tensor
    muV: torch.Tensor
    projected: bool

    def columns(self, cls: tuple[torch.Tensor, torch.Tensor | None] | None) -> torch.Tensor:
        """The D×c matrix whose product with a batch gives every column pass 2 tallies:
        x·M_c, x·V (projected mode) and, with a classifier, its logits without the bias."""
        return self.P if cls is None else torch.cat([self.P, cls[0].T], 1).contiguous()


def plan_second_pass(n: torch.Tensor, mu: torch.Tensor, projected: bool) -> SecondPassPlan:
    present, mu_g, M = centred_means(n, mu)
    _, basis = spectrum(M)
    return SecondPassPlan(
        classes=present.nonzero().flatten(),
        basis=basis,
        P=(torch.cat([M.T, basis], 1) if projected else M.T).contiguous(),
        gM=mu_g @ M.T,
        norms2=(M * M).sum(1),
        muV=mu @ basis,
        projected=projected,
    )


def second_pass_columns(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """x·columns in float64 for one batch (one GEMM: nearest class centre, projection on Σ_B's
    span and logits at once); raises on NaN/inf features."""
    G = x.to(torch.float64) @ columns
    if not torch.isfinite(G.sum()):
        check_finite(x)
    return G


def tally_second_pass(
    G: torch.Tensor,
    y: torch.Tensor,
    plan: SecondPassPlan,
    cls: tuple[torch.Tensor, torch.Tensor | None] | None,
) -> tuple[int, int, torch.Tensor | None]:
    """(NCC hits, NCC/classifier disagreements, projected scatter ZᵀZ or None) of a block of
    ``second_pass_columns`` rows."""
    k = plan.classes.numel()
    r = plan.basis.shape[1] if plan.projected else 0
    # argmin_c ‖x−μ_c‖² = argmin_c ‖M_c‖² − 2 (x−μ_G)·M_c
    d = plan.norms2 - 2 * (G[:, :k] - plan.gM)
    ncc = plan.classes[d.argmin(1)]
    disagree = 0
    if cls is not None:
        b = cls[1]
        logits = G[:, k + r :] + (b if b is not None else 0)
        disagree = int((logits.argmax(1) != ncc).sum())
    scatter = None
    if plan.projected:
        z = G[:, k : k + r] - plan.muV[y]  # (x − μ_y)·V
        scatter = z.T @ z
    return int((ncc == y).sum()), disagree, scatter
