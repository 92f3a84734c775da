"""Atomic downloads from a list of mirrors."""

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from http.client import HTTPException
from pathlib import Path

from repanalysis.errors import UserError

TIMEOUT_S = 20.0
"""Seconds to wait for a connection or for the next bytes of a response."""

log = logging.getLogger(__name__)


class DownloadError(Exception):
    """No URL gave an acceptable file; the message is the last failure, on one line."""


def fetch(
    urls: Sequence[str], dest: Path, check: Callable[[Path], None], *, timeout: float = TIMEOUT_S
) -> str:
    """Download the first of ``urls`` whose content passes ``check`` to ``dest``; return that URL.

    Each attempt writes to a temporary file beside ``dest`` (``.<name>.*.part``),
    flushes and fsyncs it, calls ``check(temp_path)`` (which raises
    ``UserError`` to reject it), and only then renames it to ``dest`` with
    ``os.replace``, so ``dest`` is never half-written. A failed or rejected
    attempt's temporary file is deleted and the next URL tried. The directory
    of ``dest`` must exist; errors creating the temporary file propagate.
    """
    last_error = "no URL to try"
    for url in urls:
        fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            try:
                log.info("downloading %s", url)
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out)
                    out.flush()
                    os.fsync(out.fileno())
                check(Path(temp))
            except (OSError, HTTPException, UserError) as err:
                last_error = " ".join(f"{url}: {err}".split())
                log.info("download failed: %s", last_error)
                continue
            os.replace(temp, dest)
            _fsync_directory(dest.parent)
            return url
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    raise DownloadError(last_error)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

