"""Neural-collapse metrics from streaming, exact, mergeable sufficient statistics.

Definitions (DESIGN §3): Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, Σ_B = (1/K) Σ_c M_cᵀM_c with
M_c = μ_c − μ_G (μ_G sample-weighted); classes without samples do not count towards K.

Statistics (float64, per class c): count n_c, mean μ_c, within-class sum of squares ss_c, and the
within-class scatter W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ. Batches and accumulators are combined
with the parallel (Chan et al.) update, W ← W_a + W_b + Σ_c n_a n_b/(n_a+n_b) δ_c δ_cᵀ with
δ_c = μ_{c,b} − μ_{c,a}: every sample is centred near its own class mean before it is squared, which
is the "shift" that keeps a large common offset and tiny within-class spread from cancelling.

Passes and memory:
- mode ``full`` (default for D ≤ 4096): one pass keeps the D×D scatter W (8·D² bytes). Rows are
  centred on the running class means, buffered (≤ 8192 rows, ≤ 64 MiB) and squared as one
  upper-triangle GEMM per block (≈ N·D²/2 multiply-adds in all), merged into the float64
  statistics with Chan's update (``scatter``). The products are float32 by default for D ≥ 128
  (measured nc1 within 10⁻⁷ of float64; ``scatter`` derives the worst-case bound) and float64
  below, or with ``precision="float64"``. Finalising costs one SVD of the K×D mean matrix, O(K²·D), and Σ_W·V,
  O(K·D²).
- mode ``projected`` (default for D > 4096, and for every layer of ``harness measure --ncc``,
  which runs a second pass anyway): Σ_B has rank ≤ K−1, so nc1 needs Σ_W only on the span
  V (D×r, r ≤ K) of the centred class means. Pass 1 keeps n, μ, ss (O(K·D)); pass 2 projects the
  centred samples on V and accumulates an r×r scatter (O(B·D·r) per batch, O(K·D + K²) memory).
  Two passes because V is only known once the means are final.
- NCC accuracy and nc4 compare each sample with the *final* class means, so they need a second
  pass in both modes (``update_second``); the in-memory ``nc_metrics`` runs both passes.
- Both passes gather batches into blocks (``scatter.RowBlock``: 8 MiB of float64 rows, at least
  256; the full-mode block above) so that their work runs once per block, not per small batch.
Memory never depends on N. Accumulators merge (``merge``) and all-reduce across DDP ranks.

Layout: ``inputs`` (checks), ``stats`` (pass 2, block by block), ``scatter`` (the buffered
blocks of both passes, full mode's products and the float32 error bound), ``formulas`` (one small
function per metric), ``accumulator`` (``NCAccumulator``, which holds the state and calls them,
and ``nc_metrics``).
"""

from harness.nc.accumulator import (
    CHUNK,
    FULL_MAX_DIM,
    PRECISIONS,
    NCAccumulator,
    nc_metrics,
    reduce_layers,
    store_rows,
)
from harness.nc.formulas import METRICS, PINV_RCOND, VARIANTS
from harness.nc.scatter import FAST_MIN_DIM

__all__ = [
    "CHUNK",
    "FAST_MIN_DIM",
    "FULL_MAX_DIM",
    "METRICS",
    "PINV_RCOND",
    "PRECISIONS",
    "VARIANTS",
    "NCAccumulator",
    "nc_metrics",
    "reduce_layers",
    "store_rows",
]
