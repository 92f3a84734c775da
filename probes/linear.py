"""The linear probe: multinomial logistic regression on standardised activations.

Conventions:

- features are standardised with the training part's mean and standard
  deviation (``StandardScaler``: ddof 0, constant features left unscaled);
- L2-penalised multinomial logistic regression (``LogisticRegression``,
  lbfgs, at most ``MAX_ITER`` iterations per fit; a fit that reaches the cap
  is used as it is and not reported);
- the inverse penalty ``C`` is chosen from the fixed grid ``C_GRID`` by an
  inner stratified cross-validation on the training part (``INNER_FOLDS``
  folds, fewer when a class is smaller; folds from ``make_folds`` with the
  probe seed, each inner fold standardised on its own training part): the
  ``C`` with the highest mean inner accuracy, the smallest such ``C`` on ties;
  the path over the grid is warm-started from the next smaller ``C``;
- the chosen ``C`` is refitted on the whole training part and scored on the
  test part.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from repanalysis.errors import UserError

from .folds import make_folds

C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
INNER_FOLDS = 3
MAX_ITER = 200


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(test)


def _path_accuracies(x_train, x_test, y_train, y_test) -> np.ndarray:
    """Test accuracy at each ``C`` of ``C_GRID``, fitted in ascending order with warm starts."""
    model = LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, warm_start=True)
    out = np.empty(len(C_GRID))
    for i, c in enumerate(C_GRID):
        model.set_params(C=c).fit(x_train, y_train)
        out[i] = model.score(x_test, y_test)
    return out


def choose_c(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """The ``C`` of ``C_GRID`` with the best mean inner cross-validated accuracy on ``(x, y)``."""
    inner = min(INNER_FOLDS, int(np.unique(y, return_counts=True)[1].min()))
    if inner < 2:
        raise UserError("the linear probe's inner cross-validation needs at least 2 samples of every class "
                        "in each outer training fold; use fewer --folds or a larger probe set")
    scores = np.zeros(len(C_GRID))
    for train, test in make_folds(y, inner, seed):
        x_train, x_test = _standardised(x[train], x[test])
        scores += _path_accuracies(x_train, x_test, y[train], y[test])
    return C_GRID[int(np.argmax(scores))]


def linear_accuracy(x_train, y_train, x_test, y_test, *, seed: int = 0) -> float:
    """Test accuracy of the linear probe trained on ``(x_train, y_train)`` (``C`` chosen inside)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c = choose_c(x_train, y_train, seed)
        train, test = _standardised(x_train, x_test)
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER).fit(train, y_train)
    return float(model.score(test, y_test))
