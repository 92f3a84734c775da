"""Every figure's caption read against what it draws: seed counts as they are, a spread only from two seeds
(error bars and bands), a 95% interval only from ``stats.MIN_SEEDS`` seeds, lines named only where drawn,
titles inside the figure."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from helpers import backprop_and_fa_runs
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from test_figures import analysis_table, linear_table, probe_table

from repanalysis.figures import curves, heatmaps, layers, linear, rdms, spectra, training
from repanalysis.figures.depth import DEPTH_FIGURES, _quantity_figure, _with_cells
from repanalysis.figures.explain import draw_explain_figures
from repanalysis.figures.style import fit_title
from repanalysis.measures import stats

TABLE_FIGURES = {
    "similarity_to_backprop": (layers.similarity_to_backprop, "analysis"),
    "layer_cka": (heatmaps.layer_cka, "analysis"),
    "effective_rank": (layers.effective_rank, "analysis"),
    "weight_norm": (layers.weight_norm, "analysis"),
    "gradient_alignment": (training.gradient_alignment, "analysis"),
    "synthetic_loss": (training.synthetic_loss, "analysis"),
    "probe_accuracy": (layers.probe_accuracy, "probes"),
    "linear_problems": (linear.linear_problems, "linear"),
}


def _seeds(table: pd.DataFrame, kind: str, keep: int) -> pd.DataFrame:
    """``table`` with the seeds below ``keep`` only (1 or 2 of the test tables' two), or widened to 3 seeds."""
    column = "seed_a" if kind == "analysis" else "seed"
    if keep <= 2:
        kept = table[column] < keep
        if kind == "analysis":
            kept &= ~(table["seed_b"] >= keep)
        return table[kept]
    third = table[table[column] == 1].copy()
    for c in [c for c in table.columns if c.startswith("run")]:
        third[c] = third[c].str.replace("_s1", "_s2").str.replace("_1", "_2")
    third[column] = 2
    if kind == "analysis":
        third.loc[third["seed_b"] == 1, "seed_b"] = 2
    value = {"analysis": "value", "probes": "accuracy", "linear": "train_loss"}[kind]
    third[value] = third[value] * 0.9
    return pd.concat([table, third], ignore_index=True)


def spreads(fig) -> int:
    """How many spreads ``fig`` draws: error bars of non-zero length and bands with an area."""
    count = 0
    for ax in fig.axes:
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer):
                for bars in container.lines[2]:
                    count += sum(1 for s in bars.get_segments() if np.isfinite(s).all() and np.ptp(s, axis=0).max() > 0)
        for band in ax.collections:
            if isinstance(band, PolyCollection):
                count += sum(1 for p in band.get_paths() if len(p.vertices) > 2)
    return count


def labels(fig) -> set[str]:
    return {label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]}


def assert_title_inside(fig) -> None:
    fit_title(fig)
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, fig.get_suptitle()
    top = max(ax.get_position().y1 for ax in fig.axes if ax.get_visible()) * fig.bbox.height
    assert box.y0 >= top - 1, fig.get_suptitle()  # above every panel, not over it


def _table(kind: str) -> pd.DataFrame:
    return {"analysis": analysis_table, "probes": probe_table, "linear": linear_table}[kind]()


@pytest.mark.parametrize("name", list(TABLE_FIGURES))
def test_one_seed_is_one_seed_without_a_spread(name):
    draw, kind = TABLE_FIGURES[name]
    table = _seeds(_table(kind), kind, 1)
    if name == "probe_accuracy":
        table = table.drop(columns=["accuracy_std"])  # no folds' spread either: nothing to show
    fig = draw(table)
    caption = fig.get_suptitle()
    assert "one seed" in caption and "seeds" not in caption and "mean" not in caption, caption
    assert spreads(fig) == 0, caption
    assert not any("other seed" in label or "ceiling" in label for label in labels(fig))
    assert "other seed" not in caption and "ceiling" not in caption
    assert_title_inside(fig)


@pytest.mark.parametrize("name", list(TABLE_FIGURES))
def test_several_seeds_are_counted_and_spread(name):
    draw, kind = TABLE_FIGURES[name]
    for n in (2, 3):
        table = _seeds(_table(kind), kind, n)
        fig = draw(table)
        caption = fig.get_suptitle()
        if name == "similarity_to_backprop":  # the ceiling: backprop against another seed, pair by pair
            t = table
            pairs = len(t[(t.measure == "linear_cka") & (t.rule_a == "backprop") & (t.layer_a == "h1")
                          & (t.step_a == 10) & (t.run_a != t.run_b)])
            assert f"{n} seeds" in caption and (f"{pairs} pairs" if pairs > 1 else "one pair") in caption, caption
            assert any("ceiling" in label for label in labels(fig))
        else:
            assert f"over {n} seeds" in caption, caption
        if name != "layer_cka":  # a heatmap shows the mean only
            assert spreads(fig) > 0, caption
        assert_title_inside(fig)


