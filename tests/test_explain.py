"""The explanation (``analysis.explain``): error against drift on synthetic tables with a known law, and the
explain preset's quick version end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repanalysis.analysis.explain import explain_frame, explain_table
from repanalysis.experiments import Overrides, preset


def _tables(law, seeds=6, arms=(("a", 0.3), ("b", 0.6), ("c", 0.9)), steps=(0, 100, 200), layers=("h1", "h2", "h3")):
    """An analysis table, runs and losses where each arm's signal at h1, h2 (below the module) has the update
    cosine ``1 − error`` at every checkpoint after 0, h3 gets the true gradient, and D = ``law(exposure, rng)``."""
    rng = np.random.default_rng(0)
    analysis, runs, losses = [], [], {}
    for seed in range(seeds):
        twin = f"bp{seed}"
        runs.append((twin, "relu", "backprop", "backprop", seed, steps[-1]))
        losses[twin] = (np.arange(1, steps[-1] + 1), np.ones(steps[-1]))
        offset = rng.normal(0, 0.02)
        for arm, error in arms:
            run = f"{arm}{seed}"
            runs.append((run, "relu", arm, "sg", seed, steps[-1]))
            losses[run] = (np.arange(1, steps[-1] + 1), np.ones(steps[-1]) * (1 + error))
            for layer in layers:
                below = layer != "h3"
                for step in steps:
                    exposure = error * step / steps[-1] if below else 0.0
                    d = law(exposure, rng) + offset
                    analysis.append(("linear_cka", run, "sg", seed, layer, step, twin, "backprop", seed, layer, step,
                                     1 - d))
                    if below:
                        analysis.append(("update_cosine", run, "sg", seed, layer, step, None, None, None, None, None,
                                         1 - error))
                        analysis.append(("update_rel_error", run, "sg", seed, layer, step, None, None, None, None,
                                         None, 0.5))
    columns = ["measure", "run_a", "rule_a", "seed_a", "layer_a", "step_a", "run_b", "rule_b", "seed_b", "layer_b",
               "step_b", "value"]
    return (pd.DataFrame(analysis, columns=columns),
            pd.DataFrame(runs, columns=["run", "scope", "arm", "rule", "seed", "steps"]), losses)


def test_exposure_is_the_trapezoid_average_of_the_error_and_zero_above_the_module():
    frame = explain_frame(*_tables(lambda e, rng: 0.1 * e))
    a = frame[(frame["arm"] == "b") & (frame["seed"] == 0)]
    below = a[a["layer"] == "h1"].set_index("step")
    assert below["e_update"].tolist() == pytest.approx([0.6, 0.6, 0.6])
    assert below["exposure_update"].tolist() == pytest.approx([0.0, 0.3, 0.6])  # ∫ 0.6 d(step) / 200
    above = a[a["layer"] == "h3"].set_index("step")
    assert (above["e_update"] == 0).all() and (above["region"] == "above").all()
    assert above["below_update"].tolist() == pytest.approx([0.0, 0.3, 0.6])  # what the layers below were fed
    assert below["loss_gap"].tolist() == pytest.approx([0.0, 0.6, 0.6])  # a loss 1.6 against the twin's 1
    assert set(frame["rule"]) == {"sg"}  # the twins are references, not arms


def test_a_known_dose_response_is_recovered_and_no_dependence_covers_zero():
    fits = explain_table(explain_frame(*_tables(lambda e, rng: 0.4 * e + rng.normal(0, 0.01))))
    row = fits[(fits["model"] == "dose-response") & (fits["layer"] == "below") & (fits["error"] == "update")
               & (fits["covariate"] == "none")].iloc[0]
    assert row["low"] < 0.4 < row["high"] and row["r2"] > 0.9 and row["seeds"] == 6
    per_layer = fits[(fits["model"] == "dose-response") & (fits["layer"] == "h1") & (fits["error"] == "update")
                     & (fits["covariate"] == "none")]
    assert (per_layer["low"] < 0.4).all() and (per_layer["high"] > 0.4).all()
    flat = explain_table(explain_frame(*_tables(lambda e, rng: 0.2 + rng.normal(0, 0.01))))
    row = flat[(flat["model"] == "dose-response") & (flat["layer"] == "below") & (flat["error"] == "update")
               & (flat["covariate"] == "none")].iloc[0]
    assert row["low"] < 0 < row["high"] and row["r2"] < 0.2


@pytest.fixture(scope="module")
def explain_quick(tmp_path_factory):
    """The explain preset's quick version on digits: every arm and its twin, 3 seeds, 4- and 6-layer nets."""
    from repanalysis.experiments.reproduce import reproduce

    out = tmp_path_factory.mktemp("explain") / "out"
    report = reproduce(out, spec=preset("explain"), quick=True, overrides=Overrides(dataset="digits"), quiet=True)
    return out, report


def test_the_explain_preset_measures_set_errors_and_reports_the_fits(explain_quick):
    out, report = explain_quick
    frame = pd.read_csv(out / "tables" / "arms_explain_frame.csv")
    for arm, cosine in (("noisy_0.5", 0.5), ("noisy_0.2", 0.2), ("noisy_0.05", 0.05)):
        # at the module's interface the signal is the true gradient turned to the set cosine
        cut = frame[(frame["arm"] == arm) & (frame["layer"] == "h2") & (frame["step"] > 0)]
        assert cut["e_signal"].to_numpy() == pytest.approx(1 - cosine, abs=1e-5)
    assert set(frame["region"]) == {"below", "above"}
    assert (frame[frame["region"] == "above"]["e_update"] == 0).all()
    text = report.read_text()
    assert "## Explanation (arms)" in text and "## Explanation (depth50)" in text and "In words:" in text
    for stem in ("explain_dose_response", "explain_profiles", "explain_over_training",
                 "explain_dose_response_depth50"):
        assert (out / "figures" / f"{stem}.png").is_file(), stem
    fits = pd.read_csv(out / "tables" / "arms_explain.csv")
    assert {"dose-response", "carried up", "over training", "lagged"} <= set(fits["model"])
