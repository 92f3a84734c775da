"""Sweeps and analyses on the executor: a local Dask cluster of 2 worker processes gives the same run files
and tables as one process; a killed worker or sweep loses nothing."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest

from repanalysis.analysis.runs import analyze
from repanalysis.cli import main
from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.experiments import load_spec
from repanalysis.experiments.reproduce import reproduce
from repanalysis.experiments.sweep import file_state, sweep
from repanalysis.measures import RepanalysisWarning
from repanalysis.probes import probe_runs
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime import executor, memory
from repanalysis.runtime.executor import Executor
from repanalysis.training.train import train

pytestmark = pytest.mark.filterwarnings(f"ignore::{RepanalysisWarning.__module__}.{RepanalysisWarning.__name__}")

SPEC = """
name = "tiny"
description = "Two rules, two seeds, a small net on digits: long enough to be killed mid-run."
dataset = "digits"
seeds = 2

[experiments.grid]
description = "backprop and sg"
tables = ["analysis", "probes"]
settings = { model = "mlp", width = 16, steps = 240, batch_size = 32, record_every = 40, eval_every = 40, probe_size = 60 }
grid = { rule = ["backprop", "sg"], depth = [2] }
"""


def contents(path) -> dict:
    """Every dataset of a run file: dtype, shape and raw bytes."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: arrays.__setitem__(name, (o.dtype, o.shape, o[()].tobytes()))
                     if isinstance(o, h5py.Dataset) else None)
    return arrays


def assert_same_runs(folder, reference) -> None:
    names = sorted(p.name for p in (reference / "runs").glob("*.h5"))
    assert names == sorted(p.name for p in (folder / "runs").glob("*.h5")) and len(names) == 4
    for name in names:
        with RunFile(folder / "runs" / name) as run:
            assert run.status == "complete"
        assert contents(folder / "runs" / name) == contents(reference / "runs" / name), name


