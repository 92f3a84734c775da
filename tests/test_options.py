"""The training options the paper preset relies on: learning-rate schedule, SG warm-up, batch-norm recording mode."""

import copy
import math

import numpy as np
import pytest
import torch
from helpers import batch, built, small_config

from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.rules.base import batch_statistics, lr_factor
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import rebuild
from repanalysis.training.train import train


def test_learning_rate_factor_warms_up_linearly_then_follows_the_cosine():
    c = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine")
    assert [lr_factor(c, s) for s in (1, 5, 10)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(c, 11) == pytest.approx(1.0)  # the cosine starts at its top right after the warm-up
    assert lr_factor(c, 61) == pytest.approx(0.5)  # half way
    assert 0 < lr_factor(c, 110) < 1e-3  # the last step still moves, a little
    assert lr_factor(TrainConfig(), 7) is None  # constant: the optimisers' rates are never touched
    assert lr_factor(TrainConfig(warmup_steps=4), 9) == 1.0


def test_a_scheduled_rule_steps_with_the_scheduled_rate():
    config = small_config(lr_schedule="cosine", steps=4, optimizer="sgd", momentum=0.0, lr=0.1)
    rule, data = built(config)
    x, y = batch(data)
    rates = []
    for _ in range(4):
        rule.step(x, y)
        rates.append(rule.optimizers[0].param_groups[0]["lr"])
    assert rates == pytest.approx([0.1 * lr_factor(config.resolved(), s) for s in range(1, 5)])


def test_sg_warmup_holds_the_blocks_below_the_module_and_trains_the_rest():
    rule, data = built(small_config(rule="sg", sg_at=[2], sg_warmup=2))
    x, y = batch(data)
    start = copy.deepcopy(rule.network.state_dict())
    module_start = copy.deepcopy(rule.modules.state_dict())
    for _ in range(2):
        rule.step(x, y)
    now = rule.network.state_dict()
    below = [k for k in now if k.startswith(("blocks.0.", "blocks.1.")) and "running" not in k and "tracked" not in k]
    above = [k for k in now if k.startswith(("blocks.2.", "head."))]
    assert all(torch.equal(now[k], start[k]) for k in below)
    assert all(not torch.equal(now[k], start[k]) for k in above if k.endswith("weight"))
    assert any(not torch.equal(v, module_start[k]) for k, v in rule.modules.state_dict().items())
    rule.step(x, y)  # the warm-up is over
    assert not torch.equal(rule.network.state_dict()["blocks.0.linear.weight"], start["blocks.0.linear.weight"])
    with pytest.raises(UserError, match="--sg-warmup must be at least 0"):
        small_config(sg_warmup=-1).resolved()


def test_batch_statistics_restores_every_buffer_bit_for_bit():
    rule, data = built(small_config(batch_norm=True))
    x, y = batch(data)
    rule.step(x, y)
    rule.network.eval()
    before = {k: v.clone() for k, v in rule.network.state_dict().items()}
    with batch_statistics(rule.network):
        assert rule.network.training
        rule.network(x * 3 + 1)  # would move every running statistic
    after = rule.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not rule.network.training


@pytest.mark.parametrize("mode", ["batch", "eval"])
def test_recorded_gradients_follow_the_chosen_batch_norm_mode(tmp_path, mode):
    path = tmp_path / "run.h5"
    train(small_config(batch_norm=True, steps=20, record_bn=mode), path, quiet=True)
    from repanalysis.datasets import load

    digits = load("digits")
    with RunFile(path) as run:
        assert run.record_bn == mode
        rule = rebuild(run, 1)
        recorded = [run.true_grad(layer, 1) for layer in run.layers]
        x, y = digits.x_test[run.probe_index], digits.y_test[run.probe_index]
    net = rule.network.train(mode == "batch")
    trace = net.trace(x)
    grads = torch.autograd.grad(losses.loss("classification", trace.output, y), trace.hidden)
    for g, r in zip(grads, recorded):
        np.testing.assert_allclose(r, g.numpy(), rtol=1e-4, atol=1e-8)
    with torch.no_grad():
        other = net.train(mode != "batch").trace(x)
    assert not math.isclose(other.hidden[-1].sum().item(), trace.hidden[-1].sum().item(), rel_tol=1e-6)
