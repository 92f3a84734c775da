"""Similarity of two sets of activations: CCA, SVCCA, PWCCA, CKA, Procrustes.

Conventions shared by every function here:

* ``X`` is ``[n, dx]`` and ``Y`` is ``[n, dy]``: the same ``n`` samples (rows)
  seen by two layers or networks; numpy arrays or torch tensors of any real
  dtype. Everything is computed in float64; results are Python floats or
  float64 numpy arrays. Inputs are never modified.
* Columns are centred (the mean over samples is subtracted) inside every
  measure; nothing else is rescaled unless stated.
* Results are *similarities*: larger means more alike; ``procrustes_distance``
  is the only distance.
* Degenerate inputs raise :class:`~repanalysis.errors.UserError` (NaN/Inf,
  too few samples, trivially perfect CCA, zero variance) or warn with
  :class:`RepanalysisWarning` (biased CKA inflated by few samples, constant
  features dropped from CCA). Every function takes ``where=`` (e.g.
  ``"run a.h5, layer h3, step 200"``), appended to those messages.

Routes. Measures that are functions of the second moments are computed from
``XcᵀXc``, ``YcᵀYc``, ``XcᵀYc`` when ``n`` exceeds the widths (``d×d``
products, the cheapest exact form; the float64 centred data are formed one
block of ~64 MiB of rows at a time, never as a whole copy), else from ``n×n``
Gram matrices. CCA and
its variants additionally need *accuracy*: the moment (Gram) route has
rounding errors of order ``eps·κx·κy`` (κ the condition number of the centred
data), so it is taken only when the 2-norm condition numbers (exact for
narrow inputs, Lanczos estimates otherwise) keep ``κx·κy <= 1e6``, an error
below about 2e-10; otherwise a rank-revealing Householder QR + SVD of each
side is used (errors of order ``eps·κ``), which gives ρ = 1 to rounding for
``Y = XA + b`` even when ``cond(X) = 1e8``. ``method="qr"`` or ``"gram"``
forces a route.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import scipy.linalg as sla

from repanalysis.errors import UserError
from repanalysis.measures import _linalg as la
from repanalysis.measures._arrays import Prepared, as_array, at, check_same_samples, prepare, unit_scale, warn
from repanalysis.runtime.memory import check_fits

__all__ = [
    "canonical_correlations",
    "cca",
    "svcca",
    "pwcca",
    "expected_null_cca",
    "linear_cka",
    "rbf_cka",
    "MinibatchCKA",
    "minibatch_cka",
    "procrustes",
    "procrustes_distance",
]

_METHODS = ("auto", "gram", "qr")


def _check_method(method: str, allowed=_METHODS) -> None:
    if method not in allowed:
        raise UserError(f"method must be one of {', '.join(allowed)}; got {method!r}")


def _prepare_pair(X, Y, where, *, min_samples=2, rescale=True) -> tuple[Prepared, Prepared]:
    """Both inputs validated; ``rescale`` (for scale-invariant measures): each through ``unit_scale``."""
    if rescale:
        X, Y = unit_scale(as_array(X, "X", where)), unit_scale(as_array(Y, "Y", where))
    px = prepare(X, "X", where, min_samples=min_samples)
    py = prepare(Y, "Y", where, min_samples=min_samples)
    check_same_samples(px.raw, py.raw, where)
    return px, py


# ==========================================================================
# CCA family
# ==========================================================================

def _drop_constant(px: Prepared, py: Prepared, what: str, where: str | None, *,
                   sxx: np.ndarray | None = None, syy: np.ndarray | None = None,
                   warn_drop: bool = True) -> None:
    """Find constant features (from Gram diagonals when given), drop them, warn."""
    px.find_constant(None if sxx is None else np.diag(sxx).copy())
    py.find_constant(None if syy is None else np.diag(syy).copy())
    parts = [f"{p.n_constant} of {p.d} features of {name}"
             for p, name in ((px, "X"), (py, "Y")) if p.n_constant]
    for p, name in ((px, "X"), (py, "Y")):
        if p.n_constant == p.d:
            raise UserError(f"{what}: every feature of {name} is constant{at(where)}")
    if parts and warn_drop:
        warn(f"{what}: dropped constant (zero-variance) features: {' and '.join(parts)}", where)
    px.drop(px.constant)
    py.drop(py.constant)


def _kept(s: np.ndarray, kx: np.ndarray | None, ky: np.ndarray | None) -> np.ndarray:
    if kx is None and ky is None:
        return s
    rows = kx if kx is not None else slice(None)
    cols = ky if ky is not None else slice(None)
    return s[rows][:, cols]


def _moments_dropped(px: Prepared, py: Prepared, what: str, where: str | None,
                     warn_drop: bool = True):
    """Centred products of the non-constant features (constant ones dropped, with a warning)."""
    p = la.centred_products(px, py, xx=True, yy=True, xy=True)
    _drop_constant(px, py, what, where, sxx=p.xx, syy=p.yy, warn_drop=warn_drop)
    kx, ky = px.keep, py.keep
    return _kept(p.xx, kx, kx), _kept(p.yy, ky, ky), _kept(p.xy, kx, ky)


def _cca_result(X, Y, *, ridge: float, allow_degenerate: bool, method: str, rtol: float | None,
                where: str | None, what: str, vectors: str | None = None) -> la.CCAResult:
    _check_method(method)
    if ridge < 0 or not math.isfinite(ridge):
        raise UserError(f"ridge must be a finite number >= 0; got {ridge}")
    px, py = _prepare_pair(X, Y, where)
    n = px.n
    res = None
    if method != "qr" and n > px.d and n > py.d:
        sxx, syy, sxy = _moments_dropped(px, py, what, where)
        if vectors == "smaller":
            vectors = "x" if px.d_kept <= py.d_kept else "y"
        res = la.cca_gram_cholesky(sxx, syy, sxy, ridge=ridge, vectors=vectors)
        if res is None and method == "gram":
            res = la.cca_gram_eigh(sxx, syy, sxy, ridge=ridge, rtol=rtol, vectors=vectors)
    else:
        _drop_constant(px, py, what, where)
        if vectors == "smaller":
            vectors = "x" if px.d_kept <= py.d_kept else "y"
    if res is None:
        bx = la.svd_basis(px.xc, rtol=rtol)
        by = la.svd_basis(py.xc, rtol=rtol)
        if bx.rank == 0 or by.rank == 0:
            raise UserError(f"{what}: {'X' if bx.rank == 0 else 'Y'} has zero variance{at(where)}")
        res = la.cca_svd(bx, by, ridge=ridge, dx=px.d_kept, dy=py.d_kept, vectors=vectors)
    if ridge == 0 and not allow_degenerate:
        la.degenerate_guard(res.rank_x, res.rank_y, n, what, where)
    return res


def canonical_correlations(X, Y, *, ridge: float = 0.0, allow_degenerate: bool = False,
                           method: str = "auto", rtol: float | None = None,
                           where: str | None = None) -> np.ndarray:
    """All canonical correlations of ``X`` and ``Y``, descending, in ``[0, 1]``.

    Convention: columns centred; ``ρ_i`` are the cosines of the principal
    angles between the column spaces of ``Xc`` and ``Yc`` (Hotelling 1936;
    computed as in Björck & Golub 1973: orthonormal bases by QR/SVD, then the
    singular values of ``QxᵀQy``). Length ``min(rank Xc, rank Yc)``.

    Rank: constant (zero-variance) columns are dropped first, with a
    :class:`RepanalysisWarning`; the remaining rank deficiency is handled by a
    rank-revealing thin SVD (Householder QR, then SVD of ``R``) that drops
    singular values ``<= rtol·s_max``, default ``rtol = max(n, d)·eps``
    (``numpy.linalg.matrix_rank``'s convention). For well-conditioned data the
    faster moment route (Cholesky whitening of ``XcᵀXc``) is used instead; it
    is taken only when the 2-norm condition numbers give ``κ(Xc)·κ(Yc) <= 1e6``
    (error ``≲ 2e-10``; :func:`._linalg.cond2_upper`); ``method="qr"`` forces the QR route, ``method="gram"`` the
    moment route (when Cholesky is unsafe: eigen-whitening that drops
    directions with ``σ <= rtol·σmax``, default ``rtol = 1e-4`` there, accuracy
    ``eps·κx·κy``, as in :mod:`.streaming`).

    Ridge: ``ridge = r >= 0`` replaces ``XcᵀXc`` by ``XcᵀXc + εx I`` with
    ``εx = r·tr(XcᵀXc)/dx`` (``r`` times the mean feature variance, so the
    result does not depend on the scale of X), likewise for Y; then ρ are the
    singular values of ``(XcᵀXc + εx I)^{-1/2} XcᵀYc (YcᵀYc + εy I)^{-1/2}``
    (canonical ridge, Vinod 1976). ``r = 0`` is plain CCA.

    Guard: without ridge, if ``rank X + rank Y >= n`` at least
    ``rank X + rank Y - (n - 1)`` correlations are exactly 1 for *any* data
    (two subspaces of the ``(n-1)``-dimensional space of centred vectors must
    intersect); this raises :class:`UserError` unless ``allow_degenerate``.
    It includes ``n <= d``. Below that threshold CCA is still biased upwards
    for finite ``n``: see :func:`expected_null_cca`.
    """
    res = _cca_result(X, Y, ridge=ridge, allow_degenerate=allow_degenerate, method=method,
                      rtol=rtol, where=where, what="CCA")
    return res.rho


def cca(X, Y, *, squared: bool = False, ridge: float = 0.0, allow_degenerate: bool = False,
        method: str = "auto", where: str | None = None) -> float:
    """Mean canonical correlation ``mean_i ρ_i`` (or ``mean_i ρ_i²`` with ``squared=True``).

    The mean is over all ``min(rank X, rank Y)`` correlations of
    :func:`canonical_correlations` (same centring, rank rule, ridge and
    guard). ``squared=True`` is Yanai's GCD-type measure / Pillai's trace
    divided by the number of correlations (Kornblith et al. 2019's ``R²_CCA``);
    the default is the ``ρ̄`` of Raghu et al. 2017.
    """
    rho = canonical_correlations(X, Y, ridge=ridge, allow_degenerate=allow_degenerate,
                                 method=method, where=where)
    return float(np.mean(rho ** 2 if squared else rho))


def svcca(X, Y, *, variance: float = 0.99, dims: int | tuple[int, int] | None = None,
          allow_degenerate: bool = False, method: str = "auto", where: str | None = None) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of the top singular directions.

    Step 1 (SV): for each side separately, the thin SVD of the *centred* data
    ``Xc = U S Vᵀ``; keep the fewest leading directions whose ``s_i²`` hold at
    least ``variance`` of ``Σ s_i²`` (default 0.99, as in the paper), or
    exactly the first ``dims`` directions (an int for both sides or a pair
    ``(kx, ky)``; then ``variance`` is ignored). Step 2 (CCA): canonical
    correlations between ``Ux[:, :kx]`` and ``Uy[:, :ky]`` (their span is the
    kept subspace; CCA is invariant to the scaling by ``S``).
    Result: ``mean ρ`` over ``min(kx, ky)`` correlations (divide by the kept
    dimensions, not by the original widths).

    Constant features hold no variance and are never kept (no warning).
    Guard: the degenerate case is decided on the *kept* dimensions:
    ``kx + ky >= n`` raises :class:`UserError` unless ``allow_degenerate``
    (truncation is the usual cure for ``n <= d``).
    Route: eigen-decomposition of ``XcᵀXc`` when the kept directions are
    well conditioned (``sqrt(λ1/λk)`` products ``<= 1e6``) and none was
    lost to rounding, else QR + SVD (see :func:`canonical_correlations`).
    """
    _check_method(method)
    variance, dx_keep, dy_keep = la.svcca_kept(variance, dims)
    px, py = _prepare_pair(X, Y, where)
    n = px.n
    res = None
    if method != "qr" and n > px.d and n > py.d:
        sxx, syy, sxy = _moments_dropped(px, py, "SVCCA", where, warn_drop=False)
        res = la.cca_gram_eigh(sxx, syy, sxy, variance=variance, dims=(dx_keep, dy_keep))
        if method == "auto" and res.rank_x and res.rank_y:
            kx = res.lam_x[0] / res.lam_x[-1]
            ky = res.lam_y[0] / res.lam_y[-1]
            if math.sqrt(kx * ky) > la.FAST_COND_PRODUCT or res.cut:
                res = None
    else:
        _drop_constant(px, py, "SVCCA", where, warn_drop=False)
    if res is None:
        bx = la.truncate_basis(la.svd_basis(px.xc), variance=variance, dims=dx_keep)
        by = la.truncate_basis(la.svd_basis(py.xc), variance=variance, dims=dy_keep)
        res = la.cca_svd(bx, by, dx=px.d_kept, dy=py.d_kept)
    la.check_svcca(res, dx_keep, dy_keep, n, allow_degenerate, where)
    return float(np.mean(res.rho))


def pwcca(X, Y, *, weights: str = "x", allow_degenerate: bool = False, method: str = "auto",
          where: str | None = None) -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018).

    ``PWCCA = Σ_i α_i ρ_i / Σ_i α_i`` over the ``r = min(rank X, rank Y)``
    canonical correlations ``ρ_i`` of :func:`canonical_correlations` (same
    centring, rank rule and guard), with weights
    ``α_i = Σ_j |<h_i, x_j>|``: ``h_i`` the i-th canonical variate of X in
    sample space (unit norm, centred: ``h_i = Xc a_i``) and ``x_j`` the j-th
    centred feature (column) of X. That is the paper's definition, with the
    weights taken from the *first* argument (``weights="x"``, the default).
    ``weights="y"`` takes them from Y; ``weights="smaller"`` from the side
    with fewer (non-constant) features, X on ties, as the authors' reference
    code does. The result is therefore not symmetric in X and Y.
    Differences from the reference code: no epsilon regularisation; features
    are centred before projecting (the projections are the same either way,
    as ``h_i`` is centred); constant features are dropped (their weight is 0).
    """
    if weights not in ("x", "y", "smaller"):
        raise UserError(f"weights must be 'x', 'y' or 'smaller'; got {weights!r}")
    res = _cca_result(X, Y, ridge=0.0, allow_degenerate=allow_degenerate, method=method,
                      rtol=None, where=where, what="PWCCA", vectors=weights)
    w = res.wx if res.wx is not None else res.wy
    alpha = np.abs(w).sum(axis=1)
    total = alpha.sum()
    if not total > 0:
        raise UserError(f"PWCCA: projection weights are all zero{at(where)}")
    return float(alpha @ res.rho / total)


def expected_null_cca(n: int, dx: int, dy: int, *, squared: bool = False) -> float:
    """Expected :func:`cca` of *independent* Gaussian X ``[n, dx]`` and Y ``[n, dy]``.

    The bias floor of mean CCA: what two unrelated layers score. With
    ``N = n - 1`` (centring removes one dimension), ``p = min(dx, dy)``,
    ``q = max(dx, dy)``:

    * ``squared=True``: exactly ``q / N`` for every ``n`` (the bases are
      uniformly random subspaces, so ``E Σρ² = E tr(Px Py) = p q / N``).
    * ``squared=False``: the large-n limit (Wachter 1980), ``∫ sqrt(x) f(x) dx``
      with the density of ρ² ``f(x) = sqrt((x-a)(b-x)) / (2π y1 x (1-x))`` on
      ``[a, b]``, ``a, b = (sqrt(y1(1-y2)) ∓ sqrt(y2(1-y1)))²``,
      ``y1 = p/N``, ``y2 = q/N``. Finite-``p`` corrections are ``O(1/p)``
      (about -0.001 at ``p = 100``, ``y = 0.05``).

    Needs ``p + q < N`` (else :func:`cca` is degenerate).
    """
    N = n - 1
    p, q = min(dx, dy), max(dx, dy)
    if p < 1 or p + q >= N:
        raise UserError(f"expected_null_cca needs 1 <= dx, dy and dx + dy < n - 1; got n={n}, "
                        f"dx={dx}, dy={dy}")
    if squared:
        return q / N
    from scipy.integrate import quad

    y1, y2 = p / N, q / N
    s1, s2 = math.sqrt(y1 * (1 - y2)), math.sqrt(y2 * (1 - y1))
    a, b = (s1 - s2) ** 2, (s1 + s2) ** 2

    def dens(x):
        return math.sqrt(max((x - a) * (b - x), 0.0)) / (2 * math.pi * y1 * x * (1 - x))

    val, _ = quad(lambda x: math.sqrt(x) * dens(x), a, b, limit=200)
    return float(val)


# ==========================================================================
# CKA
# ==========================================================================

def linear_cka(X, Y, *, debiased: bool = False, method: str = "auto",
               where: str | None = None) -> float:
    """Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019).

    Biased (default): ``||XcᵀYc||²_F / (||XcᵀXc||_F ||YcᵀYc||_F)`` on
    column-centred data, which equals ``<HKH, HLH>_F / (||HKH||_F ||HLH||_F)``
    with ``K = XXᵀ``, ``L = YYᵀ``, ``H = I - 11ᵀ/n`` (HSIC_0 of Gretton et
    al. 2005; the ``1/(n-1)²`` factors cancel). In ``[0, 1]``.

    Debiased (``debiased=True``): ``HSIC_1(K,L) / sqrt(HSIC_1(K,K) HSIC_1(L,L))``
    with the unbiased HSIC estimator of Song et al. 2012, as Kornblith et al.
    use it (needs ``n >= 4``; can be slightly negative for unrelated data).
    In feature space it is computed exactly, without ``n×n`` matrices, as
    ``HSIC_1 = [||XcᵀYc||² - n/(n-2) rᵀq + ||Xc||²_F ||Yc||²_F / ((n-1)(n-2))] / (n(n-3))``
    with ``r_i = ||xc_i||²``, ``q_i = ||yc_i||²`` (derivation in
    :func:`repanalysis.measures._linalg.hsic_unbiased_from_stats`).

    Route: ``method="auto"`` uses the feature-space form when
    ``dx + dy < n`` (``d×d`` products, cost ``n(dx+dy)²``) and the Gram form
    otherwise (``n×n`` matrices, cost ``n²(dx+dy)``): the same value, the
    cheaper way. ``"feature"`` or ``"gram"`` forces one.

    Guards: zero variance or (debiased) a non-positive self-HSIC raise
    :class:`UserError`. Biased CKA is inflated when ``n`` is not large against
    the effective dimensionality: independent data score about
    ``sqrt(px py / ((n+px)(n+py)))`` with ``p = (Σλ)²/Σλ²`` the participation
    ratio of each covariance (``d/(n+d)`` for isotropic ``d``-dim data), and
    a :class:`RepanalysisWarning` pointing to ``debiased=True`` is emitted
    when that chance level exceeds 0.1 (for isotropic data: ``n < 9d``).
    """
    _check_method(method, ("auto", "feature", "gram"))
    px, py = _prepare_pair(X, Y, where, min_samples=4 if debiased else 2)
    if method == "auto":
        method = "feature" if px.d + py.d < px.n else "gram"
    if method == "feature":
        p = la.centred_products(px, py, xx=True, yy=True, xy=True, row_norms=debiased)
        return la.cka_value(la.stats_from_products(p, debiased=debiased), debiased, where, "linear")
    xc, yc = px.xc, py.xc
    return _cka_from_kernels(xc @ xc.T, yc @ yc.T, debiased, where, "linear")


def centred_linear_gram(X, *, where: str | None = None) -> np.ndarray:
    """``HKH``, the double-centred linear Gram matrix ``[n, n]`` of ``X``, as :func:`linear_cka`'s Gram route
    makes it: to compare many arrays of the same samples pairwise, each made once
    (:func:`linear_cka_from_grams`)."""
    px = prepare(unit_scale(as_array(X, "X", where)), "X", where)
    xc = px.xc
    k = xc @ xc.T
    return la.double_centre(k, out=k)


def linear_cka_from_grams(k: np.ndarray, l: np.ndarray, *, where: str | None = None) -> float:
    """Biased linear CKA from two :func:`centred_linear_gram` matrices (not changed): the value
    :func:`linear_cka` gives by its Gram route, bit for bit, with its warnings."""
    return la.cka_value(la.stats_from_grams(k, l, debiased=False), False, where, "linear")


def _cka_from_kernels(k: np.ndarray, l: np.ndarray, debiased: bool, where: str | None,
                      kind: str) -> float:
    """CKA from kernel matrices (consumed: centred in place).

    Both estimators are unchanged by ``K -> K + f(x_i) + f(x_j) + c`` (HSIC_0
    through ``H``; HSIC_1 because it is a U-statistic whose kernel cancels such
    terms), so the kernels are double-centred first: that avoids the
    cancellation Song et al.'s formula suffers on raw, nearly constant kernels
    (wide RBF bandwidths), and makes ``K1 = 0``, where the formula reduces to
    :func:`._linalg.hsic_unbiased_from_stats`.
    """
    kc = la.double_centre(k, out=k)
    lc = la.double_centre(l, out=l)
    st = la.stats_from_grams(kc, lc, debiased=debiased)
    return la.cka_value(st, debiased, where, kind)


def rbf_gram(xc: np.ndarray, sigma: float, where: str | None = None, name: str = "X",
             bandwidth: float | None = None) -> np.ndarray:
    """RBF kernel matrix ``exp(-||x_i - x_j||² / (2 b²))``.

    ``b = bandwidth`` when given, else ``sigma · m`` with ``m`` the median of
    the Euclidean distances over distinct pairs ``i < j``.
    """
    k = xc @ xc.T
    r = np.diag(k).copy()
    for a in range(0, k.shape[0], 1024):              # squared distances, exactly symmetric
        blk = k[a:a + 1024]
        blk *= 2.0
        np.subtract(r[a:a + 1024, None] + r[None, :], blk, out=blk)
    np.maximum(k, 0.0, out=k)
    np.fill_diagonal(k, 0.0)
    if bandwidth is None:
        iu = np.triu_indices(k.shape[0], 1)
        med = float(np.sqrt(np.median(k[iu])))
        del iu
        if not med > 0:
            raise UserError(f"rbf CKA: the median distance between samples of {name} is 0 "
                            f"(more than half the pairs coincide){at(where)}")
        bandwidth = sigma * med
    k *= -1.0 / (2.0 * bandwidth * bandwidth)
    np.exp(k, out=k)
    return k


def rbf_cka(X, Y, *, sigma: float = 0.8, debiased: bool = False,
            bandwidth: float | tuple[float, float] | None = None, where: str | None = None) -> float:
    """CKA with Gaussian (RBF) kernels (Kornblith et al. 2019).

    ``K_ij = exp(-||x_i - x_j||² / (2 b²))`` with bandwidth ``b = sigma · m``,
    ``m`` the median Euclidean distance between distinct samples (pairs
    ``i < j``), computed separately for X and Y; ``sigma = 0.8`` is one of
    the paper's settings. ``bandwidth`` (one value, or a pair for X and Y)
    sets ``b`` directly instead. Then ``<HKH, HLH> / (||HKH|| ||HLH||)``
    (biased) or the Song et al. 2012 unbiased HSIC ratio (``debiased=True``),
    as :func:`linear_cka`.
    Differences: Kornblith et al.'s code takes the median of the *squared*
    distances over the full ``n×n`` matrix (diagonal zeros included), i.e. a
    slightly smaller ``m``.
    Cost: ``O(n² d)`` time and a few ``n×n`` float64 matrices of memory.
    The small-n warning of :func:`linear_cka` applies, with the participation
    ratio of the centred kernel matrix's spectrum.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise UserError(f"sigma must be > 0; got {sigma}")
    bx = by = None
    if bandwidth is not None:
        bx, by = (bandwidth, bandwidth) if np.isscalar(bandwidth) else tuple(bandwidth)
        if not (bx > 0 and by > 0):
            raise UserError(f"bandwidth must be > 0; got {bandwidth}")
    check_fits(4 * 8 * len(X) ** 2, f"rbf CKA of {len(X)} samples (four {len(X)}×{len(X)} float64 matrices)",
               "use minibatch_cka (batches of the samples) or linear_cka (exact and streaming, from moments)")
    px, py = _prepare_pair(X, Y, where, min_samples=4 if debiased else 2, rescale=bandwidth is None)
    k = rbf_gram(px.xc, sigma, where, "X", bx)
    l = rbf_gram(py.xc, sigma, where, "Y", by)
    return _cka_from_kernels(k, l, debiased, where, "rbf")


