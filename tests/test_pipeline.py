"""Stages in separate processes (``train --stages K``): lock-step equals the in-process rule; asynchronous
training learns and records staleness; a stage that dies ends the run with an error naming it."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from helpers import built, contents, run_arrays, small_config

from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime.progress import Progress
from repanalysis.training.parts import Batches, state_arrays
from repanalysis.training.pipeline import check, launch
from repanalysis.training.pipeline.launch import stages
from repanalysis.training.pipeline.stages import BLOCK_OVERHEAD, partition, step_costs
from repanalysis.training.pipeline.worker import ROWS_EVERY_S, ROWS_MAX, Metrics, Rows
from repanalysis.training.train import resume, train


@pytest.fixture(scope="module")
def data():
    return load("digits")


def test_partition_makes_the_costliest_stage_as_cheap_as_it_can_be():
    every = [0, 1, 2, 3, 4, 5]
    assert partition([1] * 4, every, 2) == [(0, 1), (2, 3)]
    assert partition([1] * 6, every, 3) == [(0, 1), (2, 3), (4, 5)]
    assert partition([1] * 5, every, 2) == [(0, 1), (2, 4)]  # 2 | 3 or 3 | 2: the lower boundary
    assert partition([5, 1, 1, 1, 1], every, 2) == [(0, 0), (1, 4)]  # a costly bottom block alone
    assert partition([1, 1, 1, 1, 9], every, 2) == [(0, 3), (4, 4)]  # and a costly top one
    assert partition([1] * 4, [2], 2) == [(0, 2), (3, 3)]  # sg: the only module
    assert partition([1] * 8, [0, 1, 2, 7], 3) == [(0, 0), (1, 2), (3, 7)]  # the top stage costs 5 whatever the rest
    with pytest.raises(UserError, match="--stages 2 needs 1 interface"):
        partition([1] * 4, [3], 2)  # a module on the top block only


def test_partition_equals_a_search_of_every_split():
    """Against every choice of boundaries (itertools): the same costliest stage, on random costs and cuts."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 10))
        costs = [int(c) for c in rng.integers(1, 50, n)]
        cuts = sorted(int(c) for c in rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
        usable = [c for c in cuts if c < n - 1]
        for k in range(2, len(usable) + 2):
            def worst(bounds):
                edges = [-1, *bounds, n - 1]
                return max(sum(costs[a + 1 : b + 1]) for a, b in zip(edges, edges[1:]))
            best = min(worst(b) for b in itertools.combinations(usable, k - 1))
            got = partition(costs, cuts, k)
            assert got[0][0] == 0 and got[-1][1] == n - 1 and len(got) == k
            assert all(b[0] == a[1] + 1 and a[1] in usable for a, b in zip(got, got[1:]))
            assert max(sum(costs[a : b + 1]) for a, b in got) == best


def test_step_costs_are_the_multiply_adds_of_a_step_plus_the_overhead(data):
    """A 3-block MLP with cdni (modules at h1, h2, h3, conditioned on the 10 labels), closed form per block:
    a block's forward F·W multiply-adds per sample, three times (twice at the bottom), a module's
    (W + 10)·W twice, the head's W·10 three times; batch norm and the state it keeps are left as they were."""
    config = small_config(rule="cdni", depth=3, width=16, stages=2)
    rule, _ = built(config, data)
    before = {k: v.clone() for k, v in rule.network.state_dict().items()}
    rule.network.train()
    f, w, b = data.n_features, 16, config.batch_size
    module = 2 * (w + 10) * w
    expected = [b * (2 * f * w + module), b * (3 * w * w + module), b * (3 * w * w + module + 3 * w * 10)]
    assert sorted(rule.cuts) == [0, 1, 2]
    assert step_costs(rule, b) == [e + BLOCK_OVERHEAD for e in expected]
    assert rule.network.training and rule.modules.training
    for k, v in rule.network.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("rule,k,extra", [("dni", 3, dict(update_prob=0.6, lr_schedule="cosine")),
                                          ("cdni", 2, dict(sg_hidden=1, sg_width=8)),
                                          ("sg", 2, {}),
                                          ("dni", 3, dict(model="cnn", depth=3, channels=4)),  # module batch norm
                                          ("dni", 2, dict(sg_hidden=1, sg_width=8, sg_batch_norm=True)),
                                          ("cdni", 2, dict(model="cnn", depth=3, channels=4, sg_map="conv"))])
def test_stages_chained_in_one_process_are_the_in_process_rule_bit_for_bit(data, rule, k, extra):
    """The stages' arithmetic, run in lock-step order without processes: every parameter and buffer equal."""
    extra = {"depth": 5, **extra}
    config = small_config(rule=rule, steps=12, **extra)
    reference, _ = built(config, data)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)
    for _ in range(config.steps):
        idx = next(stream)
        reference.step(data.x_train[idx], data.y_train[idx])
    staged = small_config(rule=rule, steps=12, stages=k, **extra)
    parts = [stages(built(staged, data)[0])[rank] for rank in range(k)]  # one rule per "process"
    stream = Batches(len(data.x_train), config.batch_size, config.seed)
    for step in range(1, config.steps + 1):
        idx = next(stream)
        x, y = data.x_train[idx], data.y_train[idx]
        passes = []
        for part in parts:
            trace, leaf = part.forward(x)
            back = part.backward(trace, leaf, y)
            part.update(step)
            x = trace.hidden[-1].detach()
            passes.append((back, x))
        for j, (part, (back, h)) in enumerate(zip(parts, passes)):  # each target reaches the stage below
            target = passes[j + 1][0].input_grad if j + 1 < k else None
            part.learn(back, target, (h, y) if rule == "dni" else None)  # predicting anew, or the pass's own
    expected = state_arrays(reference)
    got = {k: v for part in parts for k, v in part.state().items()}
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_stage_sends_every_steps_row_once_in_order_batched_at_due_steps_time_and_count():
    sent, now = [], [0.0]
    rows = Rows(SimpleNamespace(put=sent.append), 1, due={5, 400}, clock=lambda: now[0])
    per = round(ROWS_EVERY_S * 80)  # the clock runs 1/80 s a step to step 100, then stands still
    for step in range(1, 401):
        now[0] = min(step, 100) / 80
        rows.add(step, {"train_loss": torch.tensor(step / 4), "staleness/h1": 0.0})
    assert [(type(message), message.rank) for message in sent] == [(Metrics, 1)] * 5
    assert [len(message.rows) for message in sent] == [5, per, per, ROWS_MAX, 400 - 5 - 2 * per - ROWS_MAX]
    got = [(t, row) for message in sent for t, row in message.rows]
    assert got == [(t, {"train_loss": t / 4, "staleness/h1": 0.0}) for t in range(1, 401)]
    assert all(type(v) is float for _, row in got for v in row.values())


