"""The explanation: how wrong a rule's error signal is (E), layer by layer and over training, against how far
each layer drifts from the same layer of its backprop twin (D).

A *twin* is the backprop run of the same seed and cell: the same initial
weights and batches, so every difference between the two comes from the
error signal. Per run of any other rule (an *arm*), layer and checkpoint
(``explain_frame``), from the analysis table (``analysis.runs``) and the
runs' training losses:

- ``e_signal = 1 − grad_cosine``: the signal at the layer against the true
  gradient (mean per-sample cosine); ``e_update = 1 − update_cosine``: the
  parameter gradient of the block below the layer under the rule against the
  true one (the error that reaches the weights). A zero signal (a module at
  its start) has no cosine and counts as ``E = 1`` (it carries nothing of the
  true direction); a layer without a signal (above the module: it learns from
  the true gradient) has ``E = 0``, the control inside each net;
- ``exposure_signal``, ``exposure_update``: ``E`` accumulated up to the
  checkpoint, ``∫ E d(step) / steps`` by the trapezoid rule over the
  checkpoints (the run-average error at the last checkpoint);
  ``below_signal``, ``below_update``: the mean exposure of the run's layers
  below the module at that checkpoint (what a layer above has been fed from);
- ``d_cka = 1 − linear CKA`` and ``d_rsa = 1 − RSA`` (correlation RDMs,
  Spearman) of the layer with the twin's at the same step; ``ceiling_cka``:
  ``1 − linear CKA`` between backprop runs of different seeds of the cell
  (mean over pairs), the drift that a different start and batches alone give;
- ``loss_gap``: the run's mean training loss over the steps since the
  previous checkpoint minus its twin's (0 at step 0), the obvious confound.

``explain_table`` fits (``stats.cluster_fit``: least squares, jackknife
t-intervals over seeds) per cell:

- ``dose-response``: across arms, D at the last checkpoint against the
  exposure there, per layer below the module and over that region (a
  region's points are its layers), without and with the loss gap as a
  covariate;
- ``carried up``: the same for each layer above the module and that region,
  against the exposure of the layers below (their own is 0);
- ``over training``: per arm, D against the exposure at every checkpoint, per
  layer and per region (both grow with time, so the slope alone shows little);
- ``lagged``: below the module, across arms and per arm, D's change from one
  checkpoint to the next against E at the first of them (within an arm whose
  error is set, E barely varies: the fit across arms is the informative one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from repanalysis.measures import stats

FRAME_COLUMNS = ("scope", "arm", "rule", "seed", "run", "layer", "position", "region", "step", "e_signal",
                 "e_update", "exposure_signal", "exposure_update", "below_signal", "below_update", "d_cka", "d_rsa",
                 "ceiling_cka", "loss_gap")
TABLE_COLUMNS = ("scope", "model", "error", "covariate", "arm", "layer", "slope", "low", "high", "p", "r2", "r2_low",
                 "r2_high", "seeds", "points")
ERRORS = ("update", "signal")
#: The analysis measures the explanation reads.
NEEDS = ("linear_cka", "rsa", "grad_cosine", "grad_rel_error", "update_cosine", "update_rel_error")


def run_losses(paths) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run file -> ``(logged steps, training losses)`` from its ``/metrics``."""
    from repanalysis.runfile.hdf5 import RunFile

    out = {}
    for path in paths:
        with RunFile(path) as run:
            metrics = run.metrics
        if "train_loss" in metrics:
            out[str(path)] = (metrics["step"], metrics["train_loss"])
    return out


def _values(analysis: pd.DataFrame, measure: str) -> pd.DataFrame:
    rows = analysis[analysis["measure"] == measure]
    return rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))


def _error(cosines: pd.Series) -> pd.Series:
    """``1 − cosine``, and 1 where the cosine is undefined (a zero signal)."""
    return (1.0 - cosines).fillna(1.0)


def _exposure(steps: np.ndarray, errors: np.ndarray, total: float) -> np.ndarray:
    """``∫ E d(step) / total`` up to each checkpoint, by the trapezoid rule (0 at the first)."""
    areas = np.diff(steps) * (errors[1:] + errors[:-1]) / 2
    return np.concatenate([[0.0], np.cumsum(areas)]) / total