class MinibatchCKA:
    """Minibatch linear CKA from per-batch unbiased HSIC (Nguyen, Raghu & Kornblith 2021).

    ``CKA_mb = Σ_b HSIC_1(K_b, L_b) / sqrt(Σ_b HSIC_1(K_b, K_b) Σ_b HSIC_1(L_b, L_b))``
    over batches ``b``: each batch's (uncentred) linear kernels enter Song et
    al.'s unbiased estimator, computed here in feature space or with Gram
    matrices, whichever is cheaper (same value). Because ``HSIC_1`` is
    unbiased, the expectation of each sum does not depend on the batch size
    (and averaging over *all* batches of size ``m`` from a fixed set gives
    exactly that set's debiased CKA), unlike biased per-batch CKA.

    Usage::

        acc = MinibatchCKA()
        for xb, yb in batches:
            acc.update(xb, yb)
        value = acc.value

    Each batch needs ``>= 4`` samples; batches may differ in size.
    """

    def __init__(self, *, where: str | None = None):
        self.where = where
        self.n_batches = 0
        self.n_samples = 0
        self._xy = 0.0
        self._xx = 0.0
        self._yy = 0.0

    def update(self, X, Y) -> "MinibatchCKA":
        """Add one batch (``[m, dx]`` and ``[m, dy]``, ``m >= 4``)."""
        where = f"batch {self.n_batches}" + (f", {self.where}" if self.where else "")
        px, py = _prepare_pair(X, Y, where, min_samples=4)
        xc, yc = px.xc, py.xc
        n = px.n
        if xc.shape[1] + yc.shape[1] < n:
            st = la.stats_from_features(xc, yc, debiased=True)
        else:
            st = la.stats_from_grams(xc @ xc.T, yc @ yc.T, debiased=True)
        self._xy += la.hsic_unbiased_from_stats(st.xy, st.tx, st.ty, st.rq, n)
        self._xx += la.hsic_unbiased_from_stats(st.xx, st.tx, st.tx, st.rr, n)
        self._yy += la.hsic_unbiased_from_stats(st.yy, st.ty, st.ty, st.qq, n)
        self.n_batches += 1
        self.n_samples += n
        return self

    @property
    def value(self) -> float:
        """Minibatch CKA of the batches seen so far."""
        if self.n_batches == 0:
            raise UserError(f"minibatch CKA: no batches were added{at(self.where)}")
        if not (self._xx > 0 and self._yy > 0):
            raise UserError(f"minibatch CKA: the summed self-HSIC is not positive; "
                            f"batches too small or constant{at(self.where)}")
        return float(self._xy / math.sqrt(self._xx * self._yy))


