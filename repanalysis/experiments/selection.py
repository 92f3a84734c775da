"""Choosing each rule's settings on a validation split before an experiment's runs (a spec's ``select``).

    [experiments.depth.select]
    seeds = [0]                      # the selection's own seeds; the experiment's seeds must differ
    cells = { depth = [50] }         # grid values where candidates are tried (default: every cell)
    metric = "val_acc"               # or "val_loss": the run's last evaluation on its validation split
    candidates.backprop = [{ lr = 5e-4 }, { lr = 1e-3 }, { lr = 2e-3 }]
    candidates.sg = [{ lr = 5e-4 }, { lr = 1e-3 }, { lr = 2e-3 }]

Every rule of the grid has candidates, the same number for each (the same
trial budget). Each candidate of each rule is trained on every selection seed
in every selection cell; then, per rule and per value of the grid axes that
``cells`` does not restrict (the *key*, e.g. the activation), the candidate
with the best ``metric`` averaged over those seeds and cells is the rule's
setting for every run of the experiment with that key (a candidate chosen at
depth 50 is used at every depth). Ties go to the earlier candidate; a
candidate whose runs failed is never chosen. The experiment's settings must
hold out a validation split (``validation = N``), and its seeds must differ
from the selection's, so the test split is reported only on seeds the
selection never saw and never read by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from repanalysis.errors import UserError

#: The metric, and whether larger is better.
METRICS = {"val_acc": True, "val_loss": False}
SELECTION_KEYS = {"seeds", "cells", "metric", "candidates"}


@dataclass(frozen=True)
class Selection:
    """An experiment's ``select`` table (see the module docstring)."""

    seeds: tuple[int, ...]
    candidates: dict[str, tuple[dict, ...]]
    cells: dict[str, tuple] = field(default_factory=dict)
    metric: str = "val_acc"

    def tried(self, axes: tuple[tuple[str, object], ...]) -> bool:
        """Whether candidates are tried in the cell of the grid values ``axes``."""
        values = dict(axes)
        return all(values.get(k) in allowed for k, allowed in self.cells.items())

    def key(self, axes: tuple[tuple[str, object], ...], variant_axes) -> tuple:
        """The grid values a choice is made for: those of the axes ``cells`` does not restrict."""
        return tuple((k, v) for k, v in axes if k not in variant_axes and k not in self.cells)

    def without(self, fixed: set) -> "Selection":
        """The selection with the settings in ``fixed`` (what ``--quick`` and the command line decide)
        left out of every candidate."""
        candidates = {rule: tuple({k: v for k, v in c.items() if k not in fixed} for c in options)
                      for rule, options in self.candidates.items()}
        return Selection(self.seeds, candidates, self.cells, self.metric)


