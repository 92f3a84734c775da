"""Session-wide guard: a test run that has finished must also end."""

from __future__ import annotations

import faulthandler

EXIT_GRACE_S = 120


def pytest_unconfigure(config):
    """If the interpreter has not exited ``EXIT_GRACE_S`` after the session (a thread or child process joined
    at exit that never ends), print every thread's stack and exit with status 1 rather than hang CI."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
