"""Exact moment-based measures computed chunk by chunk, never holding a whole ``[N, D]`` array.

Linear CKA (biased and debiased), CCA, SVCCA, PWCCA, Procrustes and the
activation spectrum are functions of the joint first and second moments of
``X`` and ``Y``. :class:`Moments` accumulates those in float64, one block of
rows at a time, from an ``h5py.Dataset``, a numpy array (or memmap), a torch
tensor, anything with ``.shape`` and row slicing, or an iterable of chunks
(or a zero-argument callable returning one). Memory: ``O((dx + dy)²)`` for
the moment matrices plus one chunk.

Numerics. The first chunk's column means are used as a *shift* (every row
is accumulated as ``x - shift``), and the exact centred moments are recovered
at the end, e.g. ``Sxx = Σ x̃x̃ᵀ - n δδᵀ`` with ``δ`` the mean of ``x̃``; the
shift keeps that correction small, so nothing cancels catastrophically. The
measures are then computed by the same code as the in-memory functions of
:mod:`.similarity` (:mod:`._linalg`): linear CKA and Procrustes agree with the
in-memory values to rounding (~1e-12 relative), and CCA/SVCCA/PWCCA agree
whenever the in-memory function takes its moment route (well-conditioned data,
``κ(Xc)·κ(Yc) <= 1e6``).

Tolerance difference against the in-memory QR route: when the data are
ill-conditioned the in-memory CCA switches to Householder QR of the data
(errors ``~eps·κ``), which the moments alone cannot reproduce. Here CCA
then whitens with a symmetric eigen-decomposition of ``XcᵀXc`` truncated at
``λ > rtol·λ_max`` (default ``rtol = 1e-8``: directions with
``σ/σ_max < 1e-4`` are dropped, as their eigenvalues carry relative errors of
``eps·λ_max/λ``) and its correlations are accurate to about ``eps·κx·κy`` (κ
of the kept directions). Example: for ``Y = XA + b`` with ``cond(X) = 1e8``
in-memory CCA gives all 12 ρ = 1 to 1e-12 (12 features, σ from 1 to
1e-8); this route keeps the 6 directions of each side above the threshold,
and because Y's leading subspace is not exactly X's, their ρ are 1 only to
about 1e-5 (tests/test_streaming.py). Spectra are the square roots of the eigenvalues of
``XcᵀXc``: absolute accuracy ``~sqrt(eps)·σ_max`` for the smallest values.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from repanalysis.errors import UserError
from repanalysis.measures import _linalg as la
from repanalysis.measures._arrays import as_array, at, input_eps, rows_per_chunk, warn
from repanalysis.measures.spectrum import Spectrum

__all__ = [
    "Moments",
    "RowView",
    "iter_chunks",
    "streaming_linear_cka",
    "streaming_canonical_correlations",
    "streaming_cca",
    "streaming_svcca",
    "streaming_pwcca",
    "streaming_procrustes",
    "streaming_spectrum",
    "streaming_singular_values",
]

class RowView:
    """Rows ``[N, D]`` of one leading index of a larger array-like, read lazily.

    ``RowView(f["layers/h3/activations"], t)`` streams checkpoint ``t`` of a
    run file's ``[T, N, D]`` dataset without loading it. ``rows`` turns each
    block of stored samples ``[r, ...]`` into rows ``[r, D]`` (e.g.
    ``runfile.as_rows`` for feature maps ``[T, N, C, H, W]``); a slice is then
    read in blocks of at most ``_arrays.CHUNK_BYTES`` of stored values, so the memory
    a read takes is bounded by its output, not by the stored samples.
    """

    def __init__(self, source, index: int, rows=None):
        self.source = source
        self.index = index
        self.rows = rows
        stored = tuple(source.shape[1:])
        self.shape = stored if rows is None else (stored[0],) + rows(source[index, :1]).shape[1:]
        self.dtype = getattr(source, "dtype", None)
        self._block = rows_per_chunk(int(np.prod(stored[1:])), least=1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if self.rows is None:
            return self.source[self.index, rows]
        start, stop, step = rows.indices(self.shape[0]) if isinstance(rows, slice) else (None, None, None)
        if step != 1:
            return self.rows(self.source[self.index, rows])
        return np.concatenate([self.rows(self.source[self.index, a:min(a + self._block, stop)])
                               for a in range(start, max(start, stop), self._block)]
                              or [np.zeros((0,) + self.shape[1:])])


def _is_sliceable(src) -> bool:
    return hasattr(src, "shape") and hasattr(src, "__getitem__") and len(getattr(src, "shape")) == 2


def iter_chunks(source, chunk_rows: int | None = None, *, name: str = "X",
                where: str | None = None) -> Iterator[np.ndarray]:
    """Yield 2-D numpy chunks of rows from a sliceable 2-D array-like or an iterable of chunks."""
    if callable(source) and not _is_sliceable(source):
        source = source()
    if _is_sliceable(source):
        n = int(source.shape[0])
        rows = chunk_rows or rows_per_chunk(int(source.shape[1]))
        for a in range(0, n, rows):
            yield as_array(source[a:a + rows], name, where)
        return
    if isinstance(source, np.ndarray) or hasattr(source, "shape"):
        raise UserError(f"{name} must be [n_samples, n_features]; got shape "
                        f"{tuple(source.shape)}{at(where)}")
    try:
        it = iter(source)
    except TypeError:
        raise UserError(f"{name} is neither an array-like with row slicing nor an iterable of "
                        f"chunks{at(where)}") from None
    for chunk in it:
        yield as_array(chunk, name, where)


def _paired_chunks(X, Y, chunk_rows, where) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    if Y is None:
        for cx in iter_chunks(X, chunk_rows, name="X", where=where):
            yield cx, None
        return
    if chunk_rows is None and _is_sliceable(X) and _is_sliceable(Y):
        chunk_rows = rows_per_chunk(int(X.shape[1]) + int(Y.shape[1]))
    if _is_sliceable(X) and _is_sliceable(Y) and X.shape[0] != Y.shape[0]:
        raise UserError(f"X and Y must have the same number of samples (rows); got "
                        f"{X.shape[0]} and {Y.shape[0]}{at(where)}")
    ix = iter_chunks(X, chunk_rows, name="X", where=where)
    iy = iter_chunks(Y, chunk_rows, name="Y", where=where)
    for cx in ix:
        cy = next(iy, None)
        if cy is None:
            raise UserError(f"Y has fewer rows than X{at(where)}")
        if cy.shape[0] != cx.shape[0]:
            raise UserError(f"X and Y chunks differ in rows ({cx.shape[0]} and {cy.shape[0]}); "
                            f"chunks must pair the same samples{at(where)}")
        yield cx, cy
    if next(iy, None) is not None:
        raise UserError(f"X has fewer rows than Y{at(where)}")


class _Side:
    """Accumulators of one stream (X or Y)."""

    def __init__(self, chunk: np.ndarray, debiased: bool):
        d = chunk.shape[1]
        self.d = d
        self.shift = chunk.mean(axis=0, dtype=np.float64)
        self.sum = np.zeros(d)
        self.gram = np.zeros((d, d))        # Σ x̃ x̃ᵀ
        self.tmp = np.empty((d, d))
        self.ref = np.array(chunk[0], dtype=np.float64)
        self.const = np.ones(d, dtype=bool)
        self.eps = input_eps(chunk)
        self.buf = np.empty((0, d))
        if debiased:
            self.a_sum = 0.0                # Σ a_i,   a_i = |x̃_i|²
            self.a2_sum = 0.0               # Σ a_i²
            self.ax = np.zeros(d)           # Σ a_i x̃_i

    def centre(self, chunk: np.ndarray, row0: int, name: str, where: str | None) -> np.ndarray:
        m = chunk.shape[0]
        if self.buf.shape[0] < m:
            self.buf = np.empty((m, self.d))
        xc = self.buf[:m]
        np.subtract(chunk, self.shift, out=xc, casting="unsafe")
        colsum = xc.sum(axis=0)
        if not np.all(np.isfinite(colsum)):
            bad = np.argwhere(~np.isfinite(np.asarray(chunk, dtype=np.float64)))
            if bad.size:
                raise UserError(f"{name} contains NaN or Inf (first at row {row0 + int(bad[0][0])}, "
                                f"column {int(bad[0][1])}){at(where)}")
            raise UserError(f"{name} has values too large for float64 sums{at(where)}")
        self.sum += colsum
        if self.const.any():
            idx = np.flatnonzero(self.const)
            self.const[idx] = np.all(chunk[:, idx] == self.ref[idx], axis=0)
        return xc

    def add_gram(self, xc: np.ndarray) -> None:
        la.sym_accumulate(self.gram, xc, self.tmp)


class Moments:
    """Float64 accumulator of the first and second moments of ``X`` (and ``Y``), chunk by chunk.

    ``update(X_chunk, Y_chunk)`` adds rows (the same samples in both);
    the measure methods can be called at any time and use every row seen so
    far. ``debiased=True`` (default) also keeps the row-norm sums that
    debiased CKA needs (``O(d)`` extra work per row).

    >>> m = Moments.from_source(f["a"], f["b"])        # doctest: +SKIP
    >>> m.linear_cka(), m.linear_cka(debiased=True), m.cca()  # doctest: +SKIP
    """

    def __init__(self, *, debiased: bool = True, where: str | None = None):
        self.debiased = debiased
        self.where = where
        self.n = 0
        self._x: _Side | None = None
        self._y: _Side | None = None
        self._gxy: np.ndarray | None = None
        self._ab = 0.0        # Σ a_i b_i
        self._ay: np.ndarray | None = None   # Σ a_i ỹ_i
        self._bx: np.ndarray | None = None   # Σ b_i x̃_i

    # ---------------------------------------------------------------- input
    @classmethod
    def from_source(cls, X, Y=None, *, chunk_rows: int | None = None, debiased: bool = True,
                    where: str | None = None) -> "Moments":
        """Accumulate every chunk of ``X`` (and ``Y``); see :func:`iter_chunks` for sources."""
        m = cls(debiased=debiased, where=where)
        for cx, cy in _paired_chunks(X, Y, chunk_rows, where):
            m.update(cx, cy)
        if m.n == 0:
            raise UserError(f"no rows were read{at(where)}")
        return m

    def update(self, X_chunk, Y_chunk=None) -> "Moments":
        """Add a block of rows ``[m, dx]`` (and the same samples of Y, ``[m, dy]``)."""
        cx = as_array(X_chunk, "X", self.where)
        cy = None if Y_chunk is None else as_array(Y_chunk, "Y", self.where)
        for c, name in ((cx, "X"), (cy, "Y")):
            if c is not None and c.ndim != 2:
                raise UserError(f"{name} chunks must be [rows, features]; got shape "
                                f"{tuple(c.shape)}{at(self.where)}")
        if cy is not None and cy.shape[0] != cx.shape[0]:
            raise UserError(f"X and Y chunks differ in rows ({cx.shape[0]} and {cy.shape[0]})"
                            f"{at(self.where)}")
        if cx.shape[0] == 0:
            return self
        if self._x is None:
            self._x = _Side(cx, self.debiased)
            if cy is not None:
                self._y = _Side(cy, self.debiased)
                self._gxy = np.zeros((self._x.d, self._y.d))
                self._tmp_xy = np.empty((self._x.d, self._y.d))
                if self.debiased:
                    self._ay = np.zeros(self._y.d)
                    self._bx = np.zeros(self._x.d)
        else:
            if cx.shape[1] != self._x.d:
                raise UserError(f"X chunks changed width ({self._x.d} -> {cx.shape[1]})"
                                f"{at(self.where)}")
            if (cy is None) != (self._y is None):
                raise UserError(f"every update needs Y chunks, or none{at(self.where)}")
            if cy is not None and cy.shape[1] != self._y.d:
                raise UserError(f"Y chunks changed width ({self._y.d} -> {cy.shape[1]})"
                                f"{at(self.where)}")
        xc = self._x.centre(cx, self.n, "X", self.where)
        self._x.add_gram(xc)
        yc = None
        if cy is not None:
            yc = self._y.centre(cy, self.n, "Y", self.where)
            self._y.add_gram(yc)
            la.gemm_accumulate(self._gxy, xc, yc, self._tmp_xy)
        if self.debiased:
            a = np.einsum("ij,ij->i", xc, xc)
            self._x.a_sum += float(a.sum())
            self._x.a2_sum += float(a @ a)
            self._x.ax += a @ xc
            if yc is not None:
                b = np.einsum("ij,ij->i", yc, yc)
                self._y.a_sum += float(b.sum())
                self._y.a2_sum += float(b @ b)
                self._y.ax += b @ yc
                self._ab += float(a @ b)
                self._ay += a @ yc
                self._bx += b @ xc
        self.n += cx.shape[0]
        return self

    # ------------------------------------------------------------- moments
    def _need(self, pair: bool = True, debiased: bool = False) -> None:
        if self._x is None:
            raise UserError(f"no rows were added{at(self.where)}")
        if pair and self._y is None:
            raise UserError(f"this measure needs two streams (X and Y){at(self.where)}")
        if debiased and not self.debiased:
            raise UserError("debiased CKA needs Moments(debiased=True)")

    def _delta(self, side: _Side) -> np.ndarray:
        return side.sum / self.n

    @property
    def mean_x(self) -> np.ndarray:
        """Column means of X."""
        self._need(pair=False)
        return self._x.shift + self._delta(self._x)

    @property
    def mean_y(self) -> np.ndarray:
        """Column means of Y."""
        self._need()
        return self._y.shift + self._delta(self._y)

    def _centred_gram(self, side: _Side) -> np.ndarray:
        g = 0.5 * (side.gram + side.gram.T)
        dl = self._delta(side)
        g -= self.n * np.outer(dl, dl)
        return g

    def sxx(self) -> np.ndarray:
        """``XcᵀXc`` (centred, not divided by n)."""
        self._need(pair=False)
        return self._centred_gram(self._x)

    def syy(self) -> np.ndarray:
        """``YcᵀYc``."""
        self._need()
        return self._centred_gram(self._y)

    def sxy(self) -> np.ndarray:
        """``XcᵀYc``."""
        self._need()
        return self._gxy - self.n * np.outer(self._delta(self._x), self._delta(self._y))

    @property
    def constant_x(self) -> np.ndarray:
        """Boolean mask of X's constant (zero-variance) columns."""
        self._need(pair=False)
        return self._x.const.copy()

    @property
    def constant_y(self) -> np.ndarray:
        self._need()
        return self._y.const.copy()

    # ------------------------------------------------------------- measures
    def _cka_stats(self, debiased: bool) -> la.CKAStats:
        sxx, syy, sxy = self.sxx(), self.syy(), self.sxy()
        st = la.CKAStats(n=self.n, xy=la._fro2(sxy), xx=la._fro2(sxx), yy=la._fro2(syy),
                         tx=float(np.trace(sxx)), ty=float(np.trace(syy)))
        if debiased:
            n = self.n
            x, y = self._x, self._y
            dx, dy = self._delta(x), self._delta(y)
            cx, cy = float(dx @ dx), float(dy @ dy)
            # r_i = a_i - 2 u_i + cx with u_i = x̃_iᵀδx (Σu = n cx); same for q_i with b, v, cy.
            su2 = float(dx @ self._raw_gram(x) @ dx)
            sv2 = float(dy @ self._raw_gram(y) @ dy)
            suv = float(dx @ self._gxy @ dy)
            sau = float(x.ax @ dx)
            sbv = float(y.ax @ dy)
            st.rr = x.a2_sum - 4 * sau + 2 * cx * x.a_sum + 4 * su2 - 4 * cx * n * cx + n * cx * cx
            st.qq = y.a2_sum - 4 * sbv + 2 * cy * y.a_sum + 4 * sv2 - 4 * cy * n * cy + n * cy * cy
            st.rq = (self._ab - 2 * float(self._ay @ dy) + cy * x.a_sum - 2 * float(self._bx @ dx)
                     + 4 * suv - 2 * cy * n * cx + cx * y.a_sum - 2 * cx * n * cy + n * cx * cy)
        return st

    @staticmethod
    def _raw_gram(side: _Side) -> np.ndarray:
        return side.gram

    def linear_cka(self, *, debiased: bool = False) -> float:
        """Linear CKA of everything seen so far (see :func:`repanalysis.measures.linear_cka`)."""
        self._need(debiased=debiased)
        if debiased and self.n < 4:
            raise UserError(f"debiased CKA needs at least 4 samples; got {self.n}{at(self.where)}")
        return la.cka_value(self._cka_stats(debiased), debiased, self.where, "linear")

    def _pruned(self):
        """Centred moments without constant columns (with the CCA warning)."""
        cx, cy = self._x.const, self._y.const
        parts = [f"{int(c.sum())} of {c.size} features of {nm}"
                 for c, nm in ((cx, "X"), (cy, "Y")) if c.any()]
        if parts:
            warn(f"CCA: dropped constant (zero-variance) features: {' and '.join(parts)}",
                 self.where)
        kx, ky = ~cx, ~cy
        if not kx.any() or not ky.any():
            raise UserError(f"CCA: every feature of {'X' if not kx.any() else 'Y'} is constant"
                            f"{at(self.where)}")
        return (self.sxx()[np.ix_(kx, kx)], self.syy()[np.ix_(ky, ky)],
                self.sxy()[np.ix_(kx, ky)])

    def _cca(self, *, ridge: float, allow_degenerate: bool, rtol: float | None, what: str,
             vectors: str | None = None) -> la.CCAResult:
        self._need()
        if ridge < 0 or not math.isfinite(ridge):
            raise UserError(f"ridge must be a finite number >= 0; got {ridge}")
        sxx, syy, sxy = self._pruned()
        if vectors == "smaller":
            vectors = "x" if sxx.shape[0] <= syy.shape[0] else "y"
        res = None
        if self.n > sxx.shape[0] and self.n > syy.shape[0]:
            res = la.cca_gram_cholesky(sxx, syy, sxy, ridge=ridge, vectors=vectors)
        if res is None:
            res = la.cca_gram_eigh(sxx, syy, sxy, ridge=ridge, rtol=rtol, vectors=vectors)
        if ridge == 0 and not allow_degenerate:
            la.degenerate_guard(res.rank_x, res.rank_y, self.n, what, self.where)
        if res.rho.size == 0:
            raise UserError(f"{what}: zero variance{at(self.where)}")
        full = min(sxx.shape[0], syy.shape[0], self.n - 1)
        if ridge == 0 and res.rho.size < full:
            warn(f"{what}: the moments resolve only {res.rho.size} of {full} canonical correlations (X or Y is "
                 f"ill-conditioned: directions with σ/σ_max below {rtol or la.MOMENT_RTOL:.0e} "
                 f"are dropped), so the result differs from in-memory CCA on all of them; compute it in "
                 f"memory, or drop the nearly collinear features", self.where)
        return res

    def canonical_correlations(self, *, ridge: float = 0.0, allow_degenerate: bool = False,
                               rtol: float | None = None) -> np.ndarray:
        """All canonical correlations, descending (see module notes on accuracy)."""
        return self._cca(ridge=ridge, allow_degenerate=allow_degenerate, rtol=rtol, what="CCA").rho

    def cca(self, *, squared: bool = False, ridge: float = 0.0,
            allow_degenerate: bool = False) -> float:
        """Mean canonical correlation (or mean ρ²)."""
        rho = self.canonical_correlations(ridge=ridge, allow_degenerate=allow_degenerate)
        return float(np.mean(rho ** 2 if squared else rho))

    def svcca(self, *, variance: float = 0.99, dims=None, allow_degenerate: bool = False) -> float:
        """SVCCA from the moments (principal directions from ``XcᵀXc``)."""
        self._need()
        variance, kx, ky = la.svcca_kept(variance, dims)
        res = la.cca_gram_eigh(self.sxx(), self.syy(), self.sxy(), variance=variance, dims=(kx, ky))
        la.check_svcca(res, kx, ky, self.n, allow_degenerate, self.where)
        return float(np.mean(res.rho))

    def pwcca(self, *, weights: str = "x", allow_degenerate: bool = False) -> float:
        """PWCCA from the moments (see :func:`repanalysis.measures.pwcca`)."""
        if weights not in ("x", "y", "smaller"):
            raise UserError(f"weights must be 'x', 'y' or 'smaller'; got {weights!r}")
        res = self._cca(ridge=0.0, allow_degenerate=allow_degenerate, rtol=None, what="PWCCA",
                        vectors=weights)
        w = res.wx if res.wx is not None else res.wy
        alpha = np.abs(w).sum(axis=1)
        return float(alpha @ res.rho / alpha.sum())

    def procrustes(self) -> float:
        """Orthogonal Procrustes similarity ``||XcᵀYc||_* / (||Xc||_F ||Yc||_F)``."""
        self._need()
        import scipy.linalg as sla

        tx, ty = float(np.trace(self.sxx())), float(np.trace(self.syy()))
        if not (tx > 0 and ty > 0):
            raise UserError(f"Procrustes: {'X' if not tx > 0 else 'Y'} has zero variance"
                            f"{at(self.where)}")
        m = self.sxy()
        with la.small_lapack(max(m.shape)):
            nuc = float(sla.svd(m, compute_uv=False, check_finite=False).sum())
        return float(min(max(nuc / math.sqrt(tx * ty), 0.0), 1.0))

    def spectrum(self, which: str = "x") -> Spectrum:
        """Singular values of the centred X (or Y): ``sqrt`` of the eigenvalues of ``XcᵀXc``."""
        import scipy.linalg as sla

        self._need(pair=(which == "y"))
        side = self._x if which == "x" else self._y
        s = self._centred_gram(side)
        keep = ~side.const
        if keep.any():
            with la.small_lapack(int(keep.sum())):
                lam = sla.eigh(s[np.ix_(keep, keep)], eigvals_only=True, check_finite=False,
                               driver="evr")[::-1]
        else:
            lam = np.zeros(0)
        m = min(self.n, side.d)
        out = np.zeros(m)
        k = min(m, lam.shape[0])
        out[:k] = np.sqrt(np.clip(lam[:k], 0.0, None))
        return Spectrum(values=out, n_samples=self.n, n_features=side.d, eps=side.eps, centred=True)


