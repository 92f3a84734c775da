"""Output files and folders: refuse early, never lose a file, never leave a half-written one.

Every command checks its output *before* any work (``check_file`` for a file,
``check_folder`` for a folder), and writes files through ``write_atomically``:
a temporary file in the same folder, renamed over the target only once it is
complete, so an existing file is either kept whole or replaced whole. Files
get the mode a plain ``open`` would give them (``0o666`` less the umask).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def _writable_folder(folder: Path) -> None:
    """Refuse unless a file can be created in the existing folder ``folder`` (tried, not guessed)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".repanalysis-write-check-")
    except OSError as err:
        raise UserError(f"cannot write into the folder {folder}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)


def check_file(path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse an output file that would be lost or cannot be written, before any work is done."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{option} {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    parent = out.parent
    if not parent.is_dir():
        raise UserError(f"the folder {parent} does not exist (for {option} {out})")
    _writable_folder(parent)
    return out


def check_folder(path, option: str = "--out") -> Path:
    """Create the output folder ``path`` if needed and refuse it unless files can be written in it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {out}: {err.strerror or err}") from None
    _writable_folder(out)
    return out


def temporary_beside(path) -> Path:
    """A new, empty, uniquely named file in ``path``'s folder, with a plain file's mode."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_atomically(path, write, text: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``OSError`` (a full disk, a vanished folder) becomes a ``UserError``; the
    temporary file never outlives the call, and ``path`` is untouched on failure.
    """
    out = check_file(path, overwrite=True)
    try:
        tmp = temporary_beside(out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    try:
        with open(tmp, "w" if text else "wb", newline="" if text else None) as f:
            write(f)
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
