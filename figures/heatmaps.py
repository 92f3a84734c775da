"""Layer-by-layer linear CKA within each network, one heatmap per rule (mean over seeds).

Reads the analysis table's within-run rows: ``linear_cka`` with ``run_b ==
run_a`` and ``layer_b != layer_a``, at each run's last step. The diagonal
(a layer against itself) is 1 by definition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import at_last_step, layer_positions, measure
from .style import LAYER_CMAP, count_text, ordered_layers, ordered_rules, subplots


def layer_matrices(analysis: pd.DataFrame) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per rule: ``(layers bottom to top, [L, L] mean CKA over seeds)``, symmetrised, unit diagonal; NaN where
    unmeasured."""
    rows = measure(analysis, "linear_cka")
    rows = at_last_step(rows[(rows["run_a"] == rows["run_b"]) & (rows["layer_a"] != rows["layer_b"])])
    out = {}
    for rule in ordered_rules(rows["rule_a"]):
        picked = rows[rows["rule_a"] == rule]
        positions = layer_positions(picked, ("layer_a", "position_a"), ("layer_b", "position_b"))
        layers = ordered_layers(pd.concat([picked["layer_a"], picked["layer_b"]]), positions)
        index = {name: i for i, name in enumerate(layers)}
        total = np.zeros((len(layers), len(layers)))
        count = np.zeros_like(total)
        for a, b, v in zip(picked["layer_a"], picked["layer_b"], picked["value"].astype(float)):
            for i, j in ((index[a], index[b]), (index[b], index[a])):
                total[i, j] += v
                count[i, j] += 1
        with np.errstate(invalid="ignore"):
            matrix = total / count
        np.fill_diagonal(matrix, 1.0)
        out[rule] = (layers, matrix)
    return out


def layer_cka(analysis: pd.DataFrame):
    """The heatmaps, sharing one colour scale from 0 to 1; None without within-run rows."""
    matrices = layer_matrices(analysis)
    if not matrices:
        return None
    rows = measure(analysis, "linear_cka")
    seeds = rows[rows["run_a"] == rows["run_b"]].groupby("rule_a")["seed_a"].nunique()
    fig, axes = subplots(len(matrices), ncols=min(len(matrices), 3), size=(3.2, 3.0))
    for ax, (rule, (layers, matrix)) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap=LAYER_CMAP, origin="lower")
        ax.set_xticks(range(len(layers)), layers)
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(rule)
        ax.grid(False)
        if len(layers) <= 8:
            for (i, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
    over = "one seed" if set(seeds) == {1} else f"mean over {count_text(seeds)}"
    fig.suptitle(f"Linear CKA between the layers of one network (last checkpoint, {over})")
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.colorbar(image, ax=list(axes), fraction=0.03, label="linear CKA")
    return fig
