"""Fixtures shared by every test module, and a guard that a finished test run also ends."""

from __future__ import annotations

import faulthandler

import pytest
import torch

from repanalysis.datasets import load

EXIT_GRACE_S = 120


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Torch on one thread for the whole test run, fixtures of every scope included (as in the subprocesses
    that some tests start; small models run many times slower on threads of a busy machine), then as it was.
    A test that needs another count sets it and puts it back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as ``repanalysis.datasets.load`` gives it (loaded once per test module)."""
    return load("digits")


def pytest_unconfigure(config):
    """If the interpreter has not exited ``EXIT_GRACE_S`` after the test run (a thread or child process joined
    at exit that never ends), print every thread's stack and exit with status 1 rather than hang CI."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
