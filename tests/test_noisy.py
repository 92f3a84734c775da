"""The ``noisy`` rule (the true gradient turned to a set cosine), the blocks' hold, the validation split,
and the ``update`` the shadow pass records (the error that reaches the weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import built, run_arrays, small_config

from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.measures import gradient_error
from repanalysis.rules.noisy import turned
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import Batches
from repanalysis.training.train import train


@pytest.mark.parametrize("cosine", [0.9, 0.3, 0.0, -0.5])
def test_turned_keeps_each_norm_and_sets_each_cosine(cosine):
    g = torch.randn(64, 3, 4, 5, dtype=torch.float64)
    g[7] = 0.0
    out = turned(g, cosine, torch.Generator().manual_seed(1))
    a, b = out.reshape(64, -1), g.reshape(64, -1)
    assert torch.equal(out[7], torch.zeros_like(out[7]))
    live = [i for i in range(64) if i != 7]
    assert torch.allclose(a[live].norm(dim=1), b[live].norm(dim=1), rtol=1e-12)
    cos = (a[live] * b[live]).sum(1) / (a[live].norm(dim=1) * b[live].norm(dim=1))
    assert torch.allclose(cos, torch.full_like(cos, cosine), atol=1e-12)


def test_turned_is_unbiased_along_the_true_gradient_and_random_across_it():
    g = torch.randn(1, 50, dtype=torch.float64).expand(20000, 50).contiguous()
    out = turned(g, 0.3, torch.Generator().manual_seed(2))
    mean = out.mean(0)
    assert torch.allclose(mean, 0.3 * g[0], atol=0.03 * g[0].norm().item())  # the noise averages out
    assert turned(g, 1.0, torch.Generator()) is g  # cosine 1: the true gradient itself, nothing drawn


def test_noisy_at_cosine_one_is_backprop_bit_for_bit(tmp_path, digits):
    for rule in ("backprop", "noisy"):
        train(small_config(rule=rule, steps=30, hold_steps=5, validation=80), tmp_path / f"{rule}.h5",
              quiet=True, data=digits)
    bp, noisy = run_arrays(tmp_path / "backprop.h5"), run_arrays(tmp_path / "noisy.h5")
    for name, value in bp.items():
        if not name.startswith("resume/"):
            assert np.array_equal(value, noisy[name], equal_nan=True), name
    with RunFile(tmp_path / "noisy.h5") as run:
        cut = run.layers[(run.config["depth"] - 1) // 2]  # the middle interface
        assert np.array_equal(run.signal(cut, -1), run.true_grad(cut, -1))  # the signal is the true gradient
        np.testing.assert_allclose(run.update(cut)[1:], 1.0, rtol=1e-6)  # and so is every block's update


def test_the_recorded_signal_has_the_set_cosine(tmp_path, digits):
    config = small_config(rule="noisy", signal_cosine=0.25, sg_at=[2], steps=20)
    train(config, tmp_path / "n.h5", quiet=True, data=digits)
    with RunFile(tmp_path / "n.h5") as run:
        for c in range(len(run.steps)):
            error = gradient_error(run.signal("h2", c), run.true_grad("h2", c))
            assert error["mean_cosine"] == pytest.approx(0.25, abs=1e-5)
            assert error["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert not run.has("h3", "signal")  # above the cut: the true gradient
        # below the cut the turned error is pushed through block 2, so its cosine there is no longer set
        assert gradient_error(run.signal("h1", -1), run.true_grad("h1", -1))["mean_cosine"] < 0.9


def test_recording_does_not_change_a_noisy_run(tmp_path, digits):
    config = small_config(rule="noisy", signal_cosine=0.5, steps=25, record_every=5)
    recorded = train(config, tmp_path / "r.h5", quiet=True, data=digits).rule
    plain = train(config, None, quiet=True, data=digits).rule
    assert all(torch.equal(a, b) for a, b in zip(recorded.network.state_dict().values(),
                                                   plain.network.state_dict().values()))


def test_noisy_refuses_interfaces_the_network_lacks_and_cosines_out_of_range(digits):
    with pytest.raises(UserError, match="h1..h3"):
        built(small_config(rule="noisy", sg_at=[4]), digits)
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        small_config(rule="noisy", signal_cosine=1.5).resolved()
    with pytest.raises(UserError, match="noisy only"):
        small_config(rule="sg", signal_cosine=0.5).resolved()


def test_the_hold_keeps_the_blocks_up_to_hold_at_still_then_lets_them_learn(digits):
    rule, data = built(small_config(rule="backprop", hold_steps=3, hold_at=2), digits)
    stream = Batches(len(data.x_train), 32, 0)
    before = [p.clone() for p in rule.network.parameters()]
    named = [n for n, _ in rule.network.named_parameters()]
    for _ in range(3):
        idx = next(stream)
        rule.step(data.x_train[idx], data.y_train[idx])
    for name, old, new in zip(named, before, rule.network.parameters()):
        held = name.startswith(("blocks.0.", "blocks.1."))
        assert torch.equal(old, new) == held or "bias" in name, name  # a bias before batch norm gets no gradient
    idx = next(stream)
    rule.step(data.x_train[idx], data.y_train[idx])
    assert not torch.equal(before[0], rule.network.blocks[0].linear.weight)


def test_a_hold_equals_sg_warmup_for_sg(tmp_path, digits):
    for name, options in (("warm", dict(sg_warmup=6)), ("hold", dict(hold_steps=6))):
        train(small_config(rule="sg", steps=15, **options), tmp_path / f"{name}.h5", quiet=True, data=digits)
    warm, hold = run_arrays(tmp_path / "warm.h5"), run_arrays(tmp_path / "hold.h5")
    assert all(np.array_equal(warm[k], hold[k], equal_nan=True) for k in warm)


def test_hold_at_must_name_an_interface(digits):
    with pytest.raises(UserError, match="names no interface"):
        built(small_config(hold_steps=2, hold_at=9), digits)


def test_the_validation_split_is_held_out_of_training_stratified_and_fixed(digits):
    held = digits.with_validation(200)
    def rows(x):
        return sorted(map(tuple, x.tolist()))

    assert rows(torch.cat([held.x_train, held.x_val])) == rows(digits.x_train)  # a partition of the training split
    assert torch.equal(held.x_test, digits.x_test)
    assert torch.bincount(held.y_val).tolist() == [20] * 10
    again = load("digits").with_validation(200)
    assert torch.equal(again.x_val, held.x_val)
    smaller = digits.with_validation(100)  # contained in the larger one
    assert {tuple(r.tolist()) for r in smaller.x_val} <= {tuple(r.tolist()) for r in held.x_val}
    with pytest.raises(UserError, match="must leave training inputs"):
        digits.with_validation(len(digits.x_train))
    assert digits.with_validation(0) is digits


def test_a_run_with_validation_evaluates_it_and_trains_without_it(tmp_path, digits):
    train(small_config(validation=300, steps=10, eval_every=5), tmp_path / "v.h5", quiet=True, data=digits)
    with RunFile(tmp_path / "v.h5") as run:
        evals = run.evals
    assert set(evals) == {"step", "test_loss", "test_acc", "val_loss", "val_acc"}
    assert len(evals["val_acc"]) == 3 and all(0 <= a <= 1 for a in evals["val_acc"])
    assert evals["val_acc"][-1] * 300 == pytest.approx(round(evals["val_acc"][-1] * 300))


def test_the_recorded_update_equals_an_independent_autograd_computation(tmp_path, digits):
    """The cosine of block 1's parameter gradient under sg's signal against under the true gradient, computed
    here from the network rebuilt at a checkpoint, the probe inputs and the recorded error at h1."""
    from repanalysis.training.parts import rebuild

    config = small_config(rule="sg", sg_at=[2], steps=20, record_every=20)
    train(config, tmp_path / "s.h5", quiet=True, data=digits)
    with RunFile(tmp_path / "s.h5") as run:
        rule = rebuild(run, -1)
        x = digits.x_test[run.probe_index]
        recorded = run.update("h1")[-1]
        signal, true = (torch.from_numpy(a) for a in (run.signal("h1", -1), run.true_grad("h1", -1)))
    block = rule.network.blocks[0]
    block.train()
    params = list(block.parameters())
    out = block(x)
    g_signal = torch.autograd.grad(out, params, signal, retain_graph=True)
    g_true = torch.autograd.grad(out, params, true)
    a = torch.cat([g.double().flatten() for g in g_signal])
    b = torch.cat([g.double().flatten() for g in g_true])
    assert recorded[0] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), abs=1e-5)
    assert recorded[1] == pytest.approx((a.norm() / b.norm()).item(), rel=1e-5)
    assert not math.isclose(recorded[0], 1.0, abs_tol=1e-3)
