"""Streaming (chunked moment) measures equal the in-memory ones; sources; guards."""

from __future__ import annotations

import math
import warnings

import h5py
import numpy as np
import pytest

from repanalysis.errors import UserError
from repanalysis.measures import (
    Moments,
    RepanalysisWarning,
    RowView,
    canonical_correlations,
    cca,
    linear_cka,
    procrustes,
    pwcca,
    singular_values,
    streaming_canonical_correlations,
    streaming_cca,
    streaming_linear_cka,
    streaming_procrustes,
    streaming_pwcca,
    streaming_singular_values,
    streaming_svcca,
    svcca,
)
from repanalysis.measures import _linalg as la

REL = 1e-8


def pair(n=1000, dx=12, dy=9, seed=0, offset=50.0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, dx)) @ g.standard_normal((dx, dx)) + offset
    y = np.tanh(x @ g.standard_normal((dx, dy)) / 4) + 0.5 * g.standard_normal((n, dy)) - offset
    return x.astype(np.float32), y.astype(np.float32)


class SliceOnly:
    """An array-like that only serves row slices of at most `limit` rows (and counts reads)."""

    def __init__(self, a, limit):
        self.a, self.limit, self.reads = a, limit, 0
        self.shape = a.shape

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.stop - key.start <= self.limit
        self.reads += 1
        return self.a[key]


def test_sym_and_gemm_accumulate_in_place():
    g = np.random.default_rng(1)
    a, b = g.standard_normal((50, 6)), g.standard_normal((50, 4))
    acc = np.zeros((6, 6))
    la.sym_accumulate(acc, a[:20])
    la.sym_accumulate(acc, a[20:], np.empty((6, 6)))
    assert np.allclose(acc, a.T @ a, rtol=1e-13)
    accx = np.zeros((6, 4))
    la.gemm_accumulate(accx, a[:13], b[:13])
    la.gemm_accumulate(accx, a[13:], b[13:], np.empty((6, 4)))
    assert np.allclose(accx, a.T @ b, rtol=1e-13)


@pytest.mark.parametrize("chunk_rows", [37, 1000, 4096])
def test_streaming_equals_in_memory(chunk_rows):
    x, y = pair()
    src_x, src_y = SliceOnly(x, chunk_rows), SliceOnly(y, chunk_rows)
    m = Moments.from_source(src_x, src_y, chunk_rows=chunk_rows)
    assert src_x.reads == math.ceil(1000 / chunk_rows)
    assert m.n == 1000
    assert np.allclose(m.mean_x, x.astype(np.float64).mean(0), rtol=1e-12)
    assert m.linear_cka() == pytest.approx(linear_cka(x, y), rel=REL)
    assert m.linear_cka(debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), rel=REL)
    assert np.allclose(m.canonical_correlations(), canonical_correlations(x, y), rtol=REL, atol=0)
    assert m.cca() == pytest.approx(cca(x, y), rel=REL)
    assert m.cca(squared=True, ridge=0.1) == pytest.approx(cca(x, y, squared=True, ridge=0.1), rel=REL)
    assert m.svcca() == pytest.approx(svcca(x, y), rel=REL)
    assert m.svcca(dims=(4, 3)) == pytest.approx(svcca(x, y, dims=(4, 3)), rel=REL)
    assert m.pwcca() == pytest.approx(pwcca(x, y), rel=REL)
    assert m.pwcca(weights="y") == pytest.approx(pwcca(x, y, weights="y"), rel=REL)
    assert m.procrustes() == pytest.approx(procrustes(x, y), rel=REL)
    assert np.allclose(m.spectrum().values, singular_values(x), rtol=REL)
    assert np.allclose(m.spectrum("y").values, singular_values(y), rtol=REL)


def test_streaming_tolerance_is_far_tighter_than_required():
    x, y = pair(seed=2, offset=1e3)          # a large mean makes naive raw moments cancel
    s = streaming_linear_cka(x, y, chunk_rows=100, debiased=True)
    assert s == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-11)
    assert streaming_linear_cka(x, y, chunk_rows=100) == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_sources_hdf5_generator_callable_torch_rowview(tmp_path):
    x, y = pair(n=600, seed=3)
    path = tmp_path / "acts.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(64, x.shape[1]))
        f.create_dataset("y", data=y, chunks=(64, y.shape[1]))
        f.create_dataset("stack", data=np.stack([2 * x, x, x + 1]))
    ref = linear_cka(x, y)
    with h5py.File(path, "r") as f:
        assert streaming_linear_cka(f["x"], f["y"], chunk_rows=100) == pytest.approx(ref, rel=REL)
        view = RowView(f["stack"], 1)
        assert view.shape == x.shape
        assert streaming_linear_cka(view, f["y"], chunk_rows=128) == pytest.approx(ref, rel=REL)
        assert np.allclose(streaming_singular_values(RowView(f["stack"], 0)),
                           singular_values(2 * x), rtol=REL)
    gen_x = (x[i:i + 50] for i in range(0, 600, 50))
    gen_y = (y[i:i + 50] for i in range(0, 600, 50))
    assert streaming_cca(gen_x, gen_y) == pytest.approx(cca(x, y), rel=REL)
    factory_x = lambda: (x[i:i + 70] for i in range(0, 600, 70))  # noqa: E731
    factory_y = lambda: (y[i:i + 70] for i in range(0, 600, 70))  # noqa: E731
    assert streaming_svcca(factory_x, factory_y) == pytest.approx(svcca(x, y), rel=REL)
    torch = pytest.importorskip("torch")
    assert streaming_procrustes(torch.from_numpy(x), torch.from_numpy(y), chunk_rows=99) == \
        pytest.approx(procrustes(x, y), rel=REL)
    assert streaming_pwcca(x, y, chunk_rows=123) == pytest.approx(pwcca(x, y), rel=REL)
    assert np.allclose(streaming_canonical_correlations(x, y, chunk_rows=64),
                       canonical_correlations(x, y), rtol=REL)