def minibatch_cka(batches_X: Iterable, batches_Y: Iterable, *, where: str | None = None) -> float:
    """Minibatch linear CKA of paired batches; see :class:`MinibatchCKA`."""
    acc = MinibatchCKA(where=where)
    it_y = iter(batches_Y)
    for bx in batches_X:
        try:
            by = next(it_y)
        except StopIteration:
            raise UserError(f"minibatch CKA: batches_Y ended before batches_X{at(where)}") from None
        acc.update(bx, by)
    if next(it_y, None) is not None:
        raise UserError(f"minibatch CKA: batches_X ended before batches_Y{at(where)}")
    return acc.value


# ==========================================================================
# Procrustes
# ==========================================================================

def procrustes(X, Y, *, where: str | None = None) -> float:
    """Orthogonal Procrustes similarity: ``||X̂ᵀŶ||_*`` in ``[0, 1]``.

    ``X̂ = Xc / ||Xc||_F`` and ``Ŷ = Yc / ||Yc||_F`` (centred, Frobenius-
    normalised); ``||·||_*`` is the nuclear norm (sum of singular values).
    It is ``max_Q <X̂ Q, Ŷ>_F`` over orthogonal (or, for ``dx ≠ dy``, partial
    orthogonal) ``Q``, so ``min_Q ||X̂Q - Ŷ||²_F = 2 - 2·procrustes`` (Schönemann
    1966; Ding, Denain & Klein 2021; Williams et al. 2021). Equals 1 for
    ``Y = c·XQ + b`` (c > 0, Q orthogonal). Computed from ``XcᵀYc``
    (``n >= min(dx, dy)``) or, for fewer samples, from the triangular factors
    of ``Xcᵀ`` and ``Ycᵀ`` (``||XcᵀYc||_* = ||Rx Ryᵀ||_*``).
    """
    px, py = _prepare_pair(X, Y, where)
    n = px.n
    if n >= min(px.d, py.d):
        p = la.centred_products(px, py, xy=True, sumsq=True)
        m, nx, ny = p.xy, p.ssx, p.ssy
    else:
        xc, yc = px.xc, py.xc
        nx = float(np.einsum("ij,ij->", xc, xc))
        ny = float(np.einsum("ij,ij->", yc, yc))
        m = None
    if not (nx > 0 and ny > 0):
        raise UserError(f"Procrustes: {'X' if not nx > 0 else 'Y'} has zero variance{at(where)}")
    if m is None:
        rx = sla.qr(xc.T, mode="r", check_finite=False)[0][:n]
        ry = sla.qr(yc.T, mode="r", check_finite=False)[0][:n]
        m = rx @ ry.T
    with la.small_lapack(max(m.shape)):
        nuc = float(sla.svd(m, compute_uv=False, check_finite=False, overwrite_a=True).sum())
    return float(min(max(nuc / math.sqrt(nx * ny), 0.0), 1.0))


def procrustes_distance(X, Y, *, where: str | None = None) -> float:
    """Angular Procrustes distance ``arccos(procrustes(X, Y))`` in ``[0, π/2]``.

    The angular shape metric of Williams, Kunz, Kornblith & Linderman 2021
    (a metric on centred, Frobenius-normalised representations up to
    rotation).
    """
    return float(math.acos(procrustes(X, Y, where=where)))
