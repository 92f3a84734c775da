"""Figures across depth: each claim's per-run quantity against depth, and RDM grids at chosen depths.

They read the reproduction's quantity table (``claims.quantities``: one row
per run and quantity, with its ``scope``), the analysis table and the run
files. Lines are rules, panels activations (one per activation in the grid);
points are the mean over seeds with, as the report gives them, its 95%
t-interval (``stats.paired_effect`` of the values themselves) where every
point has at least ``stats.MIN_SEEDS`` seeds, else the range of the seeds'
values (none for one seed); the caption says which.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from repanalysis.measures import stats

from .rdms import rdm_grid
from .style import count_text, legend, line_kwargs, ordered_rules, save, subplots

#: stem -> (title, ((quantity, y label), ...)): one row of panels per quantity.
DEPTH_FIGURES = {
    "depth_accuracy": ("Final test accuracy against depth (claim 4a)", (("test_acc", "final test accuracy"),)),
    "depth_convergence": ("Convergence against depth (claim 4b)",
                          (("train_loss_area", "mean training loss\nover the run"),
                           ("steps_to_test_acc_95", "steps to 95%\ntest accuracy"))),
    "depth_rsa_to_last_layer": ("Similarity of each layer's RDM to the last layer's, mean over layers (claim 4c)",
                                (("rsa_to_last_layer_euclidean", "RSA with the last layer\n(Euclidean RDMs)"),
                                 ("rsa_to_last_layer_correlation", "RSA with the last layer\n(correlation RDMs)"))),
    "depth_cka_to_backprop": ("Linear CKA with other-seed backprop runs, mean over layers (claim 4d)",
                              (("cka_to_other_backprop", "linear CKA to\nother-seed backprop"),)),
}
MAX_RDM_LAYERS = 6


def _cell(scope: str) -> dict[str, str]:
    """``{"depth": "50", "activation": "relu", ...}`` from a scope label such as ``"depth 50, relu"``."""
    out = {}
    for part in scope.split(", "):
        m = re.fullmatch(r"(depth|width) (\S+)", part)
        if m:
            out[m.group(1)] = m.group(2)
        else:
            out.setdefault("activation", part)
    return out


def _with_cells(q: pd.DataFrame) -> pd.DataFrame:
    cells = q["scope"].map(_cell)
    return q.assign(depth=cells.map(lambda c: int(c.get("depth", 0))),
                    activation=cells.map(lambda c: c.get("activation", "")))


def _bars(values, kind: str) -> tuple[float, float, float]:
    """``(mean, below, above)`` of per-seed ``values``: bars to the 95% t-interval (``kind`` "interval") or to
    the range of the values ("range"; "none": not drawn)."""
    e = stats.paired_effect(values)
    if kind == "interval":
        return e.mean, e.mean - e.low, e.high - e.mean
    return e.mean, e.mean - e.smallest, e.largest - e.mean


def _draw_quantity(ax, q: pd.DataFrame, quantity: str, ylabel: str, activation: str, bars: str) -> None:
    rows = q[(q["quantity"] == quantity) & (q["activation"] == activation)]
    for rule in ordered_rules(rows["rule"]):
        points = [(depth, *_bars(g["value"], bars)) for depth, g in rows[rows["rule"] == rule].groupby("depth")]
        if not points:
            continue
        depth, mean, low, high = map(np.array, zip(*points))
        style = line_kwargs(rule)
        if rule == "backprop" and quantity == "cka_to_other_backprop":
            style["label"] = "backprop (seed-vs-seed ceiling)"
        ax.errorbar(depth, mean, yerr=None if bars == "none" else [low, high], capsize=3, **style)
    if quantity == "cka_to_other_backprop":  # the null of every compared pair of runs, whatever the rule
        null = q[(q["quantity"] == "cka_null") & (q["activation"] == activation)].dropna(subset=["value"])
        if not null.empty:
            by_depth = null.groupby("depth")["value"].mean()
            ax.plot(by_depth.index, by_depth.to_numpy(), color="#999999", linestyle=":",
                    label="permutation null (95th pct.)")
    ax.set_xscale("log")
    depths = sorted(rows["depth"].unique())
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.minorticks_off()
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel(ylabel)
    ax.set_title(activation)
    ax.label_outer()
    ax.grid(alpha=0.3)


def _quantity_figure(q: pd.DataFrame, panels, title: str):
    activations = sorted(a for a in q["activation"].unique())
    present = [(name, label) for name, label in panels if (q["quantity"] == name).any()]
    if not present or not activations:
        return None
    drawn = q[q["quantity"].isin([name for name, _ in present])].dropna(subset=["value"])
    n = drawn.groupby(["rule", "scope", "quantity"])["seed"].nunique()
    bars = "none" if n.max() == 1 else "interval" if n.min() >= stats.MIN_SEEDS else "range"
    fig, axes = subplots(len(present) * len(activations), ncols=len(activations), size=(4.2, 3.2),
                         sharey="row")
    for r, (name, label) in enumerate(present):
        for c, activation in enumerate(activations):
            _draw_quantity(axes[r * len(activations) + c], q, name, label, activation, bars)
    note = {"none": "one seed: no interval",
            "range": f"mean over {count_text(n)}; bars: the range of the seeds' values (no interval from fewer "
                     f"than {stats.MIN_SEEDS} seeds)",
            "interval": f"mean over {count_text(n)}, 95% t-interval"}[bars]
    fig.suptitle(f"{title}\n({note})")
    legend(fig, axes)
    return fig


def weight_norm_profiles(analysis: pd.DataFrame | None, runs: dict):
    """Relative weight norm against relative layer position, a panel per activation and rule, a line per depth."""
    if analysis is None or analysis.empty:
        return None
    rows = analysis[analysis["measure"] == "weight_frobenius_relative"]
    if rows.empty:
        return None
    rows = rows[rows["step_a"] == rows.groupby("run_a")["step_a"].transform("max")]
    cells = {str(path): planned for planned, path in runs.items()}
    rows = rows[rows["run_a"].astype(str).isin(cells)]
    if rows.empty:
        return None
    rows = rows.assign(depth=rows["run_a"].map(lambda r: cells[str(r)].config.depth),
                       activation=rows["run_a"].map(lambda r: cells[str(r)].config.activation),
                       position=rows["layer_a"].str[1:].astype(int))
    panels = [(a, r) for a in sorted(rows["activation"].unique()) for r in ordered_rules(rows["rule_a"])]
    depths = sorted(rows["depth"].unique())
    colors = {d: c for d, c in zip(depths, ["#440154", "#31688e", "#35b779", "#90d743", "#fde725", "#21918c"] * 3)}
    fig, axes = subplots(len(panels), ncols=len({r for _, r in panels}), size=(4.2, 3.2), sharey=True)
    for ax, (activation, rule) in zip(axes, panels):
        sub = rows[(rows["activation"] == activation) & (rows["rule_a"] == rule)]
        for depth in depths:
            g = sub[sub["depth"] == depth].groupby("position")["value"].mean()
            if g.empty:
                continue
            x = (g.index.to_numpy() - 1) / max(1, depth - 1)
            ax.plot(x[1:], g.to_numpy()[1:], color=colors[depth], label=f"depth {depth}")
            ax.plot(x[:1], g.to_numpy()[:1], color=colors[depth], marker="o", fillstyle="none", linestyle="none")
        ax.set_xlabel("relative layer position (0: h1, 1: last)")
        ax.set_ylabel("‖W_T‖_F / ‖W_0‖_F")
        ax.set_title(f"{rule}, {activation}")
        ax.grid(alpha=0.3)
        ax.label_outer()
    seeds = rows.groupby(["rule_a", "depth", "activation"])["seed_a"].nunique()
    over = "one seed" if seeds.max() == 1 else f"mean over {count_text(seeds)}"
    fig.suptitle(f"Weight norm relative to its initial value, per layer ({over}, last checkpoint);\n"
                 "open symbol: h1, the input layer (its weight reads the raw inputs; left out of the slopes)")
    legend(fig, axes)
    return fig


def draw_depth_figures(quantities: pd.DataFrame, analysis: pd.DataFrame | None, runs: dict, out_dir, *,
                       rdm_depths=(), tag: str | None = None) -> list[Path]:
    """Every across-depth figure the inputs allow, and RDM grids at ``rdm_depths``; the files written."""
    q = _with_cells(quantities)
    out = Path(out_dir)
    written = []
    figures = {stem: _quantity_figure(q, panels, title) for stem, (title, panels) in DEPTH_FIGURES.items()}
    figures["depth_weight_norms"] = weight_norm_profiles(analysis, runs)
    for stem, fig in figures.items():
        if fig is not None:
            written += save(fig, out, stem if not tag else f"{stem}_{tag}")
    for depth in rdm_depths:
        for activation in sorted({p.config.activation for p in runs if p.config.depth == depth}):
            paths = [path for p, path in runs.items() if p.config.depth == depth and p.config.activation == activation]
            fig = rdm_grid(paths, max_layers=MAX_RDM_LAYERS)
            if fig is not None:
                fig.suptitle(f"RDMs (Euclidean), last checkpoint\ndepth {depth}, {activation};\n"
                             "inputs sorted by class", fontsize=9)
                written += save(fig, out, f"rdms_d{depth}_{activation}" + (f"_{tag}" if tag else ""))
    return written

