"""The ``Dataset`` record every loader returns, and its probe set.

Conventions:

- inputs ``x_*`` are float32 ``[n, d]``;
- ``task="classification"``: ``y_*`` int64 ``[n]`` in ``0..n_outputs-1``;
- ``task="binary"``: ``y_*`` float32 ``[n, 1]`` holding 0 or 1, ``n_outputs=1``;
- ``task="regression"``: ``y_*`` float32 ``[n, k]``, ``n_outputs=k``;
- a *validation split* (``with_validation``) is held out of the training split,
  never of the test split: ``x_val``, ``y_val`` (None when there is none).
"""

import dataclasses
import operator
from dataclasses import dataclass

import numpy as np
import torch

from repanalysis.errors import UserError

from .sampling import random_subset, stratified_subset

TASKS = ("classification", "binary", "regression")

PROBE_SEED = 0
"""Seed of the one shuffle of the test split that every probe set is drawn from."""

VALIDATION_SEED = 1
"""Seed of the one shuffle of the training split that every validation split is drawn from."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train and a test split, with what a model needs to know about them."""

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_outputs: int
    scaling: str
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        y_dtype, y_ndim = (torch.int64, 1) if self.task == "classification" else (torch.float32, 2)
        splits = [(self.x_train, self.y_train), (self.x_test, self.y_test)]
        if self.x_val is not None or self.y_val is not None:
            splits.append((self.x_val, self.y_val))
        for x, y in splits:
            if x is None or y is None:
                raise ValueError(f"{self.name}: a validation split needs both x_val and y_val")
            if x.dtype != torch.float32 or x.ndim != 2 or len(x) != len(y):
                raise ValueError(f"{self.name}: x must be float32 [n, d] with one y per row")
            if (y.dtype, y.ndim) != (y_dtype, y_ndim):
                raise ValueError(f"{self.name}: y of a {self.task} task must be {y_dtype} with {y_ndim} dims")

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def with_validation(self, size: int) -> "Dataset":
        """This data set with ``size`` training inputs held out as its validation split (``size`` 0: itself).

        The held-out inputs are fixed by the data (and data seed) and ``size``
        alone, whatever the training seed: classification and binary tasks
        stratified by class, regression a random subset, both from one shuffle
        of the training split seeded with ``VALIDATION_SEED`` (so a smaller
        validation split is contained in a larger one). Both parts keep the
        original order. The test split is untouched.
        """
        size = operator.index(size)
        if size == 0:
            return self
        if self.x_val is not None:
            raise UserError(f"{self.name} already has a validation split")
        n_train = len(self.x_train)
        if not 0 < size < n_train:
            raise UserError(f"--validation {size} must leave training inputs: the {self.name} training split "
                            f"has {n_train}")
        labels = None if self.task == "regression" else self.y_train.reshape(n_train).numpy().astype(np.int64)
        if labels is None:
            held = random_subset(n_train, size, VALIDATION_SEED)
        else:
            n_classes = len(np.unique(labels))
            if size < n_classes:
                raise UserError(f"--validation {size} cannot cover the {n_classes} classes of {self.name}; "
                                f"use at least {n_classes}")
            held = stratified_subset(labels, size, VALIDATION_SEED)
        mask = torch.zeros(n_train, dtype=torch.bool)
        mask[torch.from_numpy(held)] = True
        return dataclasses.replace(self, x_train=self.x_train[~mask], y_train=self.y_train[~mask],
                                   x_val=self.x_train[mask], y_val=self.y_train[mask])

    def probe_index(self, size: int) -> np.ndarray:
        """Indices into the test split of the ``size`` probe inputs, sorted ascending.

        The same for every call with the same data (and data seed) and size,
        whatever the training seed. Classification and binary tasks: stratified,
        as equally many per class as possible and at least one of each
        (``sampling.stratified_subset``);
        regression: a fixed random subset (``sampling.random_subset``). Both draw
        from one shuffle of the test split seeded with ``PROBE_SEED``, so a
        smaller probe set is contained in a larger one.
        """
        size = operator.index(size)
        n_test = len(self.x_test)
        if not 1 <= size <= n_test:
            raise UserError(
                f"probe size must be between 1 and the {n_test} inputs"
                f" of the {self.name} test split, not {size}"
            )
        labels = self._test_labels()
        if labels is None:
            return random_subset(n_test, size, PROBE_SEED)
        n_classes = len(np.unique(labels))
        if size < n_classes:
            raise UserError(
                f"probe size {size} cannot cover the {n_classes} classes of the {self.name} test split;"
                f" use at least {n_classes}"
            )
        return stratified_subset(labels, size, PROBE_SEED)

    def probe_labels(self, index) -> np.ndarray | None:
        """Class labels (int64; 0/1 for binary) of the test inputs at ``index``; None for regression."""
        labels = self._test_labels()
        return None if labels is None else labels[np.asarray(index)]

    def _test_labels(self) -> np.ndarray | None:
        if self.task == "regression":
            return None
        return self.y_test.reshape(len(self.y_test)).numpy().astype(np.int64)
