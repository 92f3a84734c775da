"""The recorder's background writer: the file it writes, its errors, and a kill while a write is in flight."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import torch
from helpers import run_arrays, small_config

from repanalysis.cli import main
from repanalysis.errors import UserError
from repanalysis.runfile.background import Background, thread_pays
from repanalysis.runfile.hdf5 import RunFile, RunWriter
from repanalysis.training.train import resume, train

# checkpoints and evaluations every 2 steps: the writer is busy for most of the run
BUSY = dict(rule="sg", steps=16, record_every=2, eval_every=3, update_prob=0.7)



def test_jobs_run_in_order_and_the_first_error_surfaces_once():
    done = []
    work = Background("test", depth=1)
    for k in range(5):
        work.submit(lambda k=k: (time.sleep(0.002), done.append(k)))
    work.drain()
    assert done == [0, 1, 2, 3, 4]

    go = threading.Event()

    def fail():
        go.wait()
        raise OSError(28, "No space left on device")

    work.submit(fail)
    work.submit(lambda: done.append("after"))  # queued behind the failure: dropped
    go.set()
    with pytest.raises(OSError, match="No space left"):
        work.drain()
    assert isinstance(work.error, OSError) and "after" not in done
    work.stop()  # reported already: not raised twice
    with pytest.raises(RuntimeError, match="stopped"):
        work.submit(lambda: None)


def test_without_a_thread_jobs_run_at_once_and_a_failure_stops_the_rest():
    done = []
    work = Background("test", threaded=False)
    work.submit(lambda: done.append(0))
    assert done == [0]  # run in submit, before it returned

    def fail():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        work.submit(fail)
    work.submit(lambda: done.append("after"))  # after the failure: dropped
    assert isinstance(work.error, OSError) and done == [0]
    work.drain()
    work.stop()  # reported already: not raised twice
    with pytest.raises(RuntimeError, match="stopped"):
        work.submit(lambda: None)


def test_the_writer_thread_is_used_only_where_it_has_a_core_to_itself(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert thread_pays(torch.device("cuda"))
    for threads, pays in ((1, True), (2, False), (3, False)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert thread_pays(torch.device("cpu")) is pays


def test_a_slow_writer_records_what_the_synchronous_one_records(tmp_path, digits, monkeypatch):
    """Training runs ahead of a slowed writer; the snapshots keep each checkpoint's own state."""
    config = small_config(**BUSY)
    with monkeypatch.context() as patch:  # the writer in the training thread, as before it was a thread
        patch.setattr(Background, "submit", lambda self, job: job())
        train(config, tmp_path / "synchronous.h5", quiet=True, data=digits)
    original = RunWriter.checkpoint

    def slow(self, *args, **kwargs):
        time.sleep(0.05)  # several training steps long
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(RunWriter, "checkpoint", slow)
        train(config, tmp_path / "background.h5", quiet=True, data=digits)
    a, b = run_arrays(tmp_path / "synchronous.h5"), run_arrays(tmp_path / "background.h5")
    assert sorted(a) == sorted(b) and any(k.startswith("resume/") for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_failed_write_stops_training_with_one_clear_line(tmp_path, digits, monkeypatch, capsys):
    original = RunWriter.checkpoint
    calls = []

    def full_disk(self, step, *args, **kwargs):
        calls.append(step)
        if step == 4:
            raise OSError(28, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(RunWriter, "checkpoint", full_disk)
    path = tmp_path / "run.h5"
    with pytest.raises(UserError, match=r"run\.h5: writing the run file failed \(No space left on device; [\d,.]+ MiB free in "):
        train(small_config(**BUSY), path, quiet=True, data=digits)
    assert calls[-1] == 4  # what was queued behind the failure was dropped
    with RunFile(path) as run:
        assert run.status == "failed" and list(run.steps) == [0, 2]
        assert re.fullmatch(r"writing the run file failed \(No space left on device; [\d,.]+ MiB free in .+\)", run.error)
    path.unlink()
    # the command line: one line on stderr, no traceback
    assert main(["train", "--rule", "sg", "--dataset", "digits", "--depth", "3", "--width", "16", "--steps", "16",
                 "--batch-size", "32", "--record-every", "2", "--probe-size", "50", "--out", str(path),
                 "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "writing the run file failed" in err and "Traceback" not in err


def test_a_failure_of_the_last_write_is_raised_by_close(tmp_path, digits, monkeypatch):
    original = RunWriter.checkpoint

    def fails_last(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(5, "Input/output error")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(RunWriter, "checkpoint", fails_last)
    path = tmp_path / "run.h5"
    with pytest.raises(UserError, match="Input/output error"):
        train(small_config(steps=20, record_every=10, eval_every=100), path, quiet=True, data=digits)
    with RunFile(path) as run:
        assert run.status == "failed" and list(run.steps) == [0, 10]


# the child: train KICKBACK-like run; the writer stops for good inside checkpoint 4's parameters
_CHILD = """
import sys, threading, torch
from pathlib import Path
torch.set_num_threads(1)
from repanalysis.runfile.hdf5 import RunWriter
from helpers import small_config
from repanalysis.datasets import load
from repanalysis.training.train import train
original, marker = RunWriter._append, Path(sys.argv[2])
def stuck(self, group, name, value):
    steps = self.file["checkpoints"].get("step")
    if group == "params" and steps is not None and len(steps) == 4 and name.endswith("bias"):
        marker.touch()
        threading.Event().wait()  # the writer never finishes this checkpoint
    return original(self, group, name, value)
RunWriter._append = stuck
train(small_config(**eval(sys.argv[3])), sys.argv[1], quiet=True, data=load("digits"))
"""


def test_killed_while_a_checkpoint_is_in_flight_then_resumed_exactly(tmp_path, digits):
    config = dict(BUSY, steps=30)
    path, marker = tmp_path / "killed.h5", tmp_path / "stuck"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(marker), repr(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the writer never reached checkpoint 4"
        time.sleep(0.01)
    time.sleep(0.2)  # training runs on meanwhile, up to the bounded queue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunFile(path) as run:  # readable: the four whole checkpoints, not the one in flight
        assert run.status == "running" and list(run.steps) == [0, 2, 4, 6]
        assert run.array("h1", "activations").shape[0] >= 4
        run.params(-1)
    train(small_config(**config), tmp_path / "reference.h5", quiet=True, data=digits)
    result = resume(path, quiet=True, data=digits)
    assert result.status == "complete"
    a, b = run_arrays(path), run_arrays(tmp_path / "reference.h5")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with h5py.File(path, "r") as f:
        assert f.attrs["status"] == "complete"
