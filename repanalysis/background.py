"""``Background``: jobs run one after another, in the order given, on one worker thread.

The recorder hands it each checkpoint's file write, so that training goes on
while h5py compresses and writes (h5py releases the GIL inside HDF5's dataset
calls). At most ``depth`` jobs wait besides the one running: ``submit`` blocks
until there is room, which bounds the memory the waiting snapshots hold.

The first job that raises stops the work: later jobs are dropped, and the
error is raised in the submitting thread by the next ``submit``, ``drain`` or
``stop`` (once; ``error`` keeps it). A job must not submit jobs itself.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Callable

_STOP = object()


class Background:
    """One worker thread running submitted jobs in order (module docstring)."""

    def __init__(self, name: str, depth: int = 1):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        # a program that ends without stop() still gets its waiting jobs written, as it would without a thread
        atexit.register(self.stop)

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
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run; raise a failed job's error."""
        self._jobs.join()
        self._raise()

    def stop(self) -> None:
        """Run every submitted job, end the thread; raise a failed job's error (if not raised before)."""
        if not self._stopped:
            self._stopped = True
            atexit.unregister(self.stop)
            self._jobs.put(_STOP)
            self._thread.join()
        self._raise()
