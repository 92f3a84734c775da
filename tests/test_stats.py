"""The statistics behind the report's verdicts: known effects, no effect, strata, exact and Monte-Carlo p-values,
the correction over a family, too few seeds, the jackknife, and the fit of drift against error."""

import itertools

import numpy as np
import pytest
import scipy.stats

from repanalysis.errors import UserError
from repanalysis.measures import linear_cka, stats


def test_the_interval_and_p_value_are_students_t_of_the_mean():
    rng = np.random.default_rng(0)
    d = 0.5 + 0.1 * rng.standard_normal(12)
    effect = stats.paired_effect(d)
    reference = scipy.stats.ttest_1samp(d, 0.0)
    low, high = reference.confidence_interval(0.95)
    assert (effect.low, effect.high) == pytest.approx((low, high), rel=1e-12)
    assert effect.p == pytest.approx(reference.pvalue, rel=1e-9)
    assert stats.paired_effect(d, null=0.5).p == pytest.approx(scipy.stats.ttest_1samp(d, 0.5).pvalue, rel=1e-9)
    assert effect.p_perm == pytest.approx(2 / 2**12)  # only all-positive and all-negative flips are as extreme
    assert stats.verdict(effect) == "held"
    assert stats.verdict(effect, direction=-1) == "not held"
    assert stats.verdict(effect, direction=-1, threshold=1.0) == "held"  # "effect < 1"


def test_no_effect_is_inconclusive():
    rng = np.random.default_rng(1)
    d = rng.standard_normal(20)
    d -= d.mean()  # exactly zero mean
    effect = stats.paired_effect(d)
    assert effect.low < 0 < effect.high and effect.p > 0.99
    assert stats.verdict(effect) == "inconclusive" and stats.verdict(effect, direction=-1) == "inconclusive"
    assert 1 / (1 + stats.RESAMPLES) <= effect.p_perm  # Monte-Carlo beyond 16 values, with its +1


def test_fewer_than_five_seeds_give_no_verdict_and_no_interval_but_their_range():
    three = stats.paired_effect([0.2, 0.3, 0.4])
    assert stats.verdict(three) == "too few seeds" and not three.enough
    assert three.text() == "+0.300 (range +0.200 … +0.400, 3 seeds)"
    five = stats.paired_effect([0.2, 0.3, 0.4, 0.25, 0.35])
    assert five.enough and stats.verdict(five) == "held" and "[" in five.text()
    pooled = stats.paired_effect([0.1, 0.2, 0.3, 0.4], strata=["a", "a", "b", "b"])
    assert pooled.fewest == 2 and stats.verdict(pooled) == "too few seeds" and "2 seeds per stratum" in pooled.text()


def test_strata_weigh_each_stratum_alike_with_welch_satterthwaite_degrees_of_freedom():
    a, b = np.array([1.0, 1.2, 0.8, 1.1, 0.9]), np.array([3.0, 3.5, 2.5, 3.2, 2.8, 3.1, 2.9])
    effect = stats.paired_effect(np.concatenate([a, b]), ["a"] * 5 + ["b"] * 7)
    assert effect.mean == pytest.approx((a.mean() + b.mean()) / 2)  # not the pooled mean
    va, vb = a.var(ddof=1) / 5 / 4, b.var(ddof=1) / 7 / 4
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 6)
    half = scipy.stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert (effect.low, effect.high) == pytest.approx((effect.mean - half, effect.mean + half), rel=1e-12)
    constant = stats.paired_effect([1.0] * 5 + [3.0] * 5, ["a"] * 5 + ["b"] * 5)
    assert constant.low == constant.high == pytest.approx(2.0) and constant.p == 0.0
    with pytest.raises(UserError, match="stratum"):
        stats.paired_effect([1.0, 2.0], ["a"])


def test_the_same_data_give_the_same_effect_and_non_finite_values_are_left_out():
    a = stats.paired_effect([0.1, -0.3, 0.5, 0.2, 0.4, np.nan])
    b = stats.paired_effect([0.1, -0.3, 0.5, 0.2, 0.4])
    assert a == b and a.n == 5
    assert stats.paired_effect([np.nan]) is stats.NO_EFFECT
    assert stats.verdict(stats.NO_EFFECT) == "too few seeds"
    assert stats.NO_EFFECT.text() == "n/a"


