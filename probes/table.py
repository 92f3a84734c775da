"""Probe every layer and checkpoint of some run files; one tidy table (written by ``repanalysis.analysis.tables``).

One row per (run, layer, step, probe) with ``COLUMNS``: ``run`` is the path
as given, ``position`` the layer's place in the model (the run file's: 0 for
the lowest interface; sort by it, not by name, for the model's order),
``accuracy`` the mean over the outer folds of each fold's test
accuracy, ``accuracy_std`` their standard deviation over folds with ddof 1,
``folds`` the number of outer folds. The outer folds come from ``make_folds``
on the shared probe labels and ``seed``, the same for every run, layer and
checkpoint. Activations are read from the run files (never by re-running a
model) and probed in float64. BLAS and OpenMP pools run one thread while
probing: on matrices this small, threaded BLAS is slower, and far slower on a
busy machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from repanalysis.errors import UserError
from repanalysis.runfile.checkpoints import chosen_checkpoints, parse_checkpoints
from repanalysis.runfile.hdf5 import MAPS, RunFile

from .folds import make_folds
from .knn import knn_accuracy
from .linear import linear_accuracy

PROBES = ("linear", "knn")
COLUMNS = ["run", "rule", "seed", "layer", "position", "step", "probe", "accuracy", "accuracy_std", "folds"]


def _probe_set(path) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """``(probe index, probe labels, checkpoint steps, layers)`` of one run; refuses runs that cannot be probed."""
    with RunFile(path) as run:
        labels = run.probe_labels
        if labels is None:
            raise UserError(f"{path}: a {run.task} run has no class labels; probes need a classification task")
        if not len(run.steps):
            raise UserError(f"{path}: the run has no checkpoints")
        return run.probe_index, labels, [int(s) for s in run.steps], list(run.layers)


def _shared_probe_set(paths: list[str]) -> tuple[np.ndarray, list[tuple[list[int], list[str]]]]:
    """The probe labels every run shares, and each run's checkpoint steps and layers; refuses runs that differ."""
    seen: dict[Path, str] = {}
    first_index = first_labels = None
    counts = []
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{path}: given twice (also as {seen[key]})")
        seen[key] = path
        index, labels, steps, layers = _probe_set(path)
        counts.append((steps, layers))
        if first_index is None:
            first_index, first_labels = index, labels
        elif not np.array_equal(index, first_index):
            raise UserError(f"the probe indices of {paths[0]} and {path} differ; probes compare runs on one probe set")
        elif not np.array_equal(labels, first_labels):
            raise UserError(f"the probe labels of {paths[0]} and {path} differ (different data sets?)")
    return first_labels, counts


def _probe_task(name: str, path: str, layer: str, indices: list[int], labels: np.ndarray, splits,
                probes: tuple[str, ...], seed: int, k: int, maps: str) -> list[list]:
    """The rows of one run's layer at checkpoints ``indices``; ``name``: the path as given, ``path``: absolute.

    Activations come as float64 ``[N, D]`` (feature maps read by ``maps``, ``runfile.as_rows``); non-finite
    values are refused with where they are.
    """
    scorers = {"linear": lambda *a: linear_accuracy(*a, seed=seed), "knn": lambda *a: knn_accuracy(*a, k=k)}
    rows = []
    with RunFile(path) as run, threadpool_limits(limits=1):
        position = run.layer_info(layer)["position"]
        for i in indices:
            step = int(run.steps[i])
            x = run.activations(layer, i, maps).astype(np.float64)
            if not np.isfinite(x).all():
                raise UserError(f"{name}: non-finite activations in layer {layer} at step {step}")
            for probe in probes:
                scores = [scorers[probe](x[tr], labels[tr], x[te], labels[te]) for tr, te in splits]
                rows.append([name, run.rule, run.seed, layer, position, step, probe,
                             float(np.mean(scores)), float(np.std(scores, ddof=1)), len(splits)])
    return rows


def probe_runs(paths, *, probes=PROBES, folds: int = 5, seed: int = 0, k: int = 5, checkpoints="all",
               maps: str = "flatten", quiet: bool = False, executor=None) -> pd.DataFrame:
    """The tidy table of ``probes`` on every layer of every run, at the checkpoints ``checkpoints`` chooses
    (``repanalysis.runfile.checkpoints``: ``"all"``, ``"last"`` or steps every run has).

    ``maps``: feature maps are probed flattened (``"flatten"``: every position of every channel a feature)
    or as their channels' means over positions (``"channels"``). One task per run and layer on ``executor``
    (an ``repanalysis.runtime.executor.Executor``; default: this process); the rows come in the same order wherever
    they ran.
    """
    from repanalysis.runtime.executor import Executor

    paths = [str(p) for p in paths]
    probes = tuple(probes)
    if not paths:
        raise UserError("no run files given")
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise UserError(f"unknown probe(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PROBES)}")
    if maps not in MAPS:
        raise UserError(f"unknown maps convention {maps!r}; choose one of {', '.join(MAPS)}")
    checkpoints = parse_checkpoints(checkpoints)
    labels, counts = _shared_probe_set(paths)
    splits = make_folds(labels, folds, seed)
    tasks = []
    for path, (steps, layers) in zip(paths, counts):
        indices = chosen_checkpoints(steps, checkpoints, path)
        tasks += [(path, str(Path(path).resolve()), layer, indices, labels, splits, probes, seed, k, maps)
                  for layer in layers]
    results = (executor or Executor()).map(_probe_task, tasks, label="probe", quiet=quiet)
    table = pd.DataFrame([row for rows in results for row in rows], columns=COLUMNS)
    return table.astype({"seed": "int64", "position": "int64", "step": "int64", "folds": "int64"})
