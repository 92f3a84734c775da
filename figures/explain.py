"""Figures of the explanation (``analysis.explain``): drift from the backprop twin against the error signal.

They read the explanation frame (one row per arm run, layer and checkpoint).
Arms are coloured by a fixed qualitative palette in the order they first
appear; points and lines are means over seeds, bars and bands their standard
deviation where there are two seeds or more (the caption says how many); the
backprop ceiling only where the frame has one (two backprop seeds or more).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .style import legend, save, seeds_note, subplots

REGION_NAMES = {"below": "below the module", "above": "above it (true gradient)"}


def _colours(arms) -> dict[str, tuple]:
    palette = matplotlib.colormaps["tab10"]
    return {arm: palette(k % 10) for k, arm in enumerate(arms)}


def _band(ax, mean: pd.Series, std: pd.Series, colour) -> None:
    """A ± std band around ``mean`` where ``std`` is known (two seeds or more); nothing without one."""
    if std.notna().any():
        ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), where=std.notna().to_numpy(),
                        color=colour, alpha=0.15, linewidth=0)


def _last(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["step"] == frame.groupby("run")["step"].transform("max")]


def draw_explain_figures(frame: pd.DataFrame, out_dir: Path, tag: str | None = None) -> list[Path]:
    """``explain_dose_response``, ``explain_profiles`` and ``explain_over_training`` (tagged ``_<tag>``), one
    column of panels per cell; nothing for an empty frame."""
    if frame.empty:
        return []
    suffix = f"_{tag}" if tag else ""
    arms = list(dict.fromkeys(frame["arm"]))
    colours = _colours(arms)
    scopes = list(dict.fromkeys(frame["scope"]))
    seeds = frame.groupby("arm")["seed"].nunique()
    note = seeds_note(seeds)
    band = ", band: ± std" if seeds.max() > 1 else ""
    paths = []
    paths += _dose_response(_last(frame), scopes, arms, colours, note, out_dir, f"explain_dose_response{suffix}")
    paths += _profiles(_last(frame), scopes, arms, colours, note + band, out_dir, f"explain_profiles{suffix}")
    paths += _over_training(frame, scopes, arms, colours, note + band, out_dir, f"explain_over_training{suffix}")
    return paths


def _dose_response(last: pd.DataFrame, scopes, arms, colours, note, out_dir, stem) -> list[Path]:
    fig, axes = subplots(2 * len(scopes), ncols=len(scopes), size=(5.2, 3.4))
    for column, scope in enumerate(scopes):
        for row, region in enumerate(("below", "above")):
            ax = axes[row * len(scopes) + column]
            here = last[(last["scope"] == scope) & (last["region"] == region)]
            x = "below_update"  # below: the layers' own exposure; above: that of the layers below them
            for arm in arms:
                per_seed = here[here["arm"] == arm].groupby("seed")[[x, "d_cka"]].mean()
                if per_seed.empty:
                    continue
                ax.scatter(per_seed[x], per_seed["d_cka"], color=colours[arm], s=8, alpha=0.35)
                several = len(per_seed) > 1
                spread = per_seed.std()
                ax.errorbar(per_seed[x].mean(), per_seed["d_cka"].mean(), xerr=spread[x] if several else None,
                            yerr=spread["d_cka"] if several else None,
                            color=colours[arm], label=arm, fmt="o", markersize=5, elinewidth=0.8, capsize=2)
            ax.set_title(f"{scope}, {REGION_NAMES[region]}", fontsize=9)
            ax.set_xlabel("run-average update error of the layers below the module")
            ax.set_ylabel("1 − CKA with the backprop twin")
    fig.suptitle("Drift from the backprop twin at the last checkpoint (mean over the region's layers) against\n"
                 f"the error that reached the weights below the module (small points: seeds; large: {note})",
                 fontsize=10)
    legend(fig, axes)
    return save(fig, out_dir, stem)


def _profiles(last: pd.DataFrame, scopes, arms, colours, note, out_dir, stem) -> list[Path]:
    fig, axes = subplots(2 * len(scopes), ncols=len(scopes), size=(5.2, 3.2))
    for column, scope in enumerate(scopes):
        here = last[last["scope"] == scope]
        module = here[here["region"] == "below"]["position"].max()
        for row, (quantity, label) in enumerate((("exposure_update", "run-average update error"),
                                                 ("d_cka", "1 − CKA with the backprop twin"))):
            ax = axes[row * len(scopes) + column]
            for arm in arms:
                mine = here[here["arm"] == arm].groupby("position")[quantity]
                mean, std = mine.mean(), mine.std()
                ax.plot(mean.index, mean.to_numpy(), color=colours[arm], label=arm, marker=".", markersize=3)
                _band(ax, mean, std, colours[arm])
            if quantity == "d_cka":
                ceiling = here.groupby("position")["ceiling_cka"].mean().dropna()
                if not ceiling.empty:
                    ax.plot(ceiling.index, ceiling.to_numpy(), color="black", linestyle=":",
                            label="backprop, other seeds")
            if np.isfinite(module):
                ax.axvline(module + 0.5, color="grey", linewidth=0.8, linestyle="--")
            ax.set_title(f"{scope}: {label}", fontsize=9)
            ax.set_xlabel("layer (bottom → top; dashed: the module)")
            ax.set_ylabel(label)
    fig.suptitle(f"Per-layer error and drift at the last checkpoint\n({note})", fontsize=10)
    legend(fig, axes)
    return save(fig, out_dir, stem)


def _over_training(frame: pd.DataFrame, scopes, arms, colours, note, out_dir, stem) -> list[Path]:
    fig, axes = subplots(2 * len(scopes), ncols=len(scopes), size=(5.2, 3.0))
    for column, scope in enumerate(scopes):
        for row, region in enumerate(("below", "above")):
            ax = axes[row * len(scopes) + column]
            here = frame[(frame["scope"] == scope) & (frame["region"] == region)]
            for arm in arms:
                mine = here[here["arm"] == arm].groupby(["seed", "step"])["d_cka"].mean().groupby("step")
                mean, std = mine.mean(), mine.std()
                if mean.empty:
                    continue
                ax.plot(mean.index, mean.to_numpy(), color=colours[arm], label=arm)
                _band(ax, mean, std, colours[arm])
            ax.set_title(f"{scope}, {REGION_NAMES[region]}", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel("1 − CKA with the twin\n(mean over layers)")
    fig.suptitle(f"Drift from the backprop twin over training\n({note})", fontsize=10)
    legend(fig, axes)
    return save(fig, out_dir, stem)