def tables(folder, executor, monkeypatch) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The analysis and probe tables of the runs in ``folder``, named relative to it."""
    monkeypatch.chdir(folder)
    files = sorted(f"runs/{p.name}" for p in (folder / "runs").glob("*.h5"))
    return (analyze(files, quiet=True, executor=executor),
            probe_runs(files, checkpoints="last", folds=3, quiet=True, executor=executor))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(SPEC)
    return load_spec(path)


@pytest.fixture(scope="module")
def serial(spec, tmp_path_factory):
    """The sweep and its tables in this process (one worker)."""
    out = tmp_path_factory.mktemp("serial")
    done = sweep(out, spec=spec, executor=Executor(1), quiet=True)
    assert {what for what, _ in done.values()} == {"trained"}
    with pytest.MonkeyPatch.context() as mp:
        return out, tables(out, None, mp)


def _running(folder) -> list:
    """Run files being written that already hold a checkpoint after step 0 (so a resume state)."""
    found = []
    for path in (folder / "runs").glob("*.h5"):
        try:
            with h5py.File(path, "r", locking=False) as f:
                if f.attrs["status"] == "running" and len(f["checkpoints/step"]) >= 2:
                    found.append(path)
        except (OSError, KeyError, RuntimeError):  # not yet created, or read during a flush
            pass
    return found


def _status(path: Path) -> str:
    with h5py.File(path, "r", locking=False) as f:
        return str(f.attrs["status"])


def _wait_for(predicate, timeout: float = 120.0):
    start = time.monotonic()
    while not (value := predicate()):
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.005)
    return value


def test_two_workers_one_killed_mid_run_write_the_same_runs_and_tables(spec, serial, tmp_path, monkeypatch):
    """The sweep on 2 workers, both killed once mid-run: Dask reruns their tasks, which resume the runs."""
    reference, (analysis, probes) = serial
    result = {}
    with Executor(2) as cluster:
        thread = threading.Thread(target=lambda: result.update(sweep(tmp_path, spec=spec, executor=cluster,
                                                                      quiet=True)))
        thread.start()
        killed = _wait_for(lambda: _running(tmp_path))
        assert len(cluster.client.scheduler_info()["workers"]) == 2
        for pid in cluster.client.run(os.getpid).values():
            os.kill(pid, signal.SIGKILL)
        # a run seen running may have ended before the kill reached its worker; the restarted workers take
        # seconds to start, so what is still "running" now was cut by the kill
        killed = [path for path in killed if _status(path) == "running"]
        assert killed
        thread.join(timeout=180)
        assert not thread.is_alive() and {error for _, error in result.values()} == {None}
        assert_same_runs(tmp_path, reference)
        for path in killed:
            with RunFile(path) as run:
                assert "resumed" in run.file.attrs  # continued from its checkpoint, not trained again
        with Executor(scheduler=cluster.cluster.scheduler_address) as existing:  # a cluster given by address
            analysis_2, probes_2 = tables(tmp_path, existing, monkeypatch)
    assert len(analysis) > 100 and len(probes) == 4 * 2 * 2  # runs x layers x probes
    pd.testing.assert_frame_equal(analysis_2, analysis)
    pd.testing.assert_frame_equal(probes_2, probes)


def test_rerunning_a_killed_sweep_does_only_what_is_missing(spec, serial, tmp_path):
    reference, _ = serial
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(SPEC)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "repanalysis.cli", "sweep", "--spec", str(spec_file), "--out",
                                str(out), "--workers", "1", "--quiet"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (out / "runs").is_dir() and _running(out) and len(list((out / "runs").glob("*.h5"))) >= 2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = sweep(out, spec=spec, executor=Executor(1), quiet=True)
    assert sorted(what for what, _ in done.values()).count("resumed") == 1
    assert "kept" in {what for what, _ in done.values()}
    assert_same_runs(out, reference)


def test_the_file_decides_what_a_task_does(tmp_path):
    config = TrainConfig(depth=2, width=8, steps=4, record_every=2, eval_every=2, probe_size=20).resolved()
    path = tmp_path / "run.h5"
    assert file_state(path, config) == "train"
    path.write_bytes(b"not a run file")
    assert file_state(path, config) == "train"
    train(config, path, overwrite=True, quiet=True)
    assert file_state(path, config) == "keep"
    assert file_state(path, TrainConfig(depth=2, width=8, steps=6, probe_size=20).resolved()) == "train"
    with h5py.File(path, "a") as f:
        f.attrs.update(status="failed", error="stopped at step 3: KeyboardInterrupt")
    assert file_state(path, config) == "resume"
    with h5py.File(path, "a") as f:
        f.attrs.update(error="the training loss became non-finite at step 3; the run stopped there")
    assert file_state(path, config) == "train"  # it would fail again if resumed


TWO_EXPERIMENTS = """
name = "two"
description = "Two experiments that overlap on a cluster: their chains of stages run at once."
dataset = "digits"
seeds = 2

[experiments.first]
description = "backprop and sg, analysed and probed"
tables = ["analysis", "probes"]
figures = ["tables"]
settings = { model = "mlp", width = 12, steps = 60, batch_size = 32, record_every = 30, eval_every = 30, probe_size = 50 }
grid = { rule = ["backprop", "sg"], depth = [2] }

