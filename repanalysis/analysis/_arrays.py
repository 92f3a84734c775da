"""Input coercion and guards shared by every measure of ``repanalysis.analysis``.

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

import math
import os
import sys
import warnings
from dataclasses import dataclass

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
    "at",
]


class RepanalysisWarning(UserWarning):
    """A measure was computed, but its value needs care (small samples, dropped features...)."""


def at(where: str | None) -> str:
    """The `` (where)`` suffix for messages; empty when ``where`` is not given."""
    return f" ({where})" if where else ""


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, where: str | None = None, stacklevel: int | None = None) -> None:
    """Emit a :class:`RepanalysisWarning` with the ``where`` suffix.

    The warning is attributed to the first caller outside this package.
    """
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
        if t.dtype not in _TORCH_NUMPY_OK(t):
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


def _TORCH_NUMPY_OK(t):
    import torch

    return (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
            torch.int16, torch.int8, torch.uint8, torch.bool)


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


@dataclass
class Prepared:
    """Centred float64 activations and what was learnt while preparing them.

    ``xc`` has the constant columns *removed* when ``drop_constant`` was asked,
    else zeroed exactly (centred constant columns are exact zeros either way).
    """

    xc: np.ndarray            # centred float64 [n, d_kept], C-contiguous
    mean: np.ndarray          # column means of the input, float64 [d]
    n: int
    d: int                    # number of input features
    constant: np.ndarray      # bool [d]: zero-variance input columns
    eps: float                # machine epsilon of the input dtype

    @property
    def n_constant(self) -> int:
        return int(self.constant.sum())


def prepare(x, name: str = "X", where: str | None = None, *, min_samples: int = 2,
            drop_constant: bool = False, find_constant: bool = True) -> Prepared:
    """Validate ``x`` (``[n, d]``, finite, ``n >= min_samples``) and centre it in float64.

    One pass computes the float64 column means (a non-finite mean reveals NaN or
    Inf, reported with ``where``); a second writes ``x - mean`` into a new
    float64 array (the input is never modified). Constant columns are found
    exactly (every value equal to the first) among the columns whose centred
    sum of squares is at rounding level, and their centred values are set to
    exactly 0 (or removed, with ``drop_constant``); measures that do not care
    skip this pass with ``find_constant=False``.
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
    xc = np.empty((n, d), dtype=np.float64)
    np.subtract(arr, mean, out=xc, casting="unsafe")
    constant = _constant_columns(arr, xc, mean) if find_constant or drop_constant \
        else np.zeros(d, dtype=bool)
    if constant.any():
        if drop_constant:
            xc = np.ascontiguousarray(xc[:, ~constant])
        else:
            xc[:, constant] = 0.0
    return Prepared(xc=xc, mean=mean, n=n, d=d, constant=constant, eps=input_eps(arr))


def _constant_columns(arr: np.ndarray, xc: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Exactly constant columns of ``arr``; ``xc`` is its centred float64 copy."""
    n = xc.shape[0]
    ss = np.einsum("ij,ij->j", xc, xc)
    # A constant column c centres to n copies of (c - mean_computed), a few ulps of |c|.
    scale = np.maximum(np.abs(mean), np.finfo(np.float64).tiny)
    cand = ss <= n * (64.0 * n * np.finfo(np.float64).eps * scale) ** 2
    constant = np.zeros(xc.shape[1], dtype=bool)
    for j in np.flatnonzero(cand):
        col = arr[:, j]
        constant[j] = bool(np.all(col == col[0]))
    return constant


def check_same_samples(x: np.ndarray, y: np.ndarray, where: str | None = None,
                       names: tuple[str, str] = ("X", "Y")) -> None:
    """Both inputs must describe the same samples (equal first dimension)."""
    if x.shape[0] != y.shape[0]:
        raise UserError(
            f"{names[0]} and {names[1]} must have the same number of samples (rows); "
            f"got {x.shape[0]} and {y.shape[0]}{at(where)}"
        )


def require_positive(value: float, what: str, where: str | None) -> None:
    if not (value > 0.0) or not math.isfinite(value):
        raise UserError(f"{what}{at(where)}")