@pytest.mark.parametrize("net", [dict(depth=4), dict(model="cnn", depth=3, channels=4)], ids=["mlp", "cnn"])
def test_two_processes_in_lock_step_write_the_in_process_run(tmp_path, data, net):
    config = small_config(rule="cdni", steps=24, record_every=8, eval_every=12, **net)
    staged = small_config(rule="cdni", steps=24, record_every=8, eval_every=12, stages=2, sync=True, **net)
    # 2 threads on both sides: lock-step stages take the parent's threads whole, so their sums run in the
    # in-process order (with threads // K, one each, the files differed by ~1e-2 after 1000 steps: Adam
    # turns the rounding of a zero gradient, a bias before batch norm, into steps of ~lr/10)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(config, tmp_path / "one.h5", data=data, quiet=True)
        result = train(staged, tmp_path / "two.h5", data=data, quiet=True)
    finally:
        torch.set_num_threads(threads)
    one, two = run_arrays(tmp_path / "one.h5"), run_arrays(tmp_path / "two.h5")
    assert result.steps_done == 24 and list(two["checkpoints/step"]) == [0, 8, 16, 24]
    stale = {k for k in two if k.startswith("metrics/staleness/")}
    assert stale == {f"metrics/staleness/h{i}" for i in range(1, net["depth"] + 1)}
    for k in stale:
        np.testing.assert_array_equal(two[k], np.zeros(24))  # every target used at its own step
    assert set(one) == set(two) - stale  # the same schema otherwise, resume state included
    for k in set(two) - stale:
        np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    with RunFile(tmp_path / "two.h5") as run:
        assert run.status == "complete"


