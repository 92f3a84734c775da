"""Claim verdicts from per-run quantities: a known effect, no effect, and pooling over depth."""

import numpy as np
import pandas as pd
import pytest

from repanalysis.experiments.claims import CLAIMS, QUANTITY_COLUMNS, Context, judge, pool_label, scope_label


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
        for seed in range(5):
            base = 0.97 + 0.005 * rng.standard_normal()
            values[(depth, "backprop", seed)] = {"test_acc": base}
            # depth 5: sg as good; depth 50: sg 5 points worse
            values[(depth, "sg", seed)] = {"test_acc": base - (0.0 if depth == 5 else 0.05) + 0.001 * seed}
    context = Context("depth", {}, quantities=_quantities(values))
    rows = _rows(judge("trains_well", CLAIMS["trains_well"], context))
    assert rows["depth 5, relu"][1] == "held"
    assert rows["depth 50, relu"][1] == "not held"
    assert rows["depth 50, relu"][0].mean == pytest.approx(0.05 - 0.001 * 2, abs=1e-12)  # seeds 0..4
    pooled = rows["relu, all depths"][0]
    assert pooled.n == 10 and pooled.mean == pytest.approx((rows["depth 5, relu"][0].mean + rows["depth 50, relu"][0].mean) / 2)


def test_a_directional_part_with_no_effect_is_inconclusive_and_one_sample_parts_test_the_value():
    values = {}
    pairs = [(0.2, -0.1), (-0.1, 0.3), (0.05, 0.0), (-0.2, 0.1), (0.1, -0.2)]
    for seed, (bp, sg) in enumerate(pairs):
        values[(5, "backprop", seed)] = {"weight_norm_slope": bp}
        values[(5, "sg", seed)] = {"weight_norm_slope": sg}
    context = Context("depth", {}, quantities=_quantities(values))
    result = judge("weight_norms", CLAIMS["weight_norms"], context)
    assert [part.label for part in result.parts] == ["backprop's slope", "sg's slope", "slope: backprop − sg"]
    verdicts = [part.rows[0][2] for part in result.parts]
    assert verdicts == ["inconclusive", "inconclusive", "inconclusive"]
    for seed in range(5):
        values[(5, "sg", seed)] = {"weight_norm_slope": -0.3 + 0.01 * seed}
        values[(5, "backprop", seed)] = {"weight_norm_slope": 0.1 + 0.02 * seed}
    result = judge("weight_norms", CLAIMS["weight_norms"], Context("depth", {}, quantities=_quantities(values)))
    assert [part.rows[0][2] for part in result.parts] == ["held", "held", "held"]
    assert result.family == 3


def test_fewer_than_five_seeds_give_no_verdict():
    values = {(5, rule, seed): {"test_acc": 0.9 - (0.1 if rule == "sg" else 0)} for rule in ("backprop", "sg")
              for seed in range(3)}
    result = judge("trains_well", CLAIMS["trains_well"], Context("depth", {}, quantities=_quantities(values)))
    assert result.parts[0].rows[0][2] == "too few seeds" and result.family == 0


def test_claims_judge_the_rule_the_experiment_compares():
    values = {}
    for seed in range(5):
        values[(5, "backprop", seed)] = {"test_acc": 0.97 + 0.001 * seed}
        values[(5, "cdni", seed)] = {"test_acc": 0.965 + 0.0012 * seed}
        values[(5, "fa", seed)] = {"test_acc": 0.90 + 0.002 * seed}
    q = _quantities(values)
    both = judge("trains_well", CLAIMS["trains_well"], Context("depth", {}, quantities=q))
    assert [p.label for p in both.parts] == ["test accuracy: backprop − cdni", "test accuracy: backprop − fa"]
    assert [p.rows[0][2] for p in both.parts] == ["held", "not held"]  # within 1 point; 6-7 points worse
    only = judge("trains_well", CLAIMS["trains_well"], Context("depth", {}, quantities=q, compare=("fa",)))
    assert [p.label for p in only.parts] == ["test accuracy: backprop − fa"]
    assert judge("unifying", CLAIMS["unifying"], Context("depth", {}, quantities=q)).parts[0].label.startswith("fa:")


def test_a_spec_whose_claims_judge_nothing_is_refused_when_loaded():
    from repanalysis.errors import UserError
    from repanalysis.experiments import parse

    spec = "[experiments.e]\nclaims = [{claims}]\nsettings = {{ steps = 5, depth = 2 }}\ngrid = {{ rule = [{rules}] }}\n{extra}"
    parse(spec.format(claims='"trains_well"', rules='"backprop", "cdni"', extra=""), "ok.toml")
    for claims, rules, extra, message in (
            ('"unifying"', '"backprop", "cdni"', "", "claim unifying judges fa, dfa, kickback"),
            ('"trains_well"', '"cdni"', "", "compares rules with backprop"),
            ('"trains_well"', '"backprop", "cdni"', 'compare = ["sg"]', "compare names sg")):
        with pytest.raises(UserError, match=message):
            parse(spec.format(claims=claims, rules=rules, extra=extra), "bad.toml")


def test_layers_differ_resamples_seeds_by_the_jackknife_over_pairs():
    """Backprop's seeds agree at 0.9 ± noise, sg's runs with other-seed backprop at 0.7: ceiling − sg ≈ 0.2."""
    from repanalysis.experiments.claims import PAIR_COLUMNS

    rng = np.random.default_rng(1)
    rows = []
    for rule, level in (("backprop", 0.9), ("sg", 0.7)):
        for seed in range(6):
            for other in range(6):
                if other != seed:
                    rows.append((f"{rule}{seed}", rule, seed, "depth 5, relu", "relu, all depths", other, "h1", 0,
                                 level + rng.normal(0, 0.01), 0.1))
    context = Context("depth", {}, quantities=_quantities({(5, "sg", 0): {"test_acc": 1.0}}),
                      pairs=pd.DataFrame(rows, columns=list(PAIR_COLUMNS)))
    result = judge("layers_differ", CLAIMS["layers_differ"], context)
    by_label = {part.label: part for part in result.parts}
    # no region split without run files to read it from: the region parts have no rows; the null part does
    assert by_label["ceiling above the permutation null (backprop's CKA across seeds − null)"].rows[0][2] == "held"
    effect = by_label["ceiling above the permutation null (backprop's CKA across seeds − null)"].rows[0][1]
    assert effect.n == 6 and effect.mean == pytest.approx(0.8, abs=0.01)


def test_late_alignment_averages_the_layers_over_the_second_half_of_each_run():
    from repanalysis.experiments.claims import _late_mean
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


def test_the_null_from_permuted_gram_matrices_is_the_permutation_null_of_linear_cka():
    """claims permute a run's centred Gram matrix (rows and columns) instead of remaking it from the
    permuted samples: the same null, to rounding."""
    import numpy as np

    from repanalysis.experiments.claims import _PermutedGram
    from repanalysis.measures import linear_cka
    from repanalysis.measures.similarity import centred_linear_gram, linear_cka_from_grams
    from repanalysis.measures.stats import permutation_null

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 40))
    y = x @ rng.standard_normal((40, 40)) + rng.standard_normal((60, 40))
    want = permutation_null(linear_cka, x, y, permutations=20, seed=4)
    got = permutation_null(linear_cka_from_grams, centred_linear_gram(x), _PermutedGram(centred_linear_gram(y)),
                           permutations=20, seed=4)
    assert got == pytest.approx(want, rel=1e-12) and 0 < got < linear_cka(x, y)
