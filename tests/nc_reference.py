"""A deliberately naive float64 NumPy reference for the neural-collapse (NC) metrics.

Written straight from the definitions, in the style of Papyan, Han & Donoho's reference code:
a first pass computes the class means, a second pass sums the per-sample outer products
(h_i - mu_c)(h_i - mu_c)^T in float64. Nothing here is clever or fast on purpose: it is the
yardstick ``harness.nc`` is tested against (see ``test_nc.py``).

Conventions (the same as the engine's):

* only classes with at least one sample count; K is the number of such classes;
* mu_G is the sample-weighted global mean (the mean over all samples);
* ``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``,
  ``Sigma_B = 1/K sum_c (mu_c - mu_G)(mu_c - mu_G)^T``;
* the classifier ``W`` has one row per class index (``num_classes`` rows); nc3 compares the rows
  of the present classes with the centred class means, nc4 takes the argmax over all rows.
"""

from __future__ import annotations

import numpy as np


def reference_nc(
    features,
    labels,
    num_classes: int,
    classifier=None,
    bias=None,
) -> dict[str, float]:
    """NC metrics of ``features`` (N x D) with integer ``labels`` in ``[0, num_classes)``.

    Returns nc1, nc1_svd, nc1_quotient, cdnv, nc2_equinorm, nc2_equiangular, nc2_etf, ncc_acc and,
    when ``classifier`` (num_classes x D, optional ``bias`` of length num_classes) is given, nc3
    and nc4. Everything is computed in float64.
    """
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    n, d = h.shape
    assert y.shape == (n,)
    assert y.min() >= 0 and y.max() < num_classes

    # ---- pass 1: class means and the global mean ----
    classes = [c for c in range(num_classes) if np.any(y == c)]
    k = len(classes)
    mu = np.zeros((k, d))
    for j, c in enumerate(classes):
        mu[j] = h[y == c].mean(axis=0)
    mu_g = h.mean(axis=0)
    m = mu - mu_g  # K x D centred class means

    # ---- pass 2: within-class scatter, one outer product per sample ----
    index = {c: j for j, c in enumerate(classes)}
    sigma_w = np.zeros((d, d))
    within_sq = np.zeros(k)  # sum over class c of ||h - mu_c||^2
    for i in range(n):
        j = index[int(y[i])]
        diff = h[i] - mu[j]
        sigma_w += np.outer(diff, diff)
        within_sq[j] += diff @ diff
    sigma_w /= n
    counts = np.array([np.sum(y == c) for c in classes], dtype=np.float64)

    # ---- between-class scatter ----
    sigma_b = np.zeros((d, d))
    for j in range(k):
        sigma_b += np.outer(m[j], m[j])
    sigma_b /= k

    out: dict[str, float] = {}

    # NC1, pseudo-inverse with numpy's default cut-off
    out["nc1"] = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / k)

    # NC1 with Sigma_B inverted on its top K-1 singular directions only (Papyan's svds(k=C-1))
    u, s, _ = np.linalg.svd(sigma_b)
    r = k - 1
    inv_b = u[:, :r] @ np.diag(1.0 / s[:r]) @ u[:, :r].T
    out["nc1_svd"] = float(np.trace(sigma_w @ inv_b) / k)

    out["nc1_quotient"] = float(np.trace(sigma_w) / np.trace(sigma_b))

    # CDNV: mean over pairs of classes of (var_c + var_c') / (2 ||mu_c - mu_c'||^2)
    var = within_sq / counts
    terms = []
    for a in range(k):
        for b in range(k):
            if a != b:
                dist_sq = np.sum((mu[a] - mu[b]) ** 2)
                terms.append((var[a] + var[b]) / (2.0 * dist_sq))
    out["cdnv"] = float(np.mean(terms))

    # NC2
    norms = np.linalg.norm(m, axis=1)
    out["nc2_equinorm"] = float(np.std(norms) / np.mean(norms))
    cosines = []
    for a in range(k):
        for b in range(k):
            if a != b:
                cosines.append((m[a] @ m[b]) / (norms[a] * norms[b]))
    out["nc2_equiangular"] = float(np.std(cosines))
    gram = m @ m.T
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    out["nc2_etf"] = float(np.linalg.norm(gram / np.linalg.norm(gram) - etf))

    # nearest class centre (over present classes; predictions are class indices)
    ncc = np.empty(n, dtype=np.int64)
    for i in range(n):
        dist = np.sum((mu - h[i]) ** 2, axis=1)
        ncc[i] = classes[int(np.argmin(dist))]
    out["ncc_acc"] = float(np.mean(ncc == y))

    # NC3 / NC4
    if classifier is not None:
        w = np.asarray(classifier, dtype=np.float64)
        assert w.shape == (num_classes, d)
        w_present = w[classes]
        diff = w_present / np.linalg.norm(w_present) - m / np.linalg.norm(m)
        out["nc3"] = float(np.sum(diff**2))
        logits = h @ w.T
        if bias is not None:
            logits = logits + np.asarray(bias, dtype=np.float64)
        pred = np.argmax(logits, axis=1)
        out["nc4"] = float(np.mean(pred != ncc))

    return out
