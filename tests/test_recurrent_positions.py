"""Recurrent runs over positions in the window: the per-step gradients a rule gives, the views built on them, and
the decoding probe, on known answers and against independent formulations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repanalysis.analysis.recurrent import results_table
from repanalysis.analysis.recurrent_positions import decoding_accuracy, mean_cosines, positions_table, training_table
from repanalysis.nn.recurrent import SequenceLSTM
from repanalysis.nn.sequences import Copy, token_losses
from repanalysis.rules.recurrent import boundaries, boundary_module, state_gradients, true_boundary_gradients
from repanalysis.training.recurrent import RecurrentConfig, train_recurrent


def _model() -> SequenceLSTM:
    torch.manual_seed(2)
    return SequenceLSTM(Copy().vocab, 5, Copy().n_outputs).double()


def test_state_gradients_against_the_loss_after_each_step():
    """Independently: at each step t, differentiate the loss of the steps after t (from the state after t) with
    respect to that state; truncated at T, only the steps up to the window's end count, and a module adds its
    signal there."""
    model, batch = _model(), Copy().batch(3, 4, torch.Generator().manual_seed(0))  # 7 steps
    module = boundary_module(model.hidden).double()
    with torch.no_grad():
        module.out.weight.normal_(0, 0.2)
        module.out.bias.normal_(0, 0.1)
    with torch.no_grad():
        h, c = model.states(batch.inputs, model.initial_state(len(batch)))
    for bptt, future in ((None, None), (3, None), (3, lambda k, s: module(s))):
        got = state_gradients(model, batch, bptt, future)
        for t in range(1, batch.length + 1):
            end = batch.length if bptt is None else min(-(-t // bptt) * bptt, batch.length)
            state = [h[:, t - 1].clone().requires_grad_(), c[:, t - 1].clone().requires_grad_()]
            objective = torch.zeros((), dtype=torch.double)
            if end > t:
                logits, last = model(batch.inputs[:, t:end], tuple(state))
                objective = token_losses(logits, batch, start=t).sum()
            else:
                last = tuple(state)
            if future is not None and end < batch.length:
                objective = objective + (torch.cat(last, 1) * future(0, torch.cat(last, 1).detach()).detach()).sum()
            if objective.requires_grad:
                expected = torch.cat(torch.autograd.grad(objective, state), 1)
            else:
                expected = torch.zeros_like(got[:, t - 1])
            assert torch.allclose(got[:, t - 1], expected, rtol=0, atol=1e-12), (bptt, t)
    assert true_boundary_gradients(model, batch, []).shape == (4, 0, 2 * model.hidden)


def test_mean_cosines_on_known_answers():
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    a = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    got = mean_cosines(a, b)  # step 1: +1 and -1; step 2: 0 (a zero) and 1; step 3: no reference
    assert got[0] == pytest.approx(0.0) and got[1] == pytest.approx(0.5) and np.isnan(got[2])


def test_decoding_accuracy_on_known_answers():
    labels = np.arange(40) % 4
    assert decoding_accuracy(np.eye(4)[labels] * 3 + 0.01 * np.arange(40)[:, None], labels) == 1.0
    # constant features carry nothing: every prediction is the first class, right on its share of the samples
    assert decoding_accuracy(np.ones((40, 3)), labels) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One seed of BPTT, DNI and DNI + aux at T = 2 on Copy, and BPTT and DNI at T = 9 (one window)."""
    from repanalysis.experiments.spec import PlannedRun

    folder = tmp_path_factory.mktemp("positions")
    common = dict(task="copy", copy_start=3, copy_max=4, steps=8, hidden=6, batch_size=4, probe_size=12,
                  probe_length=4, record_every=4, eval_every=4, seed=1)
    paths = {}
    for name, settings in (("b2", dict(rule="backprop", bptt=2)), ("d2", dict(rule="dni", bptt=2)),
                           ("a2", dict(rule="dni", aux=True, bptt=2)), ("b9", dict(rule="backprop", bptt=9)),
                           ("d9", dict(rule="dni", bptt=9))):
        config = RecurrentConfig(**common, **settings).resolved()
        train_recurrent(config, folder / f"{name}.h5", quiet=True)
        paths[PlannedRun("r", config, (("bptt", config.bptt), ("arm", name)))] = folder / f"{name}.h5"
    return paths


def test_the_views_over_positions(runs):
    table = positions_table(runs).set_index(["rule", "bptt", "step"])
    assert len(table) == 5 * 9  # 9 probe steps (4 symbols) per run
    one_window = table.xs(9, level="bptt")
    # one window: BPTT's gradient is the true one (the last step has none), DNI's run is BPTT's
    assert np.allclose(one_window.loc["backprop", "grad_cosine"].iloc[:-1], 1.0)
    assert np.isnan(one_window.loc["backprop", "grad_cosine"].iloc[-1])
    assert np.allclose(one_window.loc["dni", "cka_to_bptt"], 1.0) and one_window.loc["backprop", "cka_to_bptt"].isna().all()
    assert (one_window.loc["dni", "to_boundary"].to_numpy() == np.arange(8, -1, -1)).all()
    cut = table.xs(2, level="bptt")
    assert (cut.loc["backprop", "offset"].to_numpy() == [1, 2] * 4 + [1]).all()
    assert (cut.loc["backprop", "grad_cosine"][cut.loc["backprop", "to_boundary"] == 0].iloc[:-1] == 0).all()
    # at a boundary DNI's gradient is its module's prediction: its cosine is the recorded one's (results)
    scores = results_table(runs).set_index(["rule", "bptt"])
    at = cut.loc["dni"][cut.loc["dni", "to_boundary"] == 0].iloc[:-1]  # the sequence's end is no boundary
    assert len(at) == len(boundaries(9, 2))
    assert at["grad_cosine"].mean() == pytest.approx(scores.loc[("dni", 2), "boundary_cosine"], abs=1e-5)
    assert ((table["first_symbol"] >= 0) & (table["first_symbol"] <= 1)).all()


def test_the_boundary_cosine_over_training(runs):
    table = training_table(runs)
    assert sorted(set(table["rule"])) == ["dni", "dni+aux"] and sorted(set(table["step"])) == [0, 4, 8]
    at_start = table[table["step"] == 0]["boundary_cosine"]
    assert at_start.isna().all()  # a zero module has no direction
    last = table[(table["step"] == 8) & (table["rule"] == "dni") & (table["bptt"] == 2)]["boundary_cosine"]
    scores = results_table(runs).set_index(["rule", "bptt"])
    assert float(last.iloc[0]) == pytest.approx(scores.loc[("dni", 2), "boundary_cosine"], rel=1e-12)