[experiments.second]
description = "backprop and dfa on regression"
tables = ["analysis"]
settings = { dataset = "nonlinear-regression-2d", model = "mlp", depth = 2, width = 12, steps = 60, batch_size = 32, record_every = 30, eval_every = 30, probe_size = 50 }
grid = { rule = ["backprop", "dfa"] }
"""


def _fail(message):
    raise UserError(message)


def test_experiments_overlapped_on_two_workers_write_the_tables_of_one_process(tmp_path):
    """On a cluster the experiments' chains (train, tables, claims, figures) run at once; the tables are
    those of one process, byte for byte; a job that fails stops the others and its error is raised."""
    spec_file = tmp_path / "two.toml"
    spec_file.write_text(TWO_EXPERIMENTS)
    spec = load_spec(spec_file)
    reproduce(tmp_path / "one", spec=spec, executor=Executor(1), quiet=True)
    with Executor(2) as two:
        reproduce(tmp_path / "two", spec=spec, executor=two, quiet=True)
        with pytest.raises(UserError, match="no such thing"):
            two.concurrently([lambda: two.map(time.sleep, [(2,)] * 4, label="sleep", quiet=True),
                              lambda: two.map(_fail, [("no such thing",)], label="fail", quiet=True)])
        assert two.concurrently([lambda: two.map(_square, [(2,), (3,)], label="a"), lambda: 7]) == [[4, 9], 7]
    names = sorted(p.name for p in (tmp_path / "one" / "tables").glob("*.csv"))
    assert names == sorted(p.name for p in (tmp_path / "two" / "tables").glob("*.csv")) and len(names) == 5
    for name in names:
        one = (tmp_path / "one" / "tables" / name).read_text().replace(str(tmp_path / "one"), "")
        assert one == (tmp_path / "two" / "tables" / name).read_text().replace(str(tmp_path / "two"), ""), name


def _square(x):
    return x * x


def test_in_process_map_keeps_order_and_counts_failures(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Executor(1).map(_square, [(3,), (-2,), (5,)], label="squares", failed=lambda r: r < 5) == [9, 4, 25]
    line = sys.stderr.getvalue().split("\r")[-1]
    assert line.startswith("squares (1 worker)") and "3/3" in line and "0 running, 1 failed" in line


def test_bad_worker_counts_and_schedulers_are_one_line_errors(tmp_path, capsys):
    assert main(["sweep", "--quick", "--workers", "0", "--out", str(tmp_path / "a")]) == 2
    assert "argument --workers: expected a number of workers of at least 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["analyze", "x.h5", "--workers", "two", "--out", str(tmp_path / "b.csv")]) == 2
    assert "got 'two'" in capsys.readouterr().err


@pytest.mark.parametrize("address, message", [
    ("ucx://127.0.0.1:8786", "--scheduler ucx://127.0.0.1:8786: the ucx:// protocol is not supported; give the "
                             "scheduler's tcp://HOST:PORT address"),
    ("tls://127.0.0.1:8786", "--scheduler tls://127.0.0.1:8786: the tls:// protocol is not supported"),
    ("tcp://127.0.0.1", "--scheduler tcp://127.0.0.1: not a HOST:PORT address (e.g. tcp://10.0.0.5:8786)"),
    ("127.0.0.1:99999", "--scheduler 127.0.0.1:99999: not a HOST:PORT address"),
])
def test_scheduler_addresses_other_than_tcp_host_port_are_refused_at_once(tmp_path, capsys, address, message):
    started = time.monotonic()
    assert main(["sweep", "--quick", "--scheduler", address, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"repanalysis: error: {message}") and err.count("\n") == 1, err
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()


def test_a_scheduler_that_takes_the_connection_and_never_answers_is_refused_naming_it(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setattr(executor, "CONNECT_TIMEOUT_S", 0.8)
    with socket.create_server(("127.0.0.1", 0)) as server:
        taken = []
        threading.Thread(target=lambda: taken.append(server.accept()), daemon=True).start()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        assert main(["sweep", "--quick", "--scheduler", address, "--out", str(tmp_path / "out")]) == 2
        assert time.monotonic() - started < 5 and taken
    assert capsys.readouterr().err == (f"repanalysis: error: the Dask scheduler at {address} took the connection "
                                       "but did not answer within 1 s (is a Dask scheduler listening there?)\n")
    assert not (tmp_path / "out").exists()
    assert main(["sweep", "--quick", "--scheduler", address, "--out", str(tmp_path / "out")]) == 2  # now closed
    assert capsys.readouterr().err == (f"repanalysis: error: cannot reach the Dask scheduler at {address}: Timed out "
                                       f"trying to connect to {address} after 0.8 s\n")


def test_a_scheduler_at_a_tcp_address_is_connected():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        with Executor(scheduler=cluster.scheduler_address) as remote:
            assert remote.map(_square, [(3,), (4,)], label="squares", quiet=True) == [9, 16]


def test_local_workers_are_refused_below_a_gib_of_memory_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device=None: int(3.5 * 2**30))
    assert main(["sweep", "--quick", "--workers", "4", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("repanalysis: error: --workers 4: the host has 3.5 GiB of memory available, "
                                       "less than 1 GiB per worker; use --workers 3 or fewer\n")
    assert not (tmp_path / "out").exists()
    with Executor(3) as accepted:  # no cluster is started before there are tasks
        assert accepted.workers == 3
    assert executor.default_workers() == min(executor.cores(), 3)
    monkeypatch.setattr(memory, "available", lambda device=None: 2**29)
    with pytest.raises(UserError, match=r"^--workers 2: the host has 0.5 GiB .*; use --workers 1 \(no Dask workers"):
        Executor(2)
    assert Executor(1).in_process and executor.default_workers() == 1
