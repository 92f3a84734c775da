"""The statistics behind the report's verdicts: known effects, no effect, strata, exact p-values."""

import numpy as np
import pytest

from repanalysis import stats
from repanalysis.analysis import linear_cka
from repanalysis.errors import UserError


def test_a_clear_effect_is_held_and_its_opposite_not_held():
    rng = np.random.default_rng(0)
    d = 0.5 + 0.1 * rng.standard_normal(12)
    effect = stats.paired_effect(d)
    assert effect.low > 0.4 and effect.high < 0.6 and effect.low < d.mean() < effect.high
    assert stats.verdict(effect) == "held"
    assert stats.verdict(effect, direction=-1) == "not held"
    assert stats.verdict(effect, direction=-1, threshold=1.0) == "held"  # "effect < 1"
    assert effect.p == pytest.approx(2 / 2**12)  # only all-positive and all-negative flips are as extreme
    assert stats.paired_effect(d, null=0.5).p > 0.05  # against its own centre there is no effect


def test_no_effect_is_inconclusive():
    rng = np.random.default_rng(1)
    d = rng.standard_normal(20)
    d -= d.mean()  # exactly zero mean
    effect = stats.paired_effect(d)
    assert effect.low < 0 < effect.high
    assert stats.verdict(effect) == "inconclusive" and stats.verdict(effect, direction=-1) == "inconclusive"
    assert effect.p > 0.9


def test_three_agreeing_seeds_give_the_coarse_interval_and_p_a_quarter():
    effect = stats.paired_effect([0.2, 0.3, 0.4])
    # every bootstrap resample is a mean of three of the values: the interval lies in [0.2, 0.4]
    assert 0.2 - 1e-12 <= effect.low < 0.3 < effect.high <= 0.4 + 1e-12
    assert effect.p == pytest.approx(0.25)  # 2 of the 8 sign patterns are as extreme
    assert stats.verdict(effect) == "held"


def test_strata_weigh_each_stratum_alike_and_resample_within_it():
    d = [1.0, 1.0, 1.0, 1.0, 3.0, 3.0]
    strata = ["a", "a", "a", "a", "b", "b"]
    effect = stats.paired_effect(d, strata)
    assert effect.mean == pytest.approx(2.0)  # (mean of a + mean of b) / 2, not the pooled mean 1.67
    assert effect.low == pytest.approx(2.0) and effect.high == pytest.approx(2.0)  # no spread within strata
    with pytest.raises(UserError, match="stratum"):
        stats.paired_effect(d, strata[:-1])


def test_the_same_data_give_the_same_interval_and_non_finite_values_are_left_out():
    a = stats.paired_effect([0.1, -0.3, 0.5, 0.2, np.nan])
    b = stats.paired_effect([0.1, -0.3, 0.5, 0.2])
    assert a == b and a.n == 4
    assert stats.paired_effect([np.nan]) is stats.NO_EFFECT
    assert stats.verdict(stats.NO_EFFECT) == "inconclusive"
    assert stats.NO_EFFECT.text() == "n/a"


def test_permutation_null_is_far_below_the_similarity_of_related_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 20))
    y = x @ rng.standard_normal((20, 15)) + 0.1 * rng.standard_normal((300, 15))
    null = stats.permutation_null(linear_cka, x, y, permutations=30, seed=0)
    assert linear_cka(x, y) > 0.5 and null < 0.15
    assert null == stats.permutation_null(linear_cka, x, y, permutations=30, seed=0)


def test_one_pair_gives_no_interval_and_no_verdict():
    effect = stats.paired_effect([0.7])
    assert effect.mean == 0.7 and effect.n == 1 and np.isnan(effect.low) and np.isnan(effect.p)
    assert stats.verdict(effect) == "inconclusive" and "no interval" in effect.text()
    pooled = stats.paired_effect([0.7, 0.5], strata=["depth 5", "depth 50"])  # one seed per depth
    assert pooled.mean == pytest.approx(0.6) and pooled.n == 2 and stats.verdict(pooled) == "inconclusive"
