"""Run independent tasks on a Dask cluster, or in this process, with one progress line for what runs at once.

``Executor(workers=N)`` starts a Dask ``LocalCluster`` of N worker processes
(one thread each, on the loopback interface, no dashboard) the first time it
has tasks to run, or in the background from ``start()``;
``Executor(scheduler=ADDRESS)`` uses an existing Dask cluster instead (see
the README for SLURM and PBS). With one worker and no scheduler the tasks run
here, one after another: a cluster would cost seconds to start and gain
nothing. The local workers are forked from a server process that imported
what the tasks need once (``TASK_MODULES``), not each afresh.

``Executor(...)`` itself refuses, with a ``UserError``: local workers that
would have less than ``WORKER_MEMORY`` each of the host's available memory; a
scheduler address that is not ``tcp://HOST:PORT`` (no other Dask protocol:
TLS, UCX and the others need settings this package does not take); and a
scheduler that cannot be reached within ``CONNECT_TIMEOUT_S``, or that takes
the connection but does not answer Dask's handshake within a quarter more
(Dask's client would wait on such a peer for ever).

Conventions:

- a task is a module-level function and its arguments, all picklable; it
  reads and writes files by absolute path (a remote worker has another
  working directory) and must be safe to run again after a worker died in it
  (Dask reschedules the tasks of a dead worker, up to its
  ``distributed.scheduler.allowed-failures``);
- every task runs single-threaded (torch, BLAS, OpenMP), wherever it runs, so
  its numbers do not depend on how many workers share a machine: results are
  identical for any number of workers. Use one worker per core;
- ``map`` returns the results in the order of its arguments, whatever order
  they finish in; a task that raises stops the batch (the others are
  cancelled) and the exception is raised here;
- ``concurrently`` runs several jobs that each ``map`` one batch after
  another (stages) at once, each in a thread of this process, so that the
  workers never wait for one job's stage to end; batches are served in the
  order they were submitted;
- the progress line (on a terminal, unless quiet) counts the tasks of the
  batches under way, done, running and failed (by the caller's ``failed``
  test on a result); the tasks' own progress displays are the caller's to
  turn off.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass

from repanalysis.errors import UserError
from repanalysis.runtime import memory
from repanalysis.runtime.progress import Progress

_STARTED = "repanalysis-task-started"  # the Dask event topic a worker logs each task's key under when it starts
#: The least of the host's available memory a local worker process is started with.
WORKER_MEMORY = 2**30
#: Seconds to reach a scheduler (``--scheduler``); its handshake may take a quarter more.
CONNECT_TIMEOUT_S = 20


@contextlib.contextmanager
def one_thread():
    """torch and BLAS use one thread each inside (restored after)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


_FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows

#: Dask settings of a local cluster: worker processes forked from a server that has imported what the tasks
#: need (``TASK_MODULES``), so each does not import them afresh; no statistical profiler (a sampling thread in
#: each worker); the event-loop, system and memory monitors polled every few seconds instead of 10-50 times a
#: second (on 2 cores their polling cost about 6% of a core per process while the tasks ran); not daemonic, so
#: that a task may start processes of its own (the stages of a ``stages > 1`` run).
LOCAL_CLUSTER = {
    "distributed.worker.multiprocessing-method": "forkserver" if _FORK_SERVER else "spawn",
    "distributed.worker.profile.enabled": False,
    "distributed.worker.daemon": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "2s",
}

#: What the tasks import (torch, h5py, scikit-learn, pandas, matplotlib and seaborn among them), imported once by
#: the fork server of a local cluster before it forks the workers: about 4 s of CPU time once instead of per worker.
TASK_MODULES = ["distributed", __name__, "repanalysis.experiments.sweep", "repanalysis.training.train", "repanalysis.datasets",
                "sklearn.datasets", "repanalysis.analysis.runs", "repanalysis.probes", "repanalysis.figures"]


def _preload_fork_server() -> None:
    """Have the fork server import ``TASK_MODULES`` (it starts with the first worker). Dask sets its own list
    once, the first time it asks for the forkserver context; ours replaces it (and includes ``distributed``)."""
    from distributed.utils import get_mp_context

    if not _FORK_SERVER:
        return
    get_mp_context()
    multiprocessing.get_context("forkserver").set_forkserver_preload(TASK_MODULES)