def test_asynchronous_stages_learn_and_record_the_staleness_of_each_target(tmp_path, data):
    config = small_config(rule="cdni", depth=4, width=32, steps=160, record_every=80, eval_every=160, stages=2)
    result = train(config, tmp_path / "async.h5", data=data, quiet=True)
    assert result.last_eval["test_acc"] > 0.6, result.last_eval  # chance is 0.1; in-process cdni: 0.8-0.9 here
    m = run_arrays(tmp_path / "async.h5")
    boundary = m["metrics/staleness/h2"]  # the top module of the bottom stage: targets from the other process
    used = boundary[np.isfinite(boundary)]
    # how many steps get a target depends on the processes' timing: 122-126 of 160 on the idle 2-core
    # machine, 86-94 beside 4 busy processes (where a bound of 80 once failed); ages stayed within 0-6
    assert len(used) > 16 and used.min() >= 0 and used.max() <= 40, (len(used), used.min(), used.max())
    assert np.isfinite(m["metrics/sg_loss/h2"]).sum() == len(used)
    for inner in ("h1", "h3", "h4"):
        np.testing.assert_array_equal(m[f"metrics/staleness/{inner}"], np.zeros(160))
    # the boundary module learned: its weights left zero, where they start
    assert np.abs(m["params/rule.h2.out.weight"][-1]).max() > 0


