"""The figure of a recurrent experiment: each task's score against the window T, one line per rule.

It reads the experiment's table (``recurrent.results.results_table``): small
points are seeds, lines join the means over seeds, bars are ± std where a
rule has two seeds or more at a T (the title says how many).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repanalysis.recurrent.results import SCORES, TASK_NAMES

from .style import legend, line_kwargs, ordered_rules, save, seeds_note, subplots

RULE_NAMES = {"backprop": "BPTT (truncated at T)", "dni": "DNI"}


def draw_recurrent_figures(table: pd.DataFrame, out_dir: Path, tag: str | None = None) -> list[Path]:
    """``recurrent`` (tagged ``_<tag>``): one panel per task of ``table``; nothing for an empty table."""
    if table.empty:
        return []
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
