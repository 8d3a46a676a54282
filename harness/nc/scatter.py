"""The within-class scatter W of full mode, block by block: shifted rows are buffered and squared
as one upper-triangle GEMM per block, in float32 (``precision="float32"``) or float64.

Each batch is centred on a per-class shift s_c and its rows are copied into a buffer of up to
BLOCK_ROWS rows. When the buffer is full (or the statistics are read) one product X̃ᵀX̃ of the
whole block, panel by panel over the upper triangle (≈ 0.56 of a full GEMM's flops), is added into
the float64 W, and the block's counts, class means (s_c + mean of x̃) and sums of squares are merged
into the float64 statistics with Chan's update. The shift is the running class mean (rounded to the
buffer's precision; for a class not seen before, its mean in the batch that brings it), so |x̃| is
the within-class spread, not the features' magnitude, and each block's
W_blk = X̃ᵀX̃ − Σ_c n_c d_c d_cᵀ (d_c = block mean − s_c) cancels nothing: n_c d_c d_cᵀ ≈ W_blk/n_c.

Error bound of the float32 plan (u = 2⁻²⁴ ≈ 6·10⁻⁸, k ≤ BLOCK_ROWS rows per block). Rounding x − s
to float32 costs a relative u per element (nothing for float32 input within a factor 2 of the
shift: Sterbenz). A float32 product over k rows is within γ_k = k·u/(1 − k·u) of the exact one,
elementwise relative to |X̃|ᵀ|X̃| (Higham §3.5). nc1 reads W only along unit eigenvectors v of Σ_B,
where vᵀWv = Σ_i (v·x̃_i)², so the worst-case relative error of each term is (γ_k + 2u)·κ_v with
κ_v = Σ_i (|v|·|x̃_i|)² / Σ_i (v·x̃_i)² ≤ tr(W̃)/vᵀWv (W̃: the scatter about the shift, ≈ W).
Centring is what keeps κ_v small: with raw float32 products the same bound would carry ‖μ_c‖²/σ²
(10¹⁰ for an offset of 10³ and a spread of 10⁻²); after centring κ_v depends only on the shape of
Σ_W (≈ 1 for a direction with the average within-class variance). Rounding errors have random
signs and average over samples and coordinates, so measured errors sit far below the worst case:
nc1 within 10⁻⁸ of the float64 plan on isotropic and offset data, and within 10⁻⁷ for D ≥ 128 when
Σ_W's variance along Σ_B's span is 10²–10⁵ times below the rest (N = 20000, K = 10, batches of
256); at D = 32 that reaches 10⁻⁶ at 10⁵:1, one reason float32 starts at FAST_MIN_DIM. Blocks
never compound in float32: each is added to the float64 W. Counts, class sums and sums of squares
are exact float64 sums of the buffered rows, so means, cdnv, nc1_quotient and nc2 carry only the
rounding of x − s (≈ u/√n_c relative). ``precision="float64"`` runs the same plan in float64.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.nc.inputs import check_finite

FAST_MIN_DIM = 128  # below, float64 products add little to the per-batch work: float64 plan
BLOCK_ROWS = 8192  # rows per block (a large, efficient GEMM; its merge costs O(D²))
BLOCK_BYTES = 1 << 26  # at most 64 MiB of buffered rows per accumulator
ROWS_BYTES = 1 << 23  # 8 MiB for the blocks without a D×D product (projected pass 1, pass 2)
PANELS = 8  # upper-triangle panels of X̃ᵀX̃: flops (1 + 1/PANELS)/2 of a full GEMM
SUM_ROWS = 1024  # rows per float64 step of the block's class sums and sums of squares

f32, f64 = torch.float32, torch.float64


def _panels(dim: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of the panels of a D×D Gram matrix (at least 32 rows each)."""
    nb = max(1, min(PANELS, dim // 32))
    edges = [dim * i // nb for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def gram_into(W: torch.Tensor, x: torch.Tensor) -> None:
    """W += xᵀx for rows x (k×D) into float64 W, products in x's precision: one GEMM per panel of
    the upper triangle, x[:, a:b]ᵀ x[:, a:], added and mirrored (W stays exactly symmetric)."""
    for a, b in _panels(x.shape[1]):
        p = x[:, a:b].T @ x[:, a:]
        W[a:b, a:] += p
        W[b:, a:b] += p[:, b - a :].T


class RowBlock:
    """Rows (and their labels) gathered across batches, so that the work per block (GEMMs,
    reductions, merges) runs once per block of up to ``rows`` rows instead of once per batch.
    ``take_rows`` hands out views of the buffer, valid until the next ``add``."""

    def __init__(self, dim: int, dtype: torch.dtype, max_bytes: int | None = None):
        itemsize = torch.finfo(dtype).bits // 8
        cap = ROWS_BYTES if max_bytes is None else max_bytes
        self.rows = max(256, min(BLOCK_ROWS, cap // (itemsize * dim)))
        self.buf = torch.empty(self.rows, dim, dtype=dtype)
        self.labels = torch.empty(self.rows, dtype=torch.long)
        self.fill = 0

    def full(self, extra: int) -> bool:
        """Whether ``extra`` more rows would overflow the buffer."""
        return self.fill + extra > self.rows

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Append x (at most ``rows − fill`` rows, converted to the buffer's dtype)."""
        self.buf[self.fill : self.fill + x.shape[0]].copy_(x)
        self._keep(y)

    def _keep(self, y: torch.Tensor) -> None:
        """Record the labels of the rows just written and count them in."""
        self.labels[self.fill : self.fill + y.shape[0]] = y
        self.fill += y.shape[0]

    def take_rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Empty the buffer: (rows, labels) as views, or None when empty."""
        k, self.fill = self.fill, 0
        return (self.buf[:k], self.labels[:k]) if k else None


class ScatterBlock(RowBlock):
    """Buffered, shifted rows (float32 or float64) of one accumulator between two merges; with
    ``scatter`` false (projected mode) only the class counts, means and sums of squares."""

    def __init__(self, num_classes: int, dim: int, dtype: torch.dtype, scatter: bool = True):
        super().__init__(dim, dtype, BLOCK_BYTES if scatter else ROWS_BYTES)
        self.num_classes = num_classes
        self.shift = torch.zeros(num_classes, dim, dtype=dtype)
        self.shifted = torch.zeros(num_classes, dtype=torch.bool)
        self.all_shifted = False

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Append x − s_y (x float32 or float64, at most ``rows − fill`` rows); raises on NaN/inf
        before anything is kept."""
        self._new_shifts(x, y)
        g = self.shift.index_select(0, y)
        rows = self.buf[self.fill : self.fill + x.shape[0]]
        if x.dtype == rows.dtype:
            torch.sub(x, g, out=rows)
        elif x.dtype == f64:
            rows.copy_(x - g)  # centre in float64, round once
        else:
            rows.copy_(x).sub_(g)  # widen exactly, then centre in float64 (no temporary)
        if not torch.isfinite(rows.sum()):  # NaN/inf in x (or float32 overflow: caught at merge)
            check_finite(x)
        self._keep(y)

    def _new_shifts(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Shift each class seen for the first time to its mean in this batch."""
        if self.all_shifted:
            return
        n = torch.bincount(y, minlength=self.num_classes)
        new = (n > 0) & ~self.shifted
        if not bool(new.any()):
            return
        sums = torch.zeros(self.num_classes, x.shape[1], dtype=x.dtype).index_add_(0, y, x)
        shift = (sums[new] / n[new, None]).to(self.buf.dtype)
        if not torch.isfinite(shift).all():
            check_finite(x)
        self.shift[new] = shift
        self.shifted |= new
        self.all_shifted = bool(self.shifted.all())

    def take(
        self, W: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Empty the buffer: add the block's within-class scatter into float64 W (None: no
        scatter, projected mode) and return its (n, μ, ss) in float64 (None when empty)."""
        block = self.take_rows()
        if block is None:
            return None
        x, y = block
        K = self.num_classes
        n = torch.bincount(y, minlength=K).to(f64)
        sums = torch.zeros(K, x.shape[1], dtype=f64)
        sq = torch.zeros(K, dtype=f64)
        for xc, yc in zip(x.split(SUM_ROWS), y.split(SUM_ROWS), strict=True):
            xc = xc.to(f64)  # exact sums of the buffered rows, cache-sized steps
            sums.index_add_(0, yc, xc)
            sq.index_add_(0, yc, torch.linalg.vector_norm(xc, dim=1).square())
        d = sums / n.clamp(min=1)[:, None]  # block class mean − shift
        if W is not None:
            gram_into(W, x)
            if not torch.isfinite(torch.diagonal(W)).all():  # finite rows, overflowing squares
                hint = "; use NCAccumulator(..., precision='float64')" if x.dtype == f32 else ""
                raise HarnessError(
                    f"features: centred values too large for {x.dtype} products{hint}"
                )
            dn = d * n.sqrt()[:, None]
            W.addmm_(dn.T, dn, alpha=-1)  # X̃ᵀX̃ − Σ_c n_c d_c d_cᵀ: scatter about block means
        ss = (sq - n * (d * d).sum(1)).clamp(min=0)
        return n, self.shift.to(f64) + d, ss

    def reshift(self, mu: torch.Tensor, seen: torch.Tensor) -> None:
        """Shift every class seen so far to its running mean (float64, rounded to the buffer's
        precision)."""
        self.shift[seen] = mu[seen].to(self.shift.dtype)
        self.shifted |= seen
        self.all_shifted = bool(self.shifted.all())
