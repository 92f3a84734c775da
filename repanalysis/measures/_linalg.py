"""Numerical kernels shared by the in-memory measures and the streaming ones.

Every similarity measure of this package that is a function of second moments
(linear CKA biased and debiased, CCA, SVCCA, PWCCA, Procrustes, spectra) is
computed here *from the moments*: ``Sxx = XcᵀXc``, ``Syy``, ``Sxy = XcᵀYc``
(``Xc`` the column-centred data, float64) and, for debiased CKA, a few sums of
row norms. The in-memory functions in :mod:`.similarity` build those moments
from the whole matrix; :mod:`.streaming` accumulates them chunk by chunk. Both
then call the same code, so they agree to rounding whenever the same route is
taken.

Only the QR/SVD route of CCA (:func:`svd_basis`) needs the data themselves;
it is what keeps CCA exact for ill-conditioned inputs.

The checks on what the kernels give (SVCCA's kept dimensions and ranks, CCA's
degenerate case, CKA's zero variance and chance level) are here too, so both
kinds of measure refuse and warn alike.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from repanalysis.errors import UserError
from repanalysis.measures._arrays import at, warn

EPS = float(np.finfo(np.float64).eps)

# The Gram (moment) route of CCA loses accuracy as eps * cond(Xc) * cond(Yc):
# it is taken only when the 2-norm condition numbers (cond2_upper) keep that
# below ~2e-10 (see cca_gram_cholesky).
FAST_COND_PRODUCT = 1e6

# The moment route of CCA (streaming, or method="gram" on ill-conditioned data) whitens
# with eigenvalues of XcᵀXc, whose relative error is ~eps·λmax/λ: directions with
# σ < MOMENT_RTOL·σmax (λ < 1e-8·λmax) cannot be whitened accurately and are dropped.
MOMENT_RTOL = 1e-4


# LAPACK on d×d matrices (eigh, svd, cholesky, triangular solves) runs single-threaded up to
# this size. Multi-threaded OpenBLAS eigensolvers synchronise threads many times per call;
# on a machine whose cores are shared with other jobs a single d=1024 eigh then takes
# seconds instead of 0.1 s (measured here: 8 s with 2 threads under load, 0.16 s with 1),
# while the single-threaded call costs ~40% more than the threaded one on an idle machine.
SMALL_LAPACK_MAX_D = 2048

_CONTROLLER = None


def small_lapack(d: int):
    """Context limiting BLAS/LAPACK to one thread for a ``d×d`` problem (see above)."""
    global _CONTROLLER
    if d > SMALL_LAPACK_MAX_D:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            return contextlib.nullcontext()
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------

def gram(xc: np.ndarray) -> np.ndarray:
    """``xcᵀ xc`` (numpy dispatches ``a.T @ a`` to BLAS syrk and symmetrises)."""
    return xc.T @ xc


def cross(xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """``xcᵀ yc`` (BLAS gemm)."""
    return xc.T @ yc


def sym_accumulate(acc: np.ndarray, chunk: np.ndarray, tmp: np.ndarray | None = None) -> None:
    """``acc += chunkᵀ chunk`` (numpy's syrk; ``tmp`` is an optional ``d×d`` scratch buffer).

    numpy's BLAS does the product: mixing it with scipy's (a second OpenBLAS
    with its own thread pool) in a loop makes the idle pool's threads compete
    with the busy one.
    """
    if tmp is None:
        acc += chunk.T @ chunk
    else:
        np.matmul(chunk.T, chunk, out=tmp)
        acc += tmp


def gemm_accumulate(acc: np.ndarray, a: np.ndarray, b: np.ndarray,
                    tmp: np.ndarray | None = None) -> None:
    """``acc += aᵀ b``."""
    if tmp is None:
        acc += a.T @ b
    else:
        np.matmul(a.T, b, out=tmp)
        acc += tmp


@dataclass
class Products:
    """Products of centred data accumulated chunk by chunk (see :func:`centred_products`)."""

    n: int
    xx: np.ndarray | None = None     # XcᵀXc
    yy: np.ndarray | None = None     # YcᵀYc
    xy: np.ndarray | None = None     # XcᵀYc
    r: np.ndarray | None = None      # row norms² of Xc
    q: np.ndarray | None = None      # row norms² of Yc
    ssx: float = math.nan            # ||Xc||²_F
    ssy: float = math.nan


def centred_products(px, py=None, *, xx: bool = False, yy: bool = False, xy: bool = False,
                     row_norms: bool = False, sumsq: bool = False) -> Products:
    """Accumulate products of the centred data of :class:`~._arrays.Prepared` inputs.

    The data are centred in float64 one block of rows at a time (a reused
    buffer of ~64 MiB) instead of as a whole ``n×d`` float64 copy: the same
    numbers (the centring uses the exact column means), less memory, and
    faster for large ``n``. Every product uses numpy's BLAS (``a.T @ a`` is a
    syrk).
    """
    n = px.n
    dx = px.d_kept
    dy = py.d_kept if py is not None else 0
    rows = px.chunk_rows(dx + dy)
    out = Products(n=n)
    if xx:
        out.xx, tx = np.zeros((dx, dx)), np.empty((dx, dx))
    if yy:
        out.yy, ty = np.zeros((dy, dy)), np.empty((dy, dy))
    if xy:
        out.xy, txy = np.zeros((dx, dy)), np.empty((dx, dy))
    if row_norms:
        out.r = np.empty(n)
        if py is not None:
            out.q = np.empty(n)
    if sumsq:
        out.ssx = out.ssy = 0.0
    it_y = py.chunks(rows) if py is not None else None
    for a, cx in px.chunks(rows):
        cy = next(it_y)[1] if it_y is not None else None
        m = cx.shape[0]
        if xx:
            if m == n:
                out.xx = cx.T @ cx
            else:
                np.matmul(cx.T, cx, out=tx)
                out.xx += tx
        if yy:
            if m == n:
                out.yy = cy.T @ cy
            else:
                np.matmul(cy.T, cy, out=ty)
                out.yy += ty
        if xy:
            if m == n:
                out.xy = cx.T @ cy
            else:
                np.matmul(cx.T, cy, out=txy)
                out.xy += txy
        if row_norms or sumsq:
            r = np.einsum("ij,ij->i", cx, cx)
            q = np.einsum("ij,ij->i", cy, cy) if cy is not None else None
            if row_norms:
                out.r[a:a + m] = r
                if q is not None:
                    out.q[a:a + m] = q
            if sumsq:
                out.ssx += float(r.sum())
                if q is not None:
                    out.ssy += float(q.sum())
    return out


# --------------------------------------------------------------------------
# CKA from moments
# --------------------------------------------------------------------------

@dataclass
class CKAStats:
    """Sufficient statistics of linear CKA (biased and debiased) for centred X, Y.

    With ``K = Xc Xcᵀ`` and ``L = Yc Ycᵀ`` (centred Gram matrices) and
    ``r = diag K``, ``q = diag L``:
    ``xy = <K, L>_F = ||XcᵀYc||²_F``, ``xx = ||K||²_F``, ``yy = ||L||²_F``,
    ``tx = tr K``, ``ty = tr L``, ``rq = rᵀq``, ``rr = rᵀr``, ``qq = qᵀq``.
    """

    n: int
    xy: float
    xx: float
    yy: float
    tx: float
    ty: float
    rq: float = math.nan
    rr: float = math.nan
    qq: float = math.nan


def stats_from_features(xc: np.ndarray, yc: np.ndarray, *, debiased: bool) -> CKAStats:
    """CKA statistics from centred features: ``d×d`` products (cost ``n(dx+dy)²``)."""
    r = np.einsum("ij,ij->i", xc, xc) if debiased else None
    q = np.einsum("ij,ij->i", yc, yc) if debiased else None
    return stats_from_products(Products(n=xc.shape[0], xx=gram(xc), yy=gram(yc),
                                        xy=cross(xc, yc), r=r, q=q), debiased=debiased)


def stats_from_products(p: Products, *, debiased: bool) -> CKAStats:
    """CKA statistics from :class:`Products` (``xx``, ``yy``, ``xy``; ``r``, ``q`` if debiased)."""
    st = CKAStats(n=p.n, xy=_fro2(p.xy), xx=_fro2(p.xx), yy=_fro2(p.yy),
                  tx=float(np.trace(p.xx)), ty=float(np.trace(p.yy)))
    if debiased:
        st.rq, st.rr, st.qq = float(p.r @ p.q), float(p.r @ p.r), float(p.q @ p.q)
    return st


def stats_from_grams(k: np.ndarray, l: np.ndarray, *, debiased: bool) -> CKAStats:
    """CKA statistics from *centred* ``n×n`` Gram matrices (cost ``n²(dx+dy)`` to build them)."""
    r, q = np.diag(k).copy(), np.diag(l).copy()
    st = CKAStats(n=k.shape[0], xy=float(np.vdot(k, l)), xx=_fro2(k), yy=_fro2(l),
                  tx=float(r.sum()), ty=float(q.sum()))
    if debiased:
        st.rq, st.rr, st.qq = float(r @ q), float(r @ r), float(q @ q)
    return st


def _fro2(a: np.ndarray) -> float:
    a = a.ravel()
    return float(a @ a)


def hsic_unbiased_from_stats(ab: float, ta: float, tb: float, rb: float, n: int) -> float:
    """Song et al. (2012) unbiased HSIC written with centred-feature statistics.

    For centred features (so ``K1 = L1 = 0``) and ``K̃ = K - diag(r)``,
    ``L̃ = L - diag(q)``: ``tr(K̃L̃) = <K,L> - rᵀq``, ``1ᵀK̃1 = -tr K``,
    ``1ᵀL̃1 = -tr L`` and ``1ᵀK̃L̃1 = rᵀq``, so Song's estimator

        [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3))

    becomes ``[<K,L> - n/(n-2) rᵀq + trK trL / ((n-1)(n-2))] / (n(n-3))``.
    The estimator is a U-statistic and unchanged by a shift of the features,
    so centring first does not change its value.
    """
    return (ab - n / (n - 2.0) * rb + ta * tb / ((n - 1.0) * (n - 2.0))) / (n * (n - 3.0))


def hsic_unbiased_gram(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC of two (uncentred) kernel matrices, as written there."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    k1 = kt.sum(axis=1)
    l1 = lt.sum(axis=1)
    term1 = float(np.vdot(kt, lt))
    term2 = float(k1.sum()) * float(l1.sum()) / ((n - 1.0) * (n - 2.0))
    term3 = 2.0 / (n - 2.0) * float(k1 @ l1)
    return (term1 + term2 - term3) / (n * (n - 3.0))


def double_centre(k: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``H K H`` with ``H = I - 11ᵀ/n`` (into ``out``, which may be ``k``)."""
    col = k.mean(axis=0)
    row = k.mean(axis=1)
    grand = col.mean()
    if out is None:
        out = k.copy()
    elif out is not k:
        out[...] = k
    out -= col[None, :]
    out -= row[:, None]
    out += grand
    return out


