"""The NC metric engine (``harness.nc``) against the naive float64 reference (``nc_reference``).

Every comparison runs the engine on the data as given (NumPy or torch, float32 or float64) and the
reference on the same values cast to float64. Counting metrics (ncc_acc, nc4) must agree exactly;
the others to a relative tolerance.

Note on nc1 (pinv): Sigma_B always has an exact null direction (sum_c n_c (mu_c - mu_G) = 0), so
mathematically nc1 == nc1_svd, and numerically the K-th singular value of Sigma_B is rounding noise
of order 1e-16 relative, close to numpy's default 1e-15 cut-off (it grows with D and K). Every
comparison of nc1 first checks that the reference's own pinv stayed clear of that null direction
(``_assert_reference_sane``), so a failure points at the engine, not at the yardstick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nc_reference import reference_nc

from harness.errors import HarnessError
from harness.nc import NCAccumulator, nc_metrics

PASS1 = ("nc1", "nc1_svd", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf")
COUNTS = ("ncc_acc", "nc4")  # fractions of samples: must agree exactly
BATCHES = (7, 100, 333)  # uneven batch sizes; the rest goes in a last batch


# ---------------------------------------------------------------- helpers


def blobs(rng, n, d, k, sep=0.4, noise=1.0, offset=0.0, labels=None):
    """Gaussian classes: features (float64), labels (int64), with all k classes present."""
    means = rng.normal(size=(k, d)) * sep
    if labels is None:
        labels = rng.integers(0, k, n)
    labels = np.asarray(labels, dtype=np.int64)
    assert len(np.unique(labels)) == k
    features = offset + means[labels] + noise * rng.normal(size=(len(labels), d))
    return features, labels


def centred_means(features, labels, k):
    h = np.asarray(features, dtype=np.float64)
    mu = np.stack([h[labels == c].mean(axis=0) for c in range(k)])
    return mu - h.mean(axis=0)


def noisy_classifier(rng, features, labels, k, noise=0.1):
    """A classifier near the centred class means (so nc3 is small and nc4 is non-trivial)."""
    w = centred_means(features, labels, k)
    w = w + noise * np.linalg.norm(w, axis=1).mean() / np.sqrt(w.shape[1]) * rng.normal(
        size=w.shape
    )
    bias = noise * rng.normal(size=k)
    return w, bias


def _assert_reference_sane(ref):
    """Test-data sanity: nc1 (pinv) and nc1_svd are equal in exact arithmetic, since Sigma_B has
    rank K-1; they differ only if the reference's pinv kept Sigma_B's null direction (rounding
    noise of ~1e-16 relative against numpy's 1e-15 cut-off), which would make it useless."""
    assert abs(ref["nc1"] - ref["nc1_svd"]) <= 1e-8 * abs(ref["nc1_svd"]), ref


def assert_matches(got, want, rtol=1e-8, nc1_rtol=1e-6, keys=None):
    """Every key of ``want`` (or ``keys``) is in ``got`` as a finite float and agrees."""
    keys = list(want) if keys is None else list(keys)
    if "nc1" in keys:
        _assert_reference_sane(want)
    problems = []
    for key in keys:
        if key not in got:
            problems.append(f"{key}: missing (engine keys: {sorted(got)})")
            continue
        g, w = got[key], want[key]
        if not isinstance(g, float):
            problems.append(f"{key}: {type(g).__name__} is not a float")
            continue
        if not np.isfinite(g):
            problems.append(f"{key}: engine {g} reference {w}")
            continue
        if key in COUNTS:
            ok = abs(g - w) <= 1e-12
        else:
            tol = nc1_rtol if key == "nc1" else rtol
            ok = abs(g - w) <= tol * abs(w)
        if not ok:
            rel = abs(g - w) / abs(w) if w else float("inf")
            problems.append(f"{key}: engine {g!r} reference {w!r} (rel. error {rel:.3g})")
    assert not problems, "engine != reference:\n  " + "\n  ".join(problems)


def to_backend(backend, *arrays):
    if backend == "numpy":
        return arrays
    return tuple(None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def split_points(n, sizes=BATCHES):
    points = np.cumsum(sizes)
    return [int(p) for p in points if p < n]


def stream(features, labels, num_classes, classifier=None, bias=None, dim=None, second=True):
    """The engine's streaming path: uneven batches, then (optionally) the second pass."""
    cuts = split_points(len(labels))
    parts = list(zip(np.split(features, cuts), np.split(labels, cuts), strict=True))
    acc = NCAccumulator(num_classes, dim=dim)
    for f, y in parts:
        acc.update(f, y)
    if second:  # nc4 compares per-sample predictions: the classifier must be known in pass 2
        for f, y in parts:
            acc.update_second(f, y, classifier, bias)
        return acc.compute()
    return acc.compute(classifier=classifier, bias=bias)


def engine(mode, features, labels, num_classes, classifier=None, bias=None):
    if mode == "memory":
        return nc_metrics(
            features, labels, classifier=classifier, bias=bias, num_classes=num_classes
        )
    return stream(features, labels, num_classes, classifier, bias)


# ---------------------------------------------------------------- shared data


@pytest.fixture(scope="module")
def data():
    """N=2000, D=32, K=10 random classes with a noisy classifier and its reference metrics."""
    rng = np.random.default_rng(20240611)
    k = 10
    features, labels = blobs(rng, 2000, 32, k, sep=0.4)
    w, b = noisy_classifier(rng, features, labels, k)
    ref = reference_nc(features, labels, k)
    ref_cls = reference_nc(features, labels, k, classifier=w, bias=b)
    # the data are not degenerate: every metric is clearly non-zero, NCC is imperfect
    assert all(v > 1e-3 for v in ref_cls.values())
    assert 0.5 < ref_cls["ncc_acc"] < 0.95 and ref_cls["nc4"] > 0.01
    return dict(features=features, labels=labels, k=k, w=w, b=b, ref=ref, ref_cls=ref_cls)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("give_k", [False, True])
def test_in_memory_matches_reference(data, backend, give_k):
    features, labels = to_backend(backend, data["features"], data["labels"])
    k = data["k"] if give_k else None
    got = nc_metrics(features, labels, num_classes=k)
    assert_matches(got, data["ref"])
    assert "nc3" not in got and "nc4" not in got


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_in_memory_with_classifier_matches_reference(data, backend):
    features, labels, w, b = to_backend(
        backend, data["features"], data["labels"], data["w"], data["b"]
    )
    got = nc_metrics(features, labels, classifier=w, bias=b)
    assert_matches(got, data["ref_cls"])


@pytest.mark.parametrize("dim", [None, 32])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_streaming_matches_reference(data, backend, dim):
    features, labels, w, b = to_backend(
        backend, data["features"], data["labels"], data["w"], data["b"]
    )
    got = stream(features, labels, data["k"], classifier=w, bias=b, dim=dim)
    assert_matches(got, data["ref_cls"])
    got = stream(features, labels, data["k"], dim=dim)
    assert_matches(got, data["ref"])
    assert "nc3" not in got and "nc4" not in got


def test_streaming_without_second_pass_omits_ncc_and_nc4(data):
    got = stream(data["features"], data["labels"], data["k"], data["w"], data["b"], second=False)
    assert "ncc_acc" not in got and "nc4" not in got
    assert_matches(got, data["ref_cls"], keys=PASS1 + ("nc3",))


def simplex_etf_data(rng, k=5, d=8, copies=6, scale=3.7):
    """Class means on a rotated, scaled simplex ETF around an offset; zero within-class spread."""
    etf = np.sqrt(k / (k - 1)) * (
        np.eye(k) - np.ones((k, k)) / k
    )  # rows: unit vectors, cos -1/(k-1)
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))  # d x k orthonormal columns
    m = scale * etf @ basis.T  # k x d, centred (rows sum to 0)
    offset = 2.0 * rng.normal(size=d)
    labels = rng.permutation(np.repeat(np.arange(k), copies))
    features = offset + m[labels]
    return features, labels, m, offset


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_simplex_etf_is_fully_collapsed(mode):
    rng = np.random.default_rng(7)
    k = 5
    features, labels, m, offset = simplex_etf_data(rng, k=k)
    # W = M; the bias cancels the offset's contribution so argmax(W h + b) is the class itself
    bias = -m @ offset
    got = engine(mode, features, labels, k, classifier=m, bias=bias)
    for key in PASS1:
        assert key in got, key
        assert abs(got[key]) <= 1e-9, f"{key} = {got[key]!r} on an exact simplex ETF"
    assert got["ncc_acc"] == 1.0
    assert abs(got["nc3"]) <= 1e-9
    assert got["nc4"] == 0.0
    # and the reference agrees that this is collapse
    ref = reference_nc(features, labels, k, classifier=m, bias=bias)
    assert all(abs(ref[key]) <= 1e-9 for key in PASS1 + ("nc3",)), ref
    assert ref["ncc_acc"] == 1.0 and ref["nc4"] == 0.0


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_float32_large_offset_small_spread(mode):
    """Offset 1e3, within-class std 1e-2, O(1) class separation: naive float32 (or float64
    sum-of-squares) accumulation loses this; the engine must not."""
    rng = np.random.default_rng(11)
    k, d = 10, 32
    f64, labels = blobs(rng, 2000, d, k, sep=1.0, noise=1e-2, offset=1e3)
    features = f64.astype(np.float32)
    exact = features.astype(np.float64)  # the reference sees the SAME float32 values
    w, b = noisy_classifier(rng, exact, labels, k)
    b = b - w @ exact.mean(axis=0)  # a sensible classifier despite the offset
    ref = reference_nc(exact, labels, k, classifier=w, bias=b)
    got = engine(mode, features, labels, k, classifier=w, bias=b)
    assert_matches(got, ref, rtol=1e-6, nc1_rtol=1e-6)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_float32_large_offset_torch(mode):
    rng = np.random.default_rng(12)
    k, d = 6, 16
    f64, labels = blobs(rng, 900, d, k, sep=1.0, noise=1e-2, offset=1e3)
    features = f64.astype(np.float32)
    ref = reference_nc(features.astype(np.float64), labels, k)
    got = engine(mode, torch.from_numpy(features), torch.from_numpy(labels), k)
    assert_matches(got, ref, rtol=1e-6, nc1_rtol=1e-6)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_unbalanced_classes(mode):
    rng = np.random.default_rng(3)
    sizes = [2, 500, 37, 300, 120, 5, 800, 60]
    k, d = len(sizes), 16
    labels = rng.permutation(np.repeat(np.arange(k), sizes))
    features, labels = blobs(rng, len(labels), d, k, sep=0.7, labels=labels)
    w, b = noisy_classifier(rng, features, labels, k)
    ref = reference_nc(features, labels, k, classifier=w, bias=b)
    got = engine(mode, features, labels, k, classifier=w, bias=b)
    assert_matches(got, ref)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_empty_classes_do_not_count(mode):
    """num_classes=10 but classes 3 and 7 never occur: K is 8 for every metric."""
    rng = np.random.default_rng(5)
    present = np.array([0, 1, 2, 4, 5, 6, 8, 9])
    features, compact = blobs(rng, 1200, 16, len(present), sep=0.5)
    labels = present[compact]
    ref = reference_nc(features, labels, 10)
    assert ref == reference_nc(features, compact, len(present))  # the reference ignores them too
    got = engine(mode, features, labels, 10)
    assert_matches(got, ref)


