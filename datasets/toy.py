"""The artificial problems of Czarnecki et al. 2017, §3.2 (claim 2 of the toolkit's ``docs/science.md``).

Eight problems: {linear, nonlinear} x {regression, binary classification} x
{2, 100} input dimensions.

Every problem draws 1,500 points with ``numpy.random.default_rng([seed,
crc32(name)])`` (so the same seed gives different but fixed data for each
name): the first 1,000 are the train split, the last 500 the test split.
Inputs are standard normal in ``d`` dimensions (mean 0, variance 1 per
feature in distribution) and are not rescaled afterwards. From the same
generator come a random unit vector ``w`` (uniform on the sphere) and an
offset ``b ~ U(-0.5, 0.5)``. Targets are float32 ``[n, 1]``:

- ``linear-regression-{d}d``: ``y = x·w + b + ε``, ``ε ~ N(0, 0.1²)``; least
  squares fits it up to the noise.
- ``nonlinear-regression-{d}d``: ``y = (|x|² - d) / sqrt(2d) + ε``, the squared
  radius standardised to mean 0, variance 1; no linear function of ``x`` is
  correlated with it.
- ``linear-classification-{d}d`` (binary): ``y = 1 if x·w + b > 0 else 0``;
  inputs closer than ``MARGIN = 0.1`` to that hyperplane are redrawn, so the
  classes are linearly separable with a gap; no label noise.
- ``nonlinear-classification-{d}d`` (binary): concentric spheres,
  ``y = 1 if |x| > r else 0`` with ``r²`` the median of the chi-squared
  distribution with ``d`` degrees of freedom (about half the points on each
  side); inputs closer than ``MARGIN`` to that sphere are redrawn; no label
  noise. A linear classifier does no better than chance.
"""

import operator
import zlib

import numpy as np
import scipy.special
import torch

from repanalysis.errors import UserError

from .base import Dataset

N_TRAIN = 1000
N_TEST = 500
NOISE = 0.1
MARGIN = 0.1
DIMS = (2, 100)

NAMES = tuple(
    f"{kind}-{problem}-{d}d"
    for kind in ("linear", "nonlinear")
    for problem in ("regression", "classification")
    for d in DIMS
)

SCALING = "standard normal inputs (mean 0, variance 1 per feature), not rescaled"


def make(name: str, seed: int = 0) -> Dataset:
    """The artificial problem ``name`` (one of ``NAMES``) drawn with data seed ``seed`` >= 0."""
    kind, problem, dims = name.split("-")
    d = int(dims.removesuffix("d"))
    seed = operator.index(seed)
    if seed < 0:
        raise UserError(f"the data seed must be a non-negative integer, not {seed}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    b = rng.uniform(-0.5, 0.5)
    n = N_TRAIN + N_TEST
    if problem == "regression":
        x = rng.standard_normal((n, d))
        clean = x @ w + b if kind == "linear" else ((x**2).sum(1) - d) / np.sqrt(2 * d)
        y = clean + NOISE * rng.standard_normal(n)
        task = "regression"
    else:
        signed_distance = _boundary(kind, d, w, b)
        x = _standard_normal_off_boundary(rng, n, d, signed_distance)
        y = (signed_distance(x) > 0).astype(np.float64)
        task = "binary"
    x = torch.from_numpy(x.astype(np.float32))
    y = torch.from_numpy(y.astype(np.float32).reshape(n, 1))
    return Dataset(
        name=name,
        task=task,
        x_train=x[:N_TRAIN],
        y_train=y[:N_TRAIN],
        x_test=x[N_TRAIN:],
        y_test=y[N_TRAIN:],
        n_outputs=1,
        scaling=SCALING,
    )


def _boundary(kind: str, d: int, w: np.ndarray, b: float):
    """The signed distance of points ``[n, d]`` to a classification problem's decision boundary."""
    if kind == "linear":
        return lambda x: x @ w + b
    radius = np.sqrt(scipy.special.chdtri(d, 0.5))  # the median of chi-squared(d)
    return lambda x: np.linalg.norm(x, axis=1) - radius


def _standard_normal_off_boundary(rng, n, d, signed_distance) -> np.ndarray:
    """``n`` standard normal points in ``d`` dims, redrawing those within ``MARGIN`` of the boundary."""
    kept, count = [], 0
    while count < n:
        x = rng.standard_normal((n, d))
        x = x[np.abs(signed_distance(x)) >= MARGIN]
        kept.append(x)
        count += len(x)
    return np.concatenate(kept)[:n]
