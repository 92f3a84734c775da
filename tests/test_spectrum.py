"""Spectra and rank measures: known values, conventions, centring, weights."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from repanalysis.errors import UserError
from repanalysis.measures import (
    RepanalysisWarning,
    Spectrum,
    effective_rank,
    numerical_rank,
    participation_ratio,
    singular_values,
    spectral_summary,
    spectrum,
    stable_rank,
    weight_norms,
    weight_spectrum,
)


def equal_spectrum_activations(n, d, k, value=3.0, seed=0):
    """Centred-data spectrum of exactly k equal singular values (then zeros)."""
    g = np.random.default_rng(seed)
    u = g.standard_normal((n, k))
    u -= u.mean(axis=0)
    u, _ = np.linalg.qr(u)
    v, _ = np.linalg.qr(g.standard_normal((d, k)))
    return value * u @ v.T + 7.0          # the offset must not matter (centred inside)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_k_equal_singular_values_give_rank_k_everywhere(k):
    bare = np.array([2.5] * k + [0.0] * 3)
    x = equal_spectrum_activations(60, 12, k)
    for src in (bare, x, spectrum(x)):
        assert effective_rank(src) == pytest.approx(k, rel=1e-10)
        assert effective_rank(src, convention="sigma2") == pytest.approx(k, rel=1e-10)
        assert stable_rank(src) == pytest.approx(k, rel=1e-10)
        assert participation_ratio(src) == pytest.approx(k, rel=1e-10)
    assert numerical_rank(x) == k
    assert numerical_rank(bare, tol=1e-12) == k


def test_known_values_for_a_two_value_spectrum():
    s = np.array([1.0, 3.0])                     # order does not matter
    p = np.array([0.75, 0.25])
    assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-14)
    p2 = np.array([0.9, 0.1])
    assert effective_rank(s, convention="sigma2") == pytest.approx(
        math.exp(-(p2 * np.log(p2)).sum()), rel=1e-14)
    assert stable_rank(s) == pytest.approx(10 / 9, rel=1e-14)
    assert participation_ratio(s) == pytest.approx(100 / 82, rel=1e-14)
    # sigma2 is the smaller for decaying spectra
    assert effective_rank(s, convention="sigma2") < effective_rank(s)


@pytest.mark.parametrize("method", ["auto", "svd", "gram"])
def test_singular_values_are_those_of_the_centred_data(method):
    g = np.random.default_rng(1)
    x = g.standard_normal((300, 20)) @ np.diag(np.linspace(1, 5, 20)) + 100.0
    ref = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert np.allclose(singular_values(x, method=method), ref, rtol=1e-10)
    # n < d: length min(n, d), last one ~0 (centring removes a dimension)
    y = g.standard_normal((10, 30))
    s = singular_values(y, method=method)
    assert s.shape == (10,) and s[-1] < 1e-12 * s[0]
    assert np.allclose(s[:9], np.linalg.svd(y - y.mean(0), compute_uv=False)[:9], rtol=1e-10)


def test_ill_conditioned_spectrum_uses_the_svd():
    g = np.random.default_rng(2)
    u, _ = np.linalg.qr(g.standard_normal((200, 10)))
    s = np.logspace(0, -9, 10)
    x = (u - u.mean(0)) * s @ np.linalg.qr(g.standard_normal((10, 10)))[0]
    ref = np.linalg.svd(x - x.mean(0), compute_uv=False)
    got = singular_values(x)
    assert np.allclose(got, ref, rtol=1e-6, atol=0)


def test_constant_features_contribute_zeros():
    g = np.random.default_rng(3)
    x = np.hstack([g.standard_normal((100, 5)), np.full((100, 3), 2.0)])
    s = singular_values(x)
    assert s.shape == (8,)
    assert np.all(s[5:] == 0.0)
    assert numerical_rank(x) == 5


def test_numerical_rank_tolerance_and_dtype():
    g = np.random.default_rng(4)
    x = g.standard_normal((200, 7)) @ g.standard_normal((7, 40))           # rank 7
    assert numerical_rank(x) == 7
    assert numerical_rank(x.astype(np.float32)) == 7
    sp = spectrum(x.astype(np.float32))
    assert sp.eps == pytest.approx(np.finfo(np.float32).eps)
    assert numerical_rank(sp.values, tol=1e-3) == 7
    with pytest.raises(UserError, match="needs tol="):
        numerical_rank(sp.values)
    assert numerical_rank(sp.values, tol=0.0) == int(np.count_nonzero(sp.values > 0))


def test_spectral_summary_and_spectrum_reuse():
    x = np.random.default_rng(5).standard_normal((80, 6))
    sp = spectrum(x)
    assert isinstance(sp, Spectrum) and len(sp) == 6
    summ = spectral_summary(sp)
    assert summ["effective_rank"] == effective_rank(x)
    assert summ["stable_rank"] == stable_rank(x)
    assert summ["participation_ratio"] == participation_ratio(x)
    assert summ["numerical_rank"] == 6
    assert "numerical_rank" not in spectral_summary(sp.values)
    assert 1.0 <= summ["stable_rank"] <= summ["participation_ratio"] + 1e-12


def test_weights_are_not_centred():
    g = np.random.default_rng(6)
    w = g.standard_normal((30, 20)) + 5.0
    sp = weight_spectrum(w)
    assert not sp.centred
    assert np.allclose(sp.values, np.linalg.svd(w, compute_uv=False), rtol=1e-12)
    norms = weight_norms(w)
    assert norms["frobenius"] == pytest.approx(np.linalg.norm(w), rel=1e-12)
    assert norms["spectral"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-12)
    assert norms["nuclear"] == pytest.approx(np.linalg.norm(w, "nuc"), rel=1e-12)
    assert norms["stable_rank"] == pytest.approx(
        np.linalg.norm(w) ** 2 / np.linalg.norm(w, 2) ** 2, rel=1e-12)
    assert norms["stable_rank"] < 2.0          # the big mean dominates: nearly rank one
    assert norms["numerical_rank"] == 20
    # conv kernels [out, in, kh, kw] are flattened to [out, in*kh*kw]
    k = g.standard_normal((8, 3, 3, 3))
    assert np.allclose(weight_spectrum(k).values,
                       np.linalg.svd(k.reshape(8, -1), compute_uv=False))


def test_zero_weights_warn_and_degenerate_inputs_raise():
    with pytest.warns(RepanalysisWarning, match="all zeros"):
        norms = weight_norms(np.zeros((4, 3)))
    assert norms["frobenius"] == 0.0 and norms["numerical_rank"] == 0
    assert math.isnan(norms["effective_rank"])
    with pytest.raises(UserError, match="zero variance"):
        effective_rank(np.ones((10, 3)))
    with pytest.raises(UserError, match=">= 0"):
        stable_rank(np.array([1.0, -1.0]))
    bad = np.ones((5, 3))
    bad[2, 2] = np.nan
    with pytest.raises(UserError, match="layer h1"):
        singular_values(bad, where="layer h1")
    with pytest.raises(UserError, match="sigma"):
        effective_rank(np.ones(3), convention="sigma3")
    with pytest.raises(UserError):
        weight_spectrum(np.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effective_rank(np.random.default_rng(0).standard_normal((20, 4)))


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).standard_normal((50, 5)).astype(np.float32)
    assert np.allclose(singular_values(torch.from_numpy(x)), singular_values(x))
    w = torch.nn.Linear(6, 4).weight
    assert weight_norms(w)["frobenius"] == pytest.approx(float(w.detach().norm()), rel=1e-6)


def test_weight_frobenius_alone_equals_weight_norms_frobenius():
    from repanalysis.measures.spectrum import weight_frobenius, weight_norms

    kernel = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    assert weight_frobenius(kernel) == {"frobenius": weight_norms(kernel)["frobenius"]}
    with pytest.raises(UserError, match="NaN or Inf"):
        weight_frobenius(np.full((2, 2), np.nan))
