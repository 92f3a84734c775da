"""Tests of repanalysis.analysis.runs: the tidy table of comparisons over run files."""

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from repanalysis.analysis import runs as runs_module
from repanalysis.analysis.runs import COLUMNS, MEASURES, STEPS_TO, analyze
from repanalysis.analysis.synthetic_loss import synthetic_loss
from repanalysis.analysis.tables import read_table, write_table
from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.measures import (
    RepanalysisWarning,
    cca,
    effective_rank,
    gradient_error,
    linear_cka,
    procrustes,
    pwcca,
    rsa,
    svcca,
)
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.train import train

SMALL = dict(dataset="digits", depth=3, width=16, steps=40, record_every=20, probe_size=100, batch_size=32)
STEPS = [0, 20, 40]


@pytest.fixture(scope="session")
def paths(tmp_path_factory):
    """Tiny digits runs: backprop seeds 0 and 1, sg seed 0, dfa seed 1, a wide backprop,
    and a backprop run on another probe set."""
    folder = tmp_path_factory.mktemp("runs")
    configs = {
        "bp0": TrainConfig(rule="backprop", seed=0, **SMALL),
        "bp1": TrainConfig(rule="backprop", seed=1, **SMALL),
        "sg0": TrainConfig(rule="sg", seed=0, **SMALL),
        "dfa1": TrainConfig(rule="dfa", seed=1, **SMALL),
        "wide": TrainConfig(rule="backprop", seed=2, **{**SMALL, "depth": 1, "width": 64}),
        "other": TrainConfig(rule="backprop", seed=0, **{**SMALL, "probe_size": 80}),
    }
    for name, config in configs.items():
        train(config, folder / f"{name}.h5", quiet=True)
    return {name: str(folder / f"{name}.h5") for name in configs}


@pytest.fixture(scope="session")
def table(paths):
    with pytest.warns(RepanalysisWarning):  # e.g. the SG module's zero output at step 0
        return analyze([paths[k] for k in ("bp0", "bp1", "sg0", "dfa1")], quiet=True)


def _value(table, measure, run_a, layer_a, step_a, run_b=None, layer_b=None, step_b=None):
    rows = table[(table.measure == measure) & (table.run_a == run_a) & (table.layer_a == layer_a)
                 & (table.step_a == step_a)]
    rows = rows[rows.run_b.isna()] if run_b is None else rows[
        (rows.run_b == run_b) & (rows.layer_b == layer_b) & (rows.step_b == step_b)]
    assert len(rows) == 1, (measure, run_a, layer_a, step_a, run_b)
    return rows.value.iloc[0]


def test_table_is_tidy(table):
    assert list(table.columns) == list(COLUMNS)
    assert set(table.measure) == set(MEASURES)
    # a level never reached is a NaN row (one per run), every other value finite
    assert (table.measure.isin(STEPS_TO) | np.isfinite(table.value)).all()
    assert (table[table.measure.isin(STEPS_TO)].groupby("measure").run_a.nunique() == 4).all()
    keys = table.drop(columns="value").astype(str)
    assert not keys.duplicated().any()  # one row per value
    single = table[table.measure.isin(["effective_rank", "weight_frobenius", "grad_cosine", "synthetic_loss_gap"])]
    assert single[["run_b", "rule_b", "seed_b", "layer_b", "step_b"]].isna().all().all()
    # 4 runs x 3 layers x 3 checkpoints
    assert (table.measure == "effective_rank").sum() == 36
    assert all(str(table[c].dtype) == "Int64" for c in ("seed_a", "position_a", "step_a", "seed_b", "position_b",
                                                            "step_b"))
    assert table.position_a.isna().equals(table.layer_a.isna())  # per-run measures have no layer