def test_many_classes():
    rng = np.random.default_rng(100)
    k, d = 100, 256
    features, labels = blobs(rng, 5000, d, k, sep=0.3)
    w, b = noisy_classifier(rng, features, labels, k)
    ref = reference_nc(features, labels, k, classifier=w, bias=b)
    got = nc_metrics(features, labels, classifier=w, bias=b)
    assert_matches(got, ref)


@pytest.mark.parametrize("split", ["random", "by_class"])
def test_merge_equals_union(data, split):
    features, labels, k, w = data["features"], data["labels"], data["k"], data["w"]
    if split == "random":
        in_a = np.random.default_rng(1).permutation(len(labels)) < len(labels) // 2
    else:  # each half misses half of the classes
        in_a = labels < k // 2
    acc_a, acc_b, union = NCAccumulator(k), NCAccumulator(k), NCAccumulator(k)
    for part, mask in ((acc_a, in_a), (acc_b, ~in_a)):
        f, y = features[mask], labels[mask]
        half = len(y) // 3
        part.update(f[:half], y[:half])
        part.update(f[half:], y[half:])
    union.update(features, labels)
    merged = acc_a.merge(acc_b)
    assert merged is acc_a
    got = merged.compute(classifier=w)
    keys = PASS1 + ("nc3",)
    assert "ncc_acc" not in got and "nc4" not in got
    assert_matches(got, union.compute(classifier=w), rtol=1e-10, nc1_rtol=1e-8, keys=keys)
    assert_matches(got, reference_nc(features, labels, k, classifier=w), keys=keys)