def test_incremental_updates_and_results_at_any_time():
    x, y = pair(n=400, seed=4)
    m = Moments()
    for a in range(0, 200, 25):
        m.update(x[a:a + 25], y[a:a + 25])
    assert m.linear_cka() == pytest.approx(linear_cka(x[:200], y[:200]), rel=REL)
    for a in range(200, 400, 40):
        m.update(x[a:a + 40], y[a:a + 40])
    assert m.linear_cka(debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), rel=REL)
    single = Moments().update(x, y)
    assert single.cca() == pytest.approx(cca(x, y), rel=1e-12)


def test_constant_columns_and_guards():
    x, y = pair(n=300, seed=5)
    xk = np.hstack([x, np.full((300, 2), 1.5, dtype=np.float32)])
    m = Moments.from_source(xk, y, chunk_rows=64)
    assert m.constant_x.tolist() == [False] * 12 + [True, True]
    with pytest.warns(RepanalysisWarning, match="2 of 14 features of X"):
        s = m.cca()
    with pytest.warns(RepanalysisWarning):
        assert s == pytest.approx(cca(xk, y), rel=REL)
    assert m.linear_cka() == pytest.approx(linear_cka(x, y), rel=REL)
    assert np.all(m.spectrum().values[12:] == 0)
    # n <= d is degenerate for CCA, as in memory
    g = np.random.default_rng(6)
    with pytest.raises(UserError, match="degenerate"):
        streaming_cca(g.standard_normal((30, 40)), g.standard_normal((30, 5)), chunk_rows=8)


@pytest.mark.parametrize("settings, message", [
    (dict(dims=0), "dims must be >= 1"), (dict(dims=-1), "dims must be >= 1"), (dict(dims=(3, 0)), "dims must be >= 1"),
    (dict(dims=(0, 2)), "dims must be >= 1"), (dict(variance=0.0), "variance must be in"),
    (dict(variance=1.5), "variance must be in")])
def test_svcca_in_memory_and_streamed_refuse_the_same_settings_alike(settings, message):
    x, y = pair(n=200, seed=8)
    with pytest.raises(UserError, match=message) as in_memory:
        svcca(x, y, **settings)
    with pytest.raises(UserError, match=message) as streamed:
        streaming_svcca(x, y, chunk_rows=64, **settings)
    assert str(in_memory.value) == str(streamed.value)


def test_nan_in_a_later_chunk_names_the_row_and_where():
    x, y = pair(n=300, seed=7)
    y[250, 3] = np.nan
    with pytest.raises(UserError, match=r"row 250.*\(run a\.h5, layer h3\)"):
        streaming_linear_cka(x, y, chunk_rows=64, where="run a.h5, layer h3")


def test_mismatched_sources():
    x, y = pair(n=300, seed=8)
    with pytest.raises(UserError, match="same number of samples"):
        streaming_linear_cka(x, y[:200])
    with pytest.raises(UserError, match="fewer rows"):
        streaming_linear_cka((x[i:i + 100] for i in range(0, 300, 100)),
                             (y[i:i + 100] for i in range(0, 200, 100)))
    with pytest.raises(UserError, match="chunks differ"):
        streaming_linear_cka([x[:100]], [y[:90]])
    with pytest.raises(UserError, match="two streams"):
        Moments.from_source(x).linear_cka()
    with pytest.raises(UserError, match="debiased"):
        Moments.from_source(x, y, debiased=False).linear_cka(debiased=True)


def test_ill_conditioned_streaming_cca_has_the_documented_tolerance():
    # In memory, CCA of Y = XA + b with cond(X) = 1e8 is exact (QR route); from moments
    # the directions with σ < 1e-4 σmax are dropped; the leading subspaces of X and Y are not
    # exactly aligned, so the remaining ρ are close to, not exactly, 1.
    g = np.random.default_rng(9)
    u, _ = np.linalg.qr(g.standard_normal((500, 12)))
    u, _ = np.linalg.qr(u - u.mean(0))
    x = (u * np.logspace(0, -8, 12)) @ np.linalg.qr(g.standard_normal((12, 12)))[0]
    y = x @ (np.eye(12) + 0.1 * g.standard_normal((12, 12))) + 3.0
    exact = canonical_correlations(x, y)
    assert np.abs(exact - 1).max() < 1e-9 and exact.shape == (12,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RepanalysisWarning)
        rho = streaming_canonical_correlations(x, y, chunk_rows=100)
    assert rho.shape[0] == 6
    assert np.abs(rho - 1).max() < 1e-4


def test_streaming_cca_warns_when_it_resolves_fewer_correlations():
    from repanalysis.measures._arrays import RepanalysisWarning
    from repanalysis.measures.streaming import streaming_cca

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 30))
    x[:, 25:] = x[:, :5] + 1e-7 * rng.standard_normal((2000, 5))  # five nearly collinear columns
    y = x @ rng.standard_normal((30, 30)) + rng.standard_normal((2000, 30))
    with pytest.warns(RepanalysisWarning, match="only 25 of 30 canonical correlations"):
        streaming_cca(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streaming_cca(x[:, :25], y)  # well-conditioned: silent
