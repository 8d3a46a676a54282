"""``NCAccumulator`` (streaming, mergeable NC statistics of one layer) and ``nc_metrics`` (the
in-memory two-pass plan); see the package docstring for the plans and their costs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.nc.formulas import (
    VARIANTS,
    cdnv,
    centred_means,
    descending,
    nc1_pinv,
    nc1_quotient,
    nc1_svd,
    nc2_equiangular,
    nc2_equinorm,
    nc2_etf,
    nc3,
    spectrum,
    within_full,
    within_projected,
)
from harness.nc.inputs import as_classifier, as_features, as_labels, as_rows
from harness.nc.scatter import FAST_MIN_DIM, RowBlock, ScatterBlock
from harness.nc.stats import (
    SecondPassPlan,
    plan_second_pass,
    second_pass_columns,
    tally_second_pass,
)

FULL_MAX_DIM = 4096
CHUNK = 2048  # rows per step of the in-memory plan
PRECISIONS = ("auto", "float32", "float64")


class NCAccumulator:
    """Streaming NC statistics of one layer's features; see the package docstring.

    ``mode``: ``full`` (one pass, D×D scatter), ``projected`` (two passes) or ``auto`` (by D).
    ``precision``: arithmetic of the full-mode scatter products, ``float32`` (centred rows, float64
    merges; ``harness.nc.scatter`` derives the error bound), ``float64``, or ``auto`` (float32
    for D ≥ FAST_MIN_DIM, where the D×D products dominate the cost)."""

    def __init__(
        self,
        num_classes: int,
        dim: int | None = None,
        mode: str = "auto",
        precision: str = "auto",
    ):
        if num_classes < 2:
            raise HarnessError(f"num_classes must be >= 2, got {num_classes}")
        if mode not in ("auto", "full", "projected"):
            raise HarnessError(f"NC mode {mode!r}: valid modes are auto, full, projected")
        if precision not in PRECISIONS:
            raise HarnessError(f"NC precision {precision!r}: valid are {', '.join(PRECISIONS)}")
        self.num_classes = num_classes
        self.mode = mode
        self.precision = precision
        self.dim: int | None = None
        self.second_done = False
        self._plan: SecondPassPlan | None = None
        self._block: ScatterBlock | None = None
        self._rows2: RowBlock | None = None  # pass-2 columns waiting for their block
        self._columns: torch.Tensor | None = None  # what pass 2 multiplies each batch with
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
        fast = self.precision == "float32" or (self.precision == "auto" and dim >= FAST_MIN_DIM)
        self.precision = "float32" if fast and self.W is not None else "float64"
        # buffered blocks of shifted rows; in full mode also their products, in the chosen precision
        self._block = ScatterBlock(K, dim, getattr(torch, self.precision), self.W is not None)
        # second pass: basis D×r of the between-class span, fixed when pass 2 starts
        self.Wp: torch.Tensor | None = None  # r×r projected scatter
        self.n2 = 0
        self.ncc_correct = 0
        self.ncc_disagree = 0
        self._second_cls: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def count(self) -> int:
        """Samples seen in pass 1."""
        if self.dim is None:
            return 0
        self._flush()
        return int(self.n.sum().item())

    @property
    def basis(self) -> torch.Tensor | None:
        """D×r basis of the between-class span, fixed when pass 2 starts (None before)."""
        return self._plan.basis if self._plan is not None else None

    def _merge_stats(
        self,
        n_b: torch.Tensor,
        mu_b: torch.Tensor,
        ss_b: torch.Tensor,
        W_b: torch.Tensor | None,
    ) -> None:
        """Chan et al. parallel update with another set of (n, μ, ss, W) statistics (W_b None:
        already added to W, as a scatter block does)."""
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
            if W_b is not None:
                self.W += W_b
            self.W.addmm_(dw.T, dw)
        self.n[present] = n_new

    # -- pass 1 -----------------------------------------------------------------------------
    def update(self, features: Any, labels: Any) -> NCAccumulator:
        """Add a batch (pass 1)."""
        if self.second_done or self._plan is not None:
            raise HarnessError("NCAccumulator.update after the second pass started")
        x = as_rows(features)
        y = as_labels(labels, x.shape[0], self.num_classes)
        if self.dim is None:
            self._init(x.shape[1])
        if x.shape[1] != self.dim:
            raise HarnessError(f"features: dimension {x.shape[1]} != accumulator's {self.dim}")
        if x.shape[0] == 0:
            return self
        step = self._block.rows
        for s in range(0, x.shape[0], step):
            if self._block.full(min(step, x.shape[0] - s)):
                self._flush()
            self._block.add(x[s : s + step], y[s : s + step])
        return self

    def _flush(self) -> None:
        """Merge the buffered block into the float64 statistics."""
        stats = self._block.take(self.W) if self._block is not None else None
        if stats is not None:
            self._merge_stats(*stats, None)
            self._reshift()

    def _reshift(self) -> None:
        """Centre the next rows on the current class means (after a merge or all-reduce)."""
        if self._block is not None:
            self._block.reshift(self.mu, self.n > 0)

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
        self._flush()
        other._flush()
        self._merge_stats(other.n, other.mu, other.ss, other.W)
        self._reshift()
        return self

    def all_reduce(self, group: Any = None) -> NCAccumulator:
        """Sum pass-1 statistics over the ranks of torch.distributed (every rank ends equal).

        Two rounds: class counts and sums give the global means; then each rank's scatter is
        re-centred on the global means before summing, which keeps the Chan update exact.
        """
        import torch.distributed as dist

        if self.dim is None:
            raise HarnessError("all_reduce: accumulator has no data on this rank")
        self._flush()
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
        self._reshift()
        return self

    def _centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(present mask, μ_G, M = μ_c − μ_G for present classes)."""
        if self.dim is None:
            raise HarnessError("no features were accumulated")
        self._flush()
        return centred_means(self.n, self.mu)

    # -- pass 2 -----------------------------------------------------------------------------
    def update_second(
        self, features: Any, labels: Any, classifier: Any = None, bias: Any = None
    ) -> NCAccumulator:
        """Pass 2 over the same data: NCC accuracy, nc4 (with a classifier) and, in projected
        mode, Σ_W on the span of the class means. The classifier may also be given to compute()."""
        x = as_rows(features)
        y = as_labels(labels, x.shape[0], self.num_classes)
        if self.dim is None or x.shape[1] != self.dim:
            raise HarnessError("update_second: run update() over the data first (same dimension)")
        if self._plan is None:
            self._start_second()
        if classifier is not None:
            cls = as_classifier(classifier, bias, self.num_classes, self.dim)
            if self._second_cls is None or not _same_classifier(cls, self._second_cls):
                self._set_second_classifier(cls)
        if x.shape[0] == 0:
            return self
        G = second_pass_columns(x, self._columns)
        step = self._rows2.rows
        for s in range(0, x.shape[0], step):
            if self._rows2.full(min(step, x.shape[0] - s)):
                self._flush_second()
            self._rows2.add(G[s : s + step], y[s : s + step])
        self.second_done = True
        return self

    def _set_second_classifier(self, cls: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
        """Tally the rows waiting with the classifier they came with, then take ``cls``: the
        columns each batch is multiplied with, and a block of that width."""
        self._flush_second()
        self._second_cls = cls
        self._columns = self._plan.columns(cls)
        self._rows2 = RowBlock(self._columns.shape[1], torch.float64)

    def _flush_second(self) -> None:
        """Tally the buffered pass-2 columns (nearest class centre, classifier, projected
        scatter)."""
        block = self._rows2.take_rows() if self._rows2 is not None else None
        if block is None:
            return
        G, y = block
        correct, disagree, scatter = tally_second_pass(G, y, self._plan, self._second_cls)
        self.ncc_correct += correct
        self.ncc_disagree += disagree
        if scatter is not None:
            self.Wp += scatter
        self.n2 += G.shape[0]

    def _start_second(self) -> None:
        """Freeze what pass 2 needs from the final pass-1 means."""
        self._flush()
        self._plan = plan_second_pass(self.n, self.mu, self.mode == "projected")
        r = self._plan.basis.shape[1]
        self.Wp = torch.zeros(r, r, dtype=torch.float64)
        self._set_second_classifier(None)

    def all_reduce_second(self, group: Any = None) -> NCAccumulator:
        """Sum pass-2 counters (and the projected scatter) over torch.distributed ranks."""
        import torch.distributed as dist

        self._flush_second()
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
        self._flush_second()
        return self.second_done and self.n2 == round(N)

    # -- metrics ----------------------------------------------------------------------------
    def _nc1_metrics(self, M: torch.Tensor, N: float) -> dict[str, float]:
        """nc1 and nc1_svd where the statistics give Σ_W along Σ_B's eigenvectors (full mode, or
        projected after a complete pass 2), and nc1_quotient always."""
        out: dict[str, float] = {}
        K = M.shape[0]
        tr_w = float(self.ss.sum()) / N  # = tr Σ_W, float64 in every plan
        w_dir = None
        if self.mode == "full":
            lam, V = spectrum(M)
            w_dir = within_full(self.W, V, N)
        elif self._second_complete(N):
            lam, w_dir = within_projected(self.Wp, self.basis, M, N)
        if w_dir is not None:
            lam, w_dir = descending(lam, w_dir)
            out["nc1"] = nc1_pinv(lam, w_dir, K)
            out["nc1_svd"] = nc1_svd(lam, w_dir, K)
        out["nc1_quotient"] = nc1_quotient(tr_w, M)
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
        out["cdnv"] = cdnv(self.ss[present] / n, norms2, G)
        norms = norms2.sqrt()
        out["nc2_equinorm"] = nc2_equinorm(norms)
        out["nc2_equiangular"] = nc2_equiangular(M, norms)
        out["nc2_etf"] = nc2_etf(G)
        cls = (
            as_classifier(classifier, bias, self.num_classes, self.dim)
            if classifier is not None
            else self._second_cls
        )
        if cls is not None:  # NC3: classifier rows of the present classes vs the centred means
            out["nc3"] = nc3(cls[0][present], M)
        if self._second_complete(N):
            out["ncc_acc"] = self.ncc_correct / self.n2
            if self._second_cls is not None:
                out["nc4"] = self.ncc_disagree / self.n2
        return out


def _same_classifier(a: tuple[torch.Tensor, Any], b: tuple[torch.Tensor, Any]) -> bool:
    """Whether two (weights, bias or None) classifiers are equal."""
    if (a[1] is None) != (b[1] is None):
        return False
    return torch.equal(a[0], b[0]) and (a[1] is None or torch.equal(a[1], b[1]))


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
    x = as_features(features, check=False, convert=False)  # chunks convert to float64
    if num_classes is None:
        yy = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        num_classes = int(yy.max().item()) + 1 if yy.numel() else 2
    acc = NCAccumulator(max(num_classes, 2), mode=mode)
    y = as_labels(labels, x.shape[0], acc.num_classes)
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
