"""Metric formulas (DESIGN §3) on the finalised statistics of the K present classes: one small
function per metric, plus the centred class means and the spectrum of Σ_B they all start from."""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.errors import HarnessError
from harness.spec.registry import NC_METRICS

METRICS = NC_METRICS.names()
# Store names: metric -> (metric, variant) for the long-format `nc` table.
VARIANTS = {e.name: e.meta.variant for e in NC_METRICS.entries() if e.meta.variant}
PINV_RCOND = 1e-15  # NumPy's default cut-off for pinv, relative to the largest eigenvalue of Σ_B


def centred_means(
    n: torch.Tensor, mu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(present mask, μ_G, M = μ_c − μ_G for present classes) from per-class counts and means."""
    present = n > 0
    if int(present.sum()) < 2:
        raise HarnessError(f"NC needs at least 2 classes with samples, got {int(present.sum())}")
    n = n[present]
    mu = mu[present]
    mu_g = (mu * n[:, None]).sum(0) / n.sum()
    return present, mu_g, mu - mu_g


def spectrum(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs of Σ_B = MᵀM/K from the SVD of the K×D matrix M: (λ descending, V D×r)."""
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return S * S / M.shape[0], Vh.T


def within_full(W: torch.Tensor, V: torch.Tensor, N: float) -> torch.Tensor:
    """v_jᵀ Σ_W v_j for each column of V, from the full D×D scatter. (tr Σ_W comes from the
    per-class sums of squares, which are float64 in every precision plan.)"""
    return (V * (W @ V)).sum(0) / N


def within_projected(
    Wp: torch.Tensor, V: torch.Tensor, M: torch.Tensor, N: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ_j = v_jᵀ Σ_B v_j, v_jᵀ Σ_W v_j) on the pass-2 basis V, from the r×r scatter Wp. The
    basis came from the same means, so it diagonalises Σ_B; λ is recomputed on it."""
    lam = torch.linalg.norm(M @ V, dim=0) ** 2 / M.shape[0]
    return lam, torch.diagonal(Wp) / N


def descending(lam: torch.Tensor, w_dir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigen-pairs (λ_j, v_jᵀ Σ_W v_j) ordered by decreasing λ_j."""
    order = torch.argsort(lam, descending=True)
    return lam[order], w_dir[order]


def nc1_pinv(lam: torch.Tensor, w_dir: torch.Tensor, K: int) -> float:
    """(1/K) tr(Σ_W Σ_B^†) = (1/K) Σ_j v_jᵀ Σ_W v_j / λ_j over the eigen-pairs pinv keeps
    (λ_j > PINV_RCOND·λ_max); ``lam`` descending."""
    keep = lam > PINV_RCOND * lam[0]
    return float((w_dir[keep] / lam[keep]).sum()) / K


def nc1_svd(lam: torch.Tensor, w_dir: torch.Tensor, K: int) -> float:
    """As ``nc1_pinv`` over the top K−1 eigen-pairs of Σ_B; ``lam`` descending."""
    top = slice(0, K - 1)
    return float((w_dir[top] / lam[top]).sum()) / K


def nc1_quotient(tr_w: float, M: torch.Tensor) -> float:
    """tr(Σ_W) / tr(Σ_B)."""
    tr_b = float((M * M).sum()) / M.shape[0]
    return tr_w / tr_b


def cdnv(var: torch.Tensor, norms2: torch.Tensor, G: torch.Tensor) -> float:
    """Mean over unordered class pairs of (σ_c² + σ_c′²) / (2‖μ_c − μ_c′‖²), from the class
    variances, ‖M_c‖² and the Gram matrix G = MMᵀ."""
    K = G.shape[0]
    d2 = (norms2[:, None] + norms2[None, :] - 2 * G).clamp(min=0)
    iu = torch.triu_indices(K, K, offset=1)
    num = var[iu[0]] + var[iu[1]]
    with np.errstate(divide="ignore"):
        return float((num / (2 * d2[iu[0], iu[1]])).mean())


def nc2_equinorm(norms: torch.Tensor) -> float:
    """std_c ‖M_c‖ / mean_c ‖M_c‖."""
    return float(norms.std(unbiased=False) / norms.mean())


def nc2_equiangular(M: torch.Tensor, norms: torch.Tensor) -> float:
    """std over c≠c′ of cos(M_c, M_c′)."""
    unit = M / norms[:, None]
    cos = unit @ unit.T
    off = ~torch.eye(M.shape[0], dtype=torch.bool)
    return float(cos[off].std(unbiased=False))


def nc2_etf(G: torch.Tensor) -> float:
    """‖ G/‖G‖_F − (I − 11ᵀ/K)/√(K−1) ‖_F with G = MMᵀ."""
    K = G.shape[0]
    MMt = G / torch.linalg.norm(G)
    etf = (torch.eye(K, dtype=torch.float64) - 1.0 / K) / math.sqrt(K - 1)
    return float(torch.linalg.norm(MMt - etf))


def nc3(Wc: torch.Tensor, M: torch.Tensor) -> float:
    """‖ W/‖W‖_F − M/‖M‖_F ‖_F² for the classifier rows W of the present classes."""
    return float(torch.linalg.norm(Wc / torch.linalg.norm(Wc) - M / torch.linalg.norm(M)) ** 2)
