"""How far an error signal is from the true gradient.

A learning rule trains layer ``i`` with an error signal ``δ̂_i`` (a synthetic
gradient, a feedback-alignment signal, ...) in place of the true
``δ_i = ∂L/∂h_i``. :func:`gradient_error` measures the gap on the same inputs
(the recorder stores both: ``signal`` and ``true_grad``, ``[n, d]`` per layer
and checkpoint).
"""

from __future__ import annotations

import math

import numpy as np

from repanalysis.errors import UserError
from repanalysis.measures._arrays import as_float64, at, warn

__all__ = ["gradient_error"]


def _rows(a, name: str, where: str | None) -> np.ndarray:
    arr = as_float64(a, name, where, ndim=None)
    if arr.ndim < 2:
        raise UserError(f"{name} must be [n_samples, n_features]; got shape "
                        f"{tuple(arr.shape)}{at(where)}")
    if arr.shape[0] == 0:
        raise UserError(f"{name} has no samples{at(where)}")
    return arr.reshape(arr.shape[0], -1)


def gradient_error(signal, true_grad, *, where: str | None = None) -> dict:
    """Agreement of an error signal ``S`` with the true gradient ``G`` (both ``[n, d]``).

    Returns a dict (float64 throughout):

    * ``cosine``: per-sample cosine ``<s_n, g_n> / (|s_n| |g_n|)``, array ``[n]``.
      **Zero-norm rows**: where ``s_n`` or ``g_n`` is exactly zero the cosine
      is undefined and set to NaN (e.g. a synthetic-gradient module at
      initialisation outputs zeros).
    * ``mean_cosine``: mean of the defined cosines; NaN if none is defined.
    * ``relative_error``: ``||S - G||_F / ||G||_F`` over the whole matrix
      (0 for a perfect signal, 1 for a zero signal); NaN if ``G = 0``.
    * ``sign_agreement``: fraction of entries with ``sign(s) == sign(g)``
      among the entries where ``g != 0`` (an ``s`` of exactly 0 there counts
      as disagreement); NaN if ``G = 0``.
    * ``regression_loss``: ``mean_n ||s_n - g_n||²`` (squared error summed
      over features, averaged over samples: the SG regression loss against
      the true gradient).
    * ``norm_ratio``: ``||S||_F / ||G||_F`` (scale mismatch); NaN if ``G = 0``.
    * ``n_samples``, ``n_zero_signal``, ``n_zero_true``, ``n_cosine`` (rows
      with a defined cosine).

    Any NaN above comes with a :class:`RepanalysisWarning`. Invariances:
    cosine and sign agreement under positive rescaling of ``S`` (per row);
    relative error under a common rescaling of both; all under a common
    permutation of features. Trailing dimensions beyond the first are
    flattened (``[n, c, h, w]`` → ``[n, c·h·w]``).
    """
    s = _rows(signal, "signal", where)
    g = _rows(true_grad, "true_grad", where)
    if s.shape != g.shape:
        raise UserError(f"signal and true_grad must have the same shape; got "
                        f"{tuple(s.shape)} and {tuple(g.shape)}{at(where)}")
    n = s.shape[0]
    if n == 0:
        raise UserError(f"gradient_error needs at least one sample{at(where)}")
    ss = np.einsum("ij,ij->i", s, s)
    gg = np.einsum("ij,ij->i", g, g)
    sg = np.einsum("ij,ij->i", s, g)
    defined = (ss > 0) & (gg > 0)
    cosine = np.full(n, np.nan)
    cosine[defined] = sg[defined] / np.sqrt(ss[defined] * gg[defined])
    np.clip(cosine, -1.0, 1.0, out=cosine)
    n_def = int(defined.sum())
    if n_def < n:
        warn("gradient_error: rows with zero norm (a zero signal, as from a synthetic-gradient module "
             "at initialisation, or a zero true gradient) have no cosine and are left out of the mean "
             "cosine", where)
    diff = s - g
    dd = float(np.einsum("ij,ij->i", diff, diff).sum())
    g_tot = float(gg.sum())
    s_tot = float(ss.sum())
    nz = g != 0
    if g_tot > 0:
        rel = math.sqrt(dd / g_tot)
        ratio = math.sqrt(s_tot / g_tot)
        sign = float(np.count_nonzero(np.sign(s[nz]) == np.sign(g[nz])) / np.count_nonzero(nz))
    else:
        warn("gradient_error: the true gradient is zero; relative_error, sign_agreement and "
             "norm_ratio are NaN", where)
        rel = ratio = sign = math.nan
    return {
        "cosine": cosine,
        "mean_cosine": float(cosine[defined].mean()) if n_def else math.nan,
        "relative_error": rel,
        "sign_agreement": sign,
        "regression_loss": dd / n,
        "norm_ratio": ratio,
        "n_samples": n,
        "n_zero_signal": int(np.count_nonzero(~(ss > 0))),
        "n_zero_true": int(np.count_nonzero(~(gg > 0))),
        "n_cosine": n_def,
    }
