"""Gradient-error measures: known answers, invariances, zero rows."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from repanalysis.errors import UserError
from repanalysis.measures import RepanalysisWarning, gradient_error


def grads(n=50, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_signal_equal_to_the_gradient():
    g = grads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gradient_error(g, g)
    assert np.allclose(r["cosine"], 1.0, atol=1e-15)
    assert r["mean_cosine"] == pytest.approx(1.0, abs=1e-15)
    assert r["relative_error"] == 0.0
    assert r["sign_agreement"] == 1.0
    assert r["regression_loss"] == 0.0
    assert r["norm_ratio"] == pytest.approx(1.0)
    assert r["n_samples"] == 50 and r["n_cosine"] == 50


def test_negated_signal():
    g = grads()
    r = gradient_error(-g, g)
    assert np.allclose(r["cosine"], -1.0, atol=1e-15)
    assert r["relative_error"] == pytest.approx(2.0, rel=1e-14)
    assert r["sign_agreement"] == 0.0
    assert r["regression_loss"] == pytest.approx(4 * np.mean((g ** 2).sum(1)), rel=1e-14)


def test_scaling_invariances():
    g, s = grads(seed=1), grads(seed=2)
    base = gradient_error(s, g)
    per_row = np.random.default_rng(3).uniform(0.1, 10, size=(50, 1))
    scaled = gradient_error(per_row * s, g)
    assert np.allclose(scaled["cosine"], base["cosine"], rtol=1e-13)
    assert scaled["sign_agreement"] == base["sign_agreement"]
    both = gradient_error(7.0 * s, 7.0 * g)
    assert both["relative_error"] == pytest.approx(base["relative_error"], rel=1e-13)
    assert both["regression_loss"] == pytest.approx(49.0 * base["regression_loss"], rel=1e-13)
    triple = gradient_error(3.0 * g, g)
    assert triple["relative_error"] == pytest.approx(2.0, rel=1e-14)
    assert triple["norm_ratio"] == pytest.approx(3.0, rel=1e-14)
    assert np.allclose(triple["cosine"], 1.0)


def test_hand_computed_values():
    s = np.array([[1.0, -1.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0]])
    g = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    r = gradient_error(s, g)
    # entries with g != 0: (1,1) agree, (-1,1) disagree, (0,1) disagree, (1,2) agree
    assert r["sign_agreement"] == pytest.approx(2 / 4)
    assert r["cosine"][0] == pytest.approx(0.0 / (math.sqrt(6) * math.sqrt(3)))
    assert r["cosine"][1] == pytest.approx(1.0)
    # ||S - G||² = (0 + 4 + 1 + 4) + (0 + 1 + 0 + 0) = 10; ||G||² = 3 + 4 = 7
    assert r["relative_error"] == pytest.approx(math.sqrt(10 / 7))
    assert r["regression_loss"] == pytest.approx(10 / 2)
    assert r["norm_ratio"] == pytest.approx(math.sqrt(7 / 7))


def test_zero_rows_are_explicit():
    g = grads(n=6)
    s = g.copy()
    s[2] = 0.0
    with pytest.warns(RepanalysisWarning, match="zero norm"):
        r = gradient_error(s, g)
    assert math.isnan(r["cosine"][2])
    assert r["n_zero_signal"] == 1 and r["n_cosine"] == 5
    assert r["mean_cosine"] == pytest.approx(1.0)
    # a zero-initialised synthetic gradient: no cosine at all, relative error exactly 1
    with pytest.warns(RepanalysisWarning):
        r0 = gradient_error(np.zeros_like(g), g)
    assert math.isnan(r0["mean_cosine"]) and r0["relative_error"] == 1.0
    assert r0["sign_agreement"] == 0.0 and r0["norm_ratio"] == 0.0
    with pytest.warns(RepanalysisWarning) as rec:
        rz = gradient_error(g, np.zeros_like(g), where="layer h2")
    assert any("true gradient is zero" in str(w.message) and "(layer h2)" in str(w.message)
               for w in rec)
    assert math.isnan(rz["relative_error"]) and math.isnan(rz["sign_agreement"])


def test_guards_and_shapes():
    g = grads()
    with pytest.raises(UserError, match="same shape"):
        gradient_error(g, g[:, :4])
    bad = g.copy()
    bad[1, 1] = np.nan
    with pytest.raises(UserError, match="run x.h5, layer h1, step 3"):
        gradient_error(bad, g, where="run x.h5, layer h1, step 3")
    with pytest.raises(UserError):
        gradient_error(g[:, 0], g[:, 0])
    four = np.random.default_rng(4).standard_normal((5, 2, 3, 3))
    r = gradient_error(four, four * 2)
    assert r["cosine"].shape == (5,) and np.allclose(r["cosine"], 1.0)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    g, s = grads(seed=5), grads(seed=6)
    a = gradient_error(torch.from_numpy(s).float(), torch.from_numpy(g).float())
    b = gradient_error(s.astype(np.float32), g.astype(np.float32))
    assert a["mean_cosine"] == pytest.approx(b["mean_cosine"], rel=1e-12)
