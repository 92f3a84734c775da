"""Probes on saved activations: folds, accuracies on known cases, the table, refusals, determinism."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from repanalysis.analysis.tables import write_table
from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.probes import COLUMNS, make_folds, probe_runs
from repanalysis.runfile.hdf5 import RunFile, RunWriter
from repanalysis.training.train import train

N_CLASSES, PER_CLASS = 10, 20


def write_run(path, layers: dict[str, np.ndarray], labels=None, *, index=None, targets=None, seed=0):
    """A run file with one checkpoint (step 0) whose activations per layer are ``layers[name]``."""
    n = len(labels if labels is not None else targets)
    writer = RunWriter(
        path, rule="synthetic", model="none", dataset="synthetic", seed=seed, config_json="{}",
        task="classification" if labels is not None else "regression", n_features=1, n_outputs=1,
        probe_index=np.arange(n) if index is None else index, probe_labels=labels, probe_targets=targets,
        layers=[(name, x.shape[1], "test") for name, x in layers.items()],
    )
    writer.checkpoint(0, {name: {"activations": x} for name, x in layers.items()}, {})
    writer.close()
    return path


def synthetic_labels() -> np.ndarray:
    return np.random.default_rng(1).permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two small trained digits runs (seeds 0 and 1) on one probe set: layers h1, h2; steps 0, 20, 40, 60.

    Trained on one torch thread (``conftest.one_thread``).
    """
    folder = tmp_path_factory.mktemp("probe_runs")
    paths = []
    for seed in (0, 1):
        path = folder / f"backprop-{seed}.h5"
        config = TrainConfig(rule="backprop", dataset="digits", depth=2, width=32, steps=60, record_every=20,
                             probe_size=100, seed=seed)
        train(config, path, quiet=True)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def full_table(runs):
    return probe_runs(runs, quiet=True)


def test_folds_depend_only_on_labels_and_seed(runs):
    with RunFile(runs[0]) as a, RunFile(runs[1]) as b:
        labels_a, labels_b = a.probe_labels, b.probe_labels
    folds_a, folds_b = make_folds(labels_a, 5, 0), make_folds(labels_b, 5, 0)
    assert len(folds_a) == 5
    for (tr_a, te_a), (tr_b, te_b) in zip(folds_a, folds_b):
        assert np.array_equal(tr_a, tr_b) and np.array_equal(te_a, te_b)
    tests = np.concatenate([te for _, te in folds_a])
    assert np.array_equal(np.sort(tests), np.arange(len(labels_a)))  # the test folds partition the probe set
    for train_idx, test_idx in folds_a:
        assert not np.intersect1d(train_idx, test_idx).size
        counts = np.bincount(labels_a[test_idx], minlength=10)
        assert counts.max() - counts.min() <= 1  # stratified
    other_seed = make_folds(labels_a, 5, 1)
    assert any(not np.array_equal(te, te2) for (_, te), (_, te2) in zip(folds_a, other_seed))


def test_same_activations_score_the_same_in_every_layer_and_run(tmp_path):
    """Folds that varied with the run or the layer would give these identical activations different scores."""
    labels = synthetic_labels()
    rng = np.random.default_rng(2)
    x = (np.eye(N_CLASSES)[labels] + rng.normal(scale=0.8, size=(len(labels), N_CLASSES))).astype(np.float32)
    a = write_run(tmp_path / "a.h5", {"h1": x, "h2": x}, labels, seed=0)
    b = write_run(tmp_path / "b.h5", {"h1": x}, labels, seed=1)
    table = probe_runs([a, b], quiet=True)
    for probe, rows in table.groupby("probe"):
        assert len(rows) == 3
        assert rows["accuracy"].nunique() == 1 and rows["accuracy_std"].nunique() == 1, probe
        assert rows["accuracy_std"].iloc[0] > 0  # the folds differ from one another, so the check has teeth
    alone = probe_runs([b], quiet=True)  # nor do the folds depend on the other runs of the call
    pd.testing.assert_frame_equal(alone, table[table["run"] == str(b)].reset_index(drop=True))


