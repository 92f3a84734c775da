"""The k-nearest-neighbour probe: majority vote of the ``k`` nearest training samples.

Conventions: features are standardised with the training part's mean and
standard deviation (``StandardScaler``: ddof 0, constant features left
unscaled); Euclidean distance; uniform votes, a tied vote going to the
smallest label; exhaustive ("brute") search, so the result does not depend
on a tree's traversal order.
"""

from __future__ import annotations

from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from repanalysis.errors import UserError


def knn_accuracy(x_train, y_train, x_test, y_test, *, k: int = 5) -> float:
    """Test accuracy of ``k``-NN trained on ``(x_train, y_train)``."""
    if not 1 <= k <= len(x_train):
        raise UserError(f"--k must be between 1 and the training-fold size {len(x_train)}, got {k}")
    scaler = StandardScaler().fit(x_train)
    model = KNeighborsClassifier(n_neighbors=k, metric="euclidean", algorithm="brute")
    model.fit(scaler.transform(x_train), y_train)
    return float(model.score(scaler.transform(x_test), y_test))
