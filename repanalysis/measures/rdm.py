"""Representational dissimilarity matrices (RDMs) and representational similarity analysis.

An RDM of activations ``X [n, d]`` is the ``[n, n]`` matrix of dissimilarities
between the samples' activation vectors (rows); RSA compares two RDMs by the
correlation of their upper triangles (Kriegeskorte, Mur & Bandettini 2008).

One default metric for both, ``METRIC``: correlation (1 − Pearson
correlation between samples), as the analysis's ``rsa`` measure and most of
the presets' RSA use it; ``metric="euclidean"`` gives distances. So
``rsa(X, Y)`` is the RSA of ``rdm(X)`` and ``rdm(Y)``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from repanalysis.errors import UserError
from repanalysis.measures._arrays import as_float64, at, check_same_samples, unit_scale
from repanalysis.runtime.memory import check_fits

__all__ = ["rdm", "compare_rdms", "rsa"]

_METRICS = ("euclidean", "correlation")
#: The metric of ``rdm`` and ``rsa`` when none is given.
METRIC = "correlation"
_COMPARE = ("spearman", "pearson")

# Squared distances below this fraction of |x_i|² + |x_j|² are recomputed directly.
_CANCEL = 1e-6
_BLOCK = 1024


def rdm(X, metric: str = METRIC, *, where: str | None = None) -> np.ndarray:
    """Dissimilarities between the rows of ``X``: a symmetric ``[n, n]`` float64 matrix, zero diagonal.

    ``metric="correlation"`` (default): ``1 - Pearson correlation`` of the two
    samples' activation vectors (each row centred over its features and scaled
    to unit norm; equal to ``pdist(X, "correlation")``), in ``[0, 2]``. A
    sample whose activations are all equal has no correlation:
    :class:`UserError` (use ``metric="euclidean"``).

    ``metric="euclidean"``: ``||x_i - x_j||_2`` (not squared, not divided by
    ``d``; equal to ``scipy.spatial.distance.pdist(X, "euclidean")``).
    Computed from the Gram matrix of the column-centred data (distances do
    not change under a common shift); pairs whose squared distance is below
    ``1e-6·(|x_i|² + |x_j|²)``, where that formula cancels, are recomputed
    directly, so every entry is accurate to rounding.
    """
    if metric not in _METRICS:
        raise UserError(f"metric must be one of {', '.join(_METRICS)}; got {metric!r}")
    x = as_float64(X, "X", where)
    n = x.shape[0]
    if n < 2:
        raise UserError(f"an RDM needs at least 2 samples; got {n}{at(where)}")
    if metric == "euclidean":
        xc = x - x.mean(axis=0)
        d2 = xc @ xc.T
        r = np.diag(d2).copy()
        pairs_i, pairs_j = [], []
        for a in range(0, n, _BLOCK):
            blk = d2[a:a + _BLOCK]
            scale = r[a:a + _BLOCK, None] + r[None, :]     # r_i + r_j: the same at (i,j), (j,i)
            blk *= 2.0
            np.subtract(scale, blk, out=blk)
            ii, jj = np.nonzero(blk < _CANCEL * scale)
            keep = jj > ii + a
            pairs_i.append(ii[keep] + a)
            pairs_j.append(jj[keep])
        iu, ju = np.concatenate(pairs_i), np.concatenate(pairs_j)
        for start in range(0, iu.size, 4096):
            a, b = iu[start:start + 4096], ju[start:start + 4096]
            diff = x[a] - x[b]
            exact = np.einsum("ij,ij->i", diff, diff)
            d2[a, b] = exact
            d2[b, a] = exact
        np.maximum(d2, 0.0, out=d2)
        np.fill_diagonal(d2, 0.0)
        return np.sqrt(d2, out=d2)
    z = x - x.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", z, z))
    bad = np.flatnonzero(~(norms > 0))
    if bad.size:
        raise UserError(
            f"correlation RDM: {bad.size} sample(s) have constant activations (first: row "
            f"{int(bad[0])}); their correlation is undefined; use metric='euclidean'{at(where)}")
    z /= norms[:, None]
    d = z @ z.T
    np.subtract(1.0, d, out=d)
    np.clip(d, 0.0, 2.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def _upper(d: np.ndarray, name: str, where: str | None) -> np.ndarray:
    arr = as_float64(d, name, where)
    if arr.shape[0] != arr.shape[1] or arr.shape[0] < 3:
        raise UserError(f"{name} must be a square [n, n] RDM with n >= 3; got shape "
                        f"{tuple(arr.shape)}{at(where)}")
    return arr[np.triu_indices(arr.shape[0], 1)]


def compare_rdms(D1, D2, *, compare: str = "spearman", where: str | None = None) -> float:
    """Correlation of the upper triangles (``i < j``) of two RDMs.

    ``compare="spearman"`` (default): Spearman's rank correlation, ties given
    their average rank (invariant to any increasing transform of either RDM;
    the usual RSA choice, Kriegeskorte et al. 2008). ``"pearson"``: Pearson's
    correlation (invariant to positive affine transforms). An RDM whose upper
    triangle is constant has no correlation: :class:`UserError`.
    """
    if compare not in _COMPARE:
        raise UserError(f"compare must be one of {', '.join(_COMPARE)}; got {compare!r}")
    a = _upper(D1, "D1", where)
    b = _upper(D2, "D2", where)
    if a.shape != b.shape:
        raise UserError(f"RDMs of different sizes cannot be compared: {a.shape[0]} and "
                        f"{b.shape[0]} pairs{at(where)}")
    if compare == "spearman":
        a = scipy.stats.rankdata(a)
        b = scipy.stats.rankdata(b)
    a = a - a.mean()
    b = b - b.mean()
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    if not (na > 0 and nb > 0):
        raise UserError(f"RSA: an RDM has all dissimilarities equal; correlation undefined{at(where)}")
    return float(min(max(float(a @ b) / (na * nb), -1.0), 1.0))


def rsa(X, Y, *, metric: str = METRIC, compare: str = "spearman",
        where: str | None = None) -> float:
    """Representational similarity analysis: ``compare_rdms(rdm(X, metric), rdm(Y, metric), compare)``.

    ``metric``: ``rdm``'s, correlation by default, as ``rdm``'s own default.
    In ``[-1, 1]``; 1 when the two RDMs are equal up to an increasing
    (Spearman) or positive affine (Pearson) transform. To compare many layers
    with one reference, compute the reference RDM once with :func:`rdm` and
    use :func:`compare_rdms`.
    """
    n = len(X)
    check_fits(4 * 8 * n * n, f"RSA of {n} samples (two {n}×{n} float64 RDMs and their ranked triangles)",
               "compute it on a subset of the samples (RSA compares all n² pairs; there is no streaming form)")
    x = unit_scale(as_float64(X, "X", where))  # RSA is scale-invariant: compute it where nothing overflows
    y = unit_scale(as_float64(Y, "Y", where))
    check_same_samples(x, y, where)
    return compare_rdms(rdm(x, metric, where=where), rdm(y, metric, where=where),
                        compare=compare, where=where)
