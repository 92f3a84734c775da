"""Intervals, p-values and verdicts that the report's claims rest on.

A claim compares two training rules on runs *paired by seed* (same initial
weights and batches where the rules share a network), so its evidence is a
set of per-seed values ``d`` (usually paired differences ``value(rule A) −
value(rule B)``), possibly in several strata (the depths of a sweep), tested
against a threshold. Conventions:

- **Effect**: the mean of ``d``; with strata, the mean over strata of each
  stratum's mean (every depth weighs the same).
- **Interval**: Student-t at ``level`` (default 95%): ``mean ± t·se``. One
  stratum: ``se = s/√n`` with ``n − 1`` degrees of freedom; strata:
  ``se² = Σ_k s_k² / (n_k K²)`` over the ``K`` strata, with Welch–Satterthwaite
  degrees of freedom. A stratum of one value gives no interval.
- **p**: the two-sided t-test of the effect against ``null`` (the claim's
  threshold).
- **p_perm**: the two-sided sign-flip permutation p-value of the same
  (stratified) mean against ``null``, free of the t-test's normality
  assumption: exact up to ``EXACT_UP_TO`` values (the share of the ``2^n``
  sign patterns at least as extreme), else Monte-Carlo with ``resamples``
  flips, ``(1 + #{as extreme}) / (1 + resamples)``. With ``n`` values it
  cannot go below ``2 / 2^n`` (1/16 for 5 seeds), so it is shown, not used
  for verdicts.
- **Verdicts** (``verdicts``), per *family* (the parts and scopes of one
  claim): the p-values are adjusted by Benjamini–Hochberg over the family
  (``adjusted``; the false-discovery rate among its decisive verdicts is at
  most ``ALPHA``); a part is **held** when its adjusted p is below ``ALPHA``
  and the effect lies on the claimed side of the threshold, **not held** when
  it is below ``ALPHA`` on the other side, **inconclusive** otherwise. With
  fewer than ``MIN_SEEDS`` values in a stratum there is no verdict (**too few
  seeds**), and no interval is given: the report shows the range of the
  values instead (a percentile interval of 3 seeds is their range, which
  covers the centre only about 75% of the time).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import scipy.stats

from repanalysis.errors import UserError

LEVEL = 0.95
ALPHA = 0.05
MIN_SEEDS = 5
RESAMPLES = 10000
EXACT_UP_TO = 16
VERDICTS = ("held", "not held", "inconclusive", "too few seeds", "no data")
CORRECTION = "Benjamini–Hochberg"


@dataclass(frozen=True)
class Effect:
    """A mean of per-seed values with its t-interval, t-test and sign-flip p-values and the values' range.

    ``fewest``: the fewest values in any stratum (the seeds behind the weakest stratum).
    """

    mean: float
    low: float
    high: float
    p: float
    n: int
    level: float = LEVEL
    p_perm: float = math.nan
    fewest: int = 0
    smallest: float = math.nan
    largest: float = math.nan

    @property
    def enough(self) -> bool:
        """Whether every stratum has at least ``MIN_SEEDS`` values (else no interval and no verdict)."""
        return self.fewest >= MIN_SEEDS

    def text(self, digits: int = 3) -> str:
        """``"+0.012 [−0.003, +0.025]"``; with too few seeds ``"+0.012 (range −0.010 … +0.030, 3 seeds)"``."""
        if not self.n:
            return "n/a"
        f = f"{{:+.{digits}f}}"
        if not self.enough or not np.isfinite(self.low):
            return (f"{f.format(self.mean)} (range {f.format(self.smallest)} … {f.format(self.largest)}, "
                    f"{self.fewest} seed{'s' if self.fewest != 1 else ''}{' per stratum' if self.fewest < self.n else ''})")
        return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]"


NO_EFFECT = Effect(math.nan, math.nan, math.nan, math.nan, 0)


def _strata(values, strata) -> list[np.ndarray]:
    d = np.asarray(values, dtype=np.float64).ravel()
    if strata is None:
        groups = [d]
    else:
        labels = list(strata)
        if len(labels) != len(d):
            raise UserError(f"{len(d)} values but {len(labels)} stratum labels")
        groups = [d[[i for i, s in enumerate(labels) if s == key]] for key in dict.fromkeys(labels)]
    groups = [g[np.isfinite(g)] for g in groups]
    return [g for g in groups if len(g)]


def paired_effect(values, strata=None, *, level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = 0, null: float = 0.0) -> Effect:
    """The effect, t-interval, t-test p-value against ``null`` and sign-flip p-value of per-seed ``values``
    (see the module docstring).

    ``strata``: one label per value (e.g. the depth), or None for one stratum.
    Non-finite values are left out; with none left, ``NO_EFFECT``.
    """
    if not 0 < level < 1:
        raise UserError(f"the interval level must be in (0, 1), got {level}")
    groups = _strata(values, strata)
    if not groups:
        return NO_EFFECT
    k = len(groups)
    mean = float(np.mean([g.mean() for g in groups]))
    every = np.concatenate(groups)
    fewest, n = min(map(len, groups)), len(every)
    spread = dict(fewest=fewest, smallest=float(every.min()), largest=float(every.max()))
    if fewest < 2:
        return Effect(mean, math.nan, math.nan, math.nan, n, level, **spread)
    parts = np.array([g.var(ddof=1) / len(g) for g in groups]) / k**2
    se = math.sqrt(parts.sum())
    df = parts.sum() ** 2 / sum(p**2 / (len(g) - 1) for p, g in zip(parts, groups)) if se > 0 else n - k
    half = scipy.stats.t.ppf(0.5 + level / 2, df) * se
    if se > 0:
        p = float(2 * scipy.stats.t.sf(abs(mean - null) / se, df))
    else:  # every stratum constant: the effect is its value, exactly
        p = 0.0 if mean != null else 1.0
    p_perm = _sign_flip_p([g - null for g in groups], mean - null, resamples, np.random.default_rng(seed))
    return Effect(mean, mean - half, mean + half, p, n, level, p_perm, **spread)


def _sign_flip_p(groups: list[np.ndarray], observed: float, resamples: int, rng) -> float:
    """Two-sided p-value of the stratified mean under random sign flips of every value (module docstring)."""
    d = np.concatenate(groups)
    weights = np.concatenate([np.full(len(g), 1.0 / (len(g) * len(groups))) for g in groups])
    tolerance = 1e-12 * max(1.0, abs(observed))
    if len(d) <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ (weights * d)) >= abs(observed) - tolerance))
    signs = rng.choice((1.0, -1.0), size=(resamples, len(d)))
    extreme = int(np.sum(np.abs(signs @ (weights * d)) >= abs(observed) - tolerance))
    return (1 + extreme) / (1 + resamples)


def adjusted(p_values) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values of one family (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(np.isfinite(p))
    if not len(live):
        return out
    order = live[np.argsort(p[live], kind="stable")]
    m = len(order)
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def verdict(effect: Effect, *, direction: int = 1, threshold: float = 0.0, p_adjusted: float | None = None,
            alpha: float = ALPHA) -> str:
    """The verdict on the claim ``direction·(effect − threshold) > 0`` (module docstring); ``p_adjusted``:
    the effect's p-value adjusted over its family (default: its own p, a family of one)."""
    if direction not in (1, -1):
        raise ValueError("direction must be +1 or -1")
    if not effect.n or not effect.enough:
        return "too few seeds"
    p = effect.p if p_adjusted is None else p_adjusted
    if not np.isfinite(p) or p >= alpha:
        return "inconclusive"
    return "held" if direction * (effect.mean - threshold) > 0 else "not held"