@pytest.mark.parametrize("mode", ["memory", "stream"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("kind", ["numpy", "torch64", "torch32"])
def test_classifier_types(data, mode, with_bias, kind):
    w = data["w"].astype(np.float32) if kind == "torch32" else data["w"]
    b = data["b"].astype(np.float32) if kind == "torch32" else data["b"]
    b = b if with_bias else None
    ref = reference_nc(data["features"], data["labels"], data["k"], classifier=w, bias=b)
    if kind != "numpy":
        w, b = to_backend("torch", w, b)
    got = engine(mode, data["features"], data["labels"], data["k"], classifier=w, bias=b)
    assert_matches(got, ref, keys=("nc3", "nc4", "ncc_acc"))


def test_high_dimension_matches_reference():
    """D=5000 (> 4096, where the engine may project). The data live in a random 200-dim subspace
    (N=200 samples span at most that anyway); every metric is invariant under that isometric
    embedding, so the reference runs on the 200-dim coordinates."""
    rng = np.random.default_rng(5000)
    k, r, big = 4, 200, 5000
    coords, labels = blobs(rng, 200, r, k, sep=0.08)
    w_small, b = noisy_classifier(rng, coords, labels, k, noise=1.0)
    basis, _ = np.linalg.qr(rng.normal(size=(big, r)))  # big x r orthonormal columns
    features, w = coords @ basis.T, w_small @ basis.T
    ref = reference_nc(coords, labels, k, classifier=w_small, bias=b)
    assert 0.5 < ref["ncc_acc"] < 1.0 and ref["nc4"] > 0  # not a trivial case
    got = nc_metrics(features, labels, classifier=w, bias=b)
    assert_matches(got, ref)


# ---------------------------------------------------------------- bad input


def _bad_inputs():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 4))
    y = rng.integers(0, 3, 50)
    y[:3] = [0, 1, 2]
    nan, inf = f.copy(), f.copy()
    nan[7, 2] = np.nan
    inf[9, 1] = -np.inf
    high, low = y.copy(), y.copy()
    high[11] = 3
    low[12] = -1
    finite = ("nan", "finite", "inf")
    return [
        pytest.param(f, high, ("label",), id="label-too-high"),
        pytest.param(f, low, ("label",), id="label-negative"),
        pytest.param(nan, y, finite, id="nan"),
        pytest.param(inf, y, finite, id="inf"),
        pytest.param(f, y[:-1], ("length", "mismatch"), id="length"),
        pytest.param(torch.from_numpy(nan).float(), torch.from_numpy(y), finite, id="torch-nan"),
    ]