def test_run_against_itself_is_identical(paths):
    sg = paths["sg0"]
    out = analyze([sg], reference=sg, measures=["linear_cka", "procrustes"], quiet=True)
    same = out[out.layer_a == out.layer_b]
    for measure in ("linear_cka", "procrustes"):
        rows = same[same.measure == measure]
        assert len(rows) == 9  # 3 layers x 3 checkpoints
        assert (rows.run_a == sg).all() and (rows.run_b == sg).all() and (rows.step_a == rows.step_b).all()
        np.testing.assert_allclose(rows.value, 1.0, atol=1e-10)


def test_reference_is_backprop_with_the_same_seed(table, paths):
    cross = table[table.measure == "procrustes"]
    pairs = set(zip(cross.run_a, cross.run_b))
    assert pairs == {(paths["sg0"], paths["bp0"]), (paths["dfa1"], paths["bp1"]), (paths["bp0"], paths["bp1"])}
    assert (cross.layer_a == cross.layer_b).all() and (cross.step_a == cross.step_b).all()
    assert len(cross) == 3 * 3 * 3


def test_explicit_reference(paths):
    out = analyze([paths["sg0"], paths["dfa1"]], reference=paths["bp0"], measures=["linear_cka_debiased"], quiet=True)
    assert set(zip(out.run_a, out.run_b)) == {(paths["sg0"], paths["bp0"]), (paths["dfa1"], paths["bp0"])}
    assert set(out.rule_b) == {"backprop"} and set(out.seed_b) == {0}


def test_different_probe_sets_are_refused(paths):
    with pytest.raises(UserError, match="other.h5.*sg0.h5|sg0.h5.*other.h5") as err:
        analyze([paths["other"], paths["sg0"]], quiet=True)
    assert "probe" in str(err.value)
    with pytest.raises(UserError, match="other.h5"):
        analyze([paths["sg0"]], reference=paths["other"], quiet=True)
    # single-run measures compare nothing, so nothing is refused
    out = analyze([paths["other"], paths["sg0"]], measures=["stable_rank"], quiet=True)
    assert set(out.run_a) == {paths["other"], paths["sg0"]}


