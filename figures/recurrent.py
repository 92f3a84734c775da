"""The figures of a recurrent experiment: each task's score against the window T, one line per rule; and
the runs over positions in the window and over training.

``recurrent`` reads the experiment's table (``analysis.recurrent.results_table``):
small points are seeds, lines join the means over seeds, bars are ± std where
a rule has two seeds or more at a T (the title says how many).
``recurrent_positions`` reads ``recurrent.positions``' tables, one column per
task: the cosine of the rule's gradient with the true one against the steps
to the window's end, the CKA of ``h`` with BPTT's against the step's place
in its window (the debiased estimate: fewer probe sequences than units), the
module's cosine with the true boundary gradient over training, and the
accuracy of reading the first input symbol off ``h`` at each probe step
(Copy, Repeat Copy); means over seeds (and probe steps), one line per rule
and T (solid: the largest T, dotted: the others).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repanalysis.analysis.recurrent import SCORES, TASK_NAMES

from .style import count_text, legend, line_kwargs, ordered_rules, save, seeds_note, subplots

RULE_NAMES = {"backprop": "BPTT (truncated at T)", "dni": "DNI", "dni+aux": "DNI + aux"}


def draw_recurrent_figures(table: pd.DataFrame, positions: pd.DataFrame, training: pd.DataFrame, out_dir: Path,
                           tag: str | None = None) -> list[Path]:
    """``recurrent`` and ``recurrent_positions`` (tagged ``_<tag>``); nothing for an empty table."""
    if table.empty:
        return []
    return _scores(table, out_dir, tag) + _positions(positions, training, out_dir, tag)


def _scores(table: pd.DataFrame, out_dir: Path, tag: str | None) -> list[Path]:
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = subplots(len(tasks), ncols=len(tasks), size=(4.2, 3.2))
    counts = table.groupby(["task", "rule", "bptt"])["seed"].nunique()
    for ax, task in zip(axes, tasks):
        rows = table[table["task"] == task]
        for rule in ordered_rules(rows["rule"].unique()):
            mine = rows[rows["rule"] == rule]
            kwargs = line_kwargs(rule) | {"label": RULE_NAMES.get(rule, rule)}
            ax.scatter(mine["bptt"], mine["score"], color=kwargs["color"], s=8, alpha=0.35)
            by_t = mine.groupby("bptt")["score"]
            mean, std = by_t.mean(), by_t.std()
            ax.errorbar(mean.index, mean.to_numpy(), yerr=std.to_numpy() if std.notna().any() else None,
                        capsize=2, elinewidth=0.8, **kwargs)
        ax.set_xticks(sorted(rows["bptt"].dropna().unique()))
        ax.set_xlabel("window T (steps)")
        ax.set_ylabel(SCORES[task][0])
        ax.set_title(TASK_NAMES[task], fontsize=9)
        if SCORES[task][1] > 0:
            ax.yaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Score against the truncation window, per rule (small points: seeds; lines: "
                 f"{seeds_note(np.unique(counts.to_numpy()))})", fontsize=10)
    legend(fig, axes)
    return save(fig, out_dir, f"recurrent{f'_{tag}' if tag else ''}")


#: The rows of ``recurrent_positions``: (table, x column, y column, x label, y label).
_POSITION_ROWS = (("positions", "to_boundary", "grad_cosine", "steps to the window's end",
                   "cosine with the true gradient"),
                  ("positions", "offset", "cka_to_bptt", "step in the window", "linear CKA of h with BPTT's"),
                  ("training", "step", "boundary_cosine", "training step", "module's cosine at the boundary"),
                  ("positions", "step", "first_symbol", "probe step", "first symbol read off h"))


def _positions(positions: pd.DataFrame, training: pd.DataFrame, out_dir: Path, tag: str | None) -> list[Path]:
    if positions.empty:
        return []
    tables = {"positions": positions, "training": training}
    tasks = list(dict.fromkeys(positions["task"]))
    fig, axes = subplots(len(tasks) * len(_POSITION_ROWS), ncols=len(tasks), size=(4.2, 3.0))
    longest = positions["bptt"].max()
    for row, (name, x, y, xlabel, ylabel) in enumerate(_POSITION_ROWS):
        for column, task in enumerate(tasks):
            ax = axes[row * len(tasks) + column]
            rows = tables[name][tables[name]["task"] == task]
            if rows[y].isna().all():  # nothing to draw (no first symbol in text, no module in BPTT)
                ax.set_visible(False)
                continue
            for rule in ordered_rules(rows["rule"].unique()):
                for bptt, group in rows[rows["rule"] == rule].groupby("bptt"):
                    means = group.groupby(x)[y].mean().dropna()
                    if means.empty:
                        continue
                    kwargs = line_kwargs(rule) | {"label": RULE_NAMES.get(rule, rule) + ("" if bptt == longest else
                                                  " (T < max)"), "linestyle": "-" if bptt == longest else ":"}
                    ax.plot(means.index, means.to_numpy(), **kwargs)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(TASK_NAMES[task], fontsize=9)
    counts = positions.groupby(["task", "rule", "bptt"])["seed"].nunique()
    fig.suptitle(f"Over positions in the window (last checkpoint) and over training, per rule; solid: T = "
                 f"{int(longest)}, dotted: smaller T; means over {count_text(np.unique(counts.to_numpy()))}",
                 fontsize=10)
    legend(fig, axes)
    return save(fig, out_dir, f"recurrent_positions{f'_{tag}' if tag else ''}")
