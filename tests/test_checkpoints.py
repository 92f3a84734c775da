"""``--checkpoints`` of analyze, probe and figures: one parser, one meaning (all, last, or steps), on tiny runs."""

import warnings

import matplotlib.pyplot as plt
import pytest
from helpers import small_config

from figures import draw_figures
from figures.inputs import at_checkpoints
from figures.rdms import rdm_grid
from probes import probe_runs
from repanalysis.analysis.runs import RSA_TO_LAST_LAYER, analyze
from repanalysis.analysis.tables import write_table
from repanalysis.cli import main
from repanalysis.errors import UserError
from repanalysis.measures import RepanalysisWarning
from repanalysis.runfile.checkpoints import chosen_checkpoints, parse_checkpoints
from repanalysis.training.train import train

STEPS = [0, 10, 20]  # small_config: 20 steps, a checkpoint every 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A backprop and an sg run of ``small_config`` (checkpoints at ``STEPS``)."""
    folder = tmp_path_factory.mktemp("checkpoint_runs")
    paths = [str(folder / f"{rule}.h5") for rule in ("backprop", "sg")]
    for path, rule in zip(paths, ("backprop", "sg")):
        train(small_config(rule=rule), path, quiet=True)
    return paths


def test_the_choice_is_all_last_or_sorted_distinct_steps():
    assert parse_checkpoints("all") == "all" and parse_checkpoints(" last ") == "last"
    assert parse_checkpoints("20,0") == (0, 20) == parse_checkpoints([20, 0]) and parse_checkpoints("10,") == (10,)
    for bad in ("first", "", "-1", "1.5", "10,10", [], [True], "all,10"):
        with pytest.raises(UserError, match="--checkpoints"):
            parse_checkpoints(bad)


def test_chosen_checkpoints_index_the_steps_and_name_a_missing_one():
    assert chosen_checkpoints(STEPS, "all", "r") == [0, 1, 2]
    assert chosen_checkpoints(STEPS, "last", "r") == [2] and chosen_checkpoints([], "last", "r") == []
    assert chosen_checkpoints(STEPS, (0, 20), "r") == [0, 2]
    assert chosen_checkpoints([0, 10, 10], (10,), "r") == [1]  # a step recorded twice: its first checkpoint
    with pytest.raises(UserError, match=r"^r: no checkpoint at step 5, 30 \(its checkpoints' steps: 0, 10, 20\)$"):
        chosen_checkpoints(STEPS, (5, 10, 30), "r")


def _analyze(runs, **options):
    with warnings.catch_warnings():  # the sg module's zero output at step 0 is warned of; not the point here
        warnings.simplefilter("ignore", RepanalysisWarning)
        return analyze(runs, quiet=True, **options)


def _of_the_run(table):
    """The rows of the measures of a whole run, and of those at its last checkpoint (across its layers)."""
    across_layers = (table.run_a == table.run_b) & (table.layer_a != table.layer_b)
    return table.layer_a.isna() | across_layers | table.measure.isin(RSA_TO_LAST_LAYER)


def test_analyze_measures_the_chosen_checkpoints_with_the_same_values(runs):
    full = _analyze(runs)
    per_checkpoint, whole_run = full[~_of_the_run(full)], full[_of_the_run(full)]
    for choice, steps in (("all", STEPS), ("last", [20]), ((0, 20), [0, 20]), ("10", [10])):
        table = _analyze(runs, checkpoints=choice)
        stepped = table[~_of_the_run(table)]
        assert sorted(stepped.step_a.unique()) == steps
        synthetic = stepped[stepped.measure == "synthetic_loss_corr"]  # undefined at step 0 (the module's output 0)
        assert sorted(synthetic.step_a.unique()) == [s for s in steps if s > 0]
        # the chosen checkpoints' rows, value for value; the whole run's measures unchanged
        assert _rows(stepped) == _rows(per_checkpoint[per_checkpoint.step_a.isin(steps)])
        assert _rows(table[_of_the_run(table)]) == _rows(whole_run)
    with pytest.raises(UserError, match=r"backprop.h5: no checkpoint at step 15 \(its checkpoints' steps: 0, 10, 20\)"):
        _analyze(runs, checkpoints="15")


def _rows(table) -> set:
    return {tuple(row) for row in table.astype(str).itertuples(index=False)}


def test_probe_takes_the_chosen_checkpoints(runs):
    full = probe_runs(runs, folds=2, quiet=True)
    for choice, steps in (("last", [20]), ((0, 10), [0, 10])):
        table = probe_runs(runs, folds=2, checkpoints=choice, quiet=True)
        assert sorted(table.step.unique()) == steps
        assert _rows(table) == _rows(full[full.step.isin(steps)])
    with pytest.raises(UserError, match=r"backprop.h5: no checkpoint at step 30"):
        probe_runs(runs, checkpoints=[30], quiet=True)


def test_figures_read_the_chosen_checkpoints(runs, tmp_path):
    probes = probe_runs(runs, folds=2, quiet=True)
    assert sorted(at_checkpoints("probes", probes, "last").step.unique()) == [20]
    assert sorted(at_checkpoints("probes", probes, (0, 10)).step.unique()) == [0, 10]
    assert at_checkpoints("probes", probes, "all") is probes
    with pytest.raises(UserError, match=r"in the probes table\): no checkpoint at step 5"):
        at_checkpoints("probes", probes, (5,))
    table = write_table(probes, tmp_path / "probes.csv")
    made = draw_figures([table, *runs], tmp_path / "at10", quiet=True, checkpoints=(0, 10))
    assert {p.stem for p in made} >= {"probe_accuracy", "rdms", "spectra"}
    last, at0 = rdm_grid(runs), rdm_grid(runs, step=0)
    assert [im.get_array().tolist() for im in last.axes[0].images] != [im.get_array().tolist()
                                                                        for im in at0.axes[0].images]
    plt.close("all")
    out = tmp_path / "missing"
    with pytest.raises(UserError, match=r"no checkpoint at step 15"):
        draw_figures([*runs], out, quiet=True, checkpoints="15")
    assert not out.exists()


def test_the_command_line_refuses_a_missing_step_in_one_line_and_writes_nothing(runs, tmp_path, capsys):
    for command in ("analyze", "probe"):
        out = tmp_path / f"{command}.csv"
        assert main([command, *runs, "--checkpoints", "0,15", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no checkpoint at step 15 (its checkpoints' steps: 0, 10, 20)" in err
        assert not out.exists()
    assert main(["figures", *runs, "--checkpoints", "first", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoints takes all, last or steps like 0,500,1000" in err
    assert not (tmp_path / "f").exists()
