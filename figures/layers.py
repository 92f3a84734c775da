"""Per-layer profiles at the last checkpoint, one line per rule (mean ± std over seeds as error bars).

Each function takes a tidy table and returns a matplotlib Figure, or None when
the table holds nothing it can draw. Layers run bottom (left) to top (right),
in the model's order (the tables' position columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import at_last_step, layer_positions, measure, single_run, summarise
from .style import count_text, legend, line_kwargs, ordered_layers, ordered_rules, seeds_note, subplots

SIMILARITIES = {"linear_cka": "linear CKA", "svcca": "SVCCA"}
PROBE_NAMES = {"linear": "linear probe (linear separability)", "knn": "k-NN probe (local neighbourhoods)"}


def draw_profile(ax, summary: pd.DataFrame, layers: list[str], *, label_suffix: dict | None = None,
                 spread: str = "std") -> None:
    """One line per rule of ``summary`` (``rule, layer, mean`` and the ``spread`` column) over ``layers``;
    error bars where ``spread`` is not NaN."""
    position = {name: i for i, name in enumerate(layers)}
    for rule in ordered_rules(summary["rule"]):
        rows = summary[summary["rule"] == rule].copy()
        rows["x"] = rows["layer"].map(position)
        rows = rows.sort_values("x")
        style = line_kwargs(rule)
        style["label"] = rule + (label_suffix or {}).get(rule, "")
        bars = rows[spread] if rows[spread].notna().any() else None
        ax.errorbar(rows["x"], rows["mean"], yerr=bars, capsize=3, **style)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer (bottom → top)")
    ax.grid(alpha=0.3)


def _single_run_profile(analysis: pd.DataFrame, name: str, ylabel: str, title: str):
    rows = at_last_step(single_run(measure(analysis, name)))
    if rows.empty:
        return None
    summary = summarise(rows.rename(columns={"rule_a": "rule", "layer_a": "layer"}), ["rule", "layer"])
    fig, (ax,) = subplots(1, size=(5.5, 3.6))
    draw_profile(ax, summary, ordered_layers(summary["layer"], layer_positions(rows, ("layer_a", "position_a"))))
    ax.set_ylabel(ylabel)
    fig.suptitle(f"{title}\n(last checkpoint, {seeds_note(summary['n'])})")
    legend(fig, [ax])
    return fig


def effective_rank(analysis: pd.DataFrame):
    """Effective rank of each layer's centred activations on the probe set."""
    return _single_run_profile(analysis, "effective_rank", "effective rank", "Effective rank per layer")


def weight_norm(analysis: pd.DataFrame):
    """Frobenius norm of each layer's weight matrix."""
    return _single_run_profile(analysis, "weight_frobenius", r"$\|W\|_F$", "Weight norm per layer")


def similarity_to_backprop(analysis: pd.DataFrame):
    """Each layer against the same layer of the backprop run with the same seed (CKA, SVCCA panels).

    The backprop line is backprop against backprop with another seed: the ceiling
    that seed-to-seed variation allows, drawn where the table has such pairs. (Runs
    of one seed share their initial weights, which the other rules' lines benefit
    from and the ceiling does not.)
    """
    panels = []
    for name, label in SIMILARITIES.items():
        rows = measure(analysis, name)
        rows = rows[(rows["rule_b"] == "backprop") & (rows["layer_a"] == rows["layer_b"])
                    & (rows["run_a"] != rows["run_b"]) & (rows["step_a"] == rows["step_b"])]
        rows = at_last_step(rows)
        if not rows.empty:
            panels.append((label, rows, summarise(rows.rename(columns={"rule_a": "rule", "layer_a": "layer"}),
                                                  ["rule", "layer"])))
    if not panels:
        return None
    fig, axes = subplots(len(panels), size=(4.6, 3.6))
    for ax, (label, rows, summary) in zip(axes, panels):
        layers = ordered_layers(summary["layer"], layer_positions(rows, ("layer_a", "position_a")))
        draw_profile(ax, summary, layers, label_suffix={"backprop": " (other seed: ceiling)"})
        ax.set_ylabel(f"{label} to backprop")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
    rows, summary = panels[0][1], panels[0][2]
    notes = []
    others = summary[summary["rule"] != "backprop"]
    if not others.empty:
        notes.append(seeds_note(others["n"]))
    ceiling = summary[summary["rule"] == "backprop"]
    if not ceiling.empty:
        pairs = count_text(ceiling["n"], "pair")
        over = f"{pairs} of seeds" if (ceiling["n"] == 1).all() else f"mean ± std over {pairs} of seeds"
        notes.append(f"backprop line: backprop against another seed's, the ceiling ({over})")
    fig.suptitle("Similarity of each layer to the same layer of the backprop run with the same seed "
                 f"(same initial weights) at the last checkpoint\n({'; '.join(notes)})")
    legend(fig, axes)
    return fig


def probe_accuracy(probes: pd.DataFrame):
    """Probe test accuracy per layer at the last checkpoint, one panel per probe kind.

    Error bars: the std over seeds where a rule has several; where it has one,
    the std of that run's accuracy over the probe's outer folds (``accuracy_std``),
    when the table gives it."""
    rows = at_last_step(probes, run="run", step="step")
    rows = rows[np.isfinite(rows["accuracy"])]
    if rows.empty:
        return None
    kinds = sorted(set(rows["probe"]), key=lambda k: k != "linear")
    layers = ordered_layers(rows["layer"], layer_positions(rows, ("layer", "position")))
    folds = {"accuracy_std", "folds"} <= set(rows.columns)
    fig, axes = subplots(len(kinds), size=(4.6, 3.6), sharey=True)  # one scale: the probes are compared
    summaries = []
    for ax, kind in zip(axes, kinds):
        mine = rows[rows["probe"] == kind]
        summary = summarise(mine, ["rule", "layer"], "accuracy")
        summary["bars"] = summary["std"]
        if folds:  # one seed: its own spread over the folds
            own = mine.groupby(["rule", "layer"])["accuracy_std"].first().rename("fold_std").reset_index()
            summary = summary.merge(own, on=["rule", "layer"])
            summary["bars"] = summary["std"].fillna(summary["fold_std"])
        draw_profile(ax, summary, layers, spread="bars")
        ax.set_ylabel("probe test accuracy")
        ax.set_title(PROBE_NAMES.get(kind, f"{kind} probe"))
        summaries.append(summary)
    n = pd.concat(summaries)["n"]
    if (n == 1).all():
        note = (f"one seed; bars: ± std over {count_text(rows['folds'], 'outer fold')}" if folds
                else "one seed, no spread")
    elif (n > 1).all():
        note = seeds_note(n)
    else:
        note = (f"mean ± std over {count_text(n)}" + ("; where a rule has one seed, ± std over its outer folds"
                                                      if folds else ""))
    fig.suptitle(f"Probe accuracy per layer at the last checkpoint ({note})")
    legend(fig, axes)
    return fig
