"""Run independent tasks on a Dask cluster, or in this process, with one progress line for the whole batch.

``Executor(workers=N)`` starts a Dask ``LocalCluster`` of N worker processes
(one thread each, on the loopback interface, no dashboard) the first time it
has tasks to run; ``Executor(scheduler=ADDRESS)`` uses an existing Dask
cluster instead (see the README for SLURM and PBS). With one worker and no
scheduler the tasks run here, one after another: a cluster would cost seconds
to start (its worker processes import torch afresh) and gain nothing.

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
- the progress line (on a terminal, unless quiet) counts tasks done, running
  and failed (by the caller's ``failed`` test on a result); the tasks' own
  progress displays are the caller's to turn off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from .errors import UserError
from .progress import Progress

_STARTED = "repanalysis-task-started"  # the Dask event topic a worker logs each task's key under when it starts


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


#: Dask settings of the local workers: no statistical profiler (a sampling thread in each worker);
#: not daemonic, so that a task may start processes of its own (the stages of a ``stages > 1`` run).
LOCAL_WORKERS = {"distributed.worker.profile.enabled": False, "distributed.worker.daemon": False}


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


class Executor:
    """Where tasks run: this process (``workers=1``), a local Dask cluster, or the one at ``scheduler``."""

    def __init__(self, workers: int = 1, scheduler: str | None = None):
        if workers < 1:
            raise UserError(f"an executor needs at least 1 worker, got {workers}")
        self.workers, self.scheduler = workers, scheduler
        self.client = self.cluster = None

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
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def _connect(self):
        if self.client is not None:
            return self.client
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as err:
                raise UserError(f"cannot reach the Dask scheduler at {self.scheduler}: {err}") from None
        else:
            import dask

            with _sigint_ignored(), dask.config.set(LOCAL_WORKERS):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                                            preload=[__name__])
            self.client = Client(self.cluster)
        return self.client

    def map(self, fn, args: list[tuple], *, label: str, quiet: bool = False, retries: int = 0,
            failed=None) -> list:
        """``[fn(*a) for a in args]``, run as tasks; ``retries``: reruns of a task that raised;
        ``failed(result)``: whether a result counts as failed on the progress line."""
        if not args:
            return []
        progress = Progress(len(args), f"{label} ({self.describe()})", quiet=quiet)
        try:
            if self.in_process:
                return self._here(fn, args, progress, failed)
            return self._on_cluster(fn, args, progress, retries, failed)
        finally:
            progress.close()

    @staticmethod
    def _here(fn, args, progress: Progress, failed) -> list:
        results, n_failed = [], 0
        with one_thread():
            for a in args:
                progress.update(len(results), f"1 running, {n_failed} failed")
                results.append(fn(*a))
                n_failed += bool(failed and failed(results[-1]))
        progress.update(len(results), f"0 running, {n_failed} failed")
        return results

    def _on_cluster(self, fn, args, progress: Progress, retries: int, failed) -> list:
        from distributed import wait

        client = self._connect()
        started, lock = set(), threading.Lock()

        def note(event) -> None:
            with lock:
                started.add(event[1])

        client.subscribe_topic(_STARTED, note)
        futures = [client.submit(_run_task, fn, a, pure=False, retries=retries) for a in args]
        keys = {str(f.key) for f in futures}
        results: dict[str, object] = {}
        n_failed = 0
        try:
            pending = set(futures)
            while pending:
                try:
                    finished, pending = wait(pending, timeout=0.5 if progress.enabled else None,
                                             return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished: redraw the line (tasks may have started)
                    finished = set()
                for f in finished:
                    results[str(f.key)] = f.result()  # raises the task's exception
                    n_failed += bool(failed and failed(results[str(f.key)]))
                with lock:
                    running = len((started & keys) - set(results))
                progress.update(len(results), f"{running} running, {n_failed} failed")
        finally:
            client.cancel([f for f in futures if not f.done()])
            client.unsubscribe_topic(_STARTED)
        return [results[str(f.key)] for f in futures]


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
    """``--workers`` (default 1, or one per core with ``per_core``) and ``--scheduler`` on a command's parser."""
    default = cores() if per_core else 1
    parser.add_argument("--workers", type=_worker_count, default=default, help=(
        "worker processes of a local Dask cluster, each running whole tasks; 1 runs in this process "
        f"(default {'one per CPU core, here ' if per_core else ''}{default}); not train's --workers "
        "(pipeline stages of one network)"))
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at this address "
                        "(e.g. tcp://host:8786) instead of local workers")


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