def cka_from_stats(st: CKAStats, *, debiased: bool) -> tuple[float, float, float]:
    """(CKA, self-similarity term of X, of Y) from :class:`CKAStats`.

    Biased: ``<K,L> / (||K|| ||L||)`` on centred Gram matrices (= HSIC_0 ratio).
    Debiased: ``HSIC_1(K,L) / sqrt(HSIC_1(K,K) HSIC_1(L,L))``.
    """
    if not debiased:
        return st.xy / math.sqrt(st.xx * st.yy) if st.xx > 0 and st.yy > 0 else math.nan, st.xx, st.yy
    n = st.n
    hxy = hsic_unbiased_from_stats(st.xy, st.tx, st.ty, st.rq, n)
    hxx = hsic_unbiased_from_stats(st.xx, st.tx, st.tx, st.rr, n)
    hyy = hsic_unbiased_from_stats(st.yy, st.ty, st.ty, st.qq, n)
    if hxx > 0 and hyy > 0:
        return hxy / math.sqrt(hxx * hyy), hxx, hyy
    return math.nan, hxx, hyy


def cka_chance_level(st: CKAStats) -> float:
    """Approximate biased linear CKA of *independent* data with these spectra.

    For independent X and Y with covariance eigenvalues λ, μ:
    ``E||XcᵀYc||² ≈ n Σλ Σμ`` and ``E||XcᵀXc||² ≈ n² Σλ² + n (Σλ)²``, so
    ``CKA ≈ sqrt(px py / ((n + px)(n + py)))`` with the participation ratios
    ``p = (Σλ)² / Σλ²`` (estimated here as ``(tr K)² / ||K||²_F``).
    """
    if st.xx <= 0 or st.yy <= 0:
        return math.nan
    px = st.tx * st.tx / st.xx
    py = st.ty * st.ty / st.yy
    n = st.n
    return math.sqrt(px * py / ((n + px) * (n + py)))


