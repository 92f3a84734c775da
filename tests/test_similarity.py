"""Known answers, invariances and independent formulations of the similarity measures."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from repanalysis.errors import UserError
from repanalysis.measures import (
    MinibatchCKA,
    RepanalysisWarning,
    canonical_correlations,
    cca,
    expected_null_cca,
    linear_cka,
    minibatch_cka,
    procrustes,
    procrustes_distance,
    pwcca,
    rbf_cka,
    svcca,
)
from repanalysis.measures import _linalg as la


def rng(seed=0):
    return np.random.default_rng(seed)


def orthogonal(d, seed=0):
    q, r = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def related(n=400, dx=12, dy=9, seed=0, noise=1.0):
    g = rng(seed)
    x = g.standard_normal((n, dx)) @ g.standard_normal((dx, dx)) + 3.0
    y = x @ g.standard_normal((dx, dy)) + noise * g.standard_normal((n, dy)) - 1.0
    return x, y


def with_condition(n, d, cond, seed=0):
    g = rng(seed)
    u, _ = np.linalg.qr(g.standard_normal((n, d)))
    u -= u.mean(axis=0)
    u, _ = np.linalg.qr(u)
    s = np.logspace(0, -math.log10(cond), d)
    return (u * s) @ orthogonal(d, seed + 1).T + 5.0


# --------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------

@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(debiased):
    x, y = related(n=300, dx=10, dy=8)
    base = linear_cka(x, y, debiased=debiased)
    moved = linear_cka(2.5 * x @ orthogonal(10) + 7.0, 0.1 * y @ orthogonal(8, 3), debiased=debiased)
    assert moved == pytest.approx(base, rel=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_changes_under_generic_linear_map(debiased):
    x, y = related(n=300, dx=10, dy=8)
    m = np.diag(np.arange(1, 11) ** 2.0) @ rng(5).standard_normal((10, 10))
    assert abs(linear_cka(x @ m, y, debiased=debiased) - linear_cka(x, y, debiased=debiased)) > 1e-2


@pytest.mark.parametrize("k", [1, 3, 8])
def test_cka_of_whitened_data_and_its_first_k_coordinates_is_sqrt_k_over_d(k):
    n, d = 200, 8
    x = rng(1).standard_normal((n, d))
    q, _ = np.linalg.qr(x - x.mean(axis=0))
    w = q * math.sqrt(n)                     # centred, orthonormal columns times sqrt(n)
    assert np.allclose(w.T @ w, n * np.eye(d))
    for method in ("feature", "gram"):
        assert linear_cka(w, w[:, :k], method=method) == pytest.approx(math.sqrt(k / d), rel=1e-12)


def _hsic1_brute(k, l):
    """Song et al. 2012 HSIC_1 as the U-statistic over ordered 4-tuples of distinct indices."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def test_unbiased_hsic_formulas_agree_with_the_u_statistic():
    g = rng(2)
    x = g.standard_normal((7, 3)) + 10.0      # uncentred on purpose
    y = g.standard_normal((7, 2)) - 4.0
    k, l = x @ x.T, y @ y.T
    brute = _hsic1_brute(k, l)
    assert la.hsic_unbiased_gram(k, l) == pytest.approx(brute, rel=1e-9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    st = la.stats_from_features(xc, yc, debiased=True)
    assert la.hsic_unbiased_from_stats(st.xy, st.tx, st.ty, st.rq, 7) == pytest.approx(brute, rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(60, 5, 4), (20, 30, 25)])
