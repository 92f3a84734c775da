"""The linear-problem table (claims 1 and 2) as dot plots: final training loss and agreement of the learned maps.

Top row: final training loss per problem (x) and rule (a marker per rule, side by
side, mean over seeds with ±std error bars from two seeds on), log scale, one panel per model; where
the table gives the least-squares optimum (``optimum_loss``), it is marked by a grey
line across the problem. Bottom row: cosine between each other rule's learned linear
map and the backprop map of the same seed (error bars cut at ±1). Points, not bars:
a bar's length on a log axis means nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import summarise
from .style import legend, line_kwargs, log_y, ordered_rules, seeds_note, subplots

ROWS = {"train_loss": "final training loss", "map_cosine": "cosine of map to backprop's"}


SHORT = {"linear": "lin.", "nonlinear": "nonlin.", "classification": "class.", "regression": "regr."}


def short_name(problem: str) -> str:
    """``linear-classification-100d`` -> ``lin.``, ``class.``, ``100d`` on three lines (tick labels that fit)."""
    *words, dims = problem.split("-")
    return "\n".join([SHORT.get(w, w) for w in words] + [dims])


def _points(ax, summary: pd.DataFrame, problems: list[str], bounds: tuple[float, float] | None) -> None:
    """Mean ± std per rule and problem, the rules side by side; error bars cut at ``bounds``."""
    rules = ordered_rules(summary["rule"])
    width = 0.8 / len(rules)
    for k, rule in enumerate(rules):
        rows = summary[summary["rule"] == rule].set_index("dataset").reindex(problems)
        x = np.arange(len(problems)) - 0.4 + width * (k + 0.5)
        low, high = rows["std"], rows["std"]
        if bounds is not None:
            low, high = np.minimum(low, rows["mean"] - bounds[0]), np.minimum(high, bounds[1] - rows["mean"])
        bars = [low, high] if rows["std"].notna().any() else None
        ax.errorbar(x, rows["mean"], yerr=bars, capsize=2, **{**line_kwargs(rule), "linestyle": "none"})
    ax.set_xticks(range(len(problems)), [short_name(p) for p in problems], fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def linear_problems(table: pd.DataFrame):
    """The figure, or None when the table is empty."""
    if table.empty:
        return None
    models = sorted(set(table["model"]))
    problems = sorted(set(table["dataset"]))
    fig, axes = subplots(len(ROWS) * len(models), ncols=len(models), size=(6.5, 3.0), sharey="row")  # models compared
    for r, (column, label) in enumerate(ROWS.items()):
        for c, model in enumerate(models):
            ax = axes[r * len(models) + c]
            picked = table[(table["model"] == model) & np.isfinite(table[column])]
            if column == "map_cosine":  # backprop against itself is 1 by definition
                picked = picked[picked["rule"] != "backprop"]
            _points(ax, summarise(picked, ["rule", "dataset"], column), problems,
                    (-1.0, 1.0) if column == "map_cosine" else None)
            if column == "train_loss":
                log_y(ax)
                optimum = picked.groupby("dataset")["optimum_loss"].mean().reindex(problems) if (
                    "optimum_loss" in table) else pd.Series(dtype=float)
                if optimum.notna().any():  # a line in the legend only where one is drawn
                    ax.hlines(optimum, np.arange(len(problems)) - 0.45, np.arange(len(problems)) + 0.45,
                              color="0.5", linewidth=2, label="least-squares optimum")
            ax.set_ylabel(label)
            ax.set_title(f"{model} model")
    fig.suptitle("Linear and deep linear models on the artificial problems: backprop against a linear SG\n"
                 f"({seeds_note(summarise(table, ['rule', 'dataset', 'model'], 'train_loss')['n'])})")
    legend(fig, axes)
    return fig
