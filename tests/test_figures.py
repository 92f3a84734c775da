"""Figures: drawn from small synthetic tidy tables and two tiny runs; one colour per rule everywhere."""

from __future__ import annotations

import itertools

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from helpers import backprop_and_fa_runs
from matplotlib.container import BarContainer, ErrorbarContainer

from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.figures import (
    FROM_RUNS,
    FROM_TABLES,
    RULE_ORDER,
    draw_figures,
    heatmaps,
    layers,
    linear,
    rule_style,
    training,
)
from repanalysis.figures.style import RuleStyle
from repanalysis.training.train import train

RULES = ("backprop", "sg", "fa")
SEEDS = (0, 1)
LAYERS = ("h1", "h2")
STEPS = (0, 10)


def _row(measure, run_a, layer_a, step, value, run_b=None, layer_b=None):
    rule_a, seed_a = run_a.split("_s")
    rule_b, seed_b = run_b.split("_s") if run_b else (None, None)
    return {"measure": measure, "run_a": run_a, "rule_a": rule_a, "seed_a": int(seed_a), "layer_a": layer_a,
            "step_a": step, "run_b": run_b, "rule_b": rule_b, "seed_b": None if seed_b is None else int(seed_b),
            "layer_b": layer_b, "step_b": step if run_b else None, "value": value}


def analysis_table() -> pd.DataFrame:
    """Every kind of row the analysis figures read, with made-up values."""
    rng = np.random.default_rng(0)
    rows = []
    for rule, seed in itertools.product(RULES, SEEDS):
        run = f"{rule}_s{seed}"
        reference = f"backprop_s{1 - seed}" if rule == "backprop" else f"backprop_s{seed}"
        for layer, step in itertools.product(LAYERS, STEPS):
            rows.append(_row("effective_rank", run, layer, step, rng.uniform(2, 8)))
            rows.append(_row("weight_frobenius", run, layer, step, rng.uniform(1, 3)))
            for name in ("linear_cka", "svcca"):
                rows.append(_row(name, run, layer, step, rng.uniform(0.3, 1), reference, layer))
            if rule != "backprop":
                rows.append(_row("grad_cosine", run, layer, step, rng.uniform(-0.1, 0.9)))
            if rule == "sg":
                rows.append(_row("synthetic_loss_corr", run, layer, step, rng.uniform(0, 1)))
                rows.append(_row("synthetic_loss_gap", run, layer, step, rng.uniform(0, 1)))
        for a, b in itertools.permutations(LAYERS, 2):
            rows.append(_row("linear_cka", run, a, STEPS[-1], rng.uniform(0.3, 1), run, b))
    return pd.DataFrame(rows)


def probe_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame([
        {"run": f"{rule}_s{seed}", "rule": rule, "seed": seed, "layer": layer, "step": STEPS[-1], "probe": probe,
         "accuracy": rng.uniform(0.5, 1), "accuracy_std": 0.01, "folds": 5}
        for rule, seed, layer, probe in itertools.product(RULES, SEEDS, LAYERS, ("linear", "knn"))
    ])


