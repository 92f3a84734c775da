"""Probes on saved activations: linear (logistic regression) and k-NN accuracy per run, layer and checkpoint."""

from .folds import make_folds
from .knn import knn_accuracy
from .linear import C_GRID, linear_accuracy
from .table import COLUMNS, PROBES, probe_runs

__all__ = ["C_GRID", "COLUMNS", "PROBES", "knn_accuracy", "linear_accuracy", "make_folds", "probe_runs"]