def _check_error(excinfo, words):
    message = str(excinfo.value)
    assert message and "\n" not in message, repr(message)
    assert any(w in message.lower() for w in words), f"{message!r} mentions none of {words}"


@pytest.mark.parametrize(("features", "labels", "words"), _bad_inputs())
def test_bad_input_nc_metrics(features, labels, words):
    with pytest.raises(HarnessError) as excinfo:
        nc_metrics(features, labels, num_classes=3)
    _check_error(excinfo, words)


@pytest.mark.parametrize(("features", "labels", "words"), _bad_inputs())
def test_bad_input_accumulator(features, labels, words):
    acc = NCAccumulator(3)
    with pytest.raises(HarnessError) as excinfo:
        acc.update(features, labels)
    _check_error(excinfo, words)


def test_bad_labels_in_second_pass():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 4))
    y = np.arange(30) % 3
    acc = NCAccumulator(3)
    acc.update(f, y)
    bad = y.copy()
    bad[4] = 5
    with pytest.raises(HarnessError) as excinfo:
        acc.update_second(f, bad)
    _check_error(excinfo, ("label",))


# ---------------------------------------------------------------- precision plans of the scatter

PLAN_RTOL = 1e-6  # the float32 plan's promise against the float64 reference (harness.nc.scatter)


