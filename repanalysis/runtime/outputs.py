"""Output files and folders: refuse early, never lose a file, never leave a half-written one.

Every command checks its output *before* any work (``check_file`` for a file,
``check_folder`` for a folder, ``check_files_in_folder`` for the files a
command will write into a folder, which ``new_folder`` then makes and removes
again if the work fails), and writes files through ``write_atomically``:
a temporary file in the same folder, renamed over the target only once it is
complete, so an existing file is either kept whole or replaced whole. Files
get the mode a plain ``open`` would give them (``0o666`` less the umask).
Names that come from a file a user was given (a spec's experiment names,
say) become file names only through ``safe_name``, so that they stay inside
the output folder.

One writer at a time: a run file, or an output folder that is a command's
state (``reproduce``, ``sweep``), is held by ``Lock`` while it is written, and
a second writer is refused with the first one's process, host and command.
The lock is ``flock`` on a small file (``.<name>.lock`` beside a run file,
``.repanalysis.lock`` in a folder), removed when the writer ends and
harmless when left by a killed one; on a file system without locks the
writer goes on unlocked. A folder that ``reproduce`` or ``sweep`` made holds
``MARK``; they refuse to write into any other folder that is not empty,
unless told to overwrite.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from repanalysis.errors import UserError

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_SAFE_PART = re.compile(r"[A-Za-z0-9_.+-]+")


def safe_name(name, what: str, part: bool = False) -> str:
    """``name`` (as text) if it can be a file name inside an output folder: letters, digits, ``_``, ``-``,
    ``+`` and ``.``, not starting with ``.`` or ``-`` (unless it is only ``part`` of a name), without ``..``;
    else a ``UserError`` that names ``what`` it is."""
    text = str(name)
    if not (_SAFE_PART if part else _SAFE_NAME).fullmatch(text) or ".." in text:
        first = "" if part else " ('.' and '-' not first)"
        raise UserError(f"{what} {text!r} cannot be {'part of ' if part else ''}a file name: use letters, digits, "
                        f"'_', '-', '+' and '.'{first}, without '..' or path separators")
    return text


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


def check_files_in_folder(path, names, overwrite: bool, option: str = "--out") -> Path:
    """Refuse, before any work and creating nothing, the output folder ``path`` for the files ``names``: a
    file in its place, any of ``names`` already in it (unless ``overwrite``), or a folder that cannot be
    written in (or, where it does not exist yet, made in its nearest existing parent)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a folder")
    if out.is_dir():
        existing = [name for name in names if (out / name).exists()]
        if existing and not overwrite:
            more = f" (and {len(existing) - 1} more of the files to write)" if len(existing) > 1 else ""
            raise UserError(f"{out / existing[0]} exists{more}; pass --overwrite to replace them")
        _writable_folder(out)
        return out
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the folder {out}: {parent} is not a folder")
    _writable_folder(parent)
    return out


@contextlib.contextmanager
def new_folder(path):
    """Make the folder ``path`` (and its missing parents) for the work of a with-block; if the block raises,
    remove the folders it made, those still empty, so that a failed command leaves nothing behind."""
    out = Path(path)
    made, missing = [], out
    while not missing.exists() and missing != missing.parent:
        made.append(missing)
        missing = missing.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {out}: {err.strerror or err}") from None
    try:
        yield out
    except BaseException:
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_inputs(inputs, out, option: str = "--out") -> None:
    """Refuse an input given twice (its rows would count twice) and an output that is one of the inputs; paths
    are compared resolved (``./a.h5`` is ``a.h5``, a symbolic link is its target)."""
    seen: dict[Path, str] = {}
    for given in map(str, inputs):
        key = Path(given).resolve()
        if key in seen:
            raise UserError(f"the input {key} is given twice (as {seen[key]} and {given}); give each file once")
        seen[key] = given
    target = Path(out).resolve()
    if target in seen:
        raise UserError(f"{option} {out} is one of the inputs ({seen[target]}); write the output to another path")


#: The file that marks a folder made by ``reproduce`` or ``sweep`` (their state).
MARK = ".repanalysis"
_MARK_TEXT = "an output folder of repanalysis reproduce/sweep: its runs/ and tables/ are their state\n"
#: Files of an older reproduction's folder that mark it as one too.
_OLD_MARKS = (".reproduce.json",)


def check_state_folder(path, overwrite: bool, option: str = "--out") -> Path:
    """``check_folder`` for a folder that a command keeps its state in: refused if it holds anything but was
    not made by ``reproduce`` or ``sweep`` (``MARK``), unless ``overwrite``; marked as made by them."""
    out = Path(path)
    if out.is_dir() and not overwrite and not any((out / m).exists() for m in (MARK,) + _OLD_MARKS):
        if any(out.iterdir()):
            raise UserError(f"{option} {out} is a folder that reproduce or sweep did not make, and not empty; give "
                            "a new or empty folder, or pass --overwrite to write (and replace files) in it")
    out = check_folder(out, option)
    if not (out / MARK).exists():
        (out / MARK).write_text(_MARK_TEXT)
    return out


def _holder() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"process {os.getpid()} on {socket.gethostname()}, since {started}: {' '.join(sys.argv)}"[:2000]


class Lock:
    """An exclusive lock on the output ``what`` (a run file, or a folder), through the lock file ``path``.

    ``acquire`` refuses with a ``UserError`` naming the holder when another
    process holds it; ``release`` removes the lock file. A context manager.
    """

    def __init__(self, path, what):
        self.path, self.what, self._fd = Path(path), what, None

    def acquire(self) -> "Lock":
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise UserError(f"cannot write into the folder {self.path.parent}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that has not said"
                os.close(fd)
                raise UserError(f"{self.what} is being written by another {holder}; wait until it ends, or write "
                                "elsewhere") from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                break  # a file system without locks: go on unlocked
            # the lock file may have been removed by its last holder between our open and our lock: retry
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, _holder().encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_lock(folder) -> Lock:
    """The lock of a folder that a command keeps its state in (``reproduce``, ``sweep``)."""
    return Lock(Path(folder) / ".repanalysis.lock", f"the folder {folder}")


def file_lock(path) -> Lock:
    """The lock of an output file written over a long time (a run file): ``.<name>.lock`` beside it."""
    path = Path(path)
    return Lock(path.with_name(f".{path.name}.lock"), str(path))


def temporary_beside(path) -> Path:
    """A new, empty, uniquely named file in ``path``'s folder, with a plain file's mode."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_failure(path, err: OSError) -> str:
    """Why writing ``path`` failed, in words; for a full disk (or quota) with the space left in its folder."""
    lines = str(err.strerror or err).strip().splitlines()
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return lines[0] if lines else type(err).__name__
    folder = Path(path).absolute().parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB"
    except OSError:
        free = "unknown space"
    said = lines[0] if len(lines) == 1 else os.strerror(err.errno)  # HDF5's own reason spans many lines
    return f"{said}; {free} free in {folder}"


def write_atomically(path, write, text: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``OSError`` (a full disk, a vanished folder) becomes a ``UserError`` (``write_failure``); the
    temporary file never outlives the call, and ``path`` is untouched on failure.
    """
    out = check_file(path, overwrite=True)
    try:
        tmp = temporary_beside(out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {write_failure(out, err)}") from None
    try:
        with open(tmp, "w" if text else "wb", newline="" if text else None) as f:
            write(f)
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"cannot write {out}: {write_failure(out, err)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
