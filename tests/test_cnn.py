"""Convolutional networks (``--model cnn``) under every rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import batch, built, parameters_equal, small_config

from repanalysis.cli import main
from repanalysis.config import TrainConfig
from repanalysis.rules.synthetic import (
    ConvSyntheticGradientModule,
    FlatSyntheticGradientModule,
    SyntheticGradientModule,
)
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.train import train


def cnn_config(**overrides):
    return small_config(**{"model": "cnn", "depth": 3, "channels": 4, "batch_norm": True, **overrides})


def _side_by_side(rule, reference, data, steps, before_step=lambda: None):
    for step in range(steps):
        before_step()
        x, y = batch(data, 32, 32 * step)
        rule.step(x, y)
        reference.step(x, y)


def test_the_network_reads_images_and_is_an_independent_conv_stack(digits):
    bp, _ = built(cnn_config(), digits)
    net = bp.network
    assert net.interfaces == ["h1", "h2", "h3"] and net.shapes == [(4, 4, 4), (4, 2, 2), (4, 1, 1)]
    x = digits.x_test[:16]
    net.eval()
    h = x.reshape(16, 1, 8, 8)
    for block in net.blocks:  # written out with torch.nn.functional: conv, batch norm (running stats), relu, pool
        h = F.conv2d(h, block.conv.weight, block.conv.bias, padding=1)
        h = F.batch_norm(h, block.norm.running_mean, block.norm.running_var, block.norm.weight, block.norm.bias)
        h = F.max_pool2d(F.relu(h), 2, ceil_mode=True)
    expected = F.linear(h.reshape(16, -1), net.head.weight, net.head.bias)
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("rule_name, extra", [("sg", {}), ("sg", {"sg_at": [1, 2]}), ("cdni", {}), ("dni", {})])
def test_oracle_modules_on_a_cnn_are_backprop(digits, rule_name, extra):
    sg, _ = built(cnn_config(rule=rule_name, **extra), digits)
    sg.signal = lambda i, p: p.arriving[i]  # the oracle: the gradient arriving from above
    sg.learn = lambda p: {}
    bp, _ = built(cnn_config(), digits)
    assert parameters_equal(sg.network, bp.network)
    _side_by_side(sg, bp, digits, 10)
    assert parameters_equal(sg.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)
    assert not parameters_equal(bp.network, built(cnn_config(), digits)[0].network)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_fa_on_a_cnn_with_feedback_equal_to_the_weights_is_backprop(digits, batch_norm):
    fa, _ = built(cnn_config(rule="fa", batch_norm=batch_norm), digits)
    bp, _ = built(cnn_config(batch_norm=batch_norm), digits)
    assert (fa.network.blocks[0].conv.bias is None) == batch_norm  # no bias before batch norm
    store, maps = fa.modules["feedback"], fa.network.linears()
    assert [getattr(store, f"B{k}").shape for k in range(1, 4)] == [m.weight.shape for m in maps[1:]]
    assert store.B1.ndim == 4 and not torch.equal(store.B1, maps[1].weight)

    def copy_weights():
        for k in range(1, len(maps)):
            getattr(store, f"B{k}").copy_(maps[k].weight.detach())

    _side_by_side(fa, bp, digits, 10, copy_weights)
    assert parameters_equal(fa.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)


def test_fa_sends_the_error_through_the_feedback_kernels(digits):
    fa, _ = built(cnn_config(rule="fa"), digits)
    x, y = batch(digits, 16)
    p = fa.backward(x, y, into_parameters=False, interfaces=True)
    conv = fa.network.blocks[1]
    # the error at h1 is the error at conv 2's output sent down by the transposed convolution with B1
    h1 = p.trace.hidden[0].detach()
    pre = F.conv2d(h1, conv.conv.weight, conv.conv.bias, padding=1).requires_grad_(True)
    below = conv.norm(pre)
    (g_pre,) = torch.autograd.grad(F.max_pool2d(F.relu(below), 2, ceil_mode=True), pre, p.interface_grads[1])
    expected = F.conv_transpose2d(g_pre, fa.modules["feedback"].B1, padding=1)
    torch.testing.assert_close(p.interface_grads[0], expected, rtol=1e-5, atol=1e-8)


def test_dfa_one_block_with_the_head_weights_is_backprop(digits):
    dfa, _ = built(cnn_config(rule="dfa", depth=1), digits)
    bp, _ = built(cnn_config(depth=1), digits)
    r1 = dfa.modules["feedback"].R1
    assert r1.shape == (10, 4 * 4 * 4)
    _side_by_side(dfa, bp, digits, 10, lambda: r1.copy_(dfa.network.head.weight.detach()))
    assert parameters_equal(dfa.network, bp.network, exact=False, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hidden", [0, 1])
def test_conv_modules_start_at_exactly_zero_and_read_the_label_planes(hidden):
    torch.manual_seed(0)
    module = ConvSyntheticGradientModule(4, 10, hidden, 8, True, "linear")
    h, c = torch.randn(5, 4, 6, 6), F.one_hot(torch.arange(5), 10).float()
    assert torch.equal(module(h, c), torch.zeros_like(h))
    torch.nn.init.normal_(module.out.weight)
    if hidden == 0:  # one convolution over [h, planes]: the planes' part is the label's kernel summed over the window
        planes = c[:, :, None, None].expand(-1, -1, 6, 6)
        expected = F.conv2d(torch.cat([h, planes], 1), module.out.weight, module.out.bias, padding=1)
        torch.testing.assert_close(module(h, c), expected)


def test_flat_modules_start_at_zero_and_are_the_vector_module_on_the_flattened_map():
    torch.manual_seed(0)
    module = FlatSyntheticGradientModule((3, 4, 5), 10, 0, 8, False, "linear")
    h, c = torch.randn(6, 3, 4, 5), F.one_hot(torch.arange(6), 10).float()
    assert torch.equal(module(h, c), torch.zeros_like(h))
    torch.nn.init.normal_(module.out.weight)
    torch.nn.init.normal_(module.out.bias)
    a, b = module.out.weight[:, :60], module.out.weight[:, 60:]  # M(h, c) = hA + cB + b, every position to every other
    expected = (h.reshape(6, 60) @ a.T + c @ b.T + module.out.bias).reshape(6, 3, 4, 5)
    torch.testing.assert_close(module(h, c), expected)
    moved = h.clone()
    moved[:, :, 0, 0] += 1.0  # one corner moves the far corner's prediction (a 3x3 convolution's would not)
    assert not torch.allclose(module(moved, c)[:, :, -1, -1], module(h, c)[:, :, -1, -1])
    hidden = FlatSyntheticGradientModule((3, 4, 5), 0, 1, 8, True, "linear")
    assert [type(m) for m in hidden.hidden] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert hidden.hidden[0].in_features == 60 and torch.equal(hidden(h), torch.zeros_like(h))


def test_the_module_factory_follows_the_interface_shape_and_sg_map(digits):
    rule, _ = built(cnn_config(rule="cdni", depth=2), digits)
    assert all(type(m) is FlatSyntheticGradientModule for m in rule.modules.values())
    assert rule.config.sg_hidden == 1 and rule.config.sg_batch_norm  # the defaults on feature maps
    assert [m.out.out_features for m in rule.modules.values()] == [4 * 4 * 4, 4 * 2 * 2]
    rule, _ = built(cnn_config(rule="cdni", depth=2, sg_map="conv", sg_hidden=0), digits)
    assert all(type(m) is ConvSyntheticGradientModule for m in rule.modules.values())
    assert all(len(m.hidden) == 0 for m in rule.modules.values())
    rule, _ = built(small_config(rule="cdni", depth=2), digits)
    assert all(type(m) is SyntheticGradientModule for m in rule.modules.values())
    assert rule.config.sg_hidden == 0 and not rule.config.sg_batch_norm  # vectors keep linear modules


def test_run_files_from_before_the_flat_modules_read_back_with_the_modules_they_were_trained_with():
    """A stored config without ``sg_map`` was written when conv modules were the only map modules."""
    cnn = {k: v for k, v in json.loads(cnn_config(rule="cdni").resolved().to_json()).items() if k != "sg_map"}
    mlp = {k: v for k, v in json.loads(small_config(rule="cdni").resolved().to_json()).items() if k != "sg_map"}
    assert TrainConfig.from_json(json.dumps(cnn)).sg_map == "conv"
    assert TrainConfig.from_json(json.dumps(mlp)).sg_map == "flat"
    assert cnn_config(rule="cdni").resolved().sg_map == "flat"


@pytest.mark.parametrize("rule", ["sg", "dni", "cdni", "fa", "dfa"])
def test_every_rule_records_feature_maps(tmp_path, digits, rule):
    path = tmp_path / f"{rule}.h5"
    train(cnn_config(rule=rule, steps=6, record_every=3), path, quiet=True, data=digits)
    with RunFile(path) as run:
        assert run.status == "complete" and run.model == "cnn"
        assert run.array("h1", "activations").shape == (3, 50, 4, 4, 4)
        signalled = [name for name in run.layers if run.has(name, "signal")]
        assert signalled == (["h1", "h2"] if rule == "sg" else ["h1", "h2", "h3"])
        for name in signalled:
            s = run.array(name, "signal")
            assert s.shape == run.array(name, "true_grad").shape
            if rule in ("sg", "dni", "cdni"):
                assert not s[0].any() and s[-1].any()  # zero at step 0, then the modules learn


def test_cli_trains_a_cnn_and_refuses_vectors(tmp_path, capsys):
    assert main(["train", "--model", "cnn", "--depth", "2", "--channels", "4", "--steps", "4", "--quiet",
                 "--out", str(tmp_path / "c.h5")]) == 0
    assert main(["train", "--model", "cnn", "--dataset", "linear-regression-2d", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--model cnn needs a data set of images" in capsys.readouterr().err
    assert main(["train", "--model", "cnn", "--kernel-size", "4", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--kernel-size must be odd" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
    with RunFile(tmp_path / "c.h5") as run:
        assert run.config["channels"] == 4 and run.layer_info("h2")["kind"] == "conv+batchnorm+relu+maxpool"
        assert np.isfinite(run.evals["test_acc"]).all()
    args = ["train", "--model", "cnn", "--rule", "cdni", "--depth", "1", "--channels", "2", "--steps", "2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "m.h5")]) == 0
    assert main(args + ["--sg-map", "conv", "--no-sg-batch-norm", "--out", str(tmp_path / "n.h5")]) == 0
    with RunFile(tmp_path / "m.h5") as run, RunFile(tmp_path / "n.h5") as other:
        assert (run.config["sg_map"], run.config["sg_hidden"], run.config["sg_batch_norm"]) == ("flat", 1, True)
        assert (other.config["sg_map"], other.config["sg_hidden"], other.config["sg_batch_norm"]) == ("conv", 1, False)


def test_synthetic_loss_of_a_conv_module_is_its_exact_path_integral(tmp_path, digits):
    """A conv module with no hidden layer is affine in the map, so the trapezoid rule is exact along a path."""
    from repanalysis.analysis.synthetic_loss import path_ends, synthetic_losses
    from repanalysis.training.parts import rebuild

    path = tmp_path / "cdni.h5"
    train(cnn_config(rule="cdni", steps=8, record_every=8, sg_lr=0.05, sg_map="conv", sg_hidden=0), path, quiet=True,
          data=digits)
    with RunFile(path) as run:
        result = synthetic_losses(run, -1, ["h2"], points=3)["h2"]
        rule = rebuild(run, -1)
        h0 = torch.from_numpy(run.stored("h2", "activations", -1)).double()
        labels = torch.from_numpy(run.probe_labels)
    assert result["method"] == "gauss-legendre" and result["synthetic"].shape == (50, 3)
    rule.network.double().eval()
    rule.modules.double().eval()
    d = path_ends(h0, "classification", labels) - h0
    with torch.no_grad():
        m = lambda h: rule.predict(1, h, labels, None)  # noqa: E731
        assert m(h0).abs().max() > 0
        for k, t in enumerate(result["t"]):
            integral = t * ((m(h0) * d).sum((1, 2, 3)) + (m(h0 + t * d) * d).sum((1, 2, 3))) / 2
            np.testing.assert_allclose(result["synthetic"][:, k], result["anchor"] + integral.numpy(), rtol=1e-9,
                                       atol=1e-12)
