"""Per-layer measures over training: one panel per layer (bottom to top), step on x, one line per rule (mean,
with a ± std band over two or more seeds).

Each function takes the analysis table and returns a Figure, or None when
the table holds no row of its measures.
"""

from __future__ import annotations

import pandas as pd

from .inputs import layer_positions, measure, single_run, summarise
from .style import legend, line_kwargs, ordered_layers, ordered_rules, seeds_note, subplots

GRADIENT_MEASURES = {"grad_cosine": "cosine(signal, true gradient)"}
BOUNDS = {"cosine(signal, true gradient)": (-1.0, 1.0), "corr(synthetic, true loss)": (-1.0, 1.0)}
SYNTHETIC_MEASURES = {
    "synthetic_loss_corr": "corr(synthetic, true loss)",
    "synthetic_loss_gap": "mean |synthetic − true loss|",
}


def draw_over_steps(ax, summary: pd.DataFrame, bounds: tuple[float, float] | None = None) -> None:
    """One line per rule of ``summary`` (``rule, step, mean, std``) against step, with a ±std band where the
    std is known (two seeds or more; cut at ``bounds``, the range the quantity can take)."""
    for rule in ordered_rules(summary["rule"]):
        rows = summary[summary["rule"] == rule].sort_values("step")
        style = line_kwargs(rule)
        ax.plot(rows["step"], rows["mean"], markevery=max(1, len(rows) // 10), **style)
        if rows["std"].isna().all():
            continue
        low, high = rows["mean"] - rows["std"], rows["mean"] + rows["std"]
        if bounds is not None:
            low, high = low.clip(lower=bounds[0]), high.clip(upper=bounds[1])
        ax.fill_between(rows["step"], low, high, where=rows["std"].notna(), color=style["color"], alpha=0.15,
                        linewidth=0)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)


def _by_layer(analysis: pd.DataFrame, measures: dict[str, str], title: str):
    """Rows: measures; columns: layers."""
    found = {}
    for name, label in measures.items():
        rows = single_run(measure(analysis, name))
        if not rows.empty:
            found[label] = rows.rename(columns={"rule_a": "rule", "layer_a": "layer", "step_a": "step"})
    if not found:
        return None
    every = pd.concat(found.values())
    layers = ordered_layers(every["layer"], layer_positions(every, ("layer", "position_a")))
    fig, axes = subplots(len(found) * len(layers), ncols=len(layers), size=(3.0, 2.6), sharex=True, sharey="row")
    for r, (label, rows) in enumerate(found.items()):
        for c, layer in enumerate(layers):
            ax = axes[r * len(layers) + c]
            picked = rows[rows["layer"] == layer]
            if picked.empty:
                ax.text(0.5, 0.5, "no signal here", ha="center", va="center", transform=ax.transAxes, color="0.5")
            else:
                draw_over_steps(ax, summarise(picked, ["rule", "step"]), BOUNDS.get(label))
            ax.set_title(layer)
            if c == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"{title} ({seeds_note(every.groupby(['measure', 'rule', 'layer', 'step'])['seed_a'].nunique())})")
    legend(fig, axes)
    return fig


def gradient_alignment(analysis: pd.DataFrame):
    """Cosine between each rule's error signal and the true gradient, per layer, over training."""
    return _by_layer(analysis, GRADIENT_MEASURES, "Error signal against the true gradient")


def synthetic_loss(analysis: pd.DataFrame):
    """The synthetic loss each SG module implies against the true loss, per layer, over training."""
    return _by_layer(analysis, SYNTHETIC_MEASURES, "Synthetic loss against the true loss")
