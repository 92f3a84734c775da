"""Input coercion and guards shared by every measure of ``repanalysis.measures``.

Every measure accepts activations as ``[n_samples, n_features]`` numpy arrays or
torch tensors of any real dtype. This module turns them into float64 numpy
arrays (the precision every measure accumulates in), rejects what cannot be
measured (wrong shape, NaN, Inf, too few samples) with a one-line
:class:`~repanalysis.errors.UserError`, and finds constant (zero-variance)
features.

Messages can say where the data came from: every public measure takes an
optional ``where`` string (for example ``"run a.h5, layer h3, step 200"``) that
is appended to its errors and warnings.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import warnings

import numpy as np

from repanalysis.errors import UserError

__all__ = [
    "RepanalysisWarning",
    "Prepared",
    "as_array",
    "as_float64",
    "prepare",
    "check_same_samples",
    "warn",
    "collected",
    "at",
]


class RepanalysisWarning(UserWarning):
    """A measure was computed, but its value needs care (small samples, dropped features...)."""


def at(where: str | None) -> str:
    """The `` (where)`` suffix for messages; empty when ``where`` is not given."""
    return f" ({where})" if where else ""


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


_local = threading.local()  # ``sink``: the list ``collected`` gathers this thread's warnings in, or None


@contextlib.contextmanager
def collected():
    """Inside the block this thread's warnings from ``warn`` go, as messages, to the yielded list instead of
    being emitted. Other threads are untouched (``warnings.catch_warnings`` swaps process-wide state, so
    threads that use it at once can lose or take each other's warnings)."""
    outer = getattr(_local, "sink", None)
    _local.sink = sink = []
    try:
        yield sink
    finally:
        _local.sink = outer


def warn(message: str, where: str | None = None, stacklevel: int | None = None) -> None:
    """Emit a :class:`RepanalysisWarning` with the ``where`` suffix (or keep it, inside ``collected``).

    The warning is attributed to the first caller outside this package.
    """
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.append(message + at(where))
        return
    if stacklevel is None:
        stacklevel = 2
        frame = sys._getframe(1)
        while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PKG_DIR:
            stacklevel += 1
            frame = frame.f_back
    warnings.warn(message + at(where), RepanalysisWarning, stacklevel=stacklevel)


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def as_array(x, name: str = "X", where: str | None = None) -> np.ndarray:
    """``x`` as a real numpy array without copying where possible (torch tensors included)."""
    if _is_torch(x):
        t = x.detach()
        if t.is_complex():
            raise UserError(f"{name} is complex; measures need real values{at(where)}")
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype not in _numpy_compatible_dtypes():
            t = t.float() if t.is_floating_point() else t.double()
        arr = t.numpy()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise UserError(f"{name} cannot be read as an array: {exc}{at(where)}") from None
    if arr.dtype.kind == "c":
        raise UserError(f"{name} is complex; measures need real values{at(where)}")
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{name} has non-numeric dtype {arr.dtype}{at(where)}") from None
    return arr


def _numpy_compatible_dtypes() -> tuple:
    """The torch dtypes that ``Tensor.numpy()`` takes as they are (torch is imported here, on first use)."""
    import torch

    return (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
            torch.int16, torch.int8, torch.uint8, torch.bool)


#: Largest magnitudes outside this range are brought near 1 by ``unit_scale`` (fourth powers
#: of the data, as in CKA's ``||XᵀY||²``, must neither overflow nor underflow in float64).
SAFE_MAGNITUDE = (2.0 ** -100, 2.0 ** 100)


def unit_scale(arr: np.ndarray) -> np.ndarray:
    """``arr`` times the power of two that brings its largest magnitude into ``[0.5, 1)``, when
    that magnitude is outside ``SAFE_MAGNITUDE``; else ``arr`` itself (not copied).

    For scale-invariant measures only. Multiplying by a power of two is exact, so
    the measure is computed on the same numbers, in a range where it cannot
    overflow or underflow. Non-finite data are returned as they are, to be reported.
    """
    if arr.size == 0 or arr.dtype.kind != "f":
        return arr
    top = max(abs(float(arr.max())), abs(float(arr.min())))
    if not math.isfinite(top) or top == 0 or SAFE_MAGNITUDE[0] <= top <= SAFE_MAGNITUDE[1]:
        return arr
    return np.ldexp(arr.astype(np.float64), -math.frexp(top)[1])


def input_eps(arr: np.ndarray) -> float:
    """Machine epsilon of the *stored* values (float32 activations resolve only ~1e-7)."""
    if arr.dtype.kind == "f":
        return float(np.finfo(arr.dtype).eps)
    return float(np.finfo(np.float64).eps)


def _report_nonfinite(arr: np.ndarray, name: str, where: str | None) -> None:
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count == 0:
        raise UserError(
            f"{name} has values too large to sum in float64 (overflow){at(where)}"
        )
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    kinds = []
    if np.isnan(arr).any():
        kinds.append("NaN")
    if np.isinf(arr).any():
        kinds.append("Inf")
    raise UserError(
        f"{name} contains {'/'.join(kinds)} ({count} of {arr.size} values, "
        f"first at index {idx}){at(where)}"
    )


def as_float64(x, name: str = "X", where: str | None = None, *, ndim: int | None = 2,
               copy: bool = False) -> np.ndarray:
    """``x`` as a finite float64 numpy array; NaN or Inf raise :class:`UserError`."""
    arr = as_array(x, name, where)
    if ndim is not None and arr.ndim != ndim:
        shape = "[n_samples, n_features]" if ndim == 2 else f"{ndim}-D"
        raise UserError(f"{name} must be {shape}; got shape {tuple(arr.shape)}{at(where)}")
    out = np.array(arr, dtype=np.float64, copy=True) if copy else np.asarray(arr, dtype=np.float64)
    if out.size and not np.isfinite(out.sum()):
        _report_nonfinite(out, name, where)
    return out


#: How much float64 one chunk of rows holds (centring in memory, streaming from a file): about 64 MiB.
CHUNK_BYTES = 64 * 2 ** 20


def rows_per_chunk(width: int, least: int = 16) -> int:
    """Rows of ``width`` float64 values in ``CHUNK_BYTES``, at least ``least``."""
    return max(least, CHUNK_BYTES // (8 * max(width, 1)))


class Prepared:
    """Validated activations: the input (not copied), its float64 column means, and
    the columns in use.

    Nothing of size ``n×d`` is allocated here: measures that need only products
    of the centred data stream it in float64 chunks (:meth:`chunks`, a reused
    buffer of about 64 MiB); :attr:`xc` materialises the whole centred float64
    matrix for the routes that need it (QR, ``n×n`` Gram matrices), once.
    Constant (zero-variance) columns can be found exactly (:meth:`find_constant`)
    and left out (:meth:`drop`).
    """

    def __init__(self, raw: np.ndarray, mean: np.ndarray, eps: float, name: str,
                 where: str | None):
        self.raw = raw
        self.mean = mean
        self.n, self.d = raw.shape
        self.eps = eps
        self.name = name
        self.where = where
        self.constant = np.zeros(self.d, dtype=bool)
        self._keep: np.ndarray | None = None
        self._xc: np.ndarray | None = None

    @property
    def n_constant(self) -> int:
        return int(self.constant.sum())

    @property
    def d_kept(self) -> int:
        return self.d - self.n_constant if self._keep is not None else self.d

    @property
    def keep(self) -> np.ndarray | None:
        """Boolean mask of the columns in use, or None for all."""
        return self._keep

    def drop(self, mask: np.ndarray) -> None:
        """Leave out the columns where ``mask`` is True (usually :attr:`constant`)."""
        if mask.any():
            self._keep = ~mask
            self._xc = None

    def _centre_into(self, out: np.ndarray, a: int, b: int) -> np.ndarray:
        rows = self.raw[a:b]
        if self._keep is None:
            np.subtract(rows, self.mean, out=out, casting="unsafe")
        else:
            np.subtract(rows[:, self._keep], self.mean[self._keep], out=out, casting="unsafe")
        return out

    @property
    def xc(self) -> np.ndarray:
        """The centred float64 data of the columns in use, ``[n, d_kept]`` (computed once)."""
        if self._xc is None:
            self._xc = self._centre_into(np.empty((self.n, self.d_kept)), 0, self.n)
        return self._xc

    def chunk_rows(self, width: int | None = None) -> int:
        return rows_per_chunk(self.d_kept if width is None else width)

    def chunks(self, rows: int):
        """Yield ``(start, centred float64 chunk)``; the chunk buffer is reused."""
        if self._xc is not None or rows >= self.n:
            xc = self.xc
            for a in range(0, self.n, rows):
                yield a, xc[a:a + rows]
            return
        buf = np.empty((min(rows, self.n), self.d_kept))
        for a in range(0, self.n, rows):
            m = min(rows, self.n - a)
            yield a, self._centre_into(buf[:m], a, a + m)

    def find_constant(self, col_sumsq: np.ndarray | None = None) -> np.ndarray:
        """Exactly constant input columns (sets and returns :attr:`constant`).

        Candidates are the columns whose centred sum of squares (``col_sumsq``,
        computed here if not given) is at rounding level for their mean: a
        constant column ``c`` centres to ``n`` copies of ``c - mean``, a few
        ulps of ``|c|``. Each candidate is then checked exactly (every value
        equal to the first).
        """
        if col_sumsq is None:
            col_sumsq = np.zeros(self.d)
            rows = self.chunk_rows(self.d)
            buf = np.empty((min(rows, self.n), self.d))
            for a in range(0, self.n, rows):
                c = buf[:min(rows, self.n - a)]
                np.subtract(self.raw[a:a + rows], self.mean, out=c, casting="unsafe")
                col_sumsq += np.einsum("ij,ij->j", c, c)
        n = self.n
        scale = np.maximum(np.abs(self.mean), np.finfo(np.float64).tiny)
        cand = col_sumsq <= n * (64.0 * n * np.finfo(np.float64).eps * scale) ** 2
        constant = np.zeros(self.d, dtype=bool)
        for j in np.flatnonzero(cand):
            col = self.raw[:, j]
            constant[j] = bool(np.all(col == col[0]))
        self.constant = constant
        return constant


def prepare(x, name: str = "X", where: str | None = None, *, min_samples: int = 2) -> Prepared:
    """Validate ``x`` (``[n, d]``, real, finite, ``n >= min_samples``) for a measure.

    One pass computes the float64 column means; a non-finite mean reveals NaN
    or Inf, which are then located and reported (with ``where``) as a
    :class:`UserError`. The input is neither copied nor modified.
    """
    arr = as_array(x, name, where)
    if arr.ndim != 2:
        raise UserError(
            f"{name} must be [n_samples, n_features]; got shape {tuple(arr.shape)}{at(where)}"
        )
    n, d = arr.shape
    if d == 0:
        raise UserError(f"{name} has no features{at(where)}")
    if n < min_samples:
        raise UserError(f"{name} has {n} samples; this measure needs at least {min_samples}{at(where)}")
    mean = arr.mean(axis=0, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        _report_nonfinite(arr, name, where)
    return Prepared(arr, mean, input_eps(arr), name, where)


def check_same_samples(x: np.ndarray, y: np.ndarray, where: str | None = None,
                       names: tuple[str, str] = ("X", "Y")) -> None:
    """Both inputs must describe the same samples (equal first dimension)."""
    if x.shape[0] != y.shape[0]:
        raise UserError(
            f"{names[0]} and {names[1]} must have the same number of samples (rows); "
            f"got {x.shape[0]} and {y.shape[0]}{at(where)}"
        )