def test_separable_activations_give_accuracy_one(tmp_path):
    labels = synthetic_labels()
    path = write_run(tmp_path / "onehot.h5", {"h1": np.eye(N_CLASSES, dtype=np.float32)[labels]}, labels)
    table = probe_runs([path], quiet=True)
    assert sorted(table["probe"]) == ["knn", "linear"]
    assert (table["accuracy"] == 1.0).all() and (table["accuracy_std"] == 0.0).all()


def test_noise_activations_give_near_chance_accuracy(tmp_path):
    labels = synthetic_labels()
    noise = np.random.default_rng(3).normal(size=(len(labels), 32)).astype(np.float32)
    table = probe_runs([write_run(tmp_path / "noise.h5", {"h1": noise}, labels)], quiet=True)
    assert len(table) == 2
    assert (table["accuracy"] < 0.3).all(), table  # chance is 0.1


def test_table_has_one_row_per_run_layer_step_probe(runs, full_table):
    assert list(full_table.columns) == COLUMNS
    assert len(full_table) == 2 * 2 * 4 * 2
    assert not full_table.duplicated(["run", "layer", "step", "probe"]).any()
    assert sorted(full_table["step"].unique()) == [0, 20, 40, 60]
    assert set(full_table["layer"]) == {"h1", "h2"} and set(full_table["run"]) == set(runs)
    assert set(zip(full_table["layer"], full_table["position"])) == {("h1", 0), ("h2", 1)}  # the run file's
    assert set(full_table["probe"]) == {"linear", "knn"} and (full_table["folds"] == 5).all()
    assert (full_table["rule"] == "backprop").all() and set(full_table["seed"]) == {0, 1}
    assert full_table["accuracy"].between(0, 1).all() and (full_table["accuracy_std"] >= 0).all()
    last = full_table[full_table["step"] == 60]
    assert (last["accuracy"] > 0.3).all()  # trained layers carry label information


def test_same_call_twice_gives_identical_tables(runs, full_table):
    first = probe_runs(runs, checkpoints="last", quiet=True)
    second = probe_runs(runs, checkpoints="last", quiet=True)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert len(first) == 2 * 2 * 2 and (first["step"] == 60).all()
    from_all = full_table[full_table["step"] == 60].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, from_all, check_exact=True)


def test_probe_index_mismatch_is_refused(runs, tmp_path):
    with RunFile(runs[0]) as run:
        labels, index = run.probe_labels, run.probe_index
    other = write_run(tmp_path / "shifted.h5", {"h1": np.eye(10, dtype=np.float32)[labels]}, labels, index=index + 1)
    with pytest.raises(UserError, match="probe indices") as err:
        probe_runs([runs[0], other], quiet=True)
    assert runs[0] in str(err.value) and str(other) in str(err.value) and "\n" not in str(err.value)


def test_regression_run_is_refused(tmp_path):
    targets = np.random.default_rng(4).normal(size=(50, 1)).astype(np.float32)
    path = write_run(tmp_path / "regression.h5", {"h1": targets}, targets=targets)
    with pytest.raises(UserError, match="no class labels"):
        probe_runs([path], quiet=True)


def test_classes_smaller_than_folds_are_refused():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    make_folds(labels, 3, 0)
    with pytest.raises(UserError, match="class 2"):
        make_folds(labels, 5, 0)


@pytest.mark.parametrize("options, message", [
    ({"probes": ("svm",)}, "unknown probe"),
    ({"checkpoints": "first"}, "checkpoints"),
    ({"folds": 1}, "at least 2"),
    ({"probes": ("knn",), "k": 1000}, "--k"),
])
def test_bad_options_are_refused(runs, options, message):
    with pytest.raises(UserError, match=message):
        probe_runs(runs[:1], checkpoints=options.pop("checkpoints", "last"), quiet=True, **options)


def test_write_table_replaces_atomically_and_refuses_bad_paths(tmp_path, full_table):
    out = tmp_path / "table.csv"
    out.write_text("old\n")
    assert write_table(full_table, out) == out
    back = pd.read_csv(out)
    assert list(back.columns) == COLUMNS and len(back) == len(full_table)
    np.testing.assert_array_equal(back["accuracy"], full_table["accuracy"])
    assert os.listdir(tmp_path) == ["table.csv"]  # no temporary file left behind
    with pytest.raises(UserError, match="folder"):
        write_table(full_table, tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        write_table(full_table, tmp_path / "missing" / "table.csv")