def test_nan_in_activations_names_run_layer_and_step(paths, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(paths["sg0"], bad)
    with h5py.File(bad, "r+") as f:
        f["layers/h2/activations"][1, 3, 5] = np.nan
    with pytest.raises(UserError, match=r"NaN.*bad\.h5, layer h2, step 20"):
        analyze([str(bad)], measures=["effective_rank"], quiet=True)
    with pytest.raises(UserError, match=r"bad\.h5, layer h2, step 20"):
        analyze([str(bad)], reference=paths["bp0"], measures=["linear_cka"], quiet=True)


@pytest.mark.filterwarnings("ignore::repanalysis.measures.RepanalysisWarning")
def test_values_equal_the_in_memory_measures(table, paths):
    sg, bp = paths["sg0"], paths["bp0"]
    with RunFile(sg) as a, RunFile(bp) as b:
        x, y = a.activations("h2", 2), b.activations("h2", 2)
        for measure, fn in (("linear_cka", linear_cka), ("svcca", svcca), ("pwcca", pwcca), ("cca", cca),
                            ("procrustes", procrustes), ("rsa", rsa)):
            assert _value(table, measure, sg, "h2", 40, bp, "h2", 40) == pytest.approx(fn(x, y), rel=1e-12)
        assert _value(table, "linear_cka_debiased", sg, "h2", 40, bp, "h2", 40) == pytest.approx(
            linear_cka(x, y, debiased=True), rel=1e-12)
        assert _value(table, "effective_rank", sg, "h1", 20) == pytest.approx(effective_rank(a.activations("h1", 1)))
        assert _value(table, "weight_frobenius", sg, "h3", 40) == pytest.approx(
            np.linalg.norm(a.param("model.blocks.2.linear.weight", 2)), rel=1e-6)
        assert _value(table, "linear_cka_to_first_checkpoint", sg, "h3", 20, sg, "h3", 0) == pytest.approx(
            linear_cka(a.activations("h3", 1), a.activations("h3", 0)), rel=1e-12)
        assert _value(table, "linear_cka_to_last_checkpoint", sg, "h3", 40, sg, "h3", 40) == pytest.approx(1.0)
        assert _value(table, "linear_cka", sg, "h1", 40, sg, "h3", 40) == pytest.approx(
            linear_cka(a.activations("h1", 2), a.activations("h3", 2)), rel=1e-12)
        n = len(a.probe_index)
        errors = gradient_error(n * a.signal("h1", 2).astype(float), n * a.true_grad("h1", 2).astype(float))
        assert _value(table, "grad_cosine", sg, "h1", 40) == pytest.approx(errors["mean_cosine"], rel=1e-12)
        assert _value(table, "grad_regression_loss", sg, "h1", 40) == pytest.approx(
            errors["regression_loss"], rel=1e-12)
        assert _value(table, "synthetic_loss_corr", sg, "h2", 20) == pytest.approx(synthetic_loss(a, 1, "h2")["corr"])


def test_gradient_rows_exactly_where_there_is_a_signal(table, paths):
    grad = table[table.measure == "grad_rel_error"]
    for name in ("bp0", "bp1", "sg0", "dfa1"):
        with RunFile(paths[name]) as run:
            signalled = {layer for layer in run.layers if run.has(layer, "signal")}
        rows = grad[grad.run_a == paths[name]]
        assert set(rows.layer_a) == signalled
        assert len(rows) == 3 * len(signalled)
    assert set(grad[grad.run_a == paths["sg0"]].layer_a) == {"h1", "h2"}  # below and at the module
    synthetic = table[table.measure == "synthetic_loss_gap"]
    assert set(zip(synthetic.run_a, synthetic.layer_a)) == {(paths["sg0"], "h2")}


def test_layers_against_layers_and_over_time(table, paths):
    sg = paths["sg0"]
    within = table[(table.measure == "linear_cka") & (table.run_a == sg) & (table.run_b == sg)]
    assert set(zip(within.layer_a, within.layer_b)) == {("h1", "h2"), ("h1", "h3"), ("h2", "h3")}
    assert (within.step_a == 40).all() and (within.step_b == 40).all()
    first = table[(table.measure == "linear_cka_to_first_checkpoint") & (table.run_a == sg) & (table.layer_a == "h2")]
    assert list(first.step_a) == STEPS and (first.step_b == 0).all()
    assert first.value.iloc[0] == pytest.approx(1.0) and first.value.iloc[-1] < 1.0


def test_degenerate_cca_is_skipped_with_one_warning(paths):
    wide = paths["wide"]  # 64 + 64 units on 100 probe inputs: CCA is trivially 1
    with pytest.warns(RepanalysisWarning, match=r"^cca: .*degenerate") as caught:
        out = analyze([wide], reference=wide, measures=["cca", "linear_cka"], quiet=True)
    assert sum("degenerate" in str(w.message) for w in caught) == 1
    assert "cca" not in set(out.measure) and (out.measure == "linear_cka").sum() == 3


def test_streamed_arrays_give_the_same_values(paths, monkeypatch):
    chosen = [paths["sg0"], paths["bp0"]]
    moments = ["linear_cka", "linear_cka_debiased", "procrustes", "stable_rank", "participation_ratio",
               "linear_cka_to_first_checkpoint", "rsa"]
    in_memory = analyze(chosen, measures=moments, quiet=True)
    monkeypatch.setattr(runs_module, "STREAM_ABOVE", 0)
    streamed = analyze(chosen, measures=moments, quiet=True)
    keys = [c for c in COLUMNS if c != "value"]
    merged = in_memory.merge(streamed, on=keys, how="left", suffixes=("", "_streamed"))
    assert set(streamed.measure) == set(moments) - {"rsa"}  # RSA needs the whole arrays
    kept = merged[merged.measure != "rsa"]
    np.testing.assert_allclose(kept.value_streamed, kept.value, rtol=1e-9)


def test_unknown_measures_are_refused(paths):
    with pytest.raises(UserError, match="unknown measure.*cka_lienar.*linear_cka_debiased"):
        analyze([paths["sg0"]], measures=["cka_lienar"])
    with pytest.raises(UserError, match="^measure linear_cka_to_first was renamed linear_cka_to_first_checkpoint$"):
        analyze([paths["sg0"]], measures=["linear_cka_to_first", "stable_rank"])
    with pytest.raises(UserError, match="at least one run"):
        analyze([])


def test_unfinished_runs_are_analysed_with_a_warning(paths, tmp_path):
    running = tmp_path / "running.h5"
    shutil.copy(paths["bp0"], running)
    with h5py.File(running, "r+") as f:
        f.attrs["status"] = "running"
    with pytest.warns(RepanalysisWarning, match=r"running\.h5: status 'running'"):
        out = analyze([str(running)], measures=["stable_rank"], quiet=True)
    assert len(out) == 9


def test_write_table_round_trips_atomically(table, tmp_path):
    out = tmp_path / "table.csv"
    write_table(table, out)
    back = read_table(out)
    assert list(back.columns) == list(COLUMNS) and len(back) == len(table)
    np.testing.assert_array_equal(back.value.to_numpy(), table.value.to_numpy())
    pd.testing.assert_frame_equal(back.drop(columns="value"), table.drop(columns="value"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with pytest.raises(UserError, match="does not exist"):
        write_table(table, tmp_path / "missing" / "table.csv")


def test_within_run_and_per_run_measures_have_their_known_values(table, paths):
    import scipy.spatial.distance
    import scipy.stats

    path = paths["sg0"]
    with RunFile(path) as run:
        last = {layer: run.activations(layer, -1).astype(np.float64) for layer in run.layers}
        weights = {c: run.param("model.blocks.1.linear.weight", c) for c in (0, -1)}
        losses, evals = run.metrics["train_loss"], run.evals
    for metric in ("euclidean", "correlation"):
        expected = scipy.stats.spearmanr(scipy.spatial.distance.pdist(last["h1"], metric),
                                         scipy.spatial.distance.pdist(last["h3"], metric)).statistic
        got = _value(table, f"rsa_to_last_layer_{metric}", path, "h1", 40, path, "h3", 40)
        assert got == pytest.approx(expected, abs=1e-10)
    assert _value(table, "weight_frobenius_relative", path, "h2", 0) == 1.0
    assert _value(table, "weight_frobenius_relative", path, "h2", 40) == pytest.approx(
        np.linalg.norm(weights[-1].astype(np.float64)) / np.linalg.norm(weights[0].astype(np.float64)), rel=1e-12)
    rows = table[(table.measure == "train_loss_area") & (table.run_a == path)]
    assert rows.value.iloc[0] == pytest.approx(losses.mean()) and rows.layer_a.isna().all()
    for level in (90, 95, 97):
        rows = table[(table.measure == f"steps_to_test_acc_{level}") & (table.run_a == path)]
        reached = evals["step"][evals["test_acc"] >= level / 100]
        assert len(rows) == 1 and rows.value.iloc[0] == (reached[0] if len(reached) else pytest.approx(np.nan,
                                                                                                  nan_ok=True))


def test_collected_warnings_stay_with_their_thread():
    """Tables of experiments computed at once, in threads, each keep their own warnings (``catch_warnings``,
    process-wide, would send both to the list of whichever thread entered last)."""
    import threading

    from repanalysis.measures._arrays import collected, warn

    barrier, got = threading.Barrier(2), {}

    def work(name):
        with collected() as sink:
            barrier.wait()
            warn(f"from {name}", where=name)
            barrier.wait()
        got[name] = sink

    threads = [threading.Thread(target=work, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {"a": ["from a (a)"], "b": ["from b (b)"]}
    with pytest.warns(RepanalysisWarning, match="outside"):
        warn("outside")
