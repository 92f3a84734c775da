"""A one-line progress display on a terminal; silent in a pipe or when quiet."""

from __future__ import annotations

import sys
import time


class Progress:
    """``Progress(total, label)``; ``update(done, note)`` redraws at most 10 times a second."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.total, self.label = total, label
        self.start = self._last = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(24 * frac)
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.label} [{bar:<24}] {done}/{self.total} {rate:.1f}/s {note}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