def verdicts(effects: list[Effect], directions: list[int], thresholds: list[float],
             alpha: float = ALPHA) -> list[str]:
    """The verdicts of one family of effects, their p-values adjusted together (``adjusted``); effects with
    too few seeds are not counted in the family."""
    ps = [e.p if e.n and e.enough else math.nan for e in effects]
    return [verdict(e, direction=d, threshold=t, p_adjusted=q, alpha=alpha)
            for e, d, t, q in zip(effects, directions, thresholds, adjusted(ps))]


def jackknife_pseudovalues(statistic, units: list) -> dict:
    """Per unit ``k`` the jackknife pseudo-value ``n·T(all) − (n − 1)·T(all but k)`` of ``statistic`` (a
    function of a list of units, e.g. seeds). Their mean is the jackknife estimate of ``T`` (``T`` itself for
    a U-statistic) and their variance over ``n`` the jackknife variance, so the t machinery above, applied
    to them, gives the jackknife t-interval: inference over the independent units when ``T`` pools pairs of
    them (CKA between runs of different seeds shares each run among many pairs)."""
    n = len(units)
    if n < 2:
        return {}
    whole = statistic(list(units))
    return {u: n * whole - (n - 1) * statistic([v for v in units if v != u]) for u in units}


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


@dataclass(frozen=True)
class Fit:
    """A least-squares line ``y = a + b·x (+ c·covariate)``: the slope ``b`` of ``x`` (with a covariate, its
    partial slope) and the model's R², each with a jackknife t-interval over clusters (``cluster_fit``)."""

    slope: float
    low: float
    high: float
    p: float
    r2: float
    r2_low: float
    r2_high: float
    clusters: int
    points: int
    level: float = LEVEL


