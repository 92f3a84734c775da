"""Claim verdicts from per-run quantities: a known effect, no effect, and pooling over depth."""

import numpy as np
import pandas as pd
import pytest

from repanalysis.claims import CLAIMS, Context, judge, pool_label, scope_label
from repanalysis.claims import QUANTITY_COLUMNS


def _quantities(values: dict) -> pd.DataFrame:
    """``{(depth, rule, seed): {quantity: value}}`` -> a quantity table (relu everywhere)."""
    rows = []
    for (depth, rule, seed), found in values.items():
        cell = (("depth", depth), ("activation", "relu"))
        for quantity, value in found.items():
            rows.append((f"d{depth}{rule}{seed}", "depth", rule, seed, scope_label(cell), pool_label(cell),
                         quantity, value))
    return pd.DataFrame(rows, columns=list(QUANTITY_COLUMNS))


def _rows(result, part=0):
    return {scope: (effect, verdict) for scope, effect, verdict in result.parts[part].rows + result.parts[part].pooled}


def test_scopes_and_pools_are_named_from_the_cell():
    cell = (("depth", 50), ("activation", "tanh"))
    assert scope_label(cell) == "depth 50, tanh" and pool_label(cell) == "tanh, all depths"
    assert pool_label((("activation", "relu"),)) is None and scope_label(()) == "all runs"


def test_a_known_accuracy_gap_is_not_held_and_none_is_held():
    rng = np.random.default_rng(0)
    values = {}
    for depth in (5, 50):
        for seed in range(3):
            base = 0.97 + 0.005 * rng.standard_normal()
            values[(depth, "backprop", seed)] = {"test_acc": base}
            # depth 5: sg as good; depth 50: sg 5 points worse
            values[(depth, "sg", seed)] = {"test_acc": base - (0.0 if depth == 5 else 0.05) + 0.001 * seed}
    context = Context("depth", {}, quantities=_quantities(values))
    rows = _rows(judge("trains_well", CLAIMS["trains_well"], context))
    assert rows["depth 5, relu"][1] == "held"
    assert rows["depth 50, relu"][1] == "not held"
    assert rows["depth 50, relu"][0].mean == pytest.approx(0.05 - 0.001, abs=1e-12)
    pooled = rows["relu, all depths"][0]
    assert pooled.n == 6 and pooled.mean == pytest.approx((rows["depth 5, relu"][0].mean + rows["depth 50, relu"][0].mean) / 2)


def test_a_directional_part_with_no_effect_is_inconclusive_and_one_sample_parts_test_the_value():
    values = {}
    for seed, (bp, sg) in enumerate([(0.2, -0.1), (-0.1, 0.3), (0.05, 0.0)]):
        values[(5, "backprop", seed)] = {"weight_norm_slope": bp}
        values[(5, "sg", seed)] = {"weight_norm_slope": sg}
    context = Context("depth", {}, quantities=_quantities(values))
    result = judge("weight_norms", CLAIMS["weight_norms"], context)
    verdicts = [part.rows[0][2] for part in result.parts]
    assert verdicts == ["inconclusive", "inconclusive", "inconclusive"]
    values[(5, "sg", 1)] = {"weight_norm_slope": -0.3}
    values[(5, "backprop", 1)] = {"weight_norm_slope": 0.1}
    values[(5, "sg", 2)] = {"weight_norm_slope": -0.05}
    result = judge("weight_norms", CLAIMS["weight_norms"], Context("depth", {}, quantities=_quantities(values)))
    assert [part.rows[0][2] for part in result.parts] == ["held", "held", "held"]


def test_late_alignment_averages_the_layers_over_the_second_half_of_each_run():
    from repanalysis.claims import _late_mean
    rows = []
    for run, steps in (("a", (0, 300, 600, 900, 1200)), ("b", (0, 500, 1000))):
        for step in steps:
            for k, layer in enumerate(("h1", "h2")):
                value = np.nan if step == 0 else step / 1000 + k  # a zero module has no cosine at step 0
                rows.append((run, layer, step, value))
    late = _late_mean(pd.DataFrame(rows, columns=["run_a", "layer_a", "step_a", "value"]))
    # a: steps 600, 900 and 1200 (at least half of 1200); b: steps 500 and 1000; the layers add 0 and 1
    assert late["a"] == pytest.approx(np.mean([0.6, 0.9, 1.2]) + 0.5, abs=1e-12)
    assert late["b"] == pytest.approx(np.mean([0.5, 1.0]) + 0.5, abs=1e-12)
