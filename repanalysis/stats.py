"""Intervals and verdicts that the report's claims rest on.

A claim compares two training rules on runs *paired by seed* (same initial
weights and batches where the rules share a network), so its evidence is a
set of paired differences ``d = value(rule A) - value(rule B)``, one per seed,
possibly in several strata (the depths of a sweep). Conventions:

- **Effect**: the mean of the differences; with strata, the mean over strata
  of each stratum's mean (every depth weighs the same).
- **Interval**: a percentile bootstrap interval at ``level`` (default 95%):
  pairs are resampled with replacement *within* each stratum, ``resamples``
  times, from a generator seeded by ``seed`` (the same data give the same
  interval). With 3 seeds the bootstrap distribution has only 10 distinct
  values per stratum: the interval is coarse, and it excludes 0 exactly when
  every seed agrees in sign. A single pair, or a stratum of a single pair,
  gives no interval (and no p-value): the verdict is "inconclusive" whatever
  the sign.
- **p-value**: two-sided sign-flip permutation test of the effect against a
  null value (0, or the claim's threshold: each difference's distance from it
  is as likely to have either sign); exact enumeration up to
  ``EXACT_UP_TO`` pairs, else ``resamples`` random flips. With n pairs the
  smallest exact p-value is ``2 / 2^n`` (0.25 for 3 seeds), so p is reported,
  not used for verdicts.
- **Verdict** of a claim "effect > threshold" (``direction=+1``) or "effect <
  threshold" (``direction=-1``): "held" when the whole interval lies on the
  claimed side of the threshold, "not held" when it lies wholly on the other
  side, "inconclusive" when it straddles the threshold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

LEVEL = 0.95
RESAMPLES = 10000
EXACT_UP_TO = 16
VERDICTS = ("held", "not held", "inconclusive")


@dataclass(frozen=True)
class Effect:
    """A mean paired difference with its bootstrap interval and permutation p-value."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    level: float = LEVEL

    def text(self, digits: int = 3) -> str:
        """``"+0.012 [−0.003, +0.025]"`` (or ``"n/a"`` without data)."""
        if not self.n:
            return "n/a"
        f = f"{{:+.{digits}f}}"
        if not np.isfinite(self.low):
            return f"{f.format(self.mean)} [no interval: one pair per stratum]"
        return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]"


NO_EFFECT = Effect(math.nan, math.nan, math.nan, math.nan, 0)


def _strata(differences, strata) -> list[np.ndarray]:
    d = np.asarray(differences, dtype=np.float64).ravel()
    if strata is None:
        groups = [d]
    else:
        labels = list(strata)
        if len(labels) != len(d):
            raise UserError(f"{len(d)} differences but {len(labels)} stratum labels")
        groups = [d[[i for i, s in enumerate(labels) if s == key]] for key in dict.fromkeys(labels)]
    groups = [g[np.isfinite(g)] for g in groups]
    return [g for g in groups if len(g)]


def _stratified_mean(groups: list[np.ndarray]) -> float:
    return float(np.mean([g.mean() for g in groups]))


def paired_effect(differences, strata=None, *, level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = 0, null: float = 0.0) -> Effect:
    """The effect, interval and p-value of paired ``differences`` (see the module docstring).

    ``null``: the effect the p-value tests against (the sign flips act on
    ``differences - null``; a claim's threshold).

    Values that are not differences (e.g. per-seed slopes) test "is it above 0?" the same way.

    ``strata``: one label per difference (e.g. the depth), or None for one
    stratum. Non-finite differences are left out; with none left, ``NO_EFFECT``.
    """
    if not 0 < level < 1:
        raise UserError(f"the interval level must be in (0, 1), got {level}")
    groups = _strata(differences, strata)
    if not groups:
        return NO_EFFECT
    if min(map(len, groups)) < 2:  # a stratum of one pair has no spread to resample: a value, no interval
        return Effect(_stratified_mean(groups), math.nan, math.nan, math.nan, sum(map(len, groups)), level)
    rng = np.random.default_rng(seed)
    boot = np.zeros(resamples)
    for g in groups:
        picks = rng.integers(0, len(g), size=(resamples, len(g)))
        boot += g[picks].mean(axis=1)
    boot /= len(groups)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    mean = _stratified_mean(groups)
    p = _sign_flip_p([g - null for g in groups], mean - null, resamples, rng)
    return Effect(mean, float(low), float(high), p, sum(map(len, groups)), level)


def _sign_flip_p(groups: list[np.ndarray], observed: float, resamples: int, rng) -> float:
    """Two-sided p-value of the stratified mean under random sign flips of every difference."""
    d = np.concatenate(groups)
    weights = np.concatenate([np.full(len(g), 1.0 / (len(g) * len(groups))) for g in groups])
    if len(d) <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = rng.choice((1.0, -1.0), size=(resamples, len(d)))
    null = signs @ (weights * d)
    return float(np.mean(np.abs(null) >= abs(observed) - 1e-12 * max(1.0, abs(observed))))


def verdict(effect: Effect, *, direction: int = 1, threshold: float = 0.0) -> str:
    """"held", "not held" or "inconclusive" for the claim ``direction·(effect − threshold) > 0``."""
    if direction not in (1, -1):
        raise ValueError("direction must be +1 or -1")
    if not effect.n or not (np.isfinite(effect.low) and np.isfinite(effect.high)):
        return "inconclusive"
    low, high = sorted((direction * (effect.low - threshold), direction * (effect.high - threshold)))
    if low > 0:
        return "held"
    if high < 0:
        return "not held"
    return "inconclusive"


def permutation_null(measure, x: np.ndarray, y: np.ndarray, *, permutations: int = 100, seed: int = 0,
                     quantile: float = 0.95) -> float:
    """The ``quantile`` of ``measure(x, y[π])`` over random row permutations ``π`` of ``y``.

    Shuffling the rows breaks the sample correspondence and keeps each side's
    own geometry: a similarity no higher than this is no evidence of shared
    structure at all.
    """
    rng = np.random.default_rng(seed)
    values = [measure(x, y[rng.permutation(len(y))]) for _ in range(permutations)]
    return float(np.quantile(values, quantile))
