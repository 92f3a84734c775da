"""Learning curves from run files: training loss, test loss and test accuracy against step, per rule.

Training loss is the per-step batch loss smoothed by a trailing moving average
over ``max(1, steps // 50)`` steps; test loss and accuracy are the whole test
split at each evaluation. Lines are the mean over seeds with a ±std band (over two seeds or more).
Test accuracy is left out for tasks without one (regression).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from repanalysis.runfile.hdf5 import RunFile

from .inputs import summarise
from .style import legend, log_y, seeds_note, subplots
from .training import draw_over_steps

PANELS = {"train_loss": "training loss (smoothed)", "test_loss": "test loss", "test_acc": "test accuracy"}


def curve_rows(paths) -> pd.DataFrame:
    """Long table ``rule, seed, quantity, step, value`` of every run's curves."""
    frames = []
    for path in paths:
        with RunFile(path) as run:
            metrics, evals, rule, seed = run.metrics, run.evals, run.rule, run.seed
        own = []
        if "train_loss" in metrics and len(metrics["train_loss"]):
            window = max(1, len(metrics["train_loss"]) // 50)
            smooth = pd.Series(metrics["train_loss"]).rolling(window, min_periods=1).mean().to_numpy()
            own.append(pd.DataFrame({"quantity": "train_loss", "step": metrics["step"], "value": smooth}))
        for name in ("test_loss", "test_acc"):
            if name in evals:
                own.append(pd.DataFrame({"quantity": name, "step": evals["step"], "value": evals[name]}))
        frames += [frame.assign(rule=rule, seed=seed) for frame in own]
    if not frames:
        return pd.DataFrame(columns=["rule", "seed", "quantity", "step", "value"])
    rows = pd.concat(frames, ignore_index=True)
    return rows[np.isfinite(rows["value"])]


def learning_curves(paths):
    """The figure, or None if no run logged anything."""
    rows = curve_rows(paths)
    quantities = [q for q in PANELS if q in set(rows["quantity"])]
    if not quantities:
        return None
    fig, axes = subplots(len(quantities), size=(4.2, 3.2))
    losses = [ax for ax, quantity in zip(axes, quantities) if quantity != "test_acc"]
    for ax in losses[1:]:  # training and test loss on one scale, to be compared
        ax.sharey(losses[0])
    for ax, quantity in zip(axes, quantities):
        draw_over_steps(ax, summarise(rows[rows["quantity"] == quantity], ["rule", "step"]))
        ax.set_ylabel(PANELS[quantity])
        ax.set_title(PANELS[quantity])
        if quantity != "test_acc":
            log_y(ax)
    fig.suptitle(f"Learning curves ({seeds_note(rows.groupby('rule')['seed'].nunique())})")
    legend(fig, axes)
    return fig
