"""Singular-value spectra of each layer's activations: one panel per layer (bottom to top), one line per rule.

Each run's spectrum is ``repanalysis.measures.singular_values`` of the layer's
probe activations at the last checkpoint (or at ``step``), normalised by its largest value;
lines are the mean over seeds, on a log scale.
"""

from __future__ import annotations

import numpy as np

from repanalysis.measures import singular_values
from repanalysis.runfile.hdf5 import RunFile

from .inputs import checkpoint_at
from .style import count_text, legend, line_kwargs, log_y, ordered_layers, ordered_rules, subplots


def normalised_spectra(paths, step: int | None = None) -> tuple[dict[tuple[str, str], list[np.ndarray]],
                                                                 dict[str, int]]:
    """``({(rule, layer): [σ / σ_max per run]}, {layer: its position})`` at each run's last checkpoint, or at
    ``step`` (all-zero spectra left out)."""
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    positions: dict[str, int] = {}
    for path in paths:
        with RunFile(path) as run:
            c = checkpoint_at(run, step)
            for layer in run.layers:
                positions.setdefault(layer, run.layer_info(layer)["position"])
                s = np.asarray(singular_values(run.activations(layer, c)), dtype=np.float64)
                if len(s) and s[0] > 0:
                    out.setdefault((run.rule, layer), []).append(s / s[0])
    return out, positions


def spectra(paths, step: int | None = None):
    """The figure (at each run's last checkpoint, or at ``step``), or None when no layer has a non-zero
    spectrum."""
    found, positions = normalised_spectra(paths, step)
    if not found:
        return None
    layers = ordered_layers((layer for _, layer in found), positions)
    fig, axes = subplots(len(layers), ncols=min(len(layers), 3), size=(3.6, 3.0), sharey=True)
    for ax, layer in zip(axes, layers):
        for rule in ordered_rules(rule for rule, name in found if name == layer):
            runs = found[(rule, layer)]
            n = min(len(s) for s in runs)
            mean = np.mean([s[:n] for s in runs], axis=0)
            style = line_kwargs(rule)
            style["markevery"] = max(1, n // 8)
            ax.plot(np.arange(1, n + 1), np.maximum(mean, 1e-6), **style)
        log_y(ax)
        ax.set_xlabel(r"index $i$")
        ax.set_ylabel(r"$\sigma_i / \sigma_1$")
        ax.set_title(layer)
        ax.grid(alpha=0.3)
    runs = [len(spectra) for spectra in found.values()]
    over = "one seed" if set(runs) == {1} else f"mean over {count_text(runs)}"
    fig.suptitle(f"Singular-value spectra of the activations (last checkpoint, {over})")
    legend(fig, axes)
    return fig