def test_cka_gram_and_feature_forms_agree(debiased, shape):
    n, dx, dy = shape
    x, y = related(n=n, dx=dx, dy=dy, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RepanalysisWarning)
        f = linear_cka(x, y, debiased=debiased, method="feature")
        g = linear_cka(x, y, debiased=debiased, method="gram")
    assert f == pytest.approx(g, rel=1e-10)
    # the Gram form on *raw* (uncentred) kernels, as Song et al. and Kornblith et al. write it
    k, l = x @ x.T, y @ y.T
    if debiased:
        raw = la.hsic_unbiased_gram(k, l) / math.sqrt(la.hsic_unbiased_gram(k, k)
                                                      * la.hsic_unbiased_gram(l, l))
    else:
        kc, lc = la.double_centre(k), la.double_centre(l)
        raw = np.vdot(kc, lc) / (np.linalg.norm(kc) * np.linalg.norm(lc))
    assert f == pytest.approx(raw, rel=1e-8)


def test_minibatch_cka_over_all_batches_of_any_size_equals_debiased_cka():
    # HSIC_1 is a U-statistic: its average over every m-subset of a sample is the
    # full-sample value, so minibatch CKA over all m-subsets does not depend on m.
    x, y = related(n=9, dx=3, dy=2, seed=6, noise=2.0)
    full = linear_cka(x, y, debiased=True)
    values = []
    for m in (4, 5, 7, 9):
        acc = MinibatchCKA()
        for idx in itertools.combinations(range(9), m):
            acc.update(x[list(idx)], y[list(idx)])
        values.append(acc.value)
    assert values == pytest.approx([full] * 4, rel=1e-10)


def test_minibatch_cka_helper_and_single_batch():
    x, y = related(n=50, dx=4, dy=3, seed=7)
    assert minibatch_cka([x], [y]) == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-12)
    batches = [slice(0, 20), slice(20, 35), slice(35, 50)]
    v = minibatch_cka((x[s] for s in batches), (y[s] for s in batches))
    assert -1.0 <= v <= 1.0
    with pytest.raises(UserError, match="ended"):
        minibatch_cka([x, x], [y])
    with pytest.raises(UserError, match="no batches"):
        MinibatchCKA().value


def test_biased_cka_warns_for_small_n_and_debiased_does_not():
    g = rng(8)
    x, y = g.standard_normal((40, 30)), g.standard_normal((40, 30))
    with pytest.warns(RepanalysisWarning, match="debiased=True"):
        biased = linear_cka(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        debiased = linear_cka(x, y, debiased=True)
        linear_cka(g.standard_normal((2000, 10)), g.standard_normal((2000, 10)))
    assert biased > 0.3 and abs(debiased) < 0.1
    assert issubclass(RepanalysisWarning, UserWarning)


def test_cka_guards():
    x = rng(9).standard_normal((20, 3))
    with pytest.raises(UserError, match="zero variance"):
        linear_cka(x, np.ones((20, 2)))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(UserError, match="run a.h5, layer h3, step 200") as err:
        linear_cka(bad, x, where="run a.h5, layer h3, step 200")
    assert "NaN" in str(err.value) and "(4, 1)" in str(err.value)
    bad[4, 1] = np.inf
    with pytest.raises(UserError, match="Inf"):
        linear_cka(x, bad)
    with pytest.raises(UserError, match="same number of samples"):
        linear_cka(x, x[:10])
    with pytest.raises(UserError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(UserError, match=r"\[n_samples, n_features\]"):
        linear_cka(x[:, 0], x)


def test_rbf_cka_basic_properties():
    x, y = related(n=120, dx=6, dy=5, seed=10)
    assert rbf_cka(x, x) == pytest.approx(1.0, rel=1e-12)
    a = rbf_cka(x, y, debiased=True)
    b = rbf_cka(3.0 * x @ orthogonal(6) + 1.0, y, debiased=True)  # bandwidth follows the scale
    assert a == pytest.approx(b, rel=1e-10)
    # a very wide kernel is nearly linear: RBF CKA approaches linear CKA
    wide = rbf_cka(x, y, bandwidth=(1e3 * x.std() * 6, 1e3 * y.std() * 5), debiased=True)
    assert wide == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-4)


# --------------------------------------------------------------------------
# CCA family
# --------------------------------------------------------------------------

def test_cca_invariant_to_invertible_linear_maps():
    x, y = related(n=300, dx=6, dy=5, seed=11)
    a = rng(12).standard_normal((6, 6)) + 3 * np.eye(6)
    b = rng(13).standard_normal((5, 5)) + 3 * np.eye(5)
    r0 = canonical_correlations(x, y)
    r1 = canonical_correlations(x @ a - 4.0, y @ b + 2.0)
    assert r0.shape == (5,)
    assert np.all(np.diff(r0) <= 0)
    assert np.allclose(r0, r1, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "qr"])
