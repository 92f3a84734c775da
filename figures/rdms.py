"""Representational dissimilarity matrices from run files: a grid of layers (rows) by rules (columns).

Each panel is ``repanalysis.measures.rdm`` (Euclidean, ``RDM_METRIC``) of one
layer's probe activations at the run's last checkpoint (or at ``step``), for the rule's lowest
seed, divided by its largest entry (so layers of different scales share one
colour scale from 0 to 1), with the probe inputs sorted by class (by target
value for regression; stable, so ties keep their probe order). At most
``MAX_SHOWN`` inputs are shown: every k-th of the sorted ones, k the smallest
step that keeps them under the limit (a readable panel and a small file).
Thin lines mark class boundaries.
"""

from __future__ import annotations

import numpy as np

from repanalysis.measures import rdm
from repanalysis.runfile.hdf5 import RunFile

from .inputs import checkpoint_at
from .style import LAYER_CMAP, ordered_layers, ordered_rules, subplots

MAX_SHOWN = 100
RDM_METRIC = "euclidean"  # defined for every sample, unlike correlation (a dead ReLU layer has none)


def lowest_seed_runs(paths) -> dict[str, object]:
    """Per rule, the path of its run with the lowest seed."""
    best: dict[str, tuple[int, object]] = {}
    for path in paths:
        with RunFile(path) as run:
            rule, seed = run.rule, run.seed
        if rule not in best or seed < best[rule][0]:
            best[rule] = (seed, path)
    return {rule: best[rule][1] for rule in ordered_rules(best)}


def _scaled(matrix: np.ndarray) -> np.ndarray:
    top = matrix.max()
    return matrix / top if top > 0 else matrix


def sorted_rdms(path, step: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None, int,
                                                        dict[str, int]]:
    """``({layer: RDM with rows sorted by class}, sorted labels or None, seed, {layer: its position})`` at the
    run's last checkpoint, or at ``step``."""
    with RunFile(path) as run:
        c = checkpoint_at(run, step)
        labels = run.probe_labels
        key = labels if labels is not None else run.probe_targets[:, 0]
        order = np.argsort(key, kind="stable")
        order = order[:: -(-len(order) // MAX_SHOWN)]
        matrices = {layer: _scaled(rdm(run.activations(layer, c)[order], RDM_METRIC)) for layer in run.layers}
        positions = {layer: run.layer_info(layer)["position"] for layer in run.layers}
        return matrices, None if labels is None else labels[order], run.seed, positions


def rdm_grid(paths, max_layers: int | None = None, step: int | None = None):
    """The grid figure (at each run's last checkpoint, or at ``step``), or None without run files; at most
    ``max_layers`` rows, evenly spaced, the last included."""
    runs = lowest_seed_runs(paths)
    if not runs:
        return None
    data = {rule: sorted_rdms(path, step) for rule, path in runs.items()}
    positions = {layer: at for *_, own in data.values() for layer, at in own.items()}
    layers = ordered_layers({layer for matrices, *_ in data.values() for layer in matrices}, positions)
    if max_layers and len(layers) > max_layers:
        layers = [layers[i] for i in sorted(set(np.linspace(0, len(layers) - 1, max_layers).round().astype(int)))]
    fig, axes = subplots(len(layers) * len(runs), ncols=len(runs), size=(1.9, 1.9))
    for r, layer in enumerate(layers):
        for c, (rule, (matrices, labels, seed, _)) in enumerate(data.items()):
            ax = axes[r * len(runs) + c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(f"{rule} (seed {seed})", fontsize=9)
            if c == 0:
                ax.set_ylabel(layer)
            if layer not in matrices:
                continue
            image = ax.imshow(matrices[layer], vmin=0, vmax=1, cmap=LAYER_CMAP, interpolation="nearest")
            if labels is not None:
                for edge in np.flatnonzero(np.diff(labels)) + 0.5:
                    ax.axhline(edge, color="white", linewidth=0.3)
                    ax.axvline(edge, color="white", linewidth=0.3)
    by = "class" if all(labels is not None for _, labels, *_ in data.values()) else "class or target value"
    fig.suptitle(f"RDMs at the last checkpoint\nrows: layers, bottom first; columns: rules\n"
                 f"probe inputs sorted by {by}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(image, ax=list(axes), fraction=0.03, label="Euclidean distance / largest")
    return fig
