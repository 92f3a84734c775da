"""Fixed error-signal rules (FA, DFA, Kickback) and the error-conditioned SG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import batch, built, parameters_equal, small_config

from repanalysis.datasets import load
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.train import train


def _train_side_by_side(rule, reference, data, steps, before_step):
    for step in range(steps):
        before_step()
        x, y = batch(data, 32, 32 * step)
        rule.step(x, y)
        reference.step(x, y)


def test_fa_with_feedback_equal_to_the_weights_is_backprop(digits):
    fa, _ = built(small_config(rule="fa", batch_norm=True), digits)
    bp, _ = built(small_config(batch_norm=True), digits)
    store, linears = fa.modules["feedback"], fa.network.linears()

    def copy_weights():
        for k in range(1, len(linears)):
            getattr(store, f"B{k}").copy_(linears[k].weight.detach())

    _train_side_by_side(fa, bp, digits, 12, copy_weights)
    assert parameters_equal(fa.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)


def test_dfa_one_hidden_layer_with_output_weights_is_backprop(digits):
    dfa, _ = built(small_config(rule="dfa", depth=1), digits)
    bp, _ = built(small_config(depth=1), digits)
    r1 = dfa.modules["feedback"].R1
    _train_side_by_side(dfa, bp, digits, 12, lambda: r1.copy_(dfa.network.head.weight.detach()))
    assert parameters_equal(dfa.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)))


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_feedback_signals_align_with_the_true_gradient(tmp_path, digits, rule):
    out = tmp_path / f"{rule}.h5"
    train(small_config(rule=rule, depth=3, width=64, steps=600, record_every=600, lr=1e-3, batch_norm=False), out,
          quiet=True, data=digits)
    with RunFile(out) as run:
        assert all(run.has(name, "signal") for name in run.layers)
        for name in run.layers:
            start = _mean_cosine(run.signal(name, 0), run.true_grad(name, 0))
            end = _mean_cosine(run.signal(name, -1), run.true_grad(name, -1))
            assert abs(start) < 0.15, (name, start)
            assert end > 0.2 and end > start + 0.15, (name, start, end)


def test_kickback_signal_and_learning():
    data = load("nonlinear-regression-2d")
    config = small_config(rule="kickback", dataset="nonlinear-regression-2d", depth=2, width=32, steps=800,
                          batch_size=50, probe_size=100)
    rule, _ = built(config, data)
    x, y = data.x_train[:50], data.y_train[:50]
    p = rule.backward(x, y, into_parameters=False, interfaces=True)
    top = len(rule.network.blocks) - 1
    # one output: the top hidden layer's outgoing weights are the head's, so kickback is exact there
    true = p.output_grad @ rule.network.head.weight
    torch.testing.assert_close(p.interface_grads[top], true)
    active = (p.trace.hidden[top] > 0).float()
    below = p.output_grad * (active @ rule.network.blocks[top].linear.weight)
    torch.testing.assert_close(p.interface_grads[top - 1], below)
    result = train(config, None, quiet=True, data=data)
    first = train(config.__class__(**{**config.__dict__, "steps": 1}), None, quiet=True, data=data)
    assert result.last_eval["test_loss"] < 0.5 * first.last_eval["test_loss"]


def test_kickback_known_answer():
    """Two hidden ReLU layers of two units, weights by hand; a unit's kickback counts its active children only."""
    data = load("nonlinear-regression-2d")
    config = small_config(rule="kickback", dataset="nonlinear-regression-2d", depth=2, width=2, batch_norm=False)
    rule, _ = built(config, data)
    net = rule.network
    with torch.no_grad():
        net.blocks[0].linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net.blocks[0].linear.bias.zero_()
        net.blocks[1].linear.weight.copy_(torch.tensor([[2.0, 3.0], [-1.0, 5.0]]))
        net.blocks[1].linear.bias.copy_(torch.tensor([0.0, -100.0]))  # child 2 never active
        net.head.weight.copy_(torch.tensor([[7.0, 11.0]]))
        net.head.bias.zero_()
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0]])
    p = rule.backward(x, y, into_parameters=False, interfaces=True)
    # h1 = [1, 1], h2 = [5, 0], output 35, loss ½(35 - 0)², e = 35
    torch.testing.assert_close(p.output_grad, torch.tensor([[35.0]]))
    torch.testing.assert_close(p.interface_grads[1], torch.tensor([[35.0 * 7, 35.0 * 11]]))  # exact at the top
    # only child 1 (weights 2 and 3 from h1's units) is active: [35·2, 35·3]; the old form gave [35·1, 35·8]
    torch.testing.assert_close(p.interface_grads[0], torch.tensor([[70.0, 105.0]]))


def test_error_conditioned_linear_sg_can_be_dfa_and_backprop(digits):
    """A linear SG conditioned on the output error, with weights [0 | W_headᵀ], is exact at the top layer."""
    sg, _ = built(small_config(rule="sg", sg_condition="error", sg_at=[3]), digits)
    sg.learn = lambda p: {}
    bp, _ = built(small_config(), digits)
    module, head = sg.modules["h3"], sg.network.head

    def set_module():
        with torch.no_grad():
            module.out.weight.zero_()
            module.out.weight[:, 16:] = head.weight.t()

    _train_side_by_side(sg, bp, digits, 10, set_module)
    assert parameters_equal(sg.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)
