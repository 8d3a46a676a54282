"""Neural-collapse metrics from streaming, exact, mergeable sufficient statistics.

Definitions (DESIGN §3): Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, Σ_B = (1/K) Σ_c M_cᵀM_c with
M_c = μ_c − μ_G (μ_G sample-weighted); classes without samples do not count towards K.

Statistics (float64, per class c): count n_c, mean μ_c, within-class sum of squares ss_c, and the
within-class scatter W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ. Batches and accumulators are combined
with the parallel (Chan et al.) update, W ← W_a + W_b + Σ_c n_a n_b/(n_a+n_b) δ_c δ_cᵀ with
δ_c = μ_{c,b} − μ_{c,a}: every sample is centred on its own class mean before it is squared, which is
the "shift" that keeps a large common offset and tiny within-class spread from cancelling.

Passes and memory:
- mode ``full`` (default for D ≤ 4096): one pass keeps the D×D scatter W (8·D² bytes; cost
  O(B·D²) per batch of B, a GEMM). Finalising costs one SVD of the K×D mean matrix, O(K²·D), and
  Σ_W·V, O(K·D²).
- mode ``projected`` (default for D > 4096): Σ_B has rank ≤ K−1, so nc1 needs Σ_W only on the span
  V (D×r, r ≤ K) of the centred class means. Pass 1 keeps n, μ, ss (O(K·D) memory); pass 2 projects
  the centred samples on V and accumulates an r×r scatter (O(B·D·r) per batch, O(K·D + K²) memory).
  Two passes because V is only known once the means are final.
- NCC accuracy and nc4 compare each sample with the *final* class means, so they need a second
  pass in both modes (``update_second``); the in-memory ``nc_metrics`` runs both passes.
Memory never depends on N. Accumulators merge (``merge``) and all-reduce across DDP ranks.

Layout: input checks; pass-1 batch statistics; the pass-2 plan and batch step; one small function
per metric formula; ``NCAccumulator``, which holds the state and calls them; ``nc_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError

FULL_MAX_DIM = 4096
CHUNK = 2048  # rows per step of the in-memory plan
METRICS = (
    "nc1",
    "nc1_svd",
    "nc1_quotient",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangular",
    "nc2_etf",
    "nc3",
    "nc4",
    "ncc_acc",
)
# Store names: metric -> (metric, variant) for the long-format `nc` table.
VARIANTS = {"nc1": ("nc1", "pinv"), "nc1_svd": ("nc1", "svd"), "nc1_quotient": ("nc1", "quotient")}
PINV_RCOND = 1e-15  # NumPy's default cut-off for pinv, relative to the largest eigenvalue of Σ_B


def _as_features(
    x: Any, where: str = "features", check: bool = True, convert: bool = True
) -> torch.Tensor:
    """A 2-D CPU tensor (float64 unless ``convert`` is false); ``check`` rejects NaN/inf."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
    if t.ndim != 2:
        raise HarnessError(f"{where}: expected a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if convert or not torch.is_floating_point(t):
        t = t.to("cpu", torch.float64)
    if check:
        _check_finite(t, where)
    return t


def _check_finite(t: torch.Tensor, where: str = "features") -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(1).nonzero()[0, 0].item()
        raise HarnessError(
            f"{where}: NaN or inf values (first at row {bad}); features must be finite"
        )


def _as_labels(y: Any, n: int, num_classes: int, where: str = "labels") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
    if t.ndim != 1:
        raise HarnessError(f"{where}: expected a 1-D array, got shape {tuple(t.shape)}")
    if t.numel() != n:
        raise HarnessError(f"{where}: length {t.numel()} does not match {n} feature rows")
    if torch.is_floating_point(t) or t.dtype == torch.bool:
        raise HarnessError(f"{where}: expected integer class labels, got {t.dtype}")
    t = t.long()
    if n and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise HarnessError(f"{where}: label {bad} out of range [0, {num_classes})")
    return t


def _as_classifier(
    W: Any, b: Any, num_classes: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    Wt = _as_features(W, where="classifier")
    if tuple(Wt.shape) != (num_classes, dim):
        raise HarnessError(
            f"classifier: shape {tuple(Wt.shape)} != (num_classes, dim) = ({num_classes}, {dim})"
        )
    bt = None
    if b is not None:
        bt = (
            torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b)
            .detach()
            .to("cpu", torch.float64)
        )
        if tuple(bt.shape) != (num_classes,):
            raise HarnessError(f"classifier bias: shape {tuple(bt.shape)} != ({num_classes},)")
    return Wt, bt


# ---------------------------------------------------------------------------------------------
# Pass 1: per-class counts, means, sums of squares and the within-class scatter


def _batch_stats(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, scatter: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(n, μ, ss, W) of one batch, every sample centred on its own class mean (W only with
    ``scatter``); raises on NaN/inf features."""
    # class sums and counts by a one-hot GEMM (faster than index_add on CPU)
    onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)
    n_b = onehot.sum(0)
    sums = onehot.T @ x
    if not torch.isfinite(sums).all():  # any NaN/inf in x reaches its class sum
        _check_finite(x)
    mu_b = sums / n_b.clamp(min=1)[:, None]
    xc = x - mu_b[y]
    ss_b = onehot.T @ torch.linalg.vector_norm(xc, dim=1).square()
    W_b = xc.T @ xc if scatter else None
    return n_b, mu_b, ss_b, W_b


def _centred_means(
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


def _spectrum(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs of Σ_B = MᵀM/K from the SVD of the K×D matrix M: (λ descending, V D×r)."""
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return S * S / M.shape[0], Vh.T


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


# ---------------------------------------------------------------------------------------------
# Metric formulas (DESIGN §3) on the finalised statistics of the K present classes


def _within_full(W: torch.Tensor, V: torch.Tensor, N: float) -> tuple[torch.Tensor, float]:
    """(v_jᵀ Σ_W v_j for each column of V, tr Σ_W) from the full D×D scatter."""
    SwV = (W @ V) / N
    return (V * SwV).sum(0), float(torch.diagonal(W).sum()) / N


def _within_projected(
    Wp: torch.Tensor, V: torch.Tensor, M: torch.Tensor, N: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ_j = v_jᵀ Σ_B v_j, v_jᵀ Σ_W v_j) on the pass-2 basis V, from the r×r scatter Wp. The
    basis came from the same means, so it diagonalises Σ_B; λ is recomputed on it."""
    lam = torch.linalg.norm(M @ V, dim=0) ** 2 / M.shape[0]
    return lam, torch.diagonal(Wp) / N


def _descending(lam: torch.Tensor, w_dir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigen-pairs (λ_j, v_jᵀ Σ_W v_j) ordered by decreasing λ_j."""
    order = torch.argsort(lam, descending=True)
    return lam[order], w_dir[order]


def _nc1_pinv(lam: torch.Tensor, w_dir: torch.Tensor, K: int) -> float:
    """(1/K) tr(Σ_W Σ_B^†) = (1/K) Σ_j v_jᵀ Σ_W v_j / λ_j over the eigen-pairs pinv keeps
    (λ_j > PINV_RCOND·λ_max); ``lam`` descending."""
    keep = lam > PINV_RCOND * lam[0]
    return float((w_dir[keep] / lam[keep]).sum()) / K


def _nc1_svd(lam: torch.Tensor, w_dir: torch.Tensor, K: int) -> float:
    """As ``_nc1_pinv`` over the top K−1 eigen-pairs of Σ_B; ``lam`` descending."""
    top = slice(0, K - 1)
    return float((w_dir[top] / lam[top]).sum()) / K


def _nc1_quotient(tr_w: float, M: torch.Tensor) -> float:
    """tr(Σ_W) / tr(Σ_B)."""
    tr_b = float((M * M).sum()) / M.shape[0]
    return tr_w / tr_b


def _cdnv(var: torch.Tensor, norms2: torch.Tensor, G: torch.Tensor) -> float:
    """Mean over unordered class pairs of (σ_c² + σ_c′²) / (2‖μ_c − μ_c′‖²), from the class
    variances, ‖M_c‖² and the Gram matrix G = MMᵀ."""
    K = G.shape[0]
    d2 = (norms2[:, None] + norms2[None, :] - 2 * G).clamp(min=0)
    iu = torch.triu_indices(K, K, offset=1)
    num = var[iu[0]] + var[iu[1]]
    with np.errstate(divide="ignore"):
        return float((num / (2 * d2[iu[0], iu[1]])).mean())


def _nc2_equinorm(norms: torch.Tensor) -> float:
    """std_c ‖M_c‖ / mean_c ‖M_c‖."""
    return float(norms.std(unbiased=False) / norms.mean())


def _nc2_equiangular(M: torch.Tensor, norms: torch.Tensor) -> float:
    """std over c≠c′ of cos(M_c, M_c′)."""
    unit = M / norms[:, None]
    cos = unit @ unit.T
    off = ~torch.eye(M.shape[0], dtype=torch.bool)
    return float(cos[off].std(unbiased=False))


def _nc2_etf(G: torch.Tensor) -> float:
    """‖ G/‖G‖_F − (I − 11ᵀ/K)/√(K−1) ‖_F with G = MMᵀ."""
    K = G.shape[0]
    MMt = G / torch.linalg.norm(G)
    etf = (torch.eye(K, dtype=torch.float64) - 1.0 / K) / math.sqrt(K - 1)
    return float(torch.linalg.norm(MMt - etf))


def _nc3(Wc: torch.Tensor, M: torch.Tensor) -> float:
    """‖ W/‖W‖_F − M/‖M‖_F ‖_F² for the classifier rows W of the present classes."""
    return float(torch.linalg.norm(Wc / torch.linalg.norm(Wc) - M / torch.linalg.norm(M)) ** 2)


# ---------------------------------------------------------------------------------------------
# The accumulator


class NCAccumulator:
    """Streaming NC statistics of one layer's features; see the module docstring."""

    def __init__(self, num_classes: int, dim: int | None = None, mode: str = "auto"):
        if num_classes < 2:
            raise HarnessError(f"num_classes must be >= 2, got {num_classes}")
        if mode not in ("auto", "full", "projected"):
            raise HarnessError(f"NC mode {mode!r}: valid modes are auto, full, projected")
        self.num_classes = num_classes
        self.mode = mode
        self.dim: int | None = None
        self.second_done = False
        self._plan: _SecondPassPlan | None = None
        if dim is not None:
            self._init(dim)

    # -- state ------------------------------------------------------------------------------
    def _init(self, dim: int) -> None:
        self.dim = dim
        if self.mode == "auto":
            self.mode = "full" if dim <= FULL_MAX_DIM else "projected"
        K = self.num_classes
        f64 = torch.float64
        self.n = torch.zeros(K, dtype=f64)
        self.mu = torch.zeros(K, dim, dtype=f64)
        self.ss = torch.zeros(K, dtype=f64)
        self.W = torch.zeros(dim, dim, dtype=f64) if self.mode == "full" else None
        # second pass: basis D×r of the between-class span, fixed when pass 2 starts
        self.Wp: torch.Tensor | None = None  # r×r projected scatter
        self.n2 = 0
        self.ncc_correct = 0
        self.ncc_disagree = 0
        self._second_cls: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def count(self) -> int:
        return int(self.n.sum().item()) if self.dim is not None else 0

    @property
    def basis(self) -> torch.Tensor | None:
        """D×r basis of the between-class span, fixed when pass 2 starts (None before)."""
        return self._plan.basis if self._plan is not None else None

    def _merge_stats(self, n_b, mu_b, ss_b, W_b) -> None:
        """Chan et al. parallel update with another set of (n, μ, ss, W) statistics."""
        present = n_b > 0
        if not bool(present.any()):
            return
        n_a = self.n[present]
        nb = n_b[present]
        n_new = n_a + nb
        delta = mu_b[present] - self.mu[present]
        coef = n_a * nb / n_new
        self.mu[present] += delta * (nb / n_new)[:, None]
        self.ss[present] += ss_b[present] + coef * (delta * delta).sum(1)
        if self.W is not None:
            dw = delta * coef.sqrt()[:, None]
            self.W += W_b + dw.T @ dw
        self.n[present] = n_new

    # -- pass 1 -----------------------------------------------------------------------------
    def update(self, features: Any, labels: Any) -> NCAccumulator:
        """Add a batch (pass 1)."""
        if self.second_done or self._plan is not None:
            raise HarnessError("NCAccumulator.update after the second pass started")
        x = _as_features(features, check=False)
        y = _as_labels(labels, x.shape[0], self.num_classes)
        if self.dim is None:
            self._init(x.shape[1])
        if x.shape[1] != self.dim:
            raise HarnessError(f"features: dimension {x.shape[1]} != accumulator's {self.dim}")
        if x.shape[0] == 0:
            return self
        self._merge_stats(*_batch_stats(x, y, self.num_classes, self.W is not None))
        return self

    def merge(self, other: NCAccumulator) -> NCAccumulator:
        """Combine with an accumulator over disjoint data (pass-1 statistics)."""
        if other.dim is None:
            return self
        if other.num_classes != self.num_classes:
            raise HarnessError(f"merge: {other.num_classes} classes != {self.num_classes}")
        if self.dim is None:
            self.mode = other.mode
            self._init(other.dim)
        if other.dim != self.dim or other.mode != self.mode:
            raise HarnessError(
                f"merge: dim/mode {other.dim}/{other.mode} != {self.dim}/{self.mode}"
            )
        self._merge_stats(other.n, other.mu, other.ss, other.W)
        return self

    def all_reduce(self, group: Any = None) -> NCAccumulator:
        """Sum pass-1 statistics over the ranks of torch.distributed (every rank ends equal).

        Two rounds: class counts and sums give the global means; then each rank's scatter is
        re-centred on the global means before summing, which keeps the Chan update exact.
        """
        import torch.distributed as dist

        if self.dim is None:
            raise HarnessError("all_reduce: accumulator has no data on this rank")
        nsum = torch.cat([self.n, (self.mu * self.n[:, None]).flatten()])
        dist.all_reduce(nsum, group=group)
        K, D = self.num_classes, self.dim
        n_g = nsum[:K]
        mu_g = nsum[K:].view(K, D) / n_g.clamp(min=1)[:, None]
        delta = self.mu - mu_g
        ss = self.ss + self.n * (delta * delta).sum(1)
        parts = [ss]
        if self.W is not None:
            dw = delta * self.n.sqrt()[:, None]
            parts.append((self.W + dw.T @ dw).flatten())
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=group)
        self.n, self.mu, self.ss = n_g, mu_g, flat[:K].clone()
        if self.W is not None:
            self.W = flat[K:].view(D, D).clone()
        return self

    def _centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(present mask, μ_G, M = μ_c − μ_G for present classes)."""
        if self.dim is None:
            raise HarnessError("no features were accumulated")
        return _centred_means(self.n, self.mu)

    # -- pass 2 -----------------------------------------------------------------------------
    def update_second(
        self, features: Any, labels: Any, classifier: Any = None, bias: Any = None
    ) -> NCAccumulator:
        """Pass 2 over the same data: NCC accuracy, nc4 (with a classifier) and, in projected
        mode, Σ_W on the span of the class means. The classifier may also be given to compute()."""
        x = _as_features(features, check=False)
        y = _as_labels(labels, x.shape[0], self.num_classes)
        if self.dim is None or x.shape[1] != self.dim:
            raise HarnessError("update_second: run update() over the data first (same dimension)")
        if self._plan is None:
            self._start_second()
        if classifier is not None:
            self._second_cls = _as_classifier(classifier, bias, self.num_classes, self.dim)
        if x.shape[0] == 0:
            return self
        projected = self.mode == "projected"
        correct, disagree, scatter = _second_pass_batch(
            x, y, self._plan, self._second_cls, projected
        )
        self.ncc_correct += correct
        self.ncc_disagree += disagree
        if projected:
            self.Wp += scatter
        self.n2 += x.shape[0]
        self.second_done = True
        return self

    def _start_second(self) -> None:
        """Freeze what pass 2 needs from the final pass-1 means."""
        self._plan = _plan_second_pass(self.n, self.mu)
        r = self._plan.basis.shape[1]
        self.Wp = torch.zeros(r, r, dtype=torch.float64)

    def all_reduce_second(self, group: Any = None) -> NCAccumulator:
        """Sum pass-2 counters (and the projected scatter) over torch.distributed ranks."""
        import torch.distributed as dist

        parts = [torch.tensor([self.n2, self.ncc_correct, self.ncc_disagree], dtype=torch.float64)]
        if self.Wp is not None and self.mode == "projected":
            parts.append(self.Wp.flatten())
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=group)
        self.n2, self.ncc_correct, self.ncc_disagree = (int(round(v)) for v in flat[:3].tolist())
        if self.mode == "projected":
            r = self.Wp.shape[0]
            self.Wp = flat[3:].view(r, r).clone()
        self.second_done = self.n2 > 0
        return self

    def _second_complete(self, N: float) -> bool:
        """Whether pass 2 saw every sample (its metrics are only valid then)."""
        return self.second_done and self.n2 == round(N)

    # -- metrics ----------------------------------------------------------------------------
    def _nc1_metrics(self, M: torch.Tensor, N: float) -> dict[str, float]:
        """nc1 and nc1_svd where the statistics give Σ_W along Σ_B's eigenvectors (full mode, or
        projected after a complete pass 2), and nc1_quotient always."""
        out: dict[str, float] = {}
        K = M.shape[0]
        tr_w = float(self.ss.sum()) / N
        w_dir = None
        if self.mode == "full":
            lam, V = _spectrum(M)
            w_dir, tr_w = _within_full(self.W, V, N)
        elif self._second_complete(N):
            lam, w_dir = _within_projected(self.Wp, self.basis, M, N)
        if w_dir is not None:
            lam, w_dir = _descending(lam, w_dir)
            out["nc1"] = _nc1_pinv(lam, w_dir, K)
            out["nc1_svd"] = _nc1_svd(lam, w_dir, K)
        out["nc1_quotient"] = _nc1_quotient(tr_w, M)
        return out

    def compute(self, classifier: Any = None, bias: Any = None) -> dict[str, float]:
        """All metrics the statistics support: nc1 variants, cdnv, nc2_*, nc3 (with a
        classifier); ncc_acc and nc4 when the second pass ran over all samples."""
        present, _, M = self._centred()
        n = self.n[present]
        N = float(n.sum())
        out = self._nc1_metrics(M, N)
        norms2 = (M * M).sum(1)
        G = M @ M.T
        out["cdnv"] = _cdnv(self.ss[present] / n, norms2, G)
        norms = norms2.sqrt()
        out["nc2_equinorm"] = _nc2_equinorm(norms)
        out["nc2_equiangular"] = _nc2_equiangular(M, norms)
        out["nc2_etf"] = _nc2_etf(G)
        cls = (
            _as_classifier(classifier, bias, self.num_classes, self.dim)
            if classifier is not None
            else self._second_cls
        )
        if cls is not None:  # NC3: classifier rows of the present classes vs the centred means
            out["nc3"] = _nc3(cls[0][present], M)
        if self._second_complete(N):
            out["ncc_acc"] = self.ncc_correct / self.n2
            if self._second_cls is not None:
                out["nc4"] = self.ncc_disagree / self.n2
        return out


def nc_metrics(
    features: Any,
    labels: Any,
    classifier: Any = None,
    bias: Any = None,
    num_classes: int | None = None,
    mode: str = "projected",
) -> dict[str, float]:
    """All NC metrics of in-memory features (N×D array or tensor) and integer labels.

    In memory a second pass costs O(N·D·K), far less than the O(N·D²) scatter of one-pass
    ``full`` mode, so the default is the exact two-pass ``projected`` plan."""
    x = _as_features(features, check=False, convert=False)  # chunks convert to float64
    if num_classes is None:
        yy = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        num_classes = int(yy.max().item()) + 1 if yy.numel() else 2
    acc = NCAccumulator(max(num_classes, 2), mode=mode)
    y = _as_labels(labels, x.shape[0], acc.num_classes)
    chunks = range(0, max(x.shape[0], 1), CHUNK)  # cache-sized chunks: no N×D temporaries
    for s in chunks:
        acc.update(x[s : s + CHUNK], y[s : s + CHUNK])
    for s in chunks:
        acc.update_second(x[s : s + CHUNK], y[s : s + CHUNK], classifier, bias)
    return acc.compute()


def store_rows(metrics: dict[str, float]) -> list[tuple[str, str | None, float]]:
    """(metric, variant, value) triples for the long-format `nc` table."""
    return [(*VARIANTS.get(k, (k, None)), v) for k, v in metrics.items()]


def reduce_layers(accs: Sequence[NCAccumulator], group: Any = None, second: bool = False) -> None:
    """All-reduce a list of per-layer accumulators (same order on every rank)."""
    for a in accs:
        (a.all_reduce_second if second else a.all_reduce)(group)
