"""Layers in the model's order, from the run file's positions, in every table and figure: a Recorder model
whose layer names do not sort into model order (stem, res, fc1, out)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repanalysis import Recorder
from repanalysis.analysis.runs import analyze
from repanalysis.analysis.tables import write_table
from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.figures import heatmaps, layers, rdms, spectra, training
from repanalysis.figures.inputs import read_table
from repanalysis.measures import RepanalysisWarning
from repanalysis.probes import probe_runs

ORDER = ["stem", "res", "fc1", "out"]  # sorted by name: fc1, out, res, stem


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.inner = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.inner(x))


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(stem=nn.Linear(64, 16), act=nn.ReLU(), res=Residual(16),
                                     fc1=nn.Linear(16, 12), act1=nn.ReLU(), out=nn.Linear(12, 10)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two seeds of the model on digits (6 steps, checkpoints at 0, 3, 6), their analysis and probe tables."""
    folder = tmp_path_factory.mktemp("order")
    digits = load("digits")
    index = digits.probe_index(60)
    for seed in (0, 1):
        model = _model(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Recorder(folder / f"res{seed}.h5", model, {name: getattr(model, name) for name in ORDER},
                      (digits.x_test[index], digits.y_test[index]), F.cross_entropy, rule="backprop", seed=seed,
                      probe_index=index) as rec:
            for step in range(7):
                if step % 3 == 0:
                    rec.checkpoint(step)
                if step == 6:
                    break
                x, y = digits.x_train[32 * step:32 * (step + 1)], digits.y_train[32 * step:32 * (step + 1)]
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                rec.log(step + 1, train_loss=loss)
    runs = [folder / "res0.h5", folder / "res1.h5"]
    with pytest.warns(RepanalysisWarning):
        write_table(analyze(runs, quiet=True), folder / "res_analysis.csv")
    write_table(probe_runs(runs, folds=3, quiet=True), folder / "res_probes.csv")
    return folder


def test_tables_carry_each_layers_position_in_the_model(folder):
    _, analysis = read_table(folder / "res_analysis.csv")
    _, probes = read_table(folder / "res_probes.csv")
    for table, layer, position in ((analysis, "layer_a", "position_a"), (analysis, "layer_b", "position_b"),
                                   (probes, "layer", "position")):
        pairs = table[[layer, position]].dropna().drop_duplicates()
        assert dict(zip(pairs[layer], pairs[position])) == {name: k for k, name in enumerate(ORDER)}
        assert str(table[position].dtype) == "Int64"


def test_figures_draw_the_layers_bottom_to_top(folder):
    _, analysis = read_table(folder / "res_analysis.csv")
    _, probes = read_table(folder / "res_probes.csv")
    runs = [folder / "res0.h5", folder / "res1.h5"]

    def ticks(axis) -> list[str]:
        return [t.get_text() for t in axis.get_ticklabels()]

    for fig in (layers.effective_rank(analysis), layers.probe_accuracy(probes),
                layers.similarity_to_backprop(analysis)):
        assert all(ticks(ax.xaxis) == ORDER for ax in fig.axes), fig.get_suptitle()
    (rule, (names, _)), = heatmaps.layer_matrices(analysis).items()
    assert names == ORDER
    fig = heatmaps.layer_cka(analysis)
    assert ticks(fig.axes[0].xaxis) == ORDER and ticks(fig.axes[0].yaxis) == ORDER
    assert [ax.get_title() for ax in spectra.spectra(runs).axes if ax.get_visible()] == ORDER
    assert [ax.get_ylabel() for ax in rdms.rdm_grid(runs).axes if ax.get_ylabel() in ORDER] == ORDER
    assert [ax.get_title() for ax in training.gradient_alignment(_as_signal(analysis)).axes] == ORDER


def _as_signal(analysis):
    """The effective-rank rows standing in for a per-layer measure over training (a backprop run has no signal)."""
    rows = analysis[analysis["measure"] == "effective_rank"].assign(measure="grad_cosine", value=0.5)
    return rows


def test_the_figures_command_on_the_run_and_its_tables(folder, capsys):
    inputs = [str(folder / name) for name in ("res_analysis.csv", "res_probes.csv", "res0.h5", "res1.h5")]
    assert main(["figures", *inputs, "--out", str(folder / "figs"), "--quiet"]) == 0
    assert (folder / "figs" / "probe_accuracy.png").is_file() and (folder / "figs" / "rdms.svg").is_file()
