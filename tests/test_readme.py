"""The README's "Using it" commands and its "Your own model" example run as written, in an empty folder (on one
torch thread, as every test: ``conftest.one_thread``)."""

import re
import shlex
from pathlib import Path

from repanalysis.cli import main
from repanalysis.runfile.hdf5 import RunFile

README = Path(__file__).resolve().parent.parent / "README.md"


def using_it() -> list[list[str]]:
    """The command lines of the README's "Using it" code block, comments removed."""
    text = README.read_text().split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    lines = [line[4:] for line in text.splitlines() if line.startswith("    ")]
    return [shlex.split(line, comments=True) for line in lines]


def test_using_it_runs_as_written(tmp_path, monkeypatch):
    commands = using_it()
    assert [c[:2] for c in commands][3:] == [["repanalysis", "inspect"], ["repanalysis", "analyze"],
                                             ["repanalysis", "probe"], ["repanalysis", "figures"]]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command[1:]) == 0, command
    for name in ("bp", "sg", "cdni"):
        with RunFile(name + ".h5") as run:
            assert run.status == "complete" and run.evals["test_acc"][-1] >= 0.85
    assert (tmp_path / "analysis.csv").stat().st_size and (tmp_path / "probes.csv").stat().st_size
    assert len(list((tmp_path / "figs").glob("*.png"))) >= 5


def your_own_model() -> tuple[str, list[list[str]]]:
    """The README's "Your own model" example: its Python code, and the command lines after it."""
    text = README.read_text().split("\n## Your own model\n", 1)[1].split("\n## ", 1)[0]
    blocks, block = [], []
    for line in text.splitlines() + ["end"]:
        if line.startswith("    ") or (block and not line):
            block.append(line[4:])
        elif block:
            blocks.append("\n".join(block).strip())
            block = []
    code, commands = blocks[0], blocks[1]
    return code, [shlex.split(line, comments=True) for line in commands.splitlines()]


def test_your_own_model_runs_as_written(tmp_path, monkeypatch, capsys):
    code, commands = your_own_model()
    assert "from repanalysis import Recorder" in code and [c[:2] for c in commands] == [
        ["repanalysis", "inspect"], ["repanalysis", "analyze"], ["repanalysis", "probe"], ["repanalysis", "figures"]]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "mine.py", "exec"), {"__name__": "__main__"})
    for command in commands:
        assert main(command[1:]) == 0, command
    for seed in (0, 1):
        with RunFile(f"mine{seed}.h5") as run:
            assert run.status == "complete" and run.evals["test_acc"][-1] >= 0.85
            assert run.array("conv1", "activations").shape == (4, 200, 16, 4, 4)
    out = capsys.readouterr().out
    assert "model Sequential" in out
    assert re.search(r"conv1\s+width 256 \(16x4x4\)", out)  # a feature map's values per sample, with its shape
    assert (tmp_path / "mine_analysis.csv").stat().st_size and (tmp_path / "mine_probes.csv").stat().st_size
    assert len(list((tmp_path / "mine_figs").glob("*.png"))) >= 5