def _window_losses(steps: np.ndarray, logged_steps: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The mean training loss over the steps since the previous checkpoint, at each checkpoint (NaN at the
    first, and where none was logged)."""
    out = np.full(len(steps), np.nan)
    for k in range(1, len(steps)):
        inside = (logged_steps > steps[k - 1]) & (logged_steps <= steps[k])
        if inside.any():
            out[k] = losses[inside].mean()
    return out


def explain_frame(analysis: pd.DataFrame, runs: pd.DataFrame, losses: dict[str, tuple]) -> pd.DataFrame:
    """One row per arm run, layer and checkpoint (columns ``FRAME_COLUMNS``; module docstring).

    ``runs``: one row per run file with ``run`` (its path, as in the analysis
    table), ``scope`` (its cell), ``arm``, ``rule``, ``seed``, ``steps`` (the
    run's length); ``losses``: run -> ``(logged steps, training losses)``.
    """
    runs = runs.set_index("run")
    twins = {(r.scope, r.seed): run for run, r in runs.iterrows() if r.rule == "backprop"}
    cka, rsa = _values(analysis, "linear_cka"), _values(analysis, "rsa")
    cross = cka[cka["run_b"].notna() & (cka["layer_a"] == cka["layer_b"])]
    ceiling = (cross[cross["run_a"].map(runs["rule"]).eq("backprop") & cross["run_b"].map(runs["rule"]).eq("backprop")]
               .assign(scope=lambda f: f["run_a"].map(runs["scope"]))
               .groupby(["scope", "layer_a", "step_a"])["value"].mean())
    rsa = rsa[rsa["run_b"].notna() & (rsa["layer_a"] == rsa["layer_b"])]
    errors = {kind: _values(analysis, measure).set_index(["run_a", "layer_a", "step_a"])["value"]
              for kind, measure in (("signal", "grad_cosine"), ("update", "update_cosine"))}
    signalled = {pair for measure in ("grad_rel_error", "update_rel_error")
                 for pair in _values(analysis, measure)[["run_a", "layer_a"]].itertuples(index=False, name=None)}
    position = _positions(analysis)
    rows = []
    for run, r in runs.iterrows():
        twin = twins.get((r.scope, r.seed))
        if r.rule == "backprop" or twin is None:
            continue
        mine = cross[(cross["run_a"] == run) & (cross["run_b"] == twin)]
        my_rsa = rsa[(rsa["run_a"] == run) & (rsa["run_b"] == twin)].set_index(["layer_a", "step_a"])["value"]
        gaps = {}
        if run in losses and twin in losses:
            steps = np.array(sorted(mine["step_a"].unique()))
            gap = _window_losses(steps, *losses[run]) - _window_losses(steps, *losses[twin])
            gaps = dict(zip(steps, np.nan_to_num(gap, nan=0.0)))
        layers = sorted(mine["layer_a"].unique(), key=lambda name: position[(run, name)])
        for layer in layers:
            here = mine[mine["layer_a"] == layer].sort_values("step_a")
            steps = here["step_a"].to_numpy(dtype=np.float64)
            below = (run, layer) in signalled
            frame = {"step": steps, "d_cka": 1.0 - here["value"].to_numpy()}
            for kind, series in errors.items():
                if below:
                    cos = pd.Series([series.get((run, layer, int(s)), np.nan) for s in steps])
                    e = _error(cos).to_numpy()
                else:
                    e = np.zeros(len(steps))
                frame[f"e_{kind}"] = e
                frame[f"exposure_{kind}"] = _exposure(steps, e, float(r.steps))
            for k, step in enumerate(steps):
                rows.append((r.scope, r.arm, r.rule, int(r.seed), run, layer, position[(run, layer)],
                             "below" if below else "above", int(step), frame["e_signal"][k], frame["e_update"][k],
                             frame["exposure_signal"][k], frame["exposure_update"][k], np.nan, np.nan,
                             frame["d_cka"][k], 1.0 - my_rsa.get((layer, int(step)), np.nan),
                             1.0 - ceiling.get((r.scope, layer, int(step)), np.nan), gaps.get(step, np.nan)))
    out = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    below = out[out["region"] == "below"].groupby(["run", "step"])[["exposure_signal", "exposure_update"]].mean()
    keys = pd.MultiIndex.from_frame(out[["run", "step"]])
    for kind in ERRORS:
        out[f"below_{kind}"] = below[f"exposure_{kind}"].reindex(keys).to_numpy()
    return out


def _positions(analysis: pd.DataFrame) -> dict[tuple[str, str], int]:
    """``(run, layer)`` -> the layer's position: the table's ``position_a`` where it has one, else the
    digits of the layer's name (``h12`` -> 12)."""
    pairs = analysis[["run_a", "layer_a"] + (["position_a"] if "position_a" in analysis else [])].dropna(
        subset=["layer_a"]).drop_duplicates(["run_a", "layer_a"])
    out = {}
    for row in pairs.itertuples(index=False):
        if len(row) > 2 and pd.notna(row[2]):
            out[(row[0], row[1])] = int(row[2])
        else:
            digits = "".join(ch for ch in row[1] if ch.isdigit())
            out[(row[0], row[1])] = int(digits) if digits else 0
    return out


def _fit_row(scope, model, error, covariate, arm, layer, fit: stats.Fit) -> tuple:
    return (scope, model, error, covariate, arm, layer, fit.slope, fit.low, fit.high, fit.p, fit.r2, fit.r2_low,
            fit.r2_high, fit.clusters, fit.points)


def _lagged(group: pd.DataFrame, error: str) -> pd.DataFrame:
    """Per run and layer, D's change to the next checkpoint beside E at the checkpoint."""
    parts = []
    for _, one in group.groupby(["run", "layer"]):
        one = one.sort_values("step")
        parts.append(pd.DataFrame({"seed": one["seed"].to_numpy()[:-1], "x": one[f"e_{error}"].to_numpy()[:-1],
                                   "y": np.diff(one["d_cka"].to_numpy())}))
    return pd.concat(parts) if parts else pd.DataFrame(columns=["seed", "x", "y"])


def explain_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The fits of D against E per cell (columns ``TABLE_COLUMNS``; module docstring); D is ``d_cka``."""
    rows = []
    for scope, cell in frame.groupby("scope", sort=False):
        last = cell[cell["step"] == cell.groupby("run")["step"].transform("max")]
        layers = [(layer, g) for layer, g in last.groupby("layer", sort=False)]
        layers.sort(key=lambda item: item[1]["position"].iloc[0])
        units = layers + [(region, g) for region, g in last.groupby("region", sort=False)]
        for error in ERRORS:
            for where, g in units:
                above = g["region"].iloc[0] == "above"
                x = g[f"below_{error}" if above else f"exposure_{error}"]
                model = "carried up" if above else "dose-response"
                rows.append(_fit_row(scope, model, error, "none", "all arms", where,
                                     stats.cluster_fit(x, g["d_cka"], g["seed"])))
                rows.append(_fit_row(scope, model, error, "loss gap", "all arms", where,
                                     stats.cluster_fit(x, g["d_cka"], g["seed"], g["loss_gap"])))
        for arm, runs in cell.groupby("arm", sort=False):
            units = [(layer, g) for layer, g in runs.groupby("layer", sort=False)]
            units.sort(key=lambda item: item[1]["position"].iloc[0])
            units += [(region, g) for region, g in runs.groupby("region", sort=False)]
            for where, g in units:
                rows.append(_fit_row(scope, "over training", "update", "none", arm, where,
                                     stats.cluster_fit(g["exposure_update"], g["d_cka"], g["seed"])))
        below = cell[cell["region"] == "below"]
        for arm, runs in [("all arms", below)] + list(below.groupby("arm", sort=False)):
            lag = _lagged(runs, "update")
            rows.append(_fit_row(scope, "lagged", "update", "none", arm, "below",
                                 stats.cluster_fit(lag["x"], lag["y"], lag["seed"])))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
