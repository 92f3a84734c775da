"""MNIST from the four original IDX files: find them, download them, check them, load them.

Where the files are looked for (the *root*), first match wins:

1. the ``data_dir`` argument (``--data-dir`` on the command line);
2. the environment variable ``REPANALYSIS_DATA``;
3. ``$XDG_CACHE_HOME/repanalysis``, by default ``~/.cache/repanalysis``.

The files live in the root itself if it holds any of them, else in
``<root>/mnist/``. Each may be raw (``train-images-idx3-ubyte``) or gzipped
(``train-images-idx3-ubyte.gz``); the raw one is read if both are there.
A folder given as ``data_dir`` must hold the files: nothing is created in it or
downloaded into it. Otherwise missing files are downloaded, gzipped, into that folder from the first mirror
that works (``MIRRORS``, or the comma-separated base URLs in the environment
variable ``REPANALYSIS_MNIST_MIRRORS``). Every file, read or downloaded, must
match the sha256 of its uncompressed IDX bytes in ``SHA256``.
"""

import hashlib
import os
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from repanalysis.errors import UserError

from . import idx
from .base import Dataset
from .download import DownloadError, fetch

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
"""sha256 of the uncompressed IDX bytes of each file."""

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Base URLs that serve ``<name>.gz`` for each file name in ``SHA256``."""

_SELF_HELP = "download the four IDX files yourself and pass --data-dir or set REPANALYSIS_DATA"


def data_root(data_dir: str | PathLike | None = None) -> Path:
    """The root folder: ``data_dir``, else ``$REPANALYSIS_DATA``, else the user's cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("REPANALYSIS_DATA"):
        return Path(os.environ["REPANALYSIS_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "repanalysis"


def mnist_dir(root: Path) -> Path:
    """The folder holding the files: ``root`` if it holds any of them, else ``root/mnist``."""
    if any(_existing(root, name) for name in SHA256):
        return root
    return root / "mnist"


def mirrors() -> list[str]:
    """Base URLs to download from: ``$REPANALYSIS_MNIST_MIRRORS`` (comma-separated) or ``MIRRORS``."""
    override = [url.strip() for url in os.environ.get("REPANALYSIS_MNIST_MIRRORS", "").split(",")]
    return [url for url in override if url] or list(MIRRORS)


def fetch_file(name: str, directory: Path) -> Path:
    """Download ``<name>.gz`` into ``directory`` from the first mirror whose copy checks out."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        dest = directory / f"{name}.gz"
        urls = [f"{base.rstrip('/')}/{name}.gz" for base in mirrors()]
        fetch(urls, dest, check=lambda path: _check_download(name, path))
    except DownloadError as err:
        raise UserError(
            f"could not download MNIST file {name} from any mirror (last error: {err}); {_SELF_HELP}"
        ) from None
    except OSError as err:
        raise UserError(f"cannot write MNIST file {name} into {directory}: {err}") from None
    return dest


def load(data_dir: str | PathLike | None = None, *, download: bool = True) -> Dataset:
    """MNIST's standard split: 60,000 train / 10,000 test, inputs pixels / 255 flattened to 784."""
    root = data_root(data_dir)
    directory = mnist_dir(root)
    paths = {}
    for name in SHA256:
        paths[name] = _existing(directory, name)
        if paths[name] is None:
            if data_dir is not None:
                raise UserError(f"MNIST file {name} (or {name}.gz) is in neither {root} nor {root / 'mnist'}; "
                                "the --data-dir folder must hold the four IDX files (raw or gzipped); leave "
                                "--data-dir out to download them into $REPANALYSIS_DATA or ~/.cache/repanalysis")
            if not download:
                raise UserError(f"MNIST file {name} (or {name}.gz) not found in {directory}; {_SELF_HELP}")
            paths[name] = fetch_file(name, directory)
    arrays = {name: idx.parse(_verified_bytes(name, path), str(path)) for name, path in paths.items()}
    return Dataset(
        name="mnist",
        task="classification",
        x_train=_pixels(arrays["train-images-idx3-ubyte"]),
        y_train=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        x_test=_pixels(arrays["t10k-images-idx3-ubyte"]),
        y_test=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        n_outputs=10,
        scaling="pixels / 255, in [0, 1]",
    )


def _existing(directory: Path, name: str) -> Path | None:
    """The raw or else the gzipped copy of file ``name`` in ``directory``, if either exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _verified_bytes(name: str, path: Path) -> bytes:
    """The IDX bytes of ``path``, which must be the genuine MNIST file ``name``."""
    data = idx.read_bytes(path)
    problem = _checksum_problem(name, data)
    if problem:
        raise UserError(f"MNIST file {name} at {path} is corrupt ({problem}); delete or replace it")
    return data


def _check_download(name: str, path: Path) -> None:
    """Reject a downloaded copy of file ``name`` that is not the genuine one."""
    problem = _checksum_problem(name, idx.read_bytes(path))
    if problem:
        raise UserError(f"the downloaded file is corrupt ({problem})")


def _checksum_problem(name: str, data: bytes) -> str | None:
    """What is wrong with the sha256 of IDX bytes ``data`` of file ``name``, or None."""
    digest = hashlib.sha256(data).hexdigest()
    if digest == SHA256[name]:
        return None
    return f"sha256 of its IDX bytes is {digest[:16]}..., expected {SHA256[name][:16]}..."


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images [n, 28, 28] -> float32 [n, 784] in [0, 1]."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x /= 255.0
    return torch.from_numpy(x)
