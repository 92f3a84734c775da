"""Bad input never loses a file and never shows a traceback: one line on stderr, exit status 2."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import sys

import h5py
import pytest
from helpers import small_config

from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "run.h5"
    train(small_config(steps=4, record_every=2, eval_every=2, width=8, depth=2), path, quiet=True)
    return path


def _refused(capsys, *args, message: str) -> None:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["analyze", "probe"])
def test_tables_refuse_an_existing_file_unless_overwrite(tmp_path, capsys, run, command):
    out = tmp_path / "precious.csv"
    out.write_text("keep me")
    _refused(capsys, command, run, "--out", out, "--quiet", message="--overwrite")
    assert out.read_text() == "keep me"
    old = os.umask(0o022)
    try:
        assert main([command, str(run), "--out", str(out), "--quiet", "--overwrite"]) == 0
    finally:
        os.umask(old)
    assert out.read_text().count("\n") > 1 and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.csv"]  # no temporary file left


@pytest.mark.parametrize("command", ["analyze", "probe"])
def test_tables_refuse_bad_outputs_before_computing(tmp_path, capsys, run, monkeypatch, command):
    import repanalysis.analysis.runs as runs
    import repanalysis.probes as probes

    def no(*args, **kwargs):
        raise AssertionError("computed before checking the output")

    monkeypatch.setattr(runs, "analyze", no)
    monkeypatch.setattr(probes, "probe_runs", no)
    (tmp_path / "folder").mkdir()
    _refused(capsys, command, run, "--out", tmp_path / "missing" / "x.csv", message="does not exist")
    _refused(capsys, command, run, "--out", tmp_path / "folder", "--overwrite", message="is a folder")
    _refused(capsys, command, run, "--out", "/proc/x.csv", message="cannot write")


def test_figures_follow_the_output_rules(tmp_path, capsys, run, monkeypatch):
    """Checked before any drawing, nothing replaced without --overwrite, nothing created on error."""
    import repanalysis.figures.draw as draw

    _refused(capsys, "figures", tmp_path / "nothere.csv", "--out", tmp_path / "f2", message="nothere.csv: no such file")
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "spectra.svg").write_text("mine")
    real = draw._draw
    monkeypatch.setattr(draw, "_draw", lambda *a: pytest.fail("drew before checking the output"))
    _refused(capsys, "figures", run, "--out", figs, "--quiet", message="spectra.svg exists; pass --overwrite")
    assert [p.name for p in figs.iterdir()] == ["spectra.svg"] and (figs / "spectra.svg").read_text() == "mine"
    monkeypatch.setattr(draw, "_draw", real)
    assert main(["figures", str(run), "--out", str(figs), "--overwrite", "--quiet"]) == 0
    assert (figs / "spectra.svg").read_text() != "mine" and (figs / "learning_curves.png").is_file()
    capsys.readouterr()
    nothing = tmp_path / "nothing.csv"  # a table of a measure that no figure shows
    nothing.write_text("run,rule,seed,layer,step,probe,accuracy\na.h5,sg,0,h1,0,linear,nan\n")
    _refused(capsys, "figures", nothing, "--out", tmp_path / "new" / "f3", message="nothing to draw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "nothing.csv"]


@pytest.mark.parametrize("args", [
    ["train", "--steps", "2", "--out", "/proc/x.h5"],
    ["figures", "RUN", "--out", "/proc/figs"],
    ["reproduce", "--quick", "--out", "/proc/repro"],
])
def test_unwritable_outputs_are_one_line(capsys, run, args):
    _refused(capsys, *[str(run) if a == "RUN" else a for a in args], message="/proc")


@pytest.mark.parametrize("args, message", [
    (["--batch-size", 2000], "larger than the training split"),
    (["--width", 10_000_000], "GiB"),
    (["--probe-size", 5], "cannot cover the 10 classes"),
    (["--rule", "backprop", "--sg-at", 2], "--sg-at is for --rule sg or noisy only"),
    (["--rule", "sg", "--sg-at", "2,2"], "h2 more than once"),
    (["--rule", "sg", "--sg-at", 9], "h1..h4"),
    (["--rule", "sg", "--sg-lr", -1], "--sg-lr must be a positive finite number, got -1"),
    (["--rule", "sg", "--sg-lr", "nan"], "--sg-lr must be a positive finite number, got nan"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--optimizer", "sgd", "--momentum", -5], "--momentum must be in [0, 1), got -5"),
    (["--seed", 10**20], "--seed must be from 0 to 2**63 - 1"),
    (["--rule", "sg", "--sg-width", 0, "--sg-hidden", 1], "--sg-width must be at least 1, got 0"),
])
def test_train_checks_everything_before_touching_the_output(tmp_path, capsys, run, args, message):
    out = tmp_path / "good.h5"
    out.write_bytes(run.read_bytes())
    _refused(capsys, "train", *args, "--steps", 2, "--out", out, "--overwrite", "--quiet", message=message)
    assert out.read_bytes() == run.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["good.h5"]


def test_overwrite_keeps_the_old_run_until_the_new_one_is_under_way(tmp_path, capsys, run):
    out = tmp_path / "good.h5"
    out.write_bytes(run.read_bytes())
    # a run that fails at its first step leaves the old file as it was
    _refused(capsys, "train", "--dataset", "linear-regression-2d", "--optimizer", "sgd", "--lr", "1e30",
             "--steps", 5, "--record-every", 5, "--out", out, "--overwrite", "--quiet", message="left as it was")
    assert out.read_bytes() == run.read_bytes() and [p.name for p in tmp_path.iterdir()] == ["good.h5"]
    # a run that gets going replaces it
    assert main(["train", "--steps", "3", "--width", "8", "--out", str(out), "--overwrite", "--quiet"]) == 0
    with RunFile(out) as new:
        assert new.status == "complete" and list(new.steps) == [0, 1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["good.h5"]


def test_probe_set_covers_every_class():
    digits = load("digits")
    assert set(digits.probe_labels(digits.probe_index(10))) == set(range(10))


def test_command_line_basics(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("repanalysis 0.")
    _refused(capsys, "train", "--steps", "x", message="invalid int value")
    assert "repanalysis train:" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 1000)" in text and "(default 0.001)" in text and "(default 64)" in text
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "linear_cka" in text and "--overwrite" in text


def test_argparse_errors_have_one_prefix(capsys):
    main(["train", "--steps", "x", "--out", "x.h5"])
    err = capsys.readouterr().err
    assert err.startswith("repanalysis: error: argument --steps") and err.count("repanalysis") == 2


def test_inspect_into_a_closed_pipe_is_quiet(run, capsys):
    """``inspect ... | head -c 1`` with more output than the pipe holds, so that the writer does meet the closed
    pipe (an output that fits in the pipe's buffer is written before the reader leaves, and never fails)."""
    read, write = os.pipe()
    pipe_bytes = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
    os.close(read), os.close(write)
    assert main(["inspect", str(run)]) == 0
    copies = 4 * pipe_bytes // len(capsys.readouterr().out.encode()) + 1
    proc = subprocess.run(f"set -o pipefail; {sys.executable} -m repanalysis.cli inspect {' '.join([str(run)] * copies)}"
                          " | head -c 1", shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 141 and proc.stdout and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("measure, alternative", [("rbf_cka", "minibatch_cka"), ("rsa", "subset")])
def test_n_by_n_measures_refuse_what_cannot_fit(measure, alternative):
    import numpy as np

    from repanalysis.errors import UserError
    from repanalysis.measures.rdm import rsa
    from repanalysis.measures.similarity import rbf_cka

    fn = {"rbf_cka": rbf_cka, "rsa": rsa}[measure]
    x = np.zeros((200_000, 2), np.float32)
    with pytest.raises(UserError, match=rf"about 1,192\.1 GiB.*{alternative}"):
        fn(x, x)


def test_gradient_error_of_no_samples_is_a_user_error():
    import numpy as np

    from repanalysis.errors import UserError
    from repanalysis.measures.gradients import gradient_error

    with pytest.raises(UserError, match="no samples"):
        gradient_error(np.zeros((0, 3)), np.zeros((0, 3)))


def test_warnings_are_one_readable_line_per_kind(tmp_path, capsys, run):
    sg = tmp_path / "sg.h5"
    train(small_config(rule="sg", steps=4, record_every=2, eval_every=2, width=8, depth=2), sg, quiet=True)
    assert main(["analyze", str(run), str(sg), "--out", str(tmp_path / "a.csv"), "--quiet"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any("no cosine" in line for line in lines)  # the SG module predicts zero at step 0
    assert all(line.startswith("repanalysis: warning: ") for line in lines), lines
    assert not any(".py:" in line for line in lines)  # no source paths or lines
    assert len(lines) == len(set(lines))


def test_a_second_writer_of_a_run_file_is_refused_naming_the_first(tmp_path, capsys, run):
    import torch

    from repanalysis import Recorder
    from repanalysis.runtime.outputs import file_lock

    out = tmp_path / "same.h5"
    with file_lock(out):  # another writer at work on it, as a second process would see
        _refused(capsys, "train", "--steps", 2, "--width", 8, "--out", out, "--overwrite", "--quiet",
                 message=f"same.h5 is being written by another process {os.getpid()} on ")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    probe = (torch.randn(6, 4), torch.arange(6) % 3)
    with Recorder(out, model, {"fc": model[0]}, probe, torch.nn.functional.cross_entropy) as first:
        first.checkpoint(0)
        with pytest.raises(UserError, match="is being written by another process"):
            Recorder(out, model, {"fc": model[0]}, probe, torch.nn.functional.cross_entropy, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["same.h5"]  # the lock file went with the writer
    with RunFile(out) as done:
        assert done.status == "complete" and list(done.steps) == [0]
    copy = tmp_path / "copy.h5"
    copy.write_bytes(run.read_bytes())
    with h5py.File(copy, "r+") as f:
        f.attrs["status"] = "running"  # as a killed run's
    before = copy.read_bytes()
    with file_lock(copy):
        _refused(capsys, "train", "--resume", copy, message="copy.h5 is being written by another process")
    assert copy.read_bytes() == before


def test_reproduce_and_sweep_refuse_a_folder_they_did_not_make_or_that_is_in_use(tmp_path, capsys):
    from repanalysis.runtime.outputs import folder_lock

    mine = tmp_path / "mine"
    (mine / "tables").mkdir(parents=True)
    (mine / "report.md").write_text("my notes")
    for command in ("reproduce", "sweep"):
        _refused(capsys, command, "--quick", "--workers", 1, "--out", mine, message="did not make, and not empty")
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == ["report.md", "tables"]
    spec = tmp_path / "one.toml"
    spec.write_text("seeds = 1\n[experiments.a]\nsettings = { rule = 'backprop', width = 8, depth = 2, steps = 2, "
                    "probe_size = 20 }\n")
    assert main(["sweep", "--spec", str(spec), "--workers", "1", "--quiet", "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "report.md").read_text() == "my notes" and (mine / "runs" / "a_digits_mlp_backprop_s0.h5").exists()
    assert main(["sweep", "--spec", str(spec), "--workers", "1", "--quiet", "--out", str(mine)]) == 0  # marked now
    capsys.readouterr()
    with folder_lock(mine):
        _refused(capsys, "sweep", "--spec", spec, "--workers", 1, "--out", mine,
                 message=f"the folder {mine} is being written by another process {os.getpid()}")


@pytest.mark.parametrize("command", ["analyze", "probe", "figures"])
def test_no_output_is_one_of_the_inputs_and_no_input_counts_twice(tmp_path, capsys, run, monkeypatch, command):
    """``--out`` naming an input (whatever its spelling) is refused before anything is written, and so is
    an input given twice; the run file stays as it was and nothing is created."""
    copy = tmp_path / "bp.h5"
    copy.write_bytes(run.read_bytes())
    before = copy.read_bytes()
    monkeypatch.chdir(tmp_path)
    _refused(capsys, command, copy, "--out", "./bp.h5", "--overwrite" if command != "figures" else "--quiet",
             message="is one of the inputs")
    _refused(capsys, command, copy, "bp.h5", "--out", tmp_path / "t.csv", message="is given twice")
    assert copy.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bp.h5"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_earlier_checkpoints_and_marks_the_run_failed(tmp_path, capsys, monkeypatch):
    """The disk fills at the third flush (a mocked ENOSPC): one line naming the file and the free space, the
    run "failed" with its first checkpoint readable, no temporary file; with --overwrite the old run stays."""
    real_flush = h5py.File.flush
    flushes = []

    def flush(self):
        flushes.append(1)
        if len(flushes) > 3:
            _no_space()
        real_flush(self)

    out = tmp_path / "t.h5"
    args = ["train", "--steps", "20", "--record-every", "10", "--eval-every", "10", "--width", "8", "--depth", "2",
            "--quiet", "--out", out]
    monkeypatch.setattr(h5py.File, "flush", flush)
    _refused(capsys, *args, message=f"{out}: writing the run file failed (No space left on device; ")
    monkeypatch.setattr(h5py.File, "flush", real_flush)
    with RunFile(out) as run:
        assert run.status == "failed" and "No space left on device" in run.error
        assert list(run.steps) == [0] and run.activations("h1", 0).shape == (200, 8)
    before = out.read_bytes()
    flushes.clear()
    monkeypatch.setattr(h5py.File, "flush", flush)
    _refused(capsys, *args, "--overwrite", "--seed", "1", message="free in")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]


def test_a_checkpoint_without_room_on_the_disk_is_refused_before_it_is_written(tmp_path, capsys, monkeypatch):
    """HDF5 cannot take back a write the disk refused half-way, so a checkpoint is refused, whole, while the
    disk lacks room for it (and a spare MiB for closing the run as failed)."""
    import shutil

    import repanalysis.runfile.hdf5 as runfile

    out = tmp_path / "t.h5"
    real = shutil.disk_usage
    calls = []

    def usage(path):
        calls.append(path)
        return real(path) if len(calls) < 3 else real(path)._replace(free=runfile.SPARE)  # no room for an array
    monkeypatch.setattr(runfile.shutil, "disk_usage", usage)
    _refused(capsys, "train", "--steps", "20", "--record-every", "10", "--width", "8", "--depth", "2", "--quiet",
             "--out", out, message="no room for the next write")
    with RunFile(out) as run:
        assert run.status == "failed" and "no room for the next write" in run.error and len(run.steps) >= 1


@pytest.mark.parametrize("command", ["analyze", "figures"])
def test_a_full_disk_ends_tables_and_figures_with_one_line(tmp_path, capsys, run, monkeypatch, command):
    import pandas as pd

    import repanalysis.figures.style as style

    monkeypatch.setattr(pd.DataFrame, "to_csv", _no_space)
    monkeypatch.setattr(style, "_write", _no_space)
    out = tmp_path / ("t.csv" if command == "analyze" else "figs")
    assert main([command, str(run), "--out", str(out), "--quiet"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("repanalysis: warning:")]
    assert len(said) == 1 and "No space left on device; " in said[0] and " MiB free in " in said[0], said
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no file, no temporary file
