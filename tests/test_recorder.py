"""``Recorder``: run files from the user's own model and loop."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import python_sigint, run_arrays, small_config
from torch import nn

from repanalysis import Recorder
from repanalysis.nn import losses
from repanalysis.nn.feedforward import build_network
from repanalysis.runfile.hdf5 import RunFile, as_rows
from repanalysis.training.parts import Batches
from repanalysis.training.train import train


def test_recorder_in_a_plain_loop_writes_the_arrays_train_writes(tmp_path, digits):
    config = small_config(batch_norm=True, steps=12, record_every=4, eval_every=1000).resolved()
    train(config, tmp_path / "train.h5", quiet=True, data=digits)

    torch.manual_seed(config.seed)
    net = build_network("mlp", digits.n_features, digits.n_outputs, depth=config.depth, width=config.width,
                        batch_norm=True)
    optimizers = [torch.optim.Adam(part.parameters(), lr=config.lr) for part in [*net.blocks, net.head]]
    index = digits.probe_index(config.probe_size)
    layers = {name: block for name, block in zip(net.interfaces, net.blocks)}
    batches = Batches(len(digits.x_train), config.batch_size, config.seed)
    with Recorder(tmp_path / "mine.h5", net, layers, (digits.x_test[index], digits.y_test[index]),
                  F.cross_entropy, rule="backprop", seed=config.seed, probe_index=index) as rec:
        for step in range(config.steps + 1):
            if step % config.record_every == 0:
                rec.checkpoint(step)
            if step == config.steps:
                break
            i = next(batches)
            net.train()
            loss = losses.loss("classification", net(digits.x_train[i]), digits.y_train[i])
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            rec.log(step + 1, train_loss=loss)

    ours, theirs = run_arrays(tmp_path / "mine.h5"), run_arrays(tmp_path / "train.h5")
    compared = [k for k in theirs if k.startswith(("layers/", "params/", "checkpoints/", "probe/"))]
    compared += ["metrics/step", "metrics/train_loss"]
    assert len(compared) > 30 and any("true_grad" in k for k in compared)
    for key in compared:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key
    with RunFile(tmp_path / "mine.h5") as run:
        assert run.status == "complete" and run.rule == "backprop" and run.model == "Network"
        assert run.config["layers"] == ["h1", "h2", "h3"] and run.config["external"]


def _SmallCNN() -> nn.Sequential:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(0.3), nn.Flatten(), nn.Linear(64, 10))


def _train_cnn(digits, path, steps=6, seed=0, lr=1e-2, rule="mine"):
    """A few steps of a small CNN with Adam; recorded to ``path`` every 2 steps unless it is None."""
    torch.manual_seed(seed)
    model = _SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    index = digits.probe_index(60)  # 6 per class
    probe = (digits.x_test[index], digits.y_test[index])
    rec = None if path is None else Recorder(path, model, {"input": model[0], "conv": model[3], "fc": "7"},
                                             probe, F.cross_entropy, rule=rule, seed=0, probe_index=index)
    for step in range(steps):
        if rec is not None and step % 2 == 0:
            rec.checkpoint(step)
        x, y = digits.x_train[32 * step: 32 * step + 32], digits.y_train[32 * step: 32 * step + 32]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.log(step + 1, train_loss=loss)
            rec.evaluation(step + 1, test_acc=0.5)
    if rec is not None:
        rec.checkpoint(steps)
        rec.close()
    return model, opt


def test_the_shadow_pass_changes_nothing(tmp_path, digits):
    recorded = _train_cnn(digits, tmp_path / "cnn.h5")
    rng_after_recorded = torch.get_rng_state()
    plain = _train_cnn(digits, None)
    assert torch.equal(rng_after_recorded, torch.get_rng_state())  # dropout drew the same numbers
    for (k, a), b in zip(recorded[0].state_dict().items(), plain[0].state_dict().values()):
        assert torch.equal(a, b), k
    for pid, state in recorded[1].state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, plain[1].state_dict()["state"][pid][key]), (pid, key)
    with RunFile(tmp_path / "cnn.h5") as run:
        assert run.layers == ["input", "conv", "fc"] and list(run.steps) == [0, 2, 4, 6]
        assert run.array("conv", "activations").shape == (4, 60, 4, 8, 8)
        assert run.array("input", "true_grad").shape == (4, 60, 1, 8, 8)
        assert run.layer_info("conv")["width"] == 256 and run.layer_info("conv")["kind"] == "ReLU"
        assert (run.activations("conv", 1) >= 0).all()  # recorded after the in-place ReLU, not changed by it
        assert len(run.metrics["train_loss"]) == 6 and len(run.evals["test_acc"]) == 6


def test_true_gradient_is_that_of_the_probe_mean_loss(tmp_path, digits):
    model, _ = _train_cnn(digits, None, steps=2)
    x, y = digits.x_test[:40], digits.y_test[:40]
    path = tmp_path / "one.h5"
    with Recorder(path, model, {"conv": model[1]}, (x, y), F.cross_entropy, record_bn="eval") as rec:
        rec.checkpoint(0)
    model.eval()
    conv = model[1](model[0](x)).detach().requires_grad_(True)
    out = model[2:](conv)
    (expected,) = torch.autograd.grad(F.cross_entropy(out, y), conv)
    with RunFile(path) as run:
        np.testing.assert_array_equal(run.stored("conv", "activations", 0), conv.detach().numpy())
        np.testing.assert_allclose(run.stored("conv", "true_grad", 0), expected.numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(run.true_grad("conv", 0), run.stored("conv", "true_grad", 0).reshape(40, -1))


def test_ctrl_c_during_a_checkpoint_lands_after_it(tmp_path, digits, monkeypatch, request):
    python_sigint(request)
    model = _SmallCNN()
    probe = (digits.x_test[:20], digits.y_test[:20])
    path = tmp_path / "stopped.h5"
    with pytest.raises(KeyboardInterrupt):
        with Recorder(path, model, {"conv": model[1]}, probe, F.cross_entropy) as rec:
            rec.checkpoint(0)
            original = rec._state
            rec._state = lambda: (os.kill(os.getpid(), signal.SIGINT), original())[1]
            rec.checkpoint(5)  # the signal arrives in the middle; the checkpoint is written whole first
            pytest.fail("the interrupt was lost")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with RunFile(path) as run:
        assert run.status == "failed" and run.error == "stopped at step 5: KeyboardInterrupt"
        assert list(run.steps) == [0, 5] and run.array("conv", "activations").shape[0] == 2


@pytest.mark.parametrize("layers, probe, message", [
    ({"conv": nn.Linear(2, 2)}, None, "is not a module of the model"),
    ({"conv": "nope"}, None, "the model has no module 'nope'"),
    ({}, None, "layers must be a non-empty dict"),
    ({"a/b": "1"}, None, "without '/'"),
    ({"conv": "1"}, "bad", "probe must be a pair"),
])
def test_bad_recorder_arguments_are_user_errors(tmp_path, digits, layers, probe, message):
    from repanalysis.errors import UserError

    model = _SmallCNN()
    with pytest.raises(UserError, match=message):
        Recorder(tmp_path / "x.h5", model, layers, probe or (digits.x_test[:20], digits.y_test[:20]), F.cross_entropy)
    assert not (tmp_path / "x.h5").exists()


def test_feature_maps_read_as_rows_flattened_or_pooled_per_channel():
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    assert np.array_equal(as_rows(maps), maps.reshape(2, 12)) and as_rows(maps)[0, 4] == maps[0, 1, 0, 0]
    np.testing.assert_array_equal(as_rows(maps, "channels"), [[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]])
    vectors = np.ones((4, 5), np.float32)
    assert as_rows(vectors, "channels") is vectors


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA written out: ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.fixture(scope="module")
def two_conv_runs(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("conv")
    _train_cnn(digits, folder / "bp.h5", seed=0, rule="backprop")
    _train_cnn(digits, folder / "mine.h5", seed=1, rule="mine")
    return folder / "bp.h5", folder / "mine.h5"


@pytest.mark.parametrize("maps", ["flatten", "channels"])
def test_analyze_two_recorder_files_of_a_conv_net(two_conv_runs, monkeypatch, maps):
    import repanalysis.analysis.runs as runs_module
    import repanalysis.measures._arrays as arrays_module
    from repanalysis.analysis.runs import analyze

    bp, mine = two_conv_runs
    with RunFile(bp) as a, RunFile(mine) as b:
        expected = _cka(a.activations("conv", -1, maps).astype(np.float64),
                        b.activations("conv", -1, maps).astype(np.float64))
        pooled = a.activations("conv", -1, "channels")
        assert pooled.shape == (60, 4)
        np.testing.assert_allclose(pooled, a.stored("conv", "activations", -1).mean((2, 3)), rtol=1e-6)
    measures = ["linear_cka", "effective_rank", "rsa"]
    table = analyze([bp, mine], measures=measures, maps=maps, quiet=True)
    row = table[(table.measure == "linear_cka") & (table.layer_a == "conv") & (table.run_a == str(mine))
                & (table.run_b == str(bp)) & (table.step_a == 6)]
    assert len(row) == 1 and row.value.iloc[0] == pytest.approx(expected, rel=1e-9)
    assert {"effective_rank", "rsa"} <= set(table.measure)
    monkeypatch.setattr(runs_module, "STREAM_ABOVE", 100)  # every map is streamed ...
    monkeypatch.setattr(arrays_module, "CHUNK_BYTES", 3000)  # ... a few samples at a time
    streamed = analyze([bp, mine], measures=measures[:2], maps=maps, quiet=True)
    merged = table.merge(streamed, on=[c for c in table.columns if c != "value"])
    assert len(merged) == len(streamed) > 10
    # streamed spectra come from the d x d moments (256 x 256 at rank 59 when flattened): tiny singular values differ
    np.testing.assert_allclose(merged.value_x, merged.value_y, rtol=1e-6)


def test_probe_two_recorder_files_of_a_conv_net(two_conv_runs):
    from repanalysis.probes import probe_runs
    from repanalysis.probes.folds import make_folds
    from repanalysis.probes.linear import linear_accuracy

    bp, mine = two_conv_runs
    table = probe_runs([bp, mine], checkpoints="last", maps="channels", folds=2, quiet=True)
    assert len(table) == 2 * 3 * 2 and set(table.layer) == {"input", "conv", "fc"}
    with RunFile(mine) as run:
        x, labels = run.stored("conv", "activations", -1).mean((2, 3), dtype=np.float64), run.probe_labels
    scores = [linear_accuracy(x[tr], labels[tr], x[te], labels[te], seed=0) for tr, te in make_folds(labels, 2, 0)]
    row = table[(table.run == str(mine)) & (table.layer == "conv") & (table.probe == "linear")]
    assert row.accuracy.iloc[0] == pytest.approx(np.mean(scores))


def test_an_existing_file_is_replaced_only_once_the_new_run_is_under_way(tmp_path, digits):
    model = _SmallCNN()
    probe = (digits.x_test[:20], digits.y_test[:20])
    path = tmp_path / "precious.h5"
    path.write_bytes(b"old")
    from repanalysis.errors import UserError

    with pytest.raises(UserError, match="exists"):
        Recorder(path, model, {"conv": "1"}, probe, F.cross_entropy)
    with pytest.raises(RuntimeError):
        with Recorder(path, model, {"conv": "1"}, probe, F.cross_entropy, overwrite=True) as rec:
            rec.checkpoint(0)
            raise RuntimeError("the user's loop failed")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]  # kept; the temporary file is gone
    rec = Recorder(path, model, {"conv": "1"}, probe, F.cross_entropy, overwrite=True)
    rec.checkpoint(0)
    rec.wait()
    assert path.read_bytes() == b"old"
    rec.checkpoint(1)
    rec.wait()  # the checkpoint is written in the background
    with RunFile(path) as run:
        assert run.status == "running" and list(run.steps) == [0, 1]
    rec.close()
    with RunFile(path) as run:
        assert run.status == "complete"


def _tiny_recorder(path, digits, loss=F.cross_entropy) -> Recorder:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    return Recorder(path, model, {"h": model[1]}, (digits.x_test[:20], digits.y_test[:20]), loss)


def test_metrics_are_aligned_by_step_with_nan_where_a_metric_is_missing(tmp_path, digits):
    """A metric missing from a logged step is NaN there, also across flushes (checkpoints) and when a
    metric first appears after rows already in the file."""
    with _tiny_recorder(tmp_path / "m.h5", digits) as rec:
        rec.log(1, a=1)
        rec.checkpoint(1)  # the first row goes to the file before b appears
        rec.log(2, a=2, b=5)
        rec.log(3, b=6)
        rec.evaluation(3, test_acc=0.5)
        rec.log(4, c=7)
    with RunFile(tmp_path / "m.h5") as run:
        m = run.metrics
    nan = np.nan
    assert m["step"].tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(m["a"], [1, 2, nan, nan])
    np.testing.assert_array_equal(m["b"], [nan, 5, 6, nan])
    np.testing.assert_array_equal(m["c"], [nan, nan, nan, 7])


@pytest.mark.parametrize("steps, message", [
    ((0, 0), "after the previous checkpoint's step 0"),
    ((5, 3), "after the previous checkpoint's step 5"),
    ((-1,), "must be at least 0"),
    ((1.5,), "not a whole number"),
    ((2.0,), "not a whole number"),
])
def test_checkpoint_steps_are_increasing_whole_numbers(tmp_path, digits, steps, message):
    from repanalysis.errors import UserError

    rec = _tiny_recorder(tmp_path / "s.h5", digits)
    with pytest.raises(UserError, match=message):
        for step in steps:
            rec.checkpoint(step)
    rec.close()
    with RunFile(tmp_path / "s.h5") as run:
        assert list(run.steps) == list(steps[:-1])  # the refused step left nothing behind


def test_a_summed_loss_is_refused_before_the_file_is_made(tmp_path, digits):
    from repanalysis.errors import UserError

    for loss in (nn.CrossEntropyLoss(reduction="sum"), lambda out, y: F.cross_entropy(out, y, reduction="sum"),
                 lambda out, y: F.cross_entropy(out, y, reduction="sum") / 20):
        with pytest.raises(UserError, match="sums over the probe set"):
            _tiny_recorder(tmp_path / "sum.h5", digits, loss)
        assert not (tmp_path / "sum.h5").exists()
    _tiny_recorder(tmp_path / "mean.h5", digits, nn.CrossEntropyLoss()).close()  # a mean is taken
