"""``Background``: jobs run one after another, in the order given, on one worker thread (or at once).

The recorder hands it each checkpoint's file write, so that training goes on
while h5py writes (h5py releases the GIL inside HDF5's dataset
calls: a Python loop kept its full speed beside a thread writing LZF datasets,
measured). At most ``depth`` jobs wait besides the one running: ``submit``
blocks until there is room, which bounds the memory the waiting snapshots hold.

The thread pays only where it has a core to itself (``thread_pays``): with
torch's threads on every core it competes with them, and a CPU run slows down
more than the write costs (6 x 256 MNIST recording on 2 cores and 2 torch
threads: 1.09-1.15x with the thread, 1.05-1.06x writing in the training
thread). ``threaded=False`` runs each job in ``submit``, with the same
semantics otherwise.

The first job that raises stops the work: later jobs are dropped, and the
error is raised in the submitting thread by the next ``submit``, ``drain`` or
``stop`` (once; ``error`` keeps it); a job run at once raises from ``submit``
itself. A job must not submit jobs itself.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from typing import Callable

import torch

_STOP = object()


def thread_pays(device: torch.device) -> bool:
    """Whether a writer thread has a core to itself: on a CUDA device (the host waits on it), or where
    torch's intra-op threads leave a core of this process's CPUs free."""
    if device.type == "cuda":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores > torch.get_num_threads()


class Background:
    """One worker thread running submitted jobs in order, or (``threaded=False``) none (module docstring)."""

    def __init__(self, name: str, depth: int = 1, threaded: bool = True):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._stopped = False
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()
            # a program that ends without stop() still gets its waiting jobs written, as it would without a thread
            atexit.register(self.stop)

    @property
    def threaded(self) -> bool:
        """Whether jobs run later, on the worker thread (else at once, in ``submit``)."""
        return self._thread is not None

    @property
    def error(self) -> BaseException | None:
        """What the first failed job raised (None while none has)."""
        return self._error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:
                    job()
            except BaseException as err:  # kept for the submitting thread
                self._error = err
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waiting while ``depth`` jobs wait already); raise a failed job's error first."""
        self._raise()
        if self._stopped:
            raise RuntimeError("the background writer was stopped")
        if self._thread is None:
            if self._error is not None:  # dropped, as behind a failure in the thread
                return
            try:
                job()
            except BaseException as err:
                self._error, self._reported = err, True
                raise
            return
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; raise a failed job's error."""
        self._jobs.join()
        self._raise()

    def stop(self) -> None:
        """Run every submitted job, end the thread; raise a failed job's error (if not raised before)."""
        if not self._stopped:
            self._stopped = True
            if self._thread is not None:
                atexit.unregister(self.stop)
                self._jobs.put(_STOP)
                self._thread.join()
        self._raise()