def test_all_canonical_correlations_are_one_for_affine_copies_even_when_ill_conditioned(method):
    x = with_condition(400, 20, 1e8, seed=14)
    assert np.linalg.cond(x - x.mean(0)) == pytest.approx(1e8, rel=1e-3)
    a = orthogonal(20, 15) @ np.diag(np.linspace(1, 3, 20))
    y = x @ a + 2.0
    rho = canonical_correlations(x, y, method=method)
    assert rho.shape == (20,)
    assert np.abs(rho - 1.0).max() < 1e-9
    assert cca(x, y) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("d, cond", [(30, 1e3), (200, 40.0), (200, 1e6)])
def test_condition_number_of_a_triangular_factor_is_the_2_norm_one(d, cond):
    # R of a QR has the singular values of the matrix: logspace(0, -log10(cond)); d > 64 is Lanczos
    r = np.linalg.qr(with_condition(3 * d, d, cond, seed=d) - 5.0)[1]
    assert la.cond2_upper(r) == pytest.approx(np.linalg.cond(r), rel=1e-2)


def test_cca_takes_the_moment_route_on_activation_like_data_and_qr_only_where_needed():
    from repanalysis.measures.similarity import _cca_result

    g = rng(21)
    z = g.standard_normal((1500, 20))
    # low rank plus noise: κ ≈ 740 and 450, product 3e5 (the 1-norm estimates multiply to 1e7)
    x = z @ g.standard_normal((20, 150)) + 0.03 * g.standard_normal((1500, 150))
    y = z @ g.standard_normal((20, 120)) + 0.05 * g.standard_normal((1500, 120))
    kw = dict(ridge=0.0, allow_degenerate=False, rtol=None, where=None, what="CCA")
    fast = _cca_result(x, y, method="auto", **kw)
    assert fast.route == "cholesky"
    assert np.allclose(fast.rho, _cca_result(x, y, method="qr", **kw).rho, rtol=0, atol=1e-10)  # eps·κx·κy
    x = with_condition(1500, 100, 1e8, seed=22)
    y = x @ orthogonal(100, 23) - 1.0
    guarded = _cca_result(x, y, method="auto", **kw)
    assert guarded.route == "svd"
    assert np.array_equal(guarded.rho, _cca_result(x, y, method="qr", **kw).rho)
    assert np.abs(guarded.rho - 1.0).max() < 1e-8  # eps·κ


def test_cca_routes_agree_on_well_conditioned_data():
    x, y = related(n=500, dx=15, dy=10, seed=16)
    r = [canonical_correlations(x, y, method=m) for m in ("auto", "qr", "gram")]
    assert np.allclose(r[0], r[1], rtol=0, atol=1e-11)
    assert np.allclose(r[0], r[2], rtol=0, atol=1e-11)
    assert cca(x, y, squared=True) == pytest.approx(np.mean(r[1] ** 2), rel=1e-12)