def _checkpoints(path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return len(f["checkpoints/step"])
    except (OSError, KeyError, RuntimeError):  # not yet created, or read during a flush
        return 0


def test_a_stage_that_dies_ends_the_run_naming_it(tmp_path, data, capfd):
    """The surviving stage loses its neighbour: it prints nothing (no ``PeerLost`` traceback), and the run ends
    with the parent's one line naming the stage that died."""
    config = small_config(rule="dni", depth=4, steps=100000, record_every=20, eval_every=100000, stages=2)
    out = tmp_path / "run.h5"

    def kill_stage_2():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stage = [p for p in multiprocessing.active_children() if p.name == "repanalysis-stage-2"]
            if stage and _checkpoints(out) >= 2:  # training is under way
                os.kill(stage[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_stage_2, daemon=True)
    killer.start()
    started = time.monotonic()
    with pytest.raises(UserError, match=r"stage 2 of 2 \(h3-h4 and the head\) died during step \d+ "
                                        r"\(killed by signal 9\)"):
        train(config, out, data=data, quiet=True)
    assert time.monotonic() - started < 90
    killer.join(1)
    with RunFile(out) as run:
        assert run.status == "failed" and "stage 2 of 2" in run.error
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("repanalysis-stage")]
    printed = capfd.readouterr()
    assert "PeerLost" not in printed.err and "Traceback" not in printed.err, printed.err


_DIES_MID_MESSAGE = """
import multiprocessing as mp, os, signal, struct, sys, time
from repanalysis.training.pipeline.launch import _inbox

def stage(reports, ready):
    reports.put(("row", 0))
    time.sleep(0.5)  # the message above is in the pipe
    reports._wlock.acquire()  # as a stage killed in the middle of sending: the lock is never released,
    os.write(reports._writer.fileno(), struct.pack("!i", 1000))  # and 1000 announced bytes never come
    ready.set()
    time.sleep(60)

if __name__ == "__main__":
    context = mp.get_context("spawn")
    reports, ready = context.Queue(), context.Event()
    proc = context.Process(target=stage, args=(reports, ready), daemon=True)
    proc.start()
    inbox, forwarding = _inbox(reports)
    print(inbox.get(timeout=30), flush=True)
    ready.wait(30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    forwarding.set()
    print("left", flush=True)
"""


def test_the_parent_exits_after_a_stage_died_in_the_middle_of_a_message(tmp_path):
    """A killed stage leaves a partial message and the queue's write lock held: the parent's reader must not
    wait on either, during the run or at interpreter exit (a feeder thread joined at exit once hung CI)."""
    script = tmp_path / "dies.py"
    script.write_text(_DIES_MID_MESSAGE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["('row',", "0)", "left"]


def test_a_non_finite_loss_in_the_top_stage_stops_the_run_as_in_process(tmp_path, data):
    config = small_config(rule="dni", depth=4, lr=1e30, sg_lr=1e30, stages=2, steps=50)
    with pytest.raises(UserError, match=r"non-finite at step \d+; the run stopped there"):
        train(config, tmp_path / "nan.h5", data=data, quiet=True)
    with RunFile(tmp_path / "nan.h5") as run:
        assert run.status == "failed"


@pytest.mark.parametrize("overrides,message", [
    (dict(sync=True), "--sync is for --stages K > 1"),
    (dict(rule="backprop", stages=2), "backprop has none"),
    (dict(rule="sg", sg_at=[1, 2], stages=2), "--sg-lambda 1.0 mixes the true gradient"),
    (dict(rule="cdni", sg_condition="error", stages=2), "--sg-condition error"),
    (dict(rule="dni", stages=4), "--stages 4 needs 3 interface"),
    (dict(rule="dni", stages=0), "--stages must be at least 1"),
])
def test_what_stages_cannot_do_is_refused_before_any_file(tmp_path, data, overrides, message):
    with pytest.raises(UserError, match=message):
        train(small_config(**overrides), tmp_path / "x.h5", data=data, quiet=True)
    assert not (tmp_path / "x.h5").exists()


def test_stages_refuse_cuda(tmp_path, data):
    with pytest.raises(UserError, match="--device cuda is not supported"):
        train(small_config(rule="dni", stages=2), tmp_path / "x.h5", data=data, device="cuda", quiet=True)


def _stage_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_parent_after(path, checkpoints: int, *options) -> None:
    """Run ``train`` in a subprocess, SIGKILL it once ``path`` has ``checkpoints`` checkpoints; its stages
    must end by themselves, and remove the temporary folder of their file store."""
    temporary = path.parent / "tmp"
    temporary.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", TMPDIR=str(temporary))
    proc = subprocess.Popen([sys.executable, "-m", "repanalysis.cli", "train", *options, "--out", str(path),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while _checkpoints(path) < checkpoints:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    stage_pids = _stage_pids(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in stage_pids):
        assert time.monotonic() < deadline, "a stage outlived its killed parent"
        time.sleep(0.1)
    assert not list(temporary.iterdir())
    with RunFile(path) as run:
        assert run.status == "running", "the run ended before it was killed"


def test_lock_step_run_killed_and_resumed_equals_the_uninterrupted_one(tmp_path, data):
    """SIGKILL the parent after a checkpoint: its stages end; resumed, every dataset is bit-identical."""
    options = dict(rule="cdni", dataset="digits", depth=4, width=16, steps=160, batch_size=32, record_every=20,
                   eval_every=25, probe_size=20, seed=3, lr_schedule="cosine", update_prob=0.8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess: its stages get one thread each, like these
    try:
        train(small_config(**options, stages=2, sync=True), tmp_path / "reference.h5", data=data, quiet=True)
        path = tmp_path / "killed.h5"
        _kill_parent_after(path, 3, *[a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))],
                           "--stages", "2", "--sync")
        result = resume(path, data=data, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "complete" and result.steps_done == 160
    (a, a_attrs), (b, b_attrs) = contents(path), contents(tmp_path / "reference.h5")
    assert sorted(a) == sorted(b) and a_attrs == b_attrs
    for name in a:
        assert a[name] == b[name], name
    with h5py.File(path, "r") as f:
        assert [step for step, _ in json.loads(f.attrs["resumed"])][0] % 20 == 0


def test_asynchronous_run_resumes_from_its_last_checkpoint(tmp_path, data, monkeypatch):
    """Not bit-identical (timing decides which targets arrive when), but every step, checkpoint and
    evaluation is there, the file is the interrupted run's up to the checkpoint, and it learns on."""
    config = small_config(rule="cdni", depth=4, width=32, steps=300, record_every=30, eval_every=150, stages=2)
    path = tmp_path / "async.h5"

    class StopAt131(Progress):  # a Ctrl-C in the parent while it records step 131
        def update(self, step, *args):
            if step == 131:
                raise KeyboardInterrupt
            super().update(step, *args)

    with monkeypatch.context() as patch:
        patch.setattr(launch, "Progress", StopAt131)
        with pytest.raises(KeyboardInterrupt):
            train(config, path, data=data, quiet=True)
    before = run_arrays(path)
    with RunFile(path) as run:
        assert run.status == "failed" and run.error == "stopped at step 131: KeyboardInterrupt"
    result = resume(path, data=data, quiet=True)
    assert result.status == "complete"
    m = run_arrays(path)
    np.testing.assert_array_equal(m["metrics/step"], np.arange(1, 301))
    np.testing.assert_array_equal(m["checkpoints/step"], np.arange(0, 301, 30))
    np.testing.assert_array_equal(m["eval/step"], [0, 150, 300])
    for name in m:  # up to the checkpoint it resumed from (step 120, the 5th), the file is as it was
        if name.startswith("params/"):
            np.testing.assert_array_equal(m[name][:5], before[name][:5], err_msg=name)
    assert np.abs(m["params/model.head.weight"][-1] - m["params/model.head.weight"][4]).max() > 0
    assert result.last_eval["test_acc"] > 0.5


def test_check_accepts_what_the_stages_can_run(data):
    rule, _ = built(small_config(rule="sg", depth=4, stages=2), data)
    check(rule)  # one module, true-gradient target: two stages
    assert [s.name for s in stages(rule)] == ["h1-h2", "h3-h4 and the head"]
