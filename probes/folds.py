"""Cross-validation folds shared by every probe of a comparison.

The folds are a function of the probe labels and a seed only: scikit-learn's
``StratifiedKFold(folds, shuffle=True, random_state=seed)`` on the labels. Two
runs with the same probe set therefore get the same folds, and so does every
layer and checkpoint of them, so their accuracies are measured on the same
splits.
"""

from __future__ import annotations

import operator

import numpy as np
from sklearn.model_selection import StratifiedKFold

from repanalysis.errors import UserError


def make_folds(labels, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` stratified ``(train, test)`` index pairs (int64, ascending) that partition the samples.

    Refuses fewer than two folds, fewer than two classes, and any class with
    fewer members than ``folds`` (it could not appear in every test fold).
    """
    labels = np.asarray(labels)
    folds = operator.index(folds)
    if labels.ndim != 1:
        raise UserError(f"probe labels must be one label per sample, got shape {labels.shape}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**32:
        raise UserError(f"the fold seed must be between 0 and 2**32 - 1, got {seed}")
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise UserError(f"the probe set has {len(classes)} class(es); a probe needs at least 2")
    if counts.min() < folds:
        small = ", ".join(f"{c} ({n})" for c, n in zip(classes, counts) if n < folds)
        raise UserError(f"{folds} folds need at least {folds} probe samples per class; too few in class {small}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train.astype(np.int64), test.astype(np.int64))
            for train, test in splitter.split(np.zeros((len(labels), 1)), labels)]