def test_one_seeds_probe_bars_are_its_folds_spread():
    table = _seeds(probe_table(), "probes", 1)
    fig = layers.probe_accuracy(table)
    assert "one seed; bars: ± std over 5 outer folds" in fig.get_suptitle()
    ax = fig.axes[0]
    container = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    lengths = [np.ptp(s[:, 1]) for s in container.lines[2][0].get_segments()]
    np.testing.assert_allclose(lengths, 2 * 0.01)  # ± accuracy_std of the table


def test_a_least_squares_line_only_where_the_table_has_one():
    table = linear_table()
    assert "least-squares optimum" in labels(linear.linear_problems(table))
    fig = linear.linear_problems(table.assign(optimum_loss=np.nan))
    assert "least-squares optimum" not in labels(fig)


def test_run_figures_of_one_seed_say_so(tmp_path):
    runs = backprop_and_fa_runs(tmp_path, steps=6)
    for fig in (curves.learning_curves(runs), spectra.spectra(runs), rdms.rdm_grid(runs)):
        caption = fig.get_suptitle()
        assert "mean" not in caption and "seeds" not in caption, caption
        assert spreads(fig) == 0, caption
        assert_title_inside(fig)
    assert "one seed" in curves.learning_curves(runs).get_suptitle()
    assert "one seed" in spectra.spectra(runs).get_suptitle()


def _quantities(n_seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(n_seeds)
    rows = []
    for depth, rule, seed in itertools.product((3, 6), ("backprop", "cdni"), range(n_seeds)):
        scope = f"depth {depth}, relu"
        for quantity in ("test_acc", "cka_to_other_backprop", "cka_null"):
            rows.append({"run": f"{rule}{depth}_{seed}", "rule": rule, "seed": seed, "scope": scope,
                         "quantity": quantity, "value": rng.uniform(0.2, 0.9)})
    return _with_cells(pd.DataFrame(rows))


@pytest.mark.parametrize("n_seeds, says, bars", [
    (1, "one seed: no interval", False),
    (3, "bars: the range of the seeds' values", True),
    (stats.MIN_SEEDS, "95% t-interval", True),
])
def test_depth_figures_give_an_interval_only_as_the_report_does(n_seeds, says, bars):
    q = _quantities(n_seeds)
    for stem in ("depth_accuracy", "depth_cka_to_backprop"):
        title, panels = DEPTH_FIGURES[stem]
        fig = _quantity_figure(q, panels, title)
        caption = fig.get_suptitle()
        assert says in caption and ("bootstrap" not in caption), caption
        assert (f"{n_seeds} seeds" in caption) == (n_seeds > 1)
        assert (spreads(fig) > 0) == bars
        assert_title_inside(fig)
    # the null of the compared rule (cdni here, no sg) is drawn, as its legend says
    assert "permutation null (95th pct.)" in labels(fig)
    if n_seeds == 3:  # the bars reach the smallest and the largest seed's value
        values = q[(q.quantity == "cka_to_other_backprop") & (q.rule == "cdni") & (q.depth == 3)]["value"]
        ax = fig.axes[0]
        container = next(c for c in ax.containers if c.get_label() == "cdni")
        segment = container.lines[2][0].get_segments()[0]
        np.testing.assert_allclose(sorted(segment[:, 1]), [values.min(), values.max()])


def _explain_frame(n_seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed, position, step in itertools.product(range(n_seeds), range(4), (0, 10)):
        rows.append({"scope": "depth 4, relu", "arm": "sg", "rule": "sg", "seed": seed, "run": f"sg{seed}",
                     "layer": f"h{position + 1}", "position": position, "region": "below" if position < 2 else "above",
                     "step": step, "below_update": rng.uniform(), "exposure_update": rng.uniform(),
                     "d_cka": rng.uniform(), "ceiling_cka": np.nan if n_seeds == 1 else rng.uniform()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_explain_figures_say_what_they_draw(n_seeds, tmp_path, monkeypatch):
    import repanalysis.figures.explain as explain

    drawn = {}
    monkeypatch.setattr(explain, "save", lambda fig, out, stem: drawn.setdefault(stem, fig) and [])
    draw_explain_figures(_explain_frame(n_seeds), tmp_path)
    for stem, fig in drawn.items():
        caption = fig.get_suptitle()
        assert ("band" in caption) == (n_seeds > 1 and stem != "explain_dose_response"), caption
        assert (spreads(fig) > 0) == (n_seeds > 1), stem
        assert ("one seed" in caption) == (n_seeds == 1)
        assert_title_inside(fig)
    assert ("backprop, other seeds" in labels(drawn["explain_profiles"])) == (n_seeds > 1)