def stream_plan(features, labels, k, precision, batch=100, classifier=None, bias=None):
    """Both passes of full mode in batches of ``batch`` rows with the given scatter precision."""
    acc = NCAccumulator(k, mode="full", precision=precision)
    cuts = list(range(batch, len(labels), batch))
    parts = list(zip(np.split(features, cuts), np.split(labels, cuts), strict=True))
    for f, y in parts:
        acc.update(f, y)
    assert acc.precision == precision
    for f, y in parts:
        acc.update_second(f, y, classifier, bias)
    return acc.compute()


def _offset_f32(rng, d):
    f64, labels = blobs(rng, 3000, d, 10, sep=1.0, noise=1e-2, offset=1e3)
    return f64.astype(np.float32), labels, None


def _offset_f64(rng, d):
    return *blobs(rng, 3000, d, 10, sep=1.0, noise=1e-2, offset=1e3), None


def _unbalanced(rng, d):
    sizes = [2, 500, 37, 300, 120, 5, 800, 60, 1, 900]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    return *blobs(rng, len(labels), d, len(sizes), sep=0.7, labels=labels), None


def _high_dim(rng, d):
    """400 samples in a random 300-dim subspace of R^d; the metrics are invariant under the
    embedding, so the reference runs on the coordinates (as in test_high_dimension_...)."""
    coords, labels = blobs(rng, 400, 300, 4, sep=0.08)
    basis, _ = np.linalg.qr(rng.normal(size=(d, 300)))
    return coords, labels, basis


@pytest.mark.parametrize(
    ("make", "d"),
    [(_offset_f32, 256), (_offset_f64, 256), (_unbalanced, 192), (_high_dim, 5000)],
    ids=["offset-float32", "offset-float64", "unbalanced", "D5000-full"],
)
def test_float32_plan_matches_float64_plan_and_reference(make, d):
    rng = np.random.default_rng(d)
    coords, labels, basis = make(rng, d)
    k = int(labels.max()) + 1
    w, b = noisy_classifier(rng, coords.astype(np.float64), labels, k)
    ref = reference_nc(coords.astype(np.float64), labels, k, classifier=w, bias=b)
    features = coords if basis is None else coords @ basis.T
    w = w if basis is None else w @ basis.T
    fast = stream_plan(features, labels, k, "float32", 333, w, b)
    exact = stream_plan(features, labels, k, "float64", 333, w, b)
    assert_matches(exact, ref)  # the float64 plan: the default tolerances
    assert_matches(fast, ref, rtol=PLAN_RTOL, nc1_rtol=PLAN_RTOL)
    assert_matches(fast, exact, rtol=PLAN_RTOL, nc1_rtol=PLAN_RTOL)


