"""Resuming an interrupted run (``train --resume``) ends with the file an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import contents, small_config, train_interrupted

from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import rebuild
from repanalysis.training.train import resume, train


@pytest.fixture(scope="module")
def data():
    return {"digits": load("digits"), "nonlinear-regression-2d": load("nonlinear-regression-2d")}




def assert_same_file(resumed, reference) -> None:
    (a, a_attrs), (b, b_attrs) = contents(resumed), contents(reference)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name
    assert a_attrs == b_attrs
    assert a_attrs["status"] == "complete" and "error" not in a_attrs


CASES = {  # rule: (config overrides, step at which training is interrupted)
    "backprop": (dict(steps=20, record_every=5, eval_every=7), 13),
    "sg": (dict(steps=24, record_every=5, eval_every=4, update_prob=0.5, lr_schedule="cosine", warmup_steps=3,
                sg_warmup=6), 12),
    "dni": (dict(steps=20, record_every=6, optimizer="sgd", momentum=0.9, lr=0.05), 14),
    "cdni": (dict(steps=20, record_every=4, sg_hidden=1, sg_width=8, sg_batch_norm=True, update_prob=0.7), 3),
    "fa": (dict(steps=20, record_every=5, eval_every=3, lr_schedule="cosine"), 11),
    "dfa": (dict(steps=20, record_every=5, eval_every=20, batch_norm=False), 20),
    "noisy": (dict(steps=20, record_every=5, eval_every=6, signal_cosine=0.3, hold_steps=7, validation=100), 13),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, data, monkeypatch, rule):
    overrides, stop = CASES[rule]
    config = small_config(rule=rule, **overrides)
    train(config, tmp_path / "reference.h5", quiet=True, data=data["digits"])
    path = tmp_path / "interrupted.h5"
    train_interrupted(monkeypatch, config, path, data["digits"], stop)
    with RunFile(path) as run:
        assert run.status == "failed" and run.error == f"stopped at step {stop}: KeyboardInterrupt"
        assert len(run.metrics["step"]) == stop - 1  # rows logged after the last checkpoint, to be dropped
    result = resume(path, quiet=True, data=data["digits"])
    assert result.status == "complete" and result.steps_done == config.steps
    assert_same_file(path, tmp_path / "reference.h5")
    with h5py.File(path, "r") as f:
        last = stop - 1 - (stop - 1) % config.record_every
        assert [step for step, _ in json.loads(f.attrs["resumed"])] == [last]


def test_a_slot_caught_mid_write_is_passed_over(tmp_path, data, monkeypatch):
    """A run killed while writing a checkpoint's resume state continues from the checkpoint before."""
    config = small_config(rule="sg", steps=20, record_every=4, update_prob=0.6)
    train(config, tmp_path / "reference.h5", quiet=True, data=data["digits"])
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, data["digits"], 14)
    with h5py.File(path, "a") as f:
        newest = max(f["resume"].values(), key=lambda g: g["step"][()])
        assert newest["step"][()] == 12
        newest["step"][()] = -1  # as the writer leaves it while filling the slot
        newest["optimizer.model.head.weight.exp_avg"][...] = 7.0  # half-written
    resume(path, quiet=True, data=data["digits"])
    assert_same_file(path, tmp_path / "reference.h5")
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["resumed"])[0][0] == 8


def _layout(path) -> dict:
    """Each group's and dataset's attributes, and each dataset's chunks, compression and maximum shape."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: out.__setitem__(name, (
            dict(o.attrs), (o.chunks, o.compression, o.maxshape) if isinstance(o, h5py.Dataset) else None)))
    return out


def test_resume_continues_in_a_fresh_copy_with_the_same_layout(tmp_path, data, monkeypatch):
    """The part kept is copied into a new file (a tail damaged by a kill mid-write is never written to
    again), with every dataset's storage layout and every attribute, so appends go on as in the original."""
    config = small_config(rule="cdni", steps=16, record_every=4, eval_every=5)
    train(config, tmp_path / "reference.h5", quiet=True, data=data["digits"])
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, data["digits"], 11)
    before = os.stat(path).st_ino
    resume(path, quiet=True, data=data["digits"])
    assert os.stat(path).st_ino != before
    assert not list(tmp_path.glob(".*.tmp"))
    assert _layout(path) == _layout(tmp_path / "reference.h5")
    assert_same_file(path, tmp_path / "reference.h5")