# --------------------------------------------------------------------------
# CCA from moments
# --------------------------------------------------------------------------

@dataclass
class CCAResult:
    rho: np.ndarray                 # canonical correlations, descending, in [0, 1]
    route: str                      # "cholesky", "eigh" or "svd"
    rank_x: int
    rank_y: int
    lam_x: np.ndarray | None = None  # eigh route: kept eigenvalues of Sxx (descending)
    lam_y: np.ndarray | None = None
    cut: bool = False                # eigh route: the rank threshold removed directions
    wx: np.ndarray | None = None    # rows: projections of X's features on X's canonical variates
    wy: np.ndarray | None = None    # same for Y


def ridge_shift(s: np.ndarray, ridge: float, d: int) -> float:
    """Ridge added to the diagonal of ``XcᵀXc``: ``ridge * tr(XcᵀXc) / d`` (scale-free)."""
    return ridge * float(np.trace(s)) / d if ridge else 0.0


def _chol_upper(s: np.ndarray, shift: float) -> np.ndarray | None:
    a = s + shift * np.eye(s.shape[0]) if shift else s
    try:
        return sla.cholesky(a, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None


# Up to this width the condition number of a Cholesky factor is computed exactly (its
# singular values, a few ms); above it, estimated by Lanczos (cond2_upper).
EXACT_COND_MAX_D = 64


def cond2_upper(r: np.ndarray) -> float:
    """2-norm condition number of an upper-triangular ``R`` (``κ(Xc)`` when ``RᵀR = XcᵀXc``).

    Exact (singular values) up to :data:`EXACT_COND_MAX_D` columns; above, the
    largest eigenvalues of ``RᵀR`` and of ``(RᵀR)⁻¹`` by Lanczos (ARPACK,
    relative tolerance 1e-2, a seeded start vector), ``O(d²)`` per iteration
    (products with ``R`` and triangular solves) instead of the ``O(d³)`` of an
    SVD. Lanczos approaches each extreme eigenvalue from inside the spectrum,
    so the estimate is at most ~1% low once converged; if ARPACK does not
    converge, the LAPACK ``dtrcon`` 1-norm estimate (an overestimate by up to a
    factor ``~d`` on dense factors) is returned instead.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    d = r.shape[0]
    if d <= EXACT_COND_MAX_D:
        s = sla.svdvals(r, check_finite=False)
        return float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    v0 = np.random.default_rng(0).standard_normal(d)

    def top(matvec) -> float:
        op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
        return float(eigsh(op, k=1, which="LA", tol=1e-2, v0=v0, return_eigenvectors=False)[0])

    def inverse(v):
        w = sla.solve_triangular(r, v, trans="T", lower=False, check_finite=False)
        return sla.solve_triangular(r, w, lower=False, check_finite=False)

    try:
        return math.sqrt(top(lambda v: r.T @ (r @ v)) * top(inverse))
    except ArpackNoConvergence:
        rc, info = sla.lapack.dtrcon(r, norm="1", uplo="U")
        return 1.0 / max(float(rc), 1e-300) if info == 0 else math.inf


def cca_gram_cholesky(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, *, ridge: float = 0.0,
                      vectors: str | None = None,
                      max_cond_product: float = FAST_COND_PRODUCT) -> CCAResult | None:
    """Canonical correlations from moments by Cholesky whitening, or None when unsafe.

    ``Sxx + εx I = RxᵀRx``, ``Syy + εy I = RyᵀRy``; the ρ are the singular
    values of ``Rx⁻ᵀ Sxy Ry⁻¹`` (triangular solves, no inverse is formed).
    The rounding error of this route grows like ``eps·κx·κy`` (κ the
    condition numbers of Xc, Yc), so it returns None (the caller then uses a
    rank-revealing route) when Cholesky fails or when ``κ(Rx) κ(Ry)``
    (:func:`cond2_upper`, the 2-norm condition numbers) exceeds
    ``max_cond_product`` (default 1e6, an error of order 1e-10).

    ``vectors`` = "x" or "y" also returns the projections of that side's
    (centred) features on its canonical variates, rows ordered like ρ:
    with ``H = Xc Rx⁻¹ U`` (unit-norm variates), ``HᵀXc = Uᵀ Rx``.
    """
    dx, dy = sxx.shape[0], syy.shape[0]
    with small_lapack(max(dx, dy)):
        rx = _chol_upper(sxx, ridge_shift(sxx, ridge, dx))
        if rx is None:
            return None
        ry = _chol_upper(syy, ridge_shift(syy, ridge, dy))
        if ry is None:
            return None
        if cond2_upper(rx) * cond2_upper(ry) > max_cond_product:
            return None
        t = sla.solve_triangular(rx, sxy, trans="T", lower=False, check_finite=False)
        t = sla.solve_triangular(ry, t.T, trans="T", lower=False, check_finite=False).T
        if vectors is None:
            rho = sla.svd(t, compute_uv=False, check_finite=False, overwrite_a=True)
        else:
            u, rho, vt = sla.svd(t, full_matrices=False, check_finite=False, overwrite_a=True)
    res = CCAResult(rho=np.clip(rho, 0.0, 1.0), route="cholesky", rank_x=dx, rank_y=dy)
    if vectors is not None:
        r = rho.shape[0]
        if vectors == "x":
            res.wx = u[:, :r].T @ rx
        else:
            res.wy = vt[:r] @ ry
    return res


def eig_whitener(s: np.ndarray, *, shift: float = 0.0, rtol: float | None = None,
                 variance: float | None = None, dims: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Eigen-decomposition of ``s = XcᵀXc`` truncated for whitening.

    Returns ``(V_k, λ_k + shift, cut)``, λ descending; ``cut`` is True when
    the ``rtol`` threshold (not ``variance``/``dims``) decided ``k`` and
    removed directions (a rank-revealing SVD might have kept some of them).

    Keeps directions with singular value ``σ = sqrt(λ) > rtol·σmax`` (default
    ``rtol = sqrt(1e3·d·eps)``: below it the eigenvalues of a Gram matrix are
    rounding noise); then, if ``variance`` is given, the fewest leading
    directions whose eigenvalues hold at least that fraction of the total, or
    the first ``dims``.
    """
    d = s.shape[0]
    with small_lapack(d):
        lam, v = sla.eigh(s, check_finite=False, driver="evd")
    lam = lam[::-1]
    v = v[:, ::-1]
    lmax = lam[0] if lam.size else 0.0
    if lmax <= 0:
        return v[:, :0], lam[:0], d > 0
    lam_rtol = 1e3 * d * EPS if rtol is None else rtol * rtol
    k_rtol = k = int(np.count_nonzero(lam > lam_rtol * lmax))
    if variance is not None:
        pos = np.clip(lam[:k], 0.0, None)
        frac = np.cumsum(pos)
        frac /= frac[-1]
        k = min(int(np.searchsorted(frac, variance)) + 1, k)
    if dims is not None:
        k = min(k, dims)
    cut = k == k_rtol and k_rtol < d
    return v[:, :k], lam[:k] + shift, cut


def cca_gram_eigh(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, *, ridge: float = 0.0,
                  rtol: float | None = None, variance: float | None = None,
                  dims: tuple[int | None, int | None] = (None, None),
                  vectors: str | None = None) -> CCAResult:
    """Canonical correlations from moments by truncated symmetric-eigen whitening.

    ``Sxx = V Λ Vᵀ``; directions with ``σ = sqrt(λ) <= rtol·σmax`` are
    dropped (rank truncation), or only those holding ``variance`` of the total are kept
    (SVCCA), then ``ρ = svd(Λx^{-1/2} Vxᵀ Sxy Vy Λy^{-1/2})``; with a ridge
    each ``λ`` becomes ``λ + ε``. Canonical-variate projections (``vectors``):
    ``HᵀXc = Uᵀ Λx^{-1/2} Vxᵀ Sxx = Uᵀ Λx^{1/2} Vxᵀ`` (ridge 0).

    Accuracy: the eigenvalues of a Gram matrix carry absolute errors of order
    ``eps·λmax``, so ρ computed here are accurate to about ``eps·κx·κy`` — good
    for well-conditioned data, and the reason in-memory CCA prefers the QR
    route for ill-conditioned inputs. Default ``rtol``: :data:`MOMENT_RTOL`
    (1e-4) for plain CCA; for SVCCA (``variance`` or ``dims`` given) the
    rounding level ``sqrt(1e3·d·eps)`` (the truncation is then decided by
    variance).
    """
    if rtol is None and variance is None and dims == (None, None):
        rtol = MOMENT_RTOL
    vx, lx, cut_x = eig_whitener(sxx, shift=ridge_shift(sxx, ridge, sxx.shape[0]), rtol=rtol,
                                 variance=variance, dims=dims[0])
    vy, ly, cut_y = eig_whitener(syy, shift=ridge_shift(syy, ridge, syy.shape[0]), rtol=rtol,
                                 variance=variance, dims=dims[1])
    res = CCAResult(rho=np.empty(0), route="eigh", rank_x=lx.shape[0], rank_y=ly.shape[0],
                    lam_x=lx, lam_y=ly, cut=cut_x or cut_y)
    if lx.size == 0 or ly.size == 0:
        return res
    t = (vx.T @ sxy @ vy) / np.sqrt(lx)[:, None] / np.sqrt(ly)[None, :]
    with small_lapack(max(t.shape)):
        if vectors is None:
            rho = sla.svd(t, compute_uv=False, check_finite=False, overwrite_a=True)
        else:
            u, rho, vt = sla.svd(t, full_matrices=False, check_finite=False, overwrite_a=True)
    if vectors is not None:
        r = rho.shape[0]
        if vectors == "x":
            res.wx = (u[:, :r].T * np.sqrt(lx)[None, :]) @ vx.T
        else:
            res.wy = (vt[:r] * np.sqrt(ly)[None, :]) @ vy.T
    res.rho = np.clip(rho, 0.0, 1.0)
    return res


# --------------------------------------------------------------------------
# Rank-revealing bases (the QR/SVD route)
# --------------------------------------------------------------------------

@dataclass
class SVDBasis:
    """Thin SVD ``Xc = (Q U) diag(s) Vᵀ`` truncated to rank ``r``.

    ``q`` is ``None`` when ``U`` itself is the sample-space basis (``n < d``),
    else the ``n×d`` orthonormal factor of a Householder QR and ``u`` the
    ``d×r`` left singular vectors of ``R``.
    """

    q: np.ndarray | None
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])