def test_cca_independent_gaussians_match_the_wachter_limit():
    # Expected mean canonical correlation of independent d-dim Gaussians with n samples:
    # ∫ sqrt(x) f(x) dx with Wachter's density f of ρ² (y = d/(n-1) = 0.05): 0.1908;
    # finite-size corrections O(1/d) are about -0.0003 at d = 500 (tolerance 0.003).
    g = rng(17)
    n, d = 10000, 500
    x, y = g.standard_normal((n, d)), g.standard_normal((n, d))
    expected = expected_null_cca(n, d, d)
    assert expected == pytest.approx(0.1908, abs=5e-4)
    rho = canonical_correlations(x, y)
    assert rho.mean() == pytest.approx(expected, abs=3e-3)
    # mean ρ² has the exact finite-n expectation d/(n-1)
    assert np.mean(rho ** 2) == pytest.approx(expected_null_cca(n, d, d, squared=True), abs=1e-3)
    assert expected_null_cca(n, d, d, squared=True) == pytest.approx(d / (n - 1), rel=1e-12)
    # largest ρ² at the upper edge of the Wachter support, 4y(1-y)
    y_ = d / (n - 1)
    assert rho[0] ** 2 == pytest.approx(4 * y_ * (1 - y_), abs=0.01)


def test_expected_null_cca_edges():
    # p = q: support [0, 4y(1-y)]; mean ρ below sqrt of the upper edge
    v = expected_null_cca(1001, 100, 100)
    assert 0 < v < math.sqrt(4 * 0.1 * 0.9)
    assert expected_null_cca(1001, 100, 300) > v
    with pytest.raises(UserError):
        expected_null_cca(100, 60, 60)


@pytest.mark.parametrize("func,kw", [(cca, {}), (svcca, {"variance": 1.0}), (pwcca, {})])
def test_ccas_refuse_n_le_d(func, kw):
    g = rng(18)
    x, y = g.standard_normal((30, 40)), g.standard_normal((30, 5))
    with pytest.raises(UserError, match="degenerate"):
        func(x, y, **kw)
    # rank X = 29 = n - 1: every correlation is trivially 1
    assert func(x, y, allow_degenerate=True, **kw) == pytest.approx(1.0, abs=1e-10)


def test_cca_refuses_ranks_summing_to_n_even_when_n_exceeds_each_d():
    g = rng(19)
    x, y = g.standard_normal((100, 60)), g.standard_normal((100, 60))
    with pytest.raises(UserError, match=r"at least 21 canonical"):
        cca(x, y, where="run b.h5")
    rho = canonical_correlations(x, y, allow_degenerate=True)
    assert np.sum(rho > 1 - 1e-9) == 21
    # ridge > 0 is not trivial, so it is allowed
    assert cca(x, y, ridge=0.1) < 0.99


def test_svcca_guard_uses_kept_dimensions():
    g = rng(20)
    z = g.standard_normal((100, 4))
    x = z @ g.standard_normal((4, 150)) + 1e-6 * g.standard_normal((100, 150))
    y = z @ g.standard_normal((4, 120)) + 1e-6 * g.standard_normal((100, 120))
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-6)     # 4 kept dims each: not degenerate
    with pytest.raises(UserError, match="degenerate"):
        svcca(x, y, variance=1.0)
    with pytest.raises(UserError, match="degenerate"):
        svcca(x, y, dims=60)


def test_cca_nan_and_where():
    x, y = related(n=50, dx=3, dy=3)
    y[7, 2] = np.nan
    with pytest.raises(UserError, match=r"Y contains NaN.*\(run a.h5, layer h3, step 200\)"):
        cca(x, y, where="run a.h5, layer h3, step 200")


def test_cca_drops_constant_features_with_a_warning():
    x, y = related(n=200, dx=5, dy=4, seed=21)
    xk = np.hstack([x[:, :2], np.full((200, 1), 3.3), x[:, 2:]])
    with pytest.warns(RepanalysisWarning, match="1 of 6 features of X"):
        r = canonical_correlations(xk, y)
    assert np.allclose(r, canonical_correlations(x, y), atol=1e-12)
    with pytest.raises(UserError, match="every feature of Y is constant"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RepanalysisWarning)
            cca(x, np.ones((200, 3)))


def test_cca_rank_deficiency_is_revealed():
    x, y = related(n=200, dx=5, dy=6, seed=22)
    xd = np.hstack([x, x[:, :2] @ np.array([[1.0, 2.0], [-1.0, 0.5]])])   # rank 5 of 7
    r = canonical_correlations(xd, y)
    assert r.shape == (5,)
    assert np.allclose(r, canonical_correlations(x, y), atol=1e-10)