def test_a_run_with_compressed_activations_resumes_to_the_same_values(tmp_path, data, monkeypatch):
    """Files written before activations were stored plain had them LZF-compressed: such a run resumes,
    its activations stay compressed, and every value equals the uninterrupted run's."""
    config = small_config(rule="sg", steps=16, record_every=4, eval_every=5)
    train(config, tmp_path / "reference.h5", quiet=True, data=data["digits"])
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, data["digits"], 11)
    with h5py.File(path, "a") as f:
        for name in f["layers"]:
            values = f[f"layers/{name}/activations"][()]
            del f[f"layers/{name}/activations"]
            f.create_dataset(f"layers/{name}/activations", data=values, maxshape=(None,) + values.shape[1:],
                             chunks=(1,) + values.shape[1:], compression="lzf")
    resume(path, quiet=True, data=data["digits"])
    with h5py.File(path, "r") as f:
        assert {f[f"layers/{name}/activations"].compression for name in f["layers"]} == {"lzf"}
    assert_same_file(path, tmp_path / "reference.h5")


def _cli(*args, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    # a shell that starts jobs in the background makes them ignore SIGINT, and so would the child: restore it
    return subprocess.Popen([sys.executable, "-m", "repanalysis.cli", "train", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _wait_for_checkpoints(path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with RunFile(path) as run:
                if len(run.steps) >= n:
                    return
        except (UserError, OSError, KeyError):
            pass
        time.sleep(0.02)
    pytest.fail(f"{path} reached {n} checkpoints in 60 s")


# a small run whose checkpoints (every 2 steps) take most of its time, so that kills land in them too
KICKBACK = dict(rule="kickback", dataset="nonlinear-regression-2d", depth=3, width=16, steps=600, batch_size=32,
                record_every=2, eval_every=25, probe_size=50, seed=3)


def _options(config: dict) -> list[str]:
    return [a for k, v in config.items() for a in (f"--{k.replace('_', '-')}", v)]


def test_killed_with_sigkill_then_stopped_with_sigint_resumes_exactly(tmp_path, data, capsys):
    """Kickback (one output): SIGKILL at a random moment, resume; SIGINT, resume again; as if never stopped."""
    path = tmp_path / "killed.h5"
    proc = _cli(*_options(KICKBACK), "--out", path)
    train(small_config(**KICKBACK), tmp_path / "reference.h5", quiet=True, data=data["nonlinear-regression-2d"])
    _wait_for_checkpoints(path, 3, proc)
    time.sleep(random.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunFile(path) as run:
        assert run.status == "running", "the run ended before it was killed"
        killed_at = len(run.steps)
    proc = _cli("--resume", path)
    _wait_for_checkpoints(path, killed_at + 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "repanalysis: interrupted\n"
    with RunFile(path) as run:
        assert run.status == "failed" and run.error.endswith(": KeyboardInterrupt")
    assert main(["train", "--resume", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"resumed {path}: 600 steps")
    assert_same_file(path, tmp_path / "reference.h5")
    with h5py.File(path, "r") as f:
        assert len(json.loads(f.attrs["resumed"])) == 2


def test_a_complete_run_is_left_alone(tmp_path, data, capsys):
    path = tmp_path / "done.h5"
    train(small_config(), path, quiet=True, data=data["digits"])
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns
    assert resume(path, data=data["digits"]) is None
    assert main(["train", "--resume", str(path)]) == 0
    assert capsys.readouterr().out == f"{path} is complete; nothing to resume\n"
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stamp


def _refused(path, message, capsys, *extra) -> None:
    before = path.read_bytes()
    assert main(["train", "--resume", str(path), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert path.read_bytes() == before


def test_a_run_that_failed_on_a_non_finite_loss_is_refused(tmp_path, capsys):
    path = tmp_path / "nan.h5"
    assert main(["train", "--dataset", "linear-regression-2d", "--optimizer", "sgd", "--lr", "1e4", "--steps", "50",
                 "--record-every", "1", "--out", str(path), "--quiet"]) == 2
    capsys.readouterr()
    _refused(path, "failed on a non-finite loss, and would fail again", capsys)


def test_foreign_damaged_and_unrebuildable_files_are_refused(tmp_path, data, monkeypatch, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    _refused(foreign, "not a repanalysis run file", capsys)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    _refused(text, "not a readable HDF5 file", capsys)

    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, small_config(), path, data["digits"], 15)
    _refused(path, "--steps, --out cannot be given with it", capsys, "--steps", "5", "--out", "x.h5")
    unrebuildable = tmp_path / "config.h5"
    unrebuildable.write_bytes(path.read_bytes())
    with h5py.File(unrebuildable, "a") as f:
        f.attrs["config"] = json.dumps(dict(json.loads(f.attrs["config"]), rule="nope"))
    _refused(unrebuildable, "its config cannot be rebuilt (unknown rule 'nope'", capsys)
    stateless = tmp_path / "stateless.h5"
    stateless.write_bytes(path.read_bytes())
    with h5py.File(stateless, "a") as f:
        del f["resume"]
    with pytest.raises(UserError, match=f"^{re.escape(str(stateless))}: no checkpoint with a resume state"):
        resume(stateless, data=data["digits"])
    assert resume(path, quiet=True, data=data["digits"]).status == "complete"


def test_a_resume_that_cannot_write_its_copy_says_so_and_leaves_the_run_as_it_was(tmp_path, data, monkeypatch):
    config = small_config(rule="dni", steps=12, record_every=4)
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, data["digits"], 7)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_disk)
    with pytest.raises(UserError, match=r"cannot be resumed: copying the part kept into a new file beside it failed "
                                        r"\(\[Errno 28\] No space left on device\)"):
        resume(path, quiet=True, data=data["digits"])
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def _set_config(path, **changes) -> None:
    with h5py.File(path, "a") as f:
        f.attrs["config"] = json.dumps(dict(json.loads(f.attrs["config"]), **changes))


def _longer_head_bias(path) -> None:
    with h5py.File(path, "a") as f:
        rows = f["params/model.head.bias"][()]
        del f["params/model.head.bias"]
        f.create_dataset("params/model.head.bias", data=np.concatenate([rows, rows[:, :1]], axis=1),
                         maxshape=(None, 11), chunks=(1, 11))


def _renamed_head_weight(path) -> None:
    with h5py.File(path, "a") as f:
        f.move("params/model.head.weight", "params/model.head.weights")


@pytest.mark.parametrize("tamper, message", [
    (lambda path: _set_config(path, width=32), "run.h5: its parameters do not fit the network its config describes "
                                               "(model.blocks.0.linear.weight is [16, 64] in the file, [32, 64] in "
                                               "the network, and "),
    (_longer_head_bias, "(model.head.bias is [11] in the file, [10] in the network)"),
    (_renamed_head_weight, "(model.head.weight is missing from the file, and 1 more)"),
])
def test_parameters_that_do_not_fit_the_config_are_refused_before_the_file_changes(tmp_path, data, monkeypatch,
                                                                                    capsys, tamper, message):
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, small_config(), path, data["digits"], 15)
    tamper(path)
    _refused(path, message, capsys)
    assert not list(tmp_path.glob(".*.tmp"))
    with RunFile(path) as run, pytest.raises(UserError, match="do not fit the network its config describes"):
        rebuild(run)