# --------------------------------------------------------------------------
# One-call helpers
# --------------------------------------------------------------------------

def streaming_linear_cka(X, Y, *, debiased: bool = False, chunk_rows: int | None = None,
                         where: str | None = None) -> float:
    """Linear CKA of two ``[N, D]`` sources read chunk by chunk (equals :func:`linear_cka`)."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=debiased, where=where)
    return m.linear_cka(debiased=debiased)


def streaming_canonical_correlations(X, Y, *, ridge: float = 0.0, allow_degenerate: bool = False,
                                     chunk_rows: int | None = None,
                                     where: str | None = None) -> np.ndarray:
    """Canonical correlations from streamed moments (see module notes on accuracy)."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=False, where=where)
    return m.canonical_correlations(ridge=ridge, allow_degenerate=allow_degenerate)


def streaming_cca(X, Y, *, squared: bool = False, ridge: float = 0.0,
                  allow_degenerate: bool = False, chunk_rows: int | None = None,
                  where: str | None = None) -> float:
    """Mean canonical correlation from streamed moments."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=False, where=where)
    return m.cca(squared=squared, ridge=ridge, allow_degenerate=allow_degenerate)


def streaming_svcca(X, Y, *, variance: float = 0.99, dims=None, allow_degenerate: bool = False,
                    chunk_rows: int | None = None, where: str | None = None) -> float:
    """SVCCA from streamed moments."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=False, where=where)
    return m.svcca(variance=variance, dims=dims, allow_degenerate=allow_degenerate)


def streaming_pwcca(X, Y, *, weights: str = "x", allow_degenerate: bool = False,
                    chunk_rows: int | None = None, where: str | None = None) -> float:
    """PWCCA from streamed moments."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=False, where=where)
    return m.pwcca(weights=weights, allow_degenerate=allow_degenerate)


def streaming_procrustes(X, Y, *, chunk_rows: int | None = None, where: str | None = None) -> float:
    """Procrustes similarity from streamed moments."""
    m = Moments.from_source(X, Y, chunk_rows=chunk_rows, debiased=False, where=where)
    return m.procrustes()


def streaming_spectrum(X, *, chunk_rows: int | None = None, where: str | None = None) -> Spectrum:
    """Spectrum of the centred activations from streamed ``XcᵀXc``."""
    return Moments.from_source(X, None, chunk_rows=chunk_rows, debiased=False,
                               where=where).spectrum()


def streaming_singular_values(X, *, chunk_rows: int | None = None,
                              where: str | None = None) -> np.ndarray:
    """Singular values of the centred activations from streamed ``XcᵀXc``."""
    return streaming_spectrum(X, chunk_rows=chunk_rows, where=where).values