def test_cca_ridge_definition():
    x, y = related(n=300, dx=8, dy=6, seed=23)
    r0 = canonical_correlations(x, y)
    r1 = canonical_correlations(x, y, ridge=0.5)
    r1q = canonical_correlations(x, y, ridge=0.5, method="qr")
    assert np.allclose(r1, r1q, atol=1e-12)
    assert np.all(r1 < r0)
    assert np.allclose(canonical_correlations(1e3 * x, y, ridge=0.5), r1, atol=1e-12)
    # direct: singular values of (Sxx + εI)^{-1/2} Sxy (Syy + εI)^{-1/2}, ε = r tr(S)/d
    xc, yc = x - x.mean(0), y - y.mean(0)

    def isqrt(s, eps):
        w, v = np.linalg.eigh(s + eps * np.eye(len(s)))
        return v @ np.diag(w ** -0.5) @ v.T

    sxx, syy = xc.T @ xc, yc.T @ yc
    m = isqrt(sxx, 0.5 * np.trace(sxx) / 8) @ xc.T @ yc @ isqrt(syy, 0.5 * np.trace(syy) / 6)
    assert np.allclose(r1, np.linalg.svd(m, compute_uv=False), atol=1e-12)


def test_svcca_truncation_rule():
    g = rng(24)
    n = 400
    x = g.standard_normal((n, 10)) * np.array([10, 8, 6, 4, 2, 1, .1, .1, .1, .1])
    y = x[:, :6] @ g.standard_normal((6, 7)) + 0.5 * g.standard_normal((n, 7))
    # fixed dims: CCA between the top-k principal components, computed independently
    for k in (3, 5):
        u, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        uy, sy, _ = np.linalg.svd(y - y.mean(0), full_matrices=False)
        ref = np.linalg.svd(u[:, :k].T @ uy[:, :k], compute_uv=False).mean()
        assert svcca(x, y, dims=k) == pytest.approx(ref, rel=1e-10)
        assert svcca(x, y, dims=k, method="qr") == pytest.approx(ref, rel=1e-10)
    # variance rule: fewest directions holding >= 99% of Σσ²
    s2 = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    kx = int(np.argmax(np.cumsum(s2) / s2.sum() >= 0.99)) + 1
    s2y = np.linalg.svd(y - y.mean(0), compute_uv=False) ** 2
    ky = int(np.argmax(np.cumsum(s2y) / s2y.sum() >= 0.99)) + 1
    assert svcca(x, y) == pytest.approx(svcca(x, y, dims=(kx, ky)), rel=1e-12)
    # keeping everything is plain CCA
    assert svcca(x, y, variance=1.0) == pytest.approx(cca(x, y), rel=1e-10)
    # ... even with directions too small for the eigen route (it then defers to QR + SVD)
    x2 = x * np.array([1] * 9 + [1e-7])
    assert svcca(x2, y, variance=1.0) == pytest.approx(svcca(x2, y, variance=1.0, method="qr"),
                                                       rel=1e-10)