def test_default_plan_by_dimension():
    rng = np.random.default_rng(0)
    for d, mode, precision in [(16, "full", "float64"), (256, "full", "float32")]:
        acc = NCAccumulator(3).update(rng.normal(size=(9, d)), np.arange(9) % 3)
        assert (acc.mode, acc.precision) == (mode, precision)
    projected = NCAccumulator(3, mode="projected", precision="float32")
    assert projected.update(rng.normal(size=(9, 8)), np.arange(9) % 3).precision == "float64"
    with pytest.raises(HarnessError, match="precision"):
        NCAccumulator(3, precision="half")


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplex_etf_is_collapsed_in_both_plans(precision, dtype):
    rng = np.random.default_rng(8)
    features, labels, m, offset = simplex_etf_data(rng, k=6, d=160, copies=50)
    got = stream_plan(features.astype(dtype), labels, 6, precision, batch=64)
    for key in ("nc1", "nc1_svd", "nc1_quotient", "cdnv"):
        assert abs(got[key]) <= 1e-9, f"{key} = {got[key]!r} on an exact simplex ETF"
    assert got["ncc_acc"] == 1.0


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_blocks_merged_equal_one_batch(monkeypatch, precision):
    """Several batches buffered into blocks (and batches larger than a block, split) give the
    statistics of the whole data in one batch and one block."""
    from harness.nc import scatter

    rng = np.random.default_rng(21)
    features, labels = blobs(rng, 3000, 160, 7, sep=0.5, offset=5.0)
    whole = NCAccumulator(7, precision=precision).update(features, labels)
    monkeypatch.setattr(scatter, "BLOCK_ROWS", 256)  # blocks of 256 rows: many merges
    blocks = NCAccumulator(7, precision=precision)
    for s in range(0, 3000, 700):  # batches of 700 rows: every one spans blocks
        blocks.update(features[s : s + 700], labels[s : s + 700])
    small = NCAccumulator(7, precision=precision)
    for s in range(0, 3000, 37):
        small.update(features[s : s + 37], labels[s : s + 37])
    assert blocks._block.rows == small._block.rows == 256
    rtol = 1e-12 if precision == "float64" else PLAN_RTOL
    for acc in (blocks, small):
        assert acc.count == whole.count == 3000
        for name in ("n", "mu", "ss", "W"):
            a, b = getattr(acc, name), getattr(whole, name)
            assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())), name
        assert_matches(acc.compute(), whole.compute(), rtol=rtol, nc1_rtol=rtol)
    ref = reference_nc(features, labels, 7)
    assert_matches(blocks.compute(), ref, rtol=max(rtol, 1e-8), keys=PASS1)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_merge_of_buffered_plans_equals_union(precision):
    rng = np.random.default_rng(4)
    features, labels = blobs(rng, 2000, 192, 5, sep=0.5)
    parts = [NCAccumulator(5, precision=precision) for _ in range(3)]
    for i, acc in enumerate(parts):  # rows still in the buffers when merged
        acc.update(features[i::3], labels[i::3])
    merged = NCAccumulator(5, precision="float64").merge(parts[0]).merge(parts[1])
    merged.merge(parts[2])
    ref = reference_nc(features, labels, 5)
    assert_matches(merged.compute(), ref, rtol=PLAN_RTOL, nc1_rtol=PLAN_RTOL, keys=PASS1)


def _all_reduce_rank(rank, world, init, features, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        f, y = features[rank::world], labels[rank::world]
        acc = NCAccumulator(5, precision="float32")
        acc.update(f, y)  # rows still buffered when all-reduced
        acc.all_reduce()
        acc.update_second(f, y)
        acc.all_reduce_second()
        torch.save(acc.compute(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_of_float32_plan_over_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    rng = np.random.default_rng(6)
    features, labels = blobs(rng, 1200, 160, 5, sep=0.5, offset=1e3, noise=1e-2)
    features = features.astype(np.float32)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_all_reduce_rank, args=(2, init, features, labels, tmp_path / "m"), nprocs=2)
    got = [torch.load(tmp_path / f"m.{r}", weights_only=True) for r in range(2)]
    assert got[0] == got[1]  # every rank ends equal
    ref = reference_nc(features.astype(np.float64), labels, 5)
    assert_matches(got[0], ref, rtol=PLAN_RTOL, nc1_rtol=PLAN_RTOL)


@pytest.mark.parametrize("mode", ["full", "projected"])
def test_second_pass_rows_meet_the_classifier_they_came_with(mode):
    """Pass 2 gathers batches into blocks; a batch given with a different classifier than the
    rows waiting before it is compared with its own classifier, the waiting rows with theirs."""
    rng = np.random.default_rng(5)
    f, y = blobs(rng, 600, 16, 4, sep=1.0)
    W1, W2 = rng.normal(size=(4, 16)), rng.normal(size=(4, 16))
    acc = NCAccumulator(4, mode=mode)
    acc.update(f, y)
    halves = [(f[:300], y[:300], W1), (f[300:], y[300:], W2)]
    for part, labels, W in halves:
        for s in range(0, 300, 60):  # the same classifier (new arrays) with every batch
            acc.update_second(part[s : s + 60], labels[s : s + 60], W.copy())
    got = acc.compute()
    means = np.stack([f[y == c].mean(0) for c in range(4)])
    ncc = ((f[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    pred = np.concatenate([part @ W.T for part, _, W in halves]).argmax(1)
    assert got["nc4"] == pytest.approx(np.mean(pred != ncc), abs=1e-12)
    assert got["ncc_acc"] == pytest.approx(np.mean(ncc == y), abs=1e-12)
