"""Tables on disk (``repanalysis.analysis.tables``): integers read back as integers, runs named relative to the table."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from repanalysis.analysis.tables import read_table, write_table


def _analysis_like(runs) -> pd.DataFrame:
    """Rows as ``analyze`` makes them: a cross-run row, a single-run row (no ``*_b``) and a per-run row (no layer)."""
    a, b = (str(r) for r in runs)
    return pd.DataFrame({
        "measure": ["linear_cka", "effective_rank", "steps_to_test_acc_97"],
        "run_a": [a, a, a], "seed_a": [0, 0, 0], "layer_a": ["res", "res", None], "position_a": [1, 1, None],
        "step_a": [40, 40, 40], "run_b": [b, None, None], "seed_b": [1, None, None],
        "layer_b": ["res", None, None], "position_b": [1, None, None], "step_b": [40, None, None],
        "value": [0.5, 3.25, np.nan],
    })


def test_integer_columns_read_back_as_integers_also_beside_blanks(tmp_path):
    path = write_table(_analysis_like([tmp_path / "a.h5", tmp_path / "b.h5"]), tmp_path / "t.csv")
    text = path.read_text()
    assert ".0," not in text and ",40," in text  # written without a decimal point
    assert str(pd.read_csv(path)["seed_b"].dtype) == "float64"  # what plain pandas makes of a blank
    back = read_table(path)
    for column in ("seed_a", "position_a", "step_a", "seed_b", "position_b", "step_b"):
        assert str(back[column].dtype) == "Int64", column
    assert back["seed_b"].tolist()[0] == 1 and back["seed_b"].isna().tolist() == [False, True, True]
    assert back["value"].isna().tolist() == [False, False, True]  # a level never reached stays a NaN row


def test_a_column_of_other_numbers_is_left_alone(tmp_path):
    path = write_table(pd.DataFrame({"seed": [0.5, 1.0], "step": ["x", "y"]}), tmp_path / "t.csv")
    back = read_table(path)
    assert back["seed"].tolist() == [0.5, 1.0] and back["step"].tolist() == ["x", "y"]


def test_runs_are_named_relative_to_the_table_so_a_moved_folder_keeps_its_runs(tmp_path, monkeypatch):
    home = tmp_path / "study"
    (home / "runs").mkdir(parents=True)
    (home / "tables").mkdir()
    for name in ("a.h5", "b.h5"):
        (home / "runs" / name).write_bytes(b"run")
    monkeypatch.chdir(tmp_path)  # runs given relative to the current folder, as on the command line
    table = _analysis_like(["study/runs/a.h5", "study/runs/b.h5"])
    write_table(table, home / "tables" / "analysis.csv")
    on_disk = pd.read_csv(home / "tables" / "analysis.csv")
    assert on_disk["run_a"].tolist() == ["../runs/a.h5"] * 3 and on_disk["run_b"].tolist()[0] == "../runs/b.h5"
    assert on_disk["run_b"].isna().tolist() == [False, True, True]
    moved = tmp_path / "elsewhere" / "shared"
    moved.parent.mkdir()
    shutil.move(home, moved)
    back = read_table(moved / "tables" / "analysis.csv")
    assert back["run_a"].tolist() == [str(moved / "runs" / "a.h5")] * 3
    assert back["run_b"].tolist()[0] == str(moved / "runs" / "b.h5") and back["run_b"].isna().tolist()[1:] == [
        True, True]
    assert all(open(p, "rb").read() == b"run" for p in back["run_a"])
    again = write_table(back, tmp_path / "copy.csv")  # written elsewhere: relative to its own folder
    assert pd.read_csv(again)["run_a"].tolist()[0] == "elsewhere/shared/runs/a.h5"