def parse_selection(table, grid: dict, settings: dict, where: str, check_fields) -> Selection:
    """The ``select`` table of an experiment with ``grid`` and shared ``settings``, checked."""
    where = f"{where}.select"
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table")
    unknown = sorted(set(table) - SELECTION_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a selection has "
                        f"{', '.join(sorted(SELECTION_KEYS))}")
    seeds = table.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise UserError(f"{where}: seeds must be a non-empty list of distinct seeds, e.g. seeds = [0]")
    metric = table.get("metric", "val_acc")
    if metric not in METRICS:
        raise UserError(f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not settings.get("validation"):
        raise UserError(f"{where}: selection reads the validation split; hold one out in the settings, "
                        "e.g. validation = 10000")
    cells = table.get("cells", {})
    if not isinstance(cells, dict):
        raise UserError(f"{where}: cells must be a table of grid values, e.g. cells = {{ depth = [50] }}")
    for axis, values in cells.items():
        if axis not in grid or axis in ("rule", "arm", "stages"):
            raise UserError(f"{where}: cells.{axis}: {axis!r} is not a grid axis that makes cells")
        if not isinstance(values, list) or not values or not set(values) <= set(grid[axis]):
            raise UserError(f"{where}: cells.{axis} must be a non-empty list of the grid's values "
                            f"({', '.join(map(str, grid[axis]))})")
    rules = grid.get("rule") or ([settings["rule"]] if "rule" in settings else [])
    candidates = table.get("candidates")
    if not isinstance(candidates, dict) or set(candidates) != set(rules):
        raise UserError(f"{where}: candidates must name every rule of the grid ({', '.join(rules)}), e.g. "
                        "candidates.sg = [{ lr = 1e-3 }, { lr = 3e-3 }]")
    counts = set()
    for rule, options in candidates.items():
        if not isinstance(options, list) or not options or not all(isinstance(c, dict) for c in options):
            raise UserError(f"{where}: candidates.{rule} must be a non-empty list of tables of settings")
        counts.add(len(options))
        for option in options:
            check_fields(option, f"{where}.candidates.{rule}")
            clash = sorted(set(option) & (set(grid) | {"seed", "rule", "validation"}))
            if clash:
                raise UserError(f"{where}: candidates.{rule} set {', '.join(clash)}, which the grid, the rule "
                                "or the selection itself decides")
    if len(counts) > 1:
        raise UserError(f"{where}: every rule needs the same number of candidates (the same trial budget); "
                        + ", ".join(f"{rule} has {len(o)}" for rule, o in candidates.items()))
    return Selection(tuple(seeds), {rule: tuple(options) for rule, options in candidates.items()},
                     {k: tuple(v) for k, v in cells.items()}, metric)


@dataclass
class Choice:
    """What the selection chose: ``index[(experiment, rule, key)]`` is the candidate taken, and ``table``
    has one row per experiment, rule, key and candidate with its mean metric over the selection's runs."""

    index: dict[tuple, int]
    table: pd.DataFrame
    default: int | None = None  # the candidate taken where nothing was chosen (``FIRST`` only)

    def settings(self, experiment: str, selection: Selection, rule: str, key: tuple) -> dict:
        k = self.index.get((experiment, rule, key), self.default)
        if k is None:
            raise UserError(f"no candidate of {rule} was chosen for experiment {experiment} at "
                            f"{', '.join(f'{a} {v}' for a, v in key) or 'its cells'}: every candidate's runs "
                            "failed")
        return selection.candidates[rule][k]


FIRST = Choice({}, pd.DataFrame(), default=0)
"""Used only to check a spec's configs before anything is trained: every rule takes its first candidate."""


def final_metric(path: Path, metric: str) -> float:
    """The metric of the run's last evaluation (NaN when it has none)."""
    from repanalysis.runfile.hdf5 import RunFile

    with RunFile(path) as run:
        values = run.evals.get(metric, np.zeros(0))
    return float(values[-1]) if len(values) else math.nan


def choose(experiments: dict, candidates: list, run_dir: Path, failed: dict[str, str]) -> Choice:
    """The ``Choice`` from the trained candidate runs (``PlannedRun`` with ``candidate`` set) in ``run_dir``;
    ``experiments``: the spec's experiments by name; ``failed``: file names of runs that failed."""
    rows = []
    for run in candidates:
        selection = experiments[run.experiment].select
        value = math.nan if run.name in failed else final_metric(run_dir / run.name, selection.metric)
        rows.append((run.experiment, run.config.rule, selection.key(run.cell, ()), run.candidate,
                     run.config.seed, value))
    frame = pd.DataFrame(rows, columns=["experiment", "rule", "key", "candidate", "seed", "value"])
    index, table = {}, []
    for (experiment, rule, key), group in frame.groupby(["experiment", "rule", "key"], sort=False):
        selection = experiments[experiment].select
        larger = METRICS[selection.metric]
        means = group.groupby("candidate")["value"].agg(["mean", "count", "min", "max"])
        finite = means[np.isfinite(means["mean"])]
        best = None
        if len(finite):
            best = int((finite["mean"].idxmax() if larger else finite["mean"].idxmin()))
            index[(experiment, rule, key)] = best
        for candidate, stats in means.iterrows():
            table.append({"experiment": experiment, "rule": rule, "key": ", ".join(f"{k} {v}" for k, v in key),
                          "candidate": int(candidate),
                          "settings": ", ".join(f"{k} = {v}" for k, v in
                                                selection.candidates[rule][int(candidate)].items()) or "(shared)",
                          "metric": selection.metric, "mean": stats["mean"], "runs": int(stats["count"]),
                          "min": stats["min"], "max": stats["max"], "chosen": candidate == best})
    return Choice(index, pd.DataFrame(table))
