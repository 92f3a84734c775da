"""Data sets: scikit-learn's digits, MNIST, and the paper's artificial problems.

``load(name)`` returns a ``Dataset`` (see ``base``); ``DATASETS`` lists the names.
Only the artificial problems depend on ``seed``; digits and MNIST have fixed
splits. Only MNIST reads ``data_dir`` and may download (see ``mnist``).
"""

from os import PathLike

from repanalysis.errors import UserError

from . import digits, mnist, toy
from .base import Dataset

DATASETS = ("digits", "mnist", *toy.NAMES)
IMAGES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
"""The data sets whose inputs are images: their shape ``[channels, height, width]``
(``x`` rows hold the pixels flat, row-major)."""

__all__ = ["DATASETS", "IMAGES", "Dataset", "load"]


def load(
    name: str, *, data_dir: str | PathLike | None = None, seed: int = 0, download: bool = True
) -> Dataset:
    """The data set ``name`` (one of ``DATASETS``).

    ``seed`` draws the artificial problems; ``data_dir`` and ``download`` say
    where MNIST's files are and whether missing ones may be downloaded.
    """
    if name == "digits":
        return digits.load()
    if name == "mnist":
        return mnist.load(data_dir, download=download)
    if name in toy.NAMES:
        return toy.make(name, seed)
    raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