def _pwcca_direct(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, _ = np.linalg.qr(xc)
    qy, _ = np.linalg.qr(yc)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u                        # canonical variates of X, unit norm, in sample space
    alpha = np.abs(h.T @ x).sum(axis=1)
    return float(alpha @ rho / alpha.sum())


def test_pwcca_against_a_direct_implementation():
    x, y = related(n=300, dx=7, dy=5, seed=25)
    ref = _pwcca_direct(x, y)
    assert pwcca(x, y) == pytest.approx(ref, rel=1e-10)
    assert pwcca(x, y, method="qr") == pytest.approx(ref, rel=1e-10)
    assert pwcca(y, x, weights="y") == pytest.approx(ref, rel=1e-10)
    assert pwcca(x, y, weights="smaller") == pytest.approx(pwcca(x, y, weights="y"), rel=1e-12)
    assert pwcca(x, x) == pytest.approx(1.0, abs=1e-12)
    assert pwcca(x, y) != pytest.approx(pwcca(y, x), rel=1e-6)   # not symmetric


# --------------------------------------------------------------------------
# Procrustes
# --------------------------------------------------------------------------

def test_procrustes_of_scaled_rotated_shifted_copy_is_one():
    x = rng(26).standard_normal((100, 7))
    y = 4.0 * x @ orthogonal(7, 27) + 9.0
    assert procrustes(x, y) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_distance(x, y) == pytest.approx(0.0, abs=1e-6)


def test_procrustes_definition_and_routes():
    g = rng(28)
    for n, dx, dy in ((200, 6, 4), (15, 40, 30)):
        x, y = g.standard_normal((n, dx)), g.standard_normal((n, dy))
        xc, yc = x - x.mean(0), y - y.mean(0)
        ref = np.linalg.norm(xc.T @ yc, "nuc") / (np.linalg.norm(xc) * np.linalg.norm(yc))
        assert procrustes(x, y) == pytest.approx(ref, rel=1e-12)
        assert procrustes(x, y) == pytest.approx(procrustes(y, x), rel=1e-12)
        assert procrustes_distance(x, y) == pytest.approx(math.acos(ref), rel=1e-10)
    # min over Q of ||X̂Q - Ŷ||² = 2 - 2 procrustes (equal widths: Q orthogonal)
    x, y = g.standard_normal((50, 5)), g.standard_normal((50, 5))
    xh, yh = x - x.mean(0), y - y.mean(0)
    xh, yh = xh / np.linalg.norm(xh), yh / np.linalg.norm(yh)
    u, _, vt = np.linalg.svd(xh.T @ yh)
    assert np.linalg.norm(xh @ u @ vt - yh) ** 2 == pytest.approx(2 - 2 * procrustes(x, y), rel=1e-10)
    with pytest.raises(UserError, match="zero variance"):
        procrustes(x, np.zeros((50, 2)))


# --------------------------------------------------------------------------
# Input types
# --------------------------------------------------------------------------

def test_torch_and_float32_inputs():
    torch = pytest.importorskip("torch")
    x, y = related(n=200, dx=6, dy=5, seed=29)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    tx, ty = torch.from_numpy(x32), torch.from_numpy(y32)
    for f in (linear_cka, cca, svcca, pwcca, procrustes):
        assert f(tx, ty) == pytest.approx(f(x64, y64), rel=1e-12)
        assert f(x32, y32) == pytest.approx(f(x64, y64), rel=1e-12)
    assert linear_cka(tx.to(torch.bfloat16), ty.to(torch.bfloat16)) == pytest.approx(
        linear_cka(x, y), abs=0.02)


# --------------------------------------------------------------------------
# Reference implementations (benchmark/test-only extras; skipped when absent)
# --------------------------------------------------------------------------

def test_against_repsim():
    repsim = pytest.importorskip("repsim")
    x, y = related(n=300, dx=8, dy=6, seed=30)
    assert repsim.cca([x, y], "pillai")[0, 1] == pytest.approx(cca(x, y), rel=1e-10)
    assert repsim.cca([x, y], "yanai")[0, 1] == pytest.approx(cca(x, y, squared=True), rel=1e-10)
    assert repsim.cka([x, y], "linear")[0, 1] == pytest.approx(linear_cka(x, y), rel=1e-10)
    # repsim's RBF bandwidth is the median distance over i < j: our sigma = 1
    assert repsim.cka([x, y], "rbf")[0, 1] == pytest.approx(rbf_cka(x, y, sigma=1.0), rel=1e-10)
    # repsim symmetrises PWCCA (mean of both weightings)
    both = 0.5 * (pwcca(x, y) + pwcca(y, x))
    assert repsim.pwcca([x, y])[0, 1] == pytest.approx(both, rel=1e-10)
    # repsim's SVCCA is not compared: it applies the 99% rule to an orthonormal basis of
    # the *uncentred* data (already whitened), not to the data's own spectrum.


def test_against_ckatorch():
    pytest.importorskip("ckatorch")
    import torch
    from ckatorch import cka_base

    x, y = related(n=200, dx=8, dy=6, seed=31)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert float(cka_base(tx, ty)) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert float(cka_base(tx, ty, unbiased=True)) == pytest.approx(
        linear_cka(x, y, debiased=True), rel=1e-10)
    # ckatorch's RBF bandwidth: threshold * sqrt(lower median of all n² squared distances)
    d2x = ((x[:, None] - x[None]) ** 2).sum(-1).ravel()
    d2y = ((y[:, None] - y[None]) ** 2).sum(-1).ravel()
    bx = 0.8 * math.sqrt(float(torch.median(torch.from_numpy(d2x))))
    by = 0.8 * math.sqrt(float(torch.median(torch.from_numpy(d2y))))
    assert float(cka_base(tx, ty, kernel="rbf", threshold=0.8)) == pytest.approx(
        rbf_cka(x, y, bandwidth=(bx, by)), rel=1e-8)


def test_against_cca_zoo():
    pytest.importorskip("cca_zoo")
    from cca_zoo.linear import CCA

    x, y = related(n=300, dx=6, dy=4, seed=32)
    z1, z2 = CCA(n_components=4).fit_transform([x, y])
    ref = np.array([abs(np.corrcoef(z1[:, i], z2[:, i])[0, 1]) for i in range(4)])
    assert np.allclose(np.sort(ref)[::-1], canonical_correlations(x, y), atol=1e-8)


def test_chunked_centring_gives_the_same_values(monkeypatch):
    # in-memory measures centre the data in float64 blocks of rows; force many small blocks
    from repanalysis.measures import _arrays, singular_values

    x, y = related(n=300, dx=7, dy=5, seed=33)
    xk = np.hstack([x, np.full((300, 1), 2.0)])
    funcs = [lambda: linear_cka(x, y), lambda: linear_cka(x, y, debiased=True),
             lambda: canonical_correlations(xk, y), lambda: svcca(x, y), lambda: pwcca(x, y),
             lambda: procrustes(x, y), lambda: singular_values(xk)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RepanalysisWarning)
        whole = [f() for f in funcs]
        monkeypatch.setattr(_arrays, "CHUNK_BYTES", 8 * 13 * 16)
        assert _arrays.prepare(x).chunk_rows(13) == 16
        chunked = [f() for f in funcs]
    for a, b in zip(whole, chunked):
        assert np.allclose(a, b, rtol=1e-12, atol=0)


def test_linear_cka_from_grams_made_once_is_linear_ckas_gram_route_bit_for_bit():
    """The across-layer CKA of ``analyze`` makes each layer's centred Gram once: the values, and the
    small-n inflation warning, are those of ``linear_cka`` pair by pair."""
    from repanalysis.measures.similarity import centred_linear_gram, linear_cka_from_grams

    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((40, 30)) @ rng.standard_normal((30, 30)) * 10.0 ** k for k in range(-2, 2)]
    grams = [centred_linear_gram(x) for x in layers]
    for i, j in itertools.combinations(range(len(layers)), 2):
        with warnings.catch_warnings(record=True) as direct:
            warnings.simplefilter("always")
            want = linear_cka(layers[i], layers[j], method="gram")
        with warnings.catch_warnings(record=True) as cached:
            warnings.simplefilter("always")
            got = linear_cka_from_grams(grams[i], grams[j])
        assert got == want
        assert [str(w.message) for w in cached] == [str(w.message) for w in direct] != []
    before = [g.copy() for g in grams]
    linear_cka_from_grams(grams[0], grams[1])
    assert all(np.array_equal(a, b) for a, b in zip(grams, before))  # not consumed
