"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download)."""

import numpy as np
import torch

from .base import Dataset
from .sampling import stratified_subset

N_TEST = 360
SPLIT_SEED = 0


def load() -> Dataset:
    """The digits with a fixed split: 1,437 train / 360 test.

    The test split is ``stratified_subset(labels, 360, seed=0)`` over all
    1,797 images (36 per class), the rest is the train split, both in the
    original order; no seed argument changes it. Inputs are the 64 pixel
    values (integers 0..16) divided by 16, float32 in [0, 1].
    """
    import sklearn.datasets  # here, not at the top: importing it takes most of a second

    pixels, labels = sklearn.datasets.load_digits(return_X_y=True)
    x = torch.from_numpy((pixels / 16.0).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    test = torch.zeros(len(labels), dtype=torch.bool)
    test[stratified_subset(labels, N_TEST, SPLIT_SEED)] = True
    return Dataset(
        name="digits",
        task="classification",
        x_train=x[~test],
        y_train=y[~test],
        x_test=x[test],
        y_test=y[test],
        n_outputs=10,
        scaling="pixels / 16, in [0, 1]",
    )