def test_the_correction_is_benjamini_hochberg_over_the_family():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.001])
    q = stats.adjusted(p)
    live = np.isfinite(p)
    np.testing.assert_allclose(q[live], scipy.stats.false_discovery_control(p[live], method="bh"), rtol=1e-12)
    assert np.isnan(q[~live]).all()
    # a family: two strong effects stay decisive, a marginal one (p 0.03 alone) does not survive with them
    strong = stats.paired_effect([0.5, 0.52, 0.48, 0.51, 0.49])
    marginal = stats.paired_effect([0.1, 0.0, 0.2, 0.15, 0.12])
    assert stats.verdict(marginal) == "held" and 0.01 < marginal.p < 0.05
    found = stats.verdicts([strong, marginal] + [stats.paired_effect([0.1, -0.1, 0.05, -0.05, 0.0])] * 8,
                           [1] * 10, [0.0] * 10)
    assert found[0] == "held" and found[1] == "inconclusive"


def test_jackknife_pseudovalues_of_the_mean_are_the_values_and_of_a_pair_statistic_resample_units():
    values = {"a": 1.0, "b": 4.0, "c": 2.5, "d": -1.0}
    pseudo = stats.jackknife_pseudovalues(lambda units: np.mean([values[u] for u in units]), list(values))
    assert pseudo == pytest.approx(values)  # the identity that makes the t machinery the jackknife's
    rng = np.random.default_rng(3)
    pair = {(i, j): rng.standard_normal() for i in range(5) for j in range(5) if i != j}

    def mean_over_pairs(units):
        return np.mean([pair[(i, j)] for i, j in itertools.permutations(units, 2)])

    pseudo = stats.jackknife_pseudovalues(mean_over_pairs, list(range(5)))
    assert np.mean(list(pseudo.values())) == pytest.approx(mean_over_pairs(list(range(5))))  # a U-statistic
    assert stats.jackknife_pseudovalues(mean_over_pairs, [0]) == {}


def test_permutation_null_is_far_below_the_similarity_of_related_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 20))
    y = x @ rng.standard_normal((20, 15)) + 0.1 * rng.standard_normal((300, 15))
    null = stats.permutation_null(linear_cka, x, y, permutations=30, seed=0)
    assert linear_cka(x, y) > 0.5 and null < 0.15
    assert null == stats.permutation_null(linear_cka, x, y, permutations=30, seed=0)


def _clustered(rng, slope: float, seeds: int = 6, per_seed: int = 20):
    """Points of ``seeds`` clusters: y = slope·x + a seed's own offset + noise."""
    seed = np.repeat(np.arange(seeds), per_seed)
    x = rng.uniform(0, 1, seeds * per_seed)
    y = slope * x + rng.normal(0, 0.3, seeds)[seed] + rng.normal(0, 0.1, seeds * per_seed)
    return x, y, seed


def test_a_known_slope_is_recovered_inside_its_interval_and_no_dependence_covers_zero():
    rng = np.random.default_rng(4)
    x, y, seed = _clustered(rng, 0.5)
    fit = stats.cluster_fit(x, y, seed)
    assert fit.low < 0.5 < fit.high and fit.high - fit.low < 1.0 and fit.p < 0.05
    assert fit.clusters == 6 and fit.points == 120 and 0 <= fit.r2_low <= fit.r2 <= fit.r2_high <= 1
    covered = sum(stats.cluster_fit(*_clustered(np.random.default_rng(100 + k), 0.0)).low < 0
                  < stats.cluster_fit(*_clustered(np.random.default_rng(100 + k), 0.0)).high for k in range(200))
    assert covered >= 180  # about 95% of intervals cover the true 0


def test_a_covariate_takes_the_slope_it_explains():
    rng = np.random.default_rng(5)
    seed = np.repeat(np.arange(6), 30)
    confound = rng.uniform(0, 1, len(seed))
    x = confound + rng.normal(0, 0.05, len(seed))  # x only follows the confound
    y = 2.0 * confound + rng.normal(0, 0.05, len(seed))
    alone, held = stats.cluster_fit(x, y, seed), stats.cluster_fit(x, y, seed, confound)
    assert alone.low > 1.5  # x seems to drive y
    assert held.low < 0 < held.high and held.r2 > alone.r2  # with the confound held fixed, it does not


def test_a_fit_needs_three_clusters_and_spread_in_x():
    assert stats.cluster_fit([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0, 0, 1, 1]) is stats.NO_FIT
    assert stats.cluster_fit([0.0] * 6, [1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 2, 2]) is stats.NO_FIT
