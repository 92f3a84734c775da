"""Ctrl-C (SIGINT) that takes effect between units of work, never inside one (a step, a file write)."""

from __future__ import annotations

import contextlib
import signal
import threading


class BetweenSteps:
    """Ctrl-C (SIGINT) during training takes effect between steps, never inside a step or a file write.

    A first SIGINT is noted and raised as ``KeyboardInterrupt`` at the next
    ``check()``; a second one raises at once. Only where Python's own handler
    is in place (in the main thread, not replaced by the caller or by an
    enclosing ``BetweenSteps``); elsewhere SIGINT keeps whatever it was.
    ``close()`` puts the handler back.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@contextlib.contextmanager
def whole():
    """Run the block whole: a first Ctrl-C during it is raised when it ends (a second one at once)."""
    guard = BetweenSteps()
    try:
        yield
    finally:
        guard.close()
    guard.check()