def svd_basis(xc: np.ndarray, *, rtol: float | None = None) -> SVDBasis:
    """Rank-revealing thin SVD of centred data via Householder QR then SVD of R.

    Singular values ``<= rtol·s_max`` are dropped, default
    ``rtol = max(n, d)·eps`` (the convention of ``numpy.linalg.matrix_rank``).
    Householder QR is backward stable, so the basis spans the column space of
    a matrix within ``eps·||Xc||`` of ``Xc``; canonical correlations computed
    from it are accurate to about ``eps·κ`` instead of the ``eps·κ²`` of a
    route through ``XcᵀXc``.
    """
    n, d = xc.shape
    if rtol is None:
        rtol = max(n, d) * EPS
    if n >= d:
        q, r = _qr(xc)
        with small_lapack(d):
            u, s, vt = sla.svd(r, full_matrices=False, check_finite=False, overwrite_a=True,
                               lapack_driver="gesdd")
    else:
        q = None
        u, s, vt = sla.svd(xc, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    k = int(np.count_nonzero(s > rtol * s[0])) if s.size and s[0] > 0 else 0
    return SVDBasis(q=q, u=u[:, :k], s=s[:k], vt=vt[:k])


def truncate_basis(b: SVDBasis, *, variance: float | None = None,
                   dims: int | None = None) -> SVDBasis:
    """Keep the fewest leading directions holding ``variance`` of ``Σs²``, or the first ``dims``."""
    k = b.rank
    if variance is not None and k:
        frac = np.cumsum(b.s ** 2)
        frac /= frac[-1]
        k = min(int(np.searchsorted(frac, variance)) + 1, k)
    if dims is not None:
        k = min(k, dims)
    return SVDBasis(q=b.q, u=b.u[:, :k], s=b.s[:k], vt=b.vt[:k])


def _qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduced Householder QR (torch's LAPACK binding is the fastest available here)."""
    import torch

    q, r = torch.linalg.qr(torch.from_numpy(a), mode="reduced")
    return q.numpy(), r.numpy()


def basis_cross(bx: SVDBasis, by: SVDBasis) -> np.ndarray:
    """``(Qx Ux)ᵀ (Qy Uy)``: cosines between the two bases (r_x × r_y)."""
    if bx.q is not None and by.q is not None:
        m = bx.q.T @ by.q
        return bx.u.T @ m @ by.u
    ax = bx.u if bx.q is None else bx.q @ bx.u
    ay = by.u if by.q is None else by.q @ by.u
    return ax.T @ ay


def cca_svd(bx: SVDBasis, by: SVDBasis, *, ridge: float = 0.0, dx: int, dy: int,
            vectors: str | None = None) -> CCAResult:
    """Canonical correlations from two rank-revealing bases.

    ρ are the singular values of ``Dx (UxᵀUy) Dy`` with ``D = I`` (ridge 0) or
    ``D = diag(s / sqrt(s² + ε))`` (ridge: ``ε = ridge·Σs²/d``).
    Projections of X's features on X's canonical variates ``H = Ux L``:
    ``HᵀXc = Lᵀ diag(s) Vᵀ``.
    """
    m = basis_cross(bx, by)
    if ridge:
        ex = ridge * float(bx.s @ bx.s) / dx
        ey = ridge * float(by.s @ by.s) / dy
        m = (bx.s / np.sqrt(bx.s ** 2 + ex))[:, None] * m * (by.s / np.sqrt(by.s ** 2 + ey))[None, :]
    res = CCAResult(rho=np.empty(0), route="svd", rank_x=bx.rank, rank_y=by.rank)
    if m.size == 0:
        return res
    with small_lapack(max(m.shape)):
        if vectors is None:
            rho = sla.svd(m, compute_uv=False, check_finite=False)
        else:
            u, rho, vt = sla.svd(m, full_matrices=False, check_finite=False)
    if vectors is not None:
        r = rho.shape[0]
        if vectors == "x":
            res.wx = (u[:, :r].T * bx.s[None, :]) @ bx.vt
        else:
            res.wy = (vt[:r] * by.s[None, :]) @ by.vt
    res.rho = np.clip(rho, 0.0, 1.0)
    return res


# ==========================================================================
# Checks on what the kernels give
# ==========================================================================

#: Biased CKA warns when independent data with the same spectra would score above this.
CKA_CHANCE_WARN = 0.1


def cka_value(st: CKAStats, debiased: bool, where: str | None, kind: str) -> float:
    """``kind`` CKA from ``st``; refuses zero variance and (debiased) a non-positive self-HSIC, and warns when
    the biased estimate is inflated (``CKA_CHANCE_WARN``)."""
    if st.xx <= 0 or st.yy <= 0:
        who = "X" if st.xx <= 0 else "Y"
        raise UserError(f"{kind} CKA: {who} has zero variance (every feature constant){at(where)}")
    value, hx, hy = cka_from_stats(st, debiased=debiased)
    if debiased and not (hx > 0 and hy > 0):
        raise UserError(
            f"{kind} CKA (debiased): the unbiased HSIC of {'X' if hx <= 0 else 'Y'} with itself "
            f"is not positive ({min(hx, hy):.3g}); too few samples (n={st.n}){at(where)}"
        )
    if not debiased:
        chance = cka_chance_level(st)
        if chance > CKA_CHANCE_WARN:
            px = st.tx * st.tx / st.xx
            py = st.ty * st.ty / st.yy
            warn(
                f"biased {kind} CKA with n={st.n} samples is inflated: independent data with these "
                f"spectra would score about {chance:.2f} (effective dimensions {px:.0f} and "
                f"{py:.0f}); use the debiased estimate (debiased=True; in analyze tables, "
                f"linear_cka_debiased)", where)
    return float(value)


def degenerate_guard(rx: int, ry: int, n: int, what: str, where: str | None) -> None:
    """Refuse CCA whose ranks leave some canonical correlations 1 whatever the data (``rx + ry >= n``)."""
    if rx + ry >= n:
        trivial = rx + ry - (n - 1)
        raise UserError(
            f"{what} is degenerate: with n={n} samples and ranks {rx} and {ry} "
            f"(rank X + rank Y >= n), at least {trivial} canonical correlation(s) "
            f"are 1 whatever the data; use more samples, fewer dimensions "
            f"(svcca, dims=), ridge>0, or allow_degenerate=True{at(where)}"
        )


def svcca_kept(variance: float, dims) -> tuple[float | None, int | None, int | None]:
    """SVCCA's ``(variance, kx, ky)``: the variance to keep (``dims`` None) or the dimensions (an int for both
    sides or a pair), the other None; refuses a variance outside ``(0, 1]`` and dimensions below 1."""
    if dims is None:
        if not (0.0 < variance <= 1.0):
            raise UserError(f"variance must be in (0, 1]; got {variance}")
        return variance, None, None
    kx, ky = (dims, dims) if np.isscalar(dims) else tuple(dims)
    if min(kx, ky) < 1:
        raise UserError(f"dims must be >= 1; got {dims}")
    return None, kx, ky


def check_svcca(res: CCAResult, kx: int | None, ky: int | None, n: int, allow_degenerate: bool,
                where: str | None) -> None:
    """Refuse an SVCCA result with a side of zero variance, fewer directions than ``dims`` asked for, or
    (unless ``allow_degenerate``) degenerate kept ranks."""
    for k, want, name in ((res.rank_x, kx, "X"), (res.rank_y, ky, "Y")):
        if k == 0:
            raise UserError(f"SVCCA: {name} has zero variance{at(where)}")
        if want is not None and k < want:
            raise UserError(f"SVCCA: dims={want} but {name} has numerical rank {k}{at(where)}")
    if not allow_degenerate:
        degenerate_guard(res.rank_x, res.rank_y, n, "SVCCA", where)
