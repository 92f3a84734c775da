"""Recurrent experiments in a reproduction: the recurrent preset end to end (--quick), its table, figure and
report, a language model kept only for the text it was trained on, and bad recurrent specs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from repanalysis.analysis.tables import read_table
from repanalysis.cli import main
from repanalysis.errors import UserError
from repanalysis.experiments.spec import parse

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_text = pytest.mark.skipif(not (SHARED / "tinyshakespeare" / "input.txt").is_file(),
                                reason=f"no {SHARED}/tinyshakespeare/input.txt")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@needs_text
def test_the_quick_recurrent_preset_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "recurrent"
    assert main(["reproduce", "--preset", "recurrent", "--quick", "--data-dir", str(SHARED), "--workers", "1",
                 "--quiet", "--out", str(out)]) == 0
    table = read_table(out / "tables" / "recurrent_recurrent.csv")
    assert sorted(zip(table["task"], table["bptt"], table["rule"])) == sorted(
        (task, bptt, rule) for task in ("copy", "repeatcopy", "charlm") for bptt in (2, 8)
        for rule in ("backprop", "dni", "dni+aux"))
    assert (table["seed"] == 1).all() and (table["steps"] == 30).all()
    cosine = table.set_index(["task", "bptt", "rule"])["boundary_cosine"]
    assert cosine.xs("backprop", level="rule").isna().all() and cosine.xs(2, level="bptt").xs("dni", level="rule").notna().all()
    lm = table[table["task"] == "charlm"]["score"]
    assert ((lm > 0) & (lm < 7)).all()  # bits per character, below log2 of the 65 characters
    # Copy held at most 3 symbols (7 steps) in 30 steps: at T = 8 there is no boundary, and DNI's run is BPTT's
    copy8 = table[(table["task"] == "copy") & (table["bptt"] == 8)].set_index("rule")["score"]
    assert copy8["dni"] == copy8["backprop"] == copy8["dni+aux"]
    assert pd.isna(cosine[("copy", 8, "dni")])  # its module never had a target: zero, no direction
    for fmt in ("png", "svg"):
        assert (out / "figures" / f"recurrent.{fmt}").is_file() and (out / "figures" / f"recurrent_positions.{fmt}").is_file()
    positions = read_table(out / "tables" / "recurrent_recurrent_positions.csv")
    assert len(positions) == 6 * (13 + 25 + 20)  # 6 runs per task; probe steps: Copy 13, Repeat Copy 25, text 20
    assert positions[positions["task"] == "charlm"]["first_symbol"].isna().all()
    training = read_table(out / "tables" / "recurrent_recurrent_training.csv")
    assert set(training["rule"]) == {"dni", "dni+aux"} and set(training["step"]) == {0, 30}
    report = (out / "report.md").read_text()
    for task in ("Copy", "Repeat Copy", "character-level language model"):
        assert f"## {task} (recurrent)" in report
    assert report.count("Each DNI arm against BPTT, and DNI + aux against DNI") == 3 and "**Quick version**" in report
    assert "## Claims" not in report and "![recurrent](figures/recurrent.png)" in report
    assert report.count("Where in the window") == 3 and report.count("What the state carries") == 2
    assert "![recurrent_positions](figures/recurrent_positions.png)" in report
    # the per-seed score in the report is the table's
    row = table[(table["task"] == "copy") & (table["bptt"] == 2) & (table["rule"] == "dni")].iloc[0]
    assert re.search(rf"^\| 2 \| dni \| {int(row['score'])} \|", report, re.M)


def _lm_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "lm.toml"
    spec.write_text('name = "lm"\nseeds = [0]\n[experiments.lm]\n'
                    'settings = { model = "lstm", task = "charlm", rule = "backprop", bptt = 4, hidden = 4, '
                    'steps = 2, batch_size = 2, seq_length = 8, probe_size = 2 }\n')
    return spec


def test_a_language_model_is_kept_only_for_its_own_text(tmp_path, capsys):
    spec = _lm_spec(tmp_path)
    for name, text in (("a", "abcdefgh " * 40), ("b", "abcdefgz " * 40)):
        (tmp_path / name / "tinyshakespeare").mkdir(parents=True)
        (tmp_path / name / "tinyshakespeare" / "input.txt").write_text(text)
    out = tmp_path / "out"
    args = ["reproduce", "--spec", str(spec), "--workers", "1", "--quiet", "--out", str(out), "--data-dir"]
    assert main([*args, str(tmp_path / "a")]) == 0
    capsys.readouterr()
    before = _files(out)
    assert main([*args, str(tmp_path / "a")]) == 0  # the same text: kept
    assert _files(out)["runs/lm_charlm_lstm_backprop_s0.h5"] == before["runs/lm_charlm_lstm_backprop_s0.h5"]
    capsys.readouterr()
    before = _files(out)
    assert main([*args, str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith("lm_charlm_lstm_backprop_s0.h5 was trained on a text of 9 distinct characters, and "
                        f"{tmp_path / 'b' / 'tinyshakespeare' / 'input.txt'} has 9 (another vocabulary): give the "
                        "data folder it was trained on, or another output folder")
    assert _files(out) == before  # nothing written


@pytest.mark.parametrize("extra, message", [
    ('tables = ["analysis"]', "tables recurrent is for recurrent runs"),
    ('claims = ["trains_well"]', "a recurrent experiment has none"),
    ('settings = { model = "lstm", rule = "dni", depth = 3 }', "unknown setting(s) depth for model = \"lstm\""),
    ('settings = { model = "lstm", rule = "dni", task = "copy", copy_max = 2, bptt = 6 }',
     "--bptt 6 is longer than the longest Copy sequence"),
])
def test_bad_recurrent_experiments_are_refused(extra, message):
    settings = "" if extra.startswith("settings") else 'settings = { model = "lstm", rule = "dni" }\n'
    with pytest.raises(UserError, match=re.escape(message)):
        parse(f'name = "r"\n[experiments.r]\n{settings}{extra}\n', "r.toml")


def test_a_feedforward_experiment_cannot_ask_for_the_recurrent_table():
    with pytest.raises(UserError, match="recurrent is for recurrent runs"):
        parse('name = "f"\n[experiments.f]\nsettings = { rule = "sg" }\ntables = ["recurrent"]\n', "f.toml")