NO_FIT = Fit(*([math.nan] * 7), 0, 0)


def _least_squares(x: np.ndarray, y: np.ndarray, covariate: np.ndarray | None) -> tuple[float, float]:
    """The slope of ``x`` and R² of the least-squares fit of ``y`` on ``[1, x(, covariate)]``."""
    design = np.column_stack([np.ones_like(x), x] + ([] if covariate is None else [covariate]))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    total = float(np.sum((y - y.mean()) ** 2))
    residual = float(np.sum((y - design @ coef) ** 2))
    return float(coef[1]), (1.0 - residual / total) if total > 0 else math.nan


def cluster_fit(x, y, clusters, covariate=None, *, level: float = LEVEL) -> Fit:
    """The least-squares slope of ``y`` on ``x`` (and ``covariate``) and R², with intervals that treat each
    cluster (a seed: all points of one seed's runs) as the independent unit.

    The intervals are the delete-one-cluster jackknife with ``G − 1`` degrees of
    freedom (``G`` clusters): ``θ ± t·se``, ``se² = (G−1)/G · Σ_g (θ_(g) − θ̄)²``,
    where ``θ_(g)`` is the fit without cluster ``g``; the p-value is the t-test of
    the slope against 0. Points within a cluster may be dependent in any way
    (checkpoints of one run, layers of one net). Non-finite points are left out;
    fewer than 3 clusters, or an ``x`` without spread, give ``NO_FIT``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = None if covariate is None else np.asarray(covariate, dtype=np.float64)
    groups = np.asarray(clusters)
    keep = np.isfinite(x) & np.isfinite(y) & (np.isfinite(c) if c is not None else True)
    x, y, groups = x[keep], y[keep], groups[keep]
    c = None if c is None else c[keep]
    labels = list(dict.fromkeys(groups.tolist()))
    if len(labels) < 3 or np.ptp(x) == 0:
        return NO_FIT
    slope, r2 = _least_squares(x, y, c)
    leave = []
    for g in labels:
        rest = groups != g
        if np.ptp(x[rest]) == 0:
            return NO_FIT
        leave.append(_least_squares(x[rest], y[rest], None if c is None else c[rest]))
    leave = np.array(leave)
    k = len(labels)
    se = np.sqrt((k - 1) / k * np.sum((leave - leave.mean(0)) ** 2, axis=0))
    t = scipy.stats.t.ppf(0.5 + level / 2, k - 1)
    p = float(2 * scipy.stats.t.sf(abs(slope) / se[0], k - 1)) if se[0] > 0 else (0.0 if slope else 1.0)
    return Fit(slope, float(slope - t * se[0]), float(slope + t * se[0]), p, r2, float(max(0.0, r2 - t * se[1])),
               float(min(1.0, r2 + t * se[1])), k, int(len(x)), level)