def linear_table() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame([
        {"dataset": dataset, "model": model, "rule": rule, "seed": seed, "run": f"{dataset}_{model}_{rule}_{seed}",
         "train_loss": rng.uniform(0.01, 0.5), "map_cosine": 1.0 if rule == "backprop" else rng.uniform(0.9, 1),
         "map_distance": 0.0 if rule == "backprop" else rng.uniform(0, 0.1),
         "optimum_loss": 0.005 if "regression" in dataset else np.nan}
        for dataset, model, rule, seed in itertools.product(
            ("linear-regression-2d", "linear-classification-2d"), ("linear", "deeplinear"), ("backprop", "sg"), SEEDS)
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny digits runs (backprop and fa), 10 steps."""
    return backprop_and_fa_runs(tmp_path_factory.mktemp("runs"), steps=10)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    paths = {"analysis": folder / "analysis.csv", "probes": folder / "probes.csv", "linear": folder / "linear.csv"}
    analysis_table().to_csv(paths["analysis"], index=False)
    probe_table().to_csv(paths["probes"], index=False)
    linear_table().to_csv(paths["linear"], index=False)
    return paths


def _line_colours(fig) -> dict[str, set[str]]:
    """Label (up to any " (...)" note) -> colours of every labelled line, error bar and bar set in ``fig``."""
    found: dict[str, set[str]] = {}
    for ax in fig.axes:
        labelled = [(line.get_label(), line.get_color()) for line in ax.lines]
        for container in ax.containers:
            if isinstance(container, BarContainer):
                labelled.append((container.get_label(), container.patches[0].get_facecolor()))
            elif isinstance(container, ErrorbarContainer) and container.lines[0] is not None:
                labelled.append((container.get_label(), container.lines[0].get_color()))
        for label, colour in labelled:
            if not label.startswith("_"):
                found.setdefault(label.split(" (")[0], set()).add(mcolors.to_hex(colour))
    return found


def test_every_rule_has_its_own_fixed_style():
    styles = [rule_style(rule) for rule in RULE_ORDER]
    assert len({s.color for s in styles}) == len(RULE_ORDER)
    assert len({s.marker for s in styles}) == len(RULE_ORDER)
    fa, dfa = (np.array(mcolors.to_rgb(rule_style(r).color)) for r in ("fa", "dfa"))
    assert np.abs(fa - dfa).sum() > 1.0  # not two similar blues (Okabe-Ito blue and sky blue: 0.81)
    assert rule_style("backprop") == RuleStyle("#000000", "o", "-")  # black, circles, solid: the reference rule
    assert rule_style("sg").color.upper() == "#D55E00"  # Okabe-Ito vermillion
    assert rule_style("no-such-rule").color == "#999999"
    assert "#f0e442" not in {s.color.lower() for s in styles}  # Okabe-Ito yellow: too faint on white


def test_a_rule_keeps_its_colour_in_every_figure():
    analysis, probes = analysis_table(), probe_table()
    figures = [layers.similarity_to_backprop(analysis), layers.effective_rank(analysis),
               layers.weight_norm(analysis), layers.probe_accuracy(probes),
               training.gradient_alignment(analysis), training.synthetic_loss(analysis),
               linear.linear_problems(linear_table())]
    seen: dict[str, set[str]] = {}
    for fig in figures:
        for label, colours in _line_colours(fig).items():
            seen.setdefault(label, set()).update(colours)
    for rule in RULES:
        assert seen[rule] == {rule_style(rule).color.lower()}, rule


def test_heatmap_matrices_are_symmetric_with_unit_diagonal():
    matrices = heatmaps.layer_matrices(analysis_table())
    assert list(matrices) == list(RULES)
    names, matrix = matrices["sg"]
    assert names == list(LAYERS)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)


def test_draw_figures_writes_png_and_svg_of_every_figure(tables, runs, tmp_path):
    written = draw_figures([*tables.values(), *runs], tmp_path / "out", quiet=True)
    stems = {stem for figures in FROM_TABLES.values() for stem in figures} | set(FROM_RUNS)
    assert {p.name for p in written} == {f"{s}.{fmt}" for s in stems for fmt in ("png", "svg")}
    for path in written:
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head or b"<?xml" in head
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_draw_figures_draws_what_the_inputs_allow(tables, runs, tmp_path):
    only_probes = draw_figures([tables["probes"]], tmp_path, quiet=True)
    assert {p.name for p in only_probes} == {"probe_accuracy.png", "probe_accuracy.svg"}
    tagged = draw_figures(runs, tmp_path, quiet=True, tag="tiny")
    assert {p.stem for p in tagged} == {f"{stem}_tiny" for stem in FROM_RUNS}


def test_bad_inputs_are_user_errors(tables, runs, tmp_path):
    empty = tmp_path / "empty.csv"
    analysis_table().iloc[:0].to_csv(empty, index=False)
    with pytest.raises(UserError, match="no rows"):
        draw_figures([empty], tmp_path / "a")
    foreign = tmp_path / "foreign.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(foreign, index=False)
    with pytest.raises(UserError, match="not an analysis"):
        draw_figures([foreign], tmp_path / "b")
    nothing = tmp_path / "nothing.csv"
    analysis_table().assign(measure="procrustes").to_csv(nothing, index=False)
    with pytest.raises(UserError, match="nothing to draw"):
        draw_figures([nothing], tmp_path / "c")
    with pytest.raises(UserError, match="nothing to draw"):
        draw_figures([], tmp_path / "d")
    with pytest.raises(UserError, match="no such file"):
        draw_figures([tmp_path / "missing.csv"], tmp_path / "e")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with pytest.raises(UserError, match=r"\.csv"):
        draw_figures([note], tmp_path / "f")
    with pytest.raises(UserError, match="not a folder"):
        draw_figures([tables["probes"]], note)
    other = tmp_path / "regression.h5"
    train(TrainConfig(dataset="linear-regression-2d", depth=1, width=4, steps=2, batch_size=16, probe_size=10),
          other, device="cpu", quiet=True)
    with pytest.raises(UserError, match="several data sets"):
        draw_figures([*runs, other], tmp_path / "g")


def _spread_table(measure: str, mean: float, spread: float) -> pd.DataFrame:
    """``measure`` rows of two seeds at ``mean ± spread`` (per rule, layer and step)."""
    rows = [_row(measure, f"{rule}_s{seed}", layer, step, mean + (spread if seed else -spread))
            for rule, seed, layer, step in itertools.product(("sg", "fa"), SEEDS, LAYERS, STEPS)]
    return pd.DataFrame(rows)


def test_cosine_spread_stays_within_minus_one_and_one():
    fig = training.gradient_alignment(_spread_table("grad_cosine", 0.9, 0.5))
    bands = [band for ax in fig.axes for band in ax.collections if band.get_paths()]
    assert bands  # the spread is drawn (a mean ± spread of 0.9 and 0.5 would reach 1.1 unclipped)
    for band in bands:
        y = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
        assert y.max() <= 1.0 + 1e-12 and y.min() >= -1.0 - 1e-12
    table = linear_table().assign(map_cosine=lambda t: np.where(t["seed"] == 0, 1.0, 0.5))
    fig = linear.linear_problems(table)
    segments = [segment for ax in fig.axes if ax.get_ylabel().startswith("cosine") for container in ax.containers
                if isinstance(container, ErrorbarContainer) and container.lines[2]
                for segment in container.lines[2][0].get_segments()]
    assert segments  # the cosine panel has error bars
    for segment in segments:
        assert segment[:, 1].max() <= 1.0 + 1e-12


def test_no_bars_on_a_log_axis_and_few_log_labels():
    fig = linear.linear_problems(linear_table())
    fig.canvas.draw()
    logs = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert logs
    for ax in logs:
        assert not any(isinstance(c, BarContainer) for c in ax.containers)
        low, high = ax.get_ylim()
        shown = [t for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
                 if t.get_text() and low <= t.get_position()[1] <= high]
        assert len(shown) <= 7 and (ax is not logs[0] or len(shown) >= 2), [t.get_text() for t in shown]
    assert logs[0].get_ylim() == logs[1].get_ylim()  # the two models on one scale


def test_one_seed_is_not_called_a_mean_and_probe_panels_share_a_scale():
    one = probe_table()
    one = one[one["seed"] == 0]
    fig = layers.probe_accuracy(one)
    title = fig.get_suptitle()
    assert "1 seed" not in title and "one seed" in title and "Linear separability" not in title
    a, b = fig.axes[:2]
    assert a.get_ylim() == b.get_ylim() and a.get_title().startswith("linear") and "k-NN" in b.get_title()


def test_figures_fit_their_titles_and_keep_a_readable_shape(runs, tmp_path):
    from repanalysis.figures import rdms, spectra

    fig = rdms.rdm_grid(runs)
    fig.canvas.draw()
    box = fig.get_suptitle() and fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # the title is not clipped
    deep = tmp_path / "deep.h5"
    train(TrainConfig(depth=5, width=8, steps=2, batch_size=32, probe_size=30), deep, quiet=True)
    width, height = spectra.spectra([deep]).get_size_inches()
    assert width / height < 2.5  # five layers in a grid, not a 1600 x 280 strip
