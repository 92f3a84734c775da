"""Tests of repanalysis.analysis.synthetic_loss: the path integral, the closed form, the oracle."""

import numpy as np
import pytest
import torch

from repanalysis.analysis.synthetic_loss import (
    is_affine,
    linear_path_integral,
    module_gradient,
    path_ends,
    path_integral,
    probe_target,
    synthetic_loss,
    synthetic_losses,
)
from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.rules.base import evaluating
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import rebuild
from repanalysis.training.train import train

SMALL = dict(dataset="digits", depth=3, width=16, steps=40, record_every=20, probe_size=100, batch_size=32)


@pytest.fixture(scope="session")
def sg_runs(tmp_path_factory):
    """A smooth (tanh, batch norm) linear-SG run, a cDNI run with error-conditioned MLP modules, a backprop run."""
    folder = tmp_path_factory.mktemp("sg_runs")
    configs = {
        # recorded in eval mode: the synthetic loss is per sample, so batch norm uses running statistics there
        "sg": TrainConfig(rule="sg", activation="tanh", batch_norm=True, sg_lr=1e-2, record_bn="eval", **SMALL),
        "cdni": TrainConfig(rule="cdni", sg_condition="error", sg_hidden=1, sg_width=16, **SMALL),
        "backprop": TrainConfig(rule="backprop", **SMALL),
    }
    for name, config in configs.items():
        train(config, folder / f"{name}.h5", quiet=True)
    return {name: folder / f"{name}.h5" for name in configs}


def _setup(path, checkpoint=-1):
    """The float64 eval-mode rule, its top cut, that interface's recorded activations and the probe targets."""
    run = RunFile(path)
    rule = rebuild(run, checkpoint)
    rule.network.double()
    rule.modules.double()
    i = max(rule.cuts)
    h0 = torch.as_tensor(run.activations(rule.network.interfaces[i], checkpoint), dtype=torch.float64)
    target = probe_target(run, rule.task)
    return run, rule, i, h0, target


def _true_gradient(rule, i, target):
    """The oracle: the per-sample gradient of the true loss of the layers above interface ``i``."""
    def grad(h):
        with torch.enable_grad():
            h = h.detach().requires_grad_(True)
            loss = losses.per_sample_loss(rule.task, rule.network.forward_from(i, h), target).sum()
            return torch.autograd.grad(loss, h)[0]
    return grad


def test_quadrature_equals_closed_form_for_linear_sg(sg_runs):
    run, rule, i, h0, target = _setup(sg_runs["sg"])
    module = rule.modules[rule.network.interfaces[i]]
    assert is_affine(module) and rule.condition == "label"
    direction = path_ends(h0, rule.task, target) - h0
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)[1:]
    with evaluating(rule.network, rule.modules), torch.no_grad():
        grad = module_gradient(rule, i, target)
        closed = linear_path_integral(grad, module, h0, direction, ts)
        quadrature = path_integral(grad, h0, direction, ts, order=2)
    assert closed.abs().max() > 1e-2  # the trained module is far from zero
    np.testing.assert_allclose(quadrature.numpy(), closed.numpy(), rtol=0, atol=1e-10)
    run.close()


def test_oracle_gradient_reproduces_true_loss(sg_runs):
    run, rule, i, h0, target = _setup(sg_runs["sg"])
    direction = path_ends(h0, rule.task, target) - h0
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)[1:]
    with evaluating(rule.network, rule.modules), torch.no_grad():
        def loss(t):
            return losses.per_sample_loss(rule.task, rule.network.forward_from(i, h0 + t * direction), target)

        integral = path_integral(_true_gradient(rule, i, target), h0, direction, ts, order=4)
        change = torch.stack([loss(t) - loss(0.0) for t in ts], 1)
    assert change.abs().max() > 1e-2  # the paths do move the loss
    np.testing.assert_allclose(integral.numpy(), change.numpy(), rtol=0, atol=1e-8)
    run.close()


def test_module_and_oracle_match_the_recorded_arrays(sg_runs):
    """Per-sample units: the oracle at h0 is N·true_grad, the module at h0 is N·signal (float32 records)."""
    run, rule, i, h0, target = _setup(sg_runs["sg"])
    name, n = rule.network.interfaces[i], len(h0)
    with evaluating(rule.network, rule.modules), torch.no_grad():
        oracle = _true_gradient(rule, i, target)(h0).numpy()
        module = module_gradient(rule, i, target)(h0).numpy()
    np.testing.assert_allclose(oracle, n * run.true_grad(name), atol=1e-4)
    np.testing.assert_allclose(module, n * run.signal(name), atol=1e-4)
    run.close()


def test_path_ends_are_class_means():
    h0 = torch.tensor([[0.0, 2.0], [2.0, 4.0], [5.0, 5.0]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])
    ends = path_ends(h0, "classification", labels)
    np.testing.assert_array_equal(ends.numpy(), [[1.0, 3.0], [1.0, 3.0], [5.0, 5.0]])
    np.testing.assert_array_equal(path_ends(h0, "regression", labels).numpy(), np.tile([7 / 3, 11 / 3], (3, 1)))


def test_synthetic_losses_report(sg_runs):
    with RunFile(sg_runs["sg"]) as run:
        first = synthetic_loss(run, 0, "h2", points=5)
        last = synthetic_loss(run, -1, "h2", points=5)
    # at step 0 the module predicts exactly zero: the synthetic loss stays at L(h0)
    np.testing.assert_allclose(first["synthetic"], np.repeat(first["anchor"][:, None], 5, axis=1), atol=1e-12)
    assert np.isnan(first["corr"])  # no change of the synthetic loss to correlate with
    assert first["true"].shape == (100, 5) and first["method"] == "closed form"
    assert np.isclose(last["gap"], np.abs(last["synthetic"] - last["true"]).mean())
    change = last["synthetic"] - last["anchor"][:, None], last["true"] - last["anchor"][:, None]
    assert np.isclose(last["corr"], np.corrcoef(change[0].ravel(), change[1].ravel())[0, 1])


def test_error_conditioned_modules_use_quadrature(sg_runs):
    with RunFile(sg_runs["cdni"]) as run:
        coarse = synthetic_losses(run, -1, points=4, order=2)
        fine = synthetic_losses(run, -1, points=4, order=8)
    assert list(coarse) == ["h1", "h2", "h3"]
    for name, report in coarse.items():
        assert report["method"] == "gauss-legendre" and np.isfinite(report["corr"])
        assert not np.allclose(report["synthetic"], report["synthetic"][:, :1])  # the modules are not zero
        np.testing.assert_allclose(report["synthetic"], fine[name]["synthetic"], rtol=1e-3)


def test_refusals(sg_runs):
    with RunFile(sg_runs["backprop"]) as run, pytest.raises(UserError, match="no synthetic-gradient modules"):
        synthetic_losses(run)
    with RunFile(sg_runs["sg"]) as run, pytest.raises(UserError, match="no synthetic-gradient module at h3"):
        synthetic_loss(run, -1, "h3")
