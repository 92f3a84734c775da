"""Spectra and ranks of activations and of weight matrices.

Activations ``X [n_samples, n_features]`` are **column-centred** before their
singular values are taken (the spectrum of the sample covariance, up to the
factor ``n - 1``); weight matrices are **not** centred.

Every rank measure accepts either

* activations (a 2-D array or tensor), whose spectrum is computed here, or
* a :class:`Spectrum` from :func:`spectrum` / :func:`weight_spectrum`
  (compute it once, pass it to every measure), or
* a bare 1-D array of singular values (``σ``, not ``σ²``).

Definitions, with ``σ_1 >= σ_2 >= ... >= 0`` the singular values:

* ``effective_rank`` (Roy & Vetterli 2007): ``exp(H(p))``, ``H`` the Shannon
  entropy (natural log, ``0 log 0 = 0``) of ``p_i = σ_i / Σσ`` — convention
  ``"sigma"``, the default and the original definition — or of
  ``p_i = σ_i² / Σσ²`` (``"sigma2"``: the entropy of the explained-variance
  ratios of PCA). Both give ``k`` for ``k`` equal non-zero values; ``sigma2``
  is smaller for decaying spectra.
* ``stable_rank`` (Rudelson & Vershynin 2007): ``Σσ² / σ_1² = ||X||²_F / ||X||²_2``.
* ``participation_ratio`` (Gao et al. 2017; Litwin-Kumar et al. 2017):
  ``(Σλ)² / Σλ²`` with ``λ = σ²`` the covariance eigenvalues.
* ``numerical_rank``: the number of ``σ_i > tol·σ_1`` (``tol`` relative);
  default ``tol = max(n, d)·eps`` with ``eps`` the machine epsilon of the
  *input's* dtype (the convention of ``numpy.linalg.matrix_rank``; float32
  activations cannot resolve directions below about ``1e-7·σ_1``). A bare
  1-D spectrum has no shape or dtype, so it needs an explicit ``tol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from repanalysis.errors import UserError
from repanalysis.measures._arrays import as_array, at, input_eps, prepare, unit_scale, warn
from repanalysis.measures._linalg import centred_products, small_lapack

__all__ = [
    "Spectrum",
    "spectrum",
    "singular_values",
    "weight_spectrum",
    "effective_rank",
    "stable_rank",
    "participation_ratio",
    "numerical_rank",
    "spectral_summary",
    "weight_norms",
]

#: The Gram route of :func:`spectrum` is used only if λ_min / λ_max of XcᵀXc is at least this
#: (every σ then has relative error below ~1e-9; otherwise a direct SVD is used).
GRAM_MIN_RATIO = 1e-6


@dataclass(frozen=True)
class Spectrum:
    """Singular values (descending, float64) and where they came from.

    ``n_samples``/``n_features`` are the shape of the matrix (``None`` for a
    bare spectrum); ``eps`` the machine epsilon of its stored dtype;
    ``centred`` whether columns were centred (activations) or not (weights).
    """

    values: np.ndarray
    n_samples: int | None = None
    n_features: int | None = None
    eps: float | None = None
    centred: bool = True

    def __len__(self) -> int:
        return int(self.values.shape[0])


def spectrum(X, *, method: str = "auto", where: str | None = None) -> Spectrum:
    """Singular values of the column-centred activations, descending, length ``min(n, d)``.

    ``method="svd"``: LAPACK ``gesdd`` on ``Xc`` (accurate to ``eps·σ_1``
    absolutely for every value). ``method="gram"``: square roots of the
    eigenvalues of ``XcᵀXc`` (about three times faster for ``n >> d``, but
    values below ``~1e-8·σ_1`` are not resolved). ``"auto"`` (default) takes
    the Gram route when ``n > d`` and the spectrum it finds has
    ``λ_min/λ_max >= 1e-6`` (then every value is accurate to ~1e-9 relative),
    else the SVD. Constant (zero-variance) features contribute exact zeros.
    """
    if method not in ("auto", "svd", "gram"):
        raise UserError(f"method must be 'auto', 'svd' or 'gram'; got {method!r}")
    raw = as_array(X, "X", where)
    scaled = unit_scale(raw)  # computed where nothing overflows; the values are scaled back below
    factor = float(np.max(np.abs(raw)) / np.max(np.abs(scaled))) if scaled is not raw else 1.0
    p = prepare(scaled, "X", where, min_samples=1)
    n, d = p.n, p.d
    m = min(n, d)
    vals = None
    if method != "svd" and n > d:
        prod = centred_products(p, xx=True)
        p.drop(p.find_constant(np.diag(prod.xx).copy()))
        keep = p.keep
        g = prod.xx if keep is None else prod.xx[np.ix_(keep, keep)]
        if g.shape[0] == 0:
            vals = np.zeros(0)
        else:
            with small_lapack(g.shape[0]):
                lam = sla.eigh(g, eigvals_only=True, check_finite=False, driver="evr")[::-1]
            if method == "gram" or (lam[0] > 0 and lam[-1] >= GRAM_MIN_RATIO * lam[0]):
                vals = np.sqrt(np.clip(lam, 0.0, None))
    else:
        p.drop(p.find_constant())
    if vals is None:
        if p.d_kept == 0:
            vals = np.zeros(0)
        else:
            vals = sla.svd(p.xc, compute_uv=False, check_finite=False, overwrite_a=True,
                           lapack_driver="gesdd")
    out = np.zeros(m)
    k = min(m, vals.shape[0])
    out[:k] = vals[:k] * factor
    return Spectrum(values=out, n_samples=n, n_features=d, eps=p.eps, centred=True)


def singular_values(X, *, method: str = "auto", where: str | None = None) -> np.ndarray:
    """Singular values of the centred activations, descending (see :func:`spectrum`)."""
    return spectrum(X, method=method, where=where).values


def _weight_matrix(W, where: str | None) -> np.ndarray:
    arr = as_array(W, "W", where)
    if arr.ndim < 2:
        raise UserError(f"a weight matrix needs at least 2 dimensions; got shape "
                        f"{tuple(arr.shape)}{at(where)}")
    w = np.asarray(arr.reshape(arr.shape[0], -1), dtype=np.float64)
    if w.size == 0:
        raise UserError(f"weight matrix is empty{at(where)}")
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise UserError(f"weight matrix contains NaN or Inf ({bad} values){at(where)}")
    return w


def weight_spectrum(W, *, where: str | None = None) -> Spectrum:
    """Singular values of a weight matrix, **not centred**, descending.

    ``W`` is ``[out, in]`` (torch ``nn.Linear.weight``); arrays with more
    dimensions (convolution kernels ``[out, in, kh, kw]``) are reshaped to
    ``[out, -1]``. The rank measures and :func:`weight_norms` accept the result.
    """
    arr = as_array(W, "W", where)
    w = _weight_matrix(arr, where)
    vals = sla.svd(w, compute_uv=False, check_finite=False, lapack_driver="gesdd")
    return Spectrum(values=vals, n_samples=w.shape[0], n_features=w.shape[1],
                    eps=input_eps(arr), centred=False)


def _as_spectrum(obj, where: str | None) -> Spectrum:
    if isinstance(obj, Spectrum):
        return obj
    arr = as_array(obj, "spectrum", where)
    if arr.ndim == 2:
        return spectrum(arr, where=where)
    if arr.ndim != 1:
        raise UserError(f"expected activations [n, d], a Spectrum or a 1-D array of singular "
                        f"values; got shape {tuple(arr.shape)}{at(where)}")
    vals = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(vals).all():
        raise UserError(f"spectrum contains NaN or Inf{at(where)}")
    if (vals < 0).any():
        raise UserError(f"singular values must be >= 0; got {vals.min():.3g}{at(where)}")
    return Spectrum(values=np.sort(vals)[::-1].copy(), centred=False)


def _values(obj, where: str | None, what: str) -> np.ndarray:
    s = _as_spectrum(obj, where).values
    if s.size == 0 or not s[0] > 0:
        raise UserError(f"{what} is undefined for an all-zero spectrum (zero variance){at(where)}")
    return s


def _entropy_rank(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(math.exp(-float(p @ np.log(p))))


def effective_rank(X_or_spectrum, *, convention: str = "sigma", where: str | None = None) -> float:
    """``exp`` of the entropy of the normalised spectrum (Roy & Vetterli 2007).

    ``convention="sigma"`` (default): ``p_i = σ_i / Σσ`` (Roy & Vetterli's
    definition). ``"sigma2"``: ``p_i = σ_i² / Σσ²`` (explained-variance
    ratios). In ``[1, len(spectrum)]``; ``k`` equal values give ``k``.
    """
    if convention not in ("sigma", "sigma2"):
        raise UserError(f"convention must be 'sigma' or 'sigma2'; got {convention!r}")
    s = _values(X_or_spectrum, where, "effective rank")
    w = s if convention == "sigma" else s * s
    return _entropy_rank(w / w.sum())


def stable_rank(X_or_spectrum, *, where: str | None = None) -> float:
    """``Σσ² / σ_1²`` (``||X||²_F / ||X||²_2``; Rudelson & Vershynin 2007)."""
    s = _values(X_or_spectrum, where, "stable rank")
    s = s / s[0]
    return float(s @ s)


def participation_ratio(X_or_spectrum, *, where: str | None = None) -> float:
    """``(Σλ)² / Σλ²`` with ``λ = σ²`` (Gao et al. 2017)."""
    s = _values(X_or_spectrum, where, "participation ratio")
    lam = (s / s[0]) ** 2
    return float(lam.sum() ** 2 / (lam @ lam))


def numerical_rank(X_or_spectrum, *, tol: float | None = None, where: str | None = None) -> int:
    """Number of singular values ``> tol·σ_1``.

    Default ``tol = max(n, d)·eps`` of the input's dtype (needs activations,
    a weight matrix's :class:`Spectrum`, or a :class:`Spectrum`; a bare 1-D
    spectrum needs ``tol``). An all-zero matrix has rank 0.
    """
    sp = _as_spectrum(X_or_spectrum, where)
    if tol is None:
        if sp.n_samples is None or sp.eps is None:
            raise UserError(
                "numerical_rank of a bare spectrum needs tol= (relative to the largest "
                "singular value); or pass the activations or a Spectrum from spectrum()"
                + at(where))
        tol = max(sp.n_samples, sp.n_features) * sp.eps
    if not (tol >= 0 and math.isfinite(tol)):
        raise UserError(f"tol must be a finite number >= 0; got {tol}")
    s = sp.values
    if s.size == 0 or not s[0] > 0:
        return 0
    return int(np.count_nonzero(s > tol * s[0]))


def spectral_summary(X_or_spectrum, *, tol: float | None = None,
                     where: str | None = None) -> dict[str, float]:
    """Every rank measure of one spectrum (computed once): a dict of floats.

    Keys: ``effective_rank`` (sigma), ``effective_rank_sigma2``,
    ``stable_rank``, ``participation_ratio``, ``numerical_rank`` (only when
    its tolerance is known), ``sigma_max``, ``n_values``.
    """
    sp = _as_spectrum(X_or_spectrum, where)
    out = {
        "effective_rank": effective_rank(sp, where=where),
        "effective_rank_sigma2": effective_rank(sp, convention="sigma2", where=where),
        "stable_rank": stable_rank(sp, where=where),
        "participation_ratio": participation_ratio(sp, where=where),
        "sigma_max": float(sp.values[0]),
        "n_values": float(len(sp)),
    }
    if tol is not None or sp.n_samples is not None:
        out["numerical_rank"] = float(numerical_rank(sp, tol=tol, where=where))
    return out


def weight_frobenius(W, *, where: str | None = None) -> dict[str, float]:
    """``{"frobenius": ||W||_F}`` alone, as :func:`weight_norms` gives it, without its SVD."""
    return {"frobenius": float(np.linalg.norm(_weight_matrix(as_array(W, "W", where), where)))}


def weight_norms(W, *, where: str | None = None) -> dict[str, float]:
    """Norms and ranks of a weight matrix (no centring).

    Keys: ``frobenius`` (``||W||_F``), ``spectral`` (``σ_1``), ``nuclear``
    (``Σσ``), ``stable_rank``, ``effective_rank`` (sigma convention),
    ``effective_rank_sigma2``, ``participation_ratio``, ``numerical_rank``
    (``tol = max(out, in)·eps`` of W's dtype). ``W`` as in
    :func:`weight_spectrum`. An all-zero W (e.g. a synthetic-gradient module's
    zero-initialised output layer) has norms 0, numerical rank 0 and NaN for
    the ratio-based ranks, with a :class:`RepanalysisWarning`.
    """
    arr = as_array(W, "W", where)
    w = _weight_matrix(arr, where)
    sp = weight_spectrum(arr, where=where)
    s = sp.values
    out = {
        "frobenius": float(np.linalg.norm(w)),
        "spectral": float(s[0]) if s.size else 0.0,
        "nuclear": float(s.sum()),
        "numerical_rank": float(numerical_rank(sp)),
    }
    if s.size and s[0] > 0:
        out.update(stable_rank=stable_rank(sp), effective_rank=effective_rank(sp),
                   effective_rank_sigma2=effective_rank(sp, convention="sigma2"),
                   participation_ratio=participation_ratio(sp))
    else:
        warn("weight matrix is all zeros: its ratio-based ranks are NaN", where)
        out.update(stable_rank=math.nan, effective_rank=math.nan,
                   effective_rank_sigma2=math.nan, participation_ratio=math.nan)
    return out