def _malloc_as_usual() -> None:
    """Undo, for this worker process, what Dask's ``MALLOC_TRIM_THRESHOLD_`` does to glibc's malloc.

    Any explicit malloc threshold turns off glibc's adaptive one, so every
    block over 128 KiB becomes a fresh ``mmap`` whose pages are zeroed anew:
    the analysis tasks took about 40% more CPU time so. Blocks up to 32 MiB
    come from the heap again, and the heap is trimmed only beyond 256 MiB.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 256 * 2**20)


def dask_setup(worker) -> None:
    """Dask's preload hook, run in each local worker process as it starts (a restarted one too).

    Ctrl-C reaches every process of the terminal's group; the local workers
    ignore it, so that only this process stops and closes the cluster (the
    runs under way stay resumable) and no worker prints a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C ignored inside (in the main thread; processes started inside inherit it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_task(fn, args):
    """On a worker: say that this task started, then run it single-threaded."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(_STARTED, str(worker.get_current_task()))
    _malloc_as_usual()
    with one_thread():
        return fn(*args)


@dataclass
class _Batch:
    """The counts of one ``map`` for the progress line."""

    label: str
    total: int
    done: int = 0
    running: int = 0
    failed: int = 0


class Executor:
    """Where tasks run: this process (``workers=1``), a local Dask cluster, or the one at ``scheduler``."""

    def __init__(self, workers: int = 1, scheduler: str | None = None):
        if workers < 1:
            raise UserError(f"an executor needs at least 1 worker, got {workers}")
        if scheduler is not None:
            _check_address(scheduler)
            _handshake(scheduler)
        elif workers > 1:
            _check_memory(workers)
        self.workers, self.scheduler = workers, scheduler
        self.client = self.cluster = None
        self._lock = threading.RLock()  # the connection, the batches under way and the progress line
        self._started: set[str] = set()  # keys of the tasks that started on a worker
        self._in_flight: set = set()  # futures of the batches under way, for cancel()
        self._cancelled = False
        self._line: Progress | None = None  # the progress line of the batches under way
        self._shown: list[_Batch] = []  # the batches counted on it (those that ended too, until it closes)
        self._under_way = 0
        self._starter: threading.Thread | None = None  # connecting in the background (``start``)
        self._start_error: BaseException | None = None

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and self.workers == 1

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"on {self.scheduler}"
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        if self.client is not None:
            self.client.unsubscribe_topic(_STARTED)
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            self._settings.__exit__(None, None, None)
        self.client = self.cluster = None

    def start(self) -> None:
        """Connect (start the local cluster) in a background thread, while this process goes on; the first
        batch waits for it. Nothing to do in this process."""
        if not self.in_process and self._starter is None:
            self._starter = threading.Thread(target=self._connect, kwargs={"in_background": True}, daemon=True)
            self._starter.start()

    def _connect(self, in_background: bool = False):
        with self._lock:
            if self._start_error is not None:
                raise self._start_error
            if self.client is None:
                try:
                    self.client = self._client()
                except BaseException as err:
                    if not in_background:
                        raise
                    self._start_error = err  # raised by the first batch
                    return None
                self.client.subscribe_topic(_STARTED, self._note_started)
            return self.client

    def _client(self):
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                return Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as err:
                raise UserError(f"cannot reach the Dask scheduler at {self.scheduler}: {err}") from None
        import dask

        # set while the cluster lives: a worker that died is forked again, by the same server
        self._settings = dask.config.set(LOCAL_CLUSTER)
        _preload_fork_server()
        with _sigint_ignored():
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                                        preload=[__name__])
        return Client(self.cluster)

    def _note_started(self, event) -> None:
        with self._lock:
            self._started.add(event[1])

    def map(self, fn, args: list[tuple], *, label: str, quiet: bool = False, retries: int = 0,
            failed=None) -> list:
        """``[fn(*a) for a in args]``, run as tasks; ``retries``: reruns of a task that raised;
        ``failed(result)``: whether a result counts as failed on the progress line."""
        if not args:
            return []
        if self._cancelled:
            raise CancelledError(f"{label}: not started, another job failed")
        batch = self._begin(label, len(args), quiet)
        try:
            if self.in_process:
                return self._here(fn, args, batch, failed)
            return self._on_cluster(fn, args, batch, retries, failed)
        finally:
            self._end()

    def _begin(self, label: str, total: int, quiet: bool) -> _Batch:
        """Count a new batch on the progress line (opened by the first of the batches under way, quiet or not)."""
        batch = _Batch(label, total)
        with self._lock:
            if self._line is None:
                self._line = Progress(0, "", quiet=quiet)
            self._shown.append(batch)
            self._under_way += 1
            self._line.total = sum(b.total for b in self._shown)
            self._line.label = f"{', '.join(dict.fromkeys(b.label for b in self._shown))} ({self.describe()})"
        return batch

    def _redraw(self) -> None:
        with self._lock:
            self._line.update(sum(b.done for b in self._shown), f"{sum(b.running for b in self._shown)} running, "
                                                                  f"{sum(b.failed for b in self._shown)} failed")

    def _end(self) -> None:
        with self._lock:
            self._redraw()
            self._under_way -= 1
            if not self._under_way:
                self._line.close()
                self._line, self._shown = None, []

    def _here(self, fn, args, batch: _Batch, failed) -> list:
        results = []
        with one_thread():
            for a in args:
                batch.running = 1
                self._redraw()
                results.append(fn(*a))
                batch.done, batch.running = batch.done + 1, 0
                batch.failed += bool(failed and failed(results[-1]))
        return results

    def _on_cluster(self, fn, args, batch: _Batch, retries: int, failed) -> list:
        from distributed import wait

        client = self._connect()
        futures = [client.submit(_run_task, fn, a, key=f"{batch.label}-{uuid.uuid4().hex}", retries=retries)
                   for a in args]  # named by batch in Dask's task stream and dashboard
        with self._lock:
            self._in_flight.update(futures)
        keys = {str(f.key) for f in futures}
        results: dict[str, object] = {}
        try:
            pending = set(futures)
            while pending:
                try:
                    finished, pending = wait(pending, timeout=0.5 if self._line.enabled else None,
                                             return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished: redraw the line (tasks may have started)
                    finished = set()
                for f in finished:
                    results[str(f.key)] = f.result()  # raises the task's exception
                    batch.failed += bool(failed and failed(results[str(f.key)]))
                with self._lock:
                    batch.done, batch.running = len(results), len((self._started & keys) - set(results))
                self._redraw()
        finally:
            with self._lock:
                self._in_flight.difference_update(futures)
                self._started -= keys
            client.cancel([f for f in futures if not f.done()])
        return [results[str(f.key)] for f in futures]

    def cancel(self) -> None:
        """Cancel the tasks under way (their ``map`` raises) and refuse new batches until the jobs of
        ``concurrently`` have ended."""
        with self._lock:
            self._cancelled = True
            futures = list(self._in_flight)
        if self.client is not None and futures:  # not under the lock: Dask's thread takes it (_note_started)
            self.client.cancel(futures)

    def concurrently(self, jobs: list) -> list:
        """``[job() for job in jobs]``, for jobs (functions of no arguments) that give this executor their tasks.

        On a cluster the jobs run at once, each in a thread of this process: while one waits for the last tasks
        of a batch or computes here, the tasks of the others keep the workers busy. In this process they run one
        after another. A job that raises cancels the others' tasks; the first exception is raised here.
        """
        if self.in_process or len(jobs) < 2:
            return [job() for job in jobs]
        results, errors = [None] * len(jobs), []

        def run(i: int, job) -> None:
            try:
                results[i] = job()
            except BaseException as err:  # noqa: BLE001 (raised in the calling thread below)
                errors.append(err)
                self.cancel()

        threads = [threading.Thread(target=run, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C here: stop the jobs' tasks (the threads end with them)
            self.cancel()
            raise
        self._cancelled = False
        if errors:
            raise errors[0]  # the first failure; the others' errors are their cancellation
        return results


def most_workers(have: int | None = None) -> int:
    """The most local workers that ``have`` bytes (default: the host's available memory) give
    ``WORKER_MEMORY`` each; at least 1."""
    return max(1, (memory.available() if have is None else have) // WORKER_MEMORY)


def _check_memory(workers: int) -> None:
    have = memory.available()
    if have < workers * WORKER_MEMORY:
        most = most_workers(have)
        raise UserError(f"--workers {workers}: the host has {have / 2**30:,.1f} GiB of memory available, less than "
                        f"{WORKER_MEMORY / 2**30:g} GiB per worker; use --workers {most}"
                        + (" or fewer" if most > 1 else " (no Dask workers: the tasks run in this process)"))


def _check_address(address: str) -> None:
    """Refuse an address other than ``[tcp://]HOST:PORT`` (see the module docstring)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tcp":
        raise UserError(f"--scheduler {address}: the {scheme}:// protocol is not supported; give the scheduler's "
                        "tcp://HOST:PORT address")
    try:
        port = parse_host_port(location)[1]
    except ValueError:
        port = -1
    if not 0 < port < 2**16:
        raise UserError(f"--scheduler {address}: not a HOST:PORT address (e.g. tcp://10.0.0.5:8786)")


def _handshake(address: str) -> None:
    """Connect to the scheduler at ``address`` and exchange Dask's handshake, or raise a ``UserError`` naming
    the address: Dask's ``connect`` gives up reaching it after ``CONNECT_TIMEOUT_S``, but would then wait for
    a silent peer's handshake for ever, so the whole is given a quarter more."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect

    async def greet() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        await comm.close()

    limit = 1.25 * CONNECT_TIMEOUT_S
    try:
        with ThreadPoolExecutor(1) as pool:  # an event loop of its own, even beside a running one (a notebook's)
            pool.submit(asyncio.run, asyncio.wait_for(greet(), limit)).result()
    except TimeoutError:
        raise UserError(f"the Dask scheduler at {address} took the connection but did not answer within "
                        f"{limit:g} s (is a Dask scheduler listening there?)") from None
    except OSError as err:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {err}") from None


def _worker_count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of workers of at least 1, got {text!r}")
    return value


def add_options(parser, per_core: bool = False) -> None:
    """``--workers`` (default 1, or ``default_workers()`` with ``per_core``) and ``--scheduler`` on a command's
    parser."""
    default = default_workers() if per_core else 1
    parser.add_argument("--workers", type=_worker_count, default=default, help=(
        "worker processes of a local Dask cluster, each running whole tasks and given at least 1 GiB of memory; "
        f"1 runs in this process (default {'one per CPU core, as memory allows, here ' if per_core else ''}"
        f"{default})"))
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at this address "
                        "(e.g. tcp://host:8786) instead of local workers")


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Local workers when none are asked for: one per core, as far as the memory goes (``most_workers``)."""
    return min(cores(), most_workers())
