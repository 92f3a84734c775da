"""Backprop training and the run file: the foundation's promises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from helpers import python_sigint, small_config

from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.nn.feedforward import build_network
from repanalysis.runfile.hdf5 import FORMAT_VERSION, RunFile
from repanalysis.training.parts import build, evaluate, rebuild
from repanalysis.training.train import train


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("runs") / "bn.h5"
    train(small_config(batch_norm=True, steps=30), path, quiet=True, data=digits)
    return path


def test_run_file_follows_the_schema(bn_run):
    with h5py.File(bn_run, "r") as f:
        a = f.attrs
        assert a["format"] == "repanalysis-run" and a["format_version"] == FORMAT_VERSION
        assert a["status"] == "complete" and a["rule"] == "backprop" and a["dataset"] == "digits"
        for key in ("model", "seed", "created", "versions", "config"):
            assert key in a
        assert list(f["checkpoints/step"][:]) == [0, 10, 20, 30]
        assert f["probe/index"].dtype == np.int64 and f["probe/index"].shape == (50,)
        assert f["probe/labels"].dtype == np.int64
        assert sorted(f["layers"]) == ["h1", "h2", "h3"]
        for name in ("h1", "h2", "h3"):
            g = f["layers"][name]
            assert g.attrs["width"] == 16 and g.attrs["kind"] == "linear+batchnorm+relu"
            for kind in ("activations", "true_grad"):
                assert g[kind].shape == (4, 50, 16) and g[kind].dtype == np.float32
                assert g[kind].chunks == (1, 50, 16)
                assert g[kind].compression is None
            assert "signal" not in g  # backprop's signal is the true gradient
        assert "model.blocks.0.norm.running_mean" in f["params"]
        assert f["params/model.blocks.0.linear.weight"].shape == (4, 16, 64)
        assert len(f["metrics/step"]) == 30 and f["metrics/train_loss"].dtype == np.float64
        assert list(f["eval/step"][:]) == [0, 10, 20, 30]


def test_recorded_true_gradient_is_the_gradient_of_the_probe_mean_loss(bn_run, digits):
    with RunFile(bn_run) as run:
        index, checkpoint = run.probe_index, 2
        rule = rebuild(run, checkpoint)
        recorded = [run.true_grad(name, checkpoint) for name in run.layers]
        activations = [run.activations(name, checkpoint) for name in run.layers]
    net = rule.network.train()  # recorded with the probe set's own batch statistics (record_bn "batch")
    x, y = digits.x_test[index], digits.y_test[index]
    hidden, h = [], x
    for block in net.blocks:
        h = block(h)
        hidden.append(h)
    loss = losses.loss("classification", net.head(h), y)
    grads = torch.autograd.grad(loss, hidden)
    for g, r, h, a in zip(grads, recorded, hidden, activations):
        np.testing.assert_allclose(r, g.numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(a, h.detach().numpy(), rtol=1e-5, atol=1e-6)


def _final_state(result):
    rule = result.rule
    return rule.network.state_dict(), [opt.state_dict() for opt in rule.optimizers]


@pytest.mark.parametrize("rule", ["backprop", "cdni"])
def test_recording_changes_nothing(tmp_path, digits, rule):
    config = small_config(rule=rule, batch_norm=True, record_every=3)
    with_record = _final_state(train(config, tmp_path / "a.h5", quiet=True, data=digits))
    without = _final_state(train(config, None, quiet=True, data=digits))
    for k, v in with_record[0].items():
        assert torch.equal(v, without[0][k]), k
    for a, b in zip(with_record[1], without[1]):
        for pid, state in a["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["state"][pid][key]), (pid, key)


def test_same_command_twice_writes_identical_arrays(tmp_path, digits):
    paths = [tmp_path / "one.h5", tmp_path / "two.h5"]
    for p in paths:
        train(small_config(rule="sg", batch_norm=True), p, quiet=True, data=digits)

    def arrays(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
            out["config"] = f.attrs["config"]
        return out

    one, two = arrays(paths[0]), arrays(paths[1])
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def test_different_seeds_differ(tmp_path, digits):
    a = train(small_config(seed=1), None, quiet=True, data=digits).rule.network.state_dict()
    b = train(small_config(seed=2), None, quiet=True, data=digits).rule.network.state_dict()
    assert not torch.equal(a["blocks.0.linear.weight"], b["blocks.0.linear.weight"])


def test_backprop_learns_digits(digits):
    result = train(small_config(steps=300, width=64, depth=2), None, quiet=True, data=digits)
    assert result.last_eval["test_acc"] > 0.85


def test_models_depths_and_interfaces():
    net = build_network("mlp", 10, 3, depth=50, width=8, activation="tanh", batch_norm=True)
    assert net.interfaces == [f"h{i}" for i in range(1, 51)]
    x = torch.randn(4, 10)
    trace = net.trace(x, cuts={3, 20})
    assert torch.equal(trace.output, net(x))
    assert trace.inputs[3] is not trace.hidden[3] and trace.inputs[3].grad_fn is None
    lin = build_network("linear", 10, 1)
    assert lin.interfaces == ["h1"] and torch.equal(lin(x), lin.trace(x).hidden[0])
    deep = build_network("deeplinear", 10, 2, depth=10, width=5, activation="relu", batch_norm=True)
    assert all(b.kind == "linear+identity" for b in deep.blocks)
    with pytest.raises(UserError, match="depth"):
        build_network("mlp", 10, 3, depth=0)


@pytest.mark.parametrize("activation, shaping", [("relu", {"bn_beta_init": 2.0}), ("tanh", {"bn_gamma_init": 0.5})])
def test_shaped_initialisation_keeps_the_input_alive_through_fifty_blocks(digits, activation, shaping):
    """At depth 50 with batch norm the default start forgets the input; orthogonal weights and an
    activation started in its near-linear part keep it (linear CKA of the input with h50)."""
    from repanalysis.measures.similarity import linear_cka

    x = torch.as_tensor(digits.x_train[:600], dtype=torch.float32)
    cka = {}
    for name, kw in (("default", {}), ("shaped", {"init": "orthogonal", **shaping})):
        torch.manual_seed(0)
        net = build_network("mlp", x.shape[1], 10, depth=50, width=64, activation=activation, batch_norm=True, **kw)
        with torch.no_grad():
            cka[name] = linear_cka(x, net.trace(x).hidden[-1])
    assert cka["default"] < 0.1 and cka["shaped"] > 0.3
    torch.manual_seed(0)
    net = build_network("mlp", 20, 3, depth=3, width=16, activation=activation, batch_norm=True,
                        init="orthogonal", bn_gamma_init=0.7, bn_beta_init=-0.3)
    for block in net.blocks:
        w = block.linear.weight.detach()
        assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)  # rows orthonormal (16 <= fan-in)
        assert torch.equal(block.norm.weight, torch.full((16,), 0.7)) and torch.equal(block.norm.bias, torch.full((16,), -0.3))
    with pytest.raises(UserError, match="unknown init 'he'"):
        build_network("mlp", 10, 3, init="he")


def _cli(*args) -> int:
    return main([str(a) for a in args])


def test_cli_train_and_inspect(tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert _cli("train", "--rule", "backprop", "--dataset", "digits", "--model", "mlp", "--depth", 2, "--width", 8,
                "--steps", 20, "--record-every", 10, "--out", out, "--quiet") == 0
    assert _cli("inspect", out) == 0
    text = capsys.readouterr().out
    assert "status      complete" in text and "h2     width 8" in text and "0, 10, 20" in text


@pytest.mark.parametrize("args, message", [
    (["--rule", "nope"], "unknown rule"),
    (["--model", "resnet"], "unknown model"),
    (["--dataset", "cifar"], "unknown data set"),
    (["--depth", "0"], "depth"),
    (["--probe-size", "100000"], "test split"),
    (["--batch-size", "0"], "batch-size"),
    (["--rule", "kickback"], "one scalar output"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert _cli("train", *args, "--steps", 2, "--out", tmp_path / "x.h5", "--quiet") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run.h5"
    out.write_text("keep me")
    assert _cli("train", "--steps", 2, "--out", out, "--quiet") == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert _cli("train", "--steps", 2, "--out", out, "--quiet", "--overwrite") == 0


def test_non_finite_loss_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "run.h5"
    code = _cli("train", "--dataset", "linear-regression-2d", "--optimizer", "sgd", "--lr", "1e4", "--steps", 200,
                "--record-every", 1, "--out", out, "--quiet")
    assert code == 2 and "non-finite at step" in capsys.readouterr().err
    with RunFile(out) as run:
        assert run.status == "failed" and "step" in run.error
        assert len(run.steps) >= 1 and np.isfinite(run.activations("h1", 0)).all()


def test_inspect_refuses_missing_foreign_and_truncated(tmp_path, capsys, bn_run):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(bn_run.read_bytes()[:5000])
    text = tmp_path / "text.h5"
    text.write_text("hello")
    for path, message in [(tmp_path / "none.h5", "no such file"), (foreign, "not a repanalysis run file"),
                          (truncated, "not a readable HDF5"), (text, "not a readable HDF5")]:
        assert _cli("inspect", path) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_unknown_format_version_is_refused(tmp_path, bn_run):
    copy = tmp_path / "future.h5"
    copy.write_bytes(bn_run.read_bytes())
    with h5py.File(copy, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UserError, match="format version"):
        RunFile(copy)


def test_a_version_1_file_reads_as_before(tmp_path, bn_run):
    """Version 2 only added the offsets of 16-bit arrays: a float32 file marked 1 reads the same arrays."""
    copy = tmp_path / "v1.h5"
    copy.write_bytes(bn_run.read_bytes())
    with h5py.File(copy, "a") as f:
        f.attrs["format_version"] = 1
    with RunFile(copy) as old, RunFile(bn_run) as new:
        layer = new.layers[0]
        np.testing.assert_array_equal(old.stored(layer, "activations"), new.stored(layer, "activations"))


def test_an_hdf5_error_while_reading_the_structure_is_one_line(bn_run, monkeypatch):
    """Read while a writer is mid-flush, HDF5 can fail with its own errors (h5py raises them as RuntimeError)."""
    def caught_mid_write(self, name):
        raise RuntimeError("Unable to synchronously check link existence (addr overflow)")

    monkeypatch.setattr(h5py.Group, "__contains__", caught_mid_write)
    with pytest.raises(UserError, match="in the middle of a write.*addr overflow"):
        RunFile(bn_run)


def test_sigkill_leaves_a_readable_running_file_that_plain_h5py_reads_live(tmp_path):
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repanalysis.cli", "train", "--steps", "100000", "--record-every", "20",
         "--eval-every", "100000", "--width", "16", "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                with RunFile(out) as run:
                    if len(run.steps) >= 3:
                        break
            except (UserError, OSError, KeyError):
                pass
        else:
            pytest.fail("the run wrote no checkpoints in 60 s")
        reader = ("import h5py\nwith h5py.File(%r, 'r') as f:\n"  # the README's snippet, in another process
                  "    print(f.attrs['status'], f['layers/h2/activations'][-1].shape)") % str(out)
        for _ in range(5):  # a read that lands during a flush may fail and is retried (the README says so)
            live = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=60)
            if live.returncode == 0:
                break
        assert live.returncode == 0 and live.stdout.startswith("running"), live.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with RunFile(out) as run:
        assert run.status == "running"
        n = len(run.steps)
        assert n >= 3 and list(run.steps[:3]) == [0, 20, 40]
        for name in run.layers:
            assert run.array(name, "activations").shape[0] >= n
            assert np.isfinite(run.activations(name, n - 1)).all()
    assert main(["inspect", str(out)]) == 0


def test_ctrl_c_takes_effect_between_steps_and_the_handler_is_put_back(tmp_path, digits, monkeypatch, request):
    python_sigint(request)
    import repanalysis.training.train as train_module

    def update(self, done, note=""):
        if done == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during step 5's bookkeeping

    monkeypatch.setattr(train_module.Progress, "update", update)
    path = tmp_path / "stopped.h5"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(steps=20, record_every=2), path, quiet=True, data=digits)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with RunFile(path) as run:
        assert run.status == "failed" and run.error == "stopped at step 6: KeyboardInterrupt"
        assert list(run.steps) == [0, 2, 4]  # step 5 finished whole; step 6 never began


@pytest.mark.parametrize("chunk", [None, 7, 100, 5000])
def test_evaluation_in_chunks_is_the_whole_test_split_at_once(chunk):
    """Against one forward of the whole test split in eval mode: the same accuracy, the same mean loss;
    the network is left in the mode it was in."""
    data = load("digits")
    config = small_config(rule="backprop").resolved()
    rule = build(config, data.task, data.n_features, data.n_outputs)
    rule.step(data.x_train[:32], data.y_train[:32])  # batch norm's running statistics move off their start
    got = evaluate(rule, data, torch.device("cpu"), chunk)
    assert rule.network.training
    rule.network.eval()
    with torch.no_grad():
        out = rule.network(data.x_test)
    assert got["test_acc"] == (out.argmax(1) == data.y_test).double().mean().item()
    assert got["test_loss"] == pytest.approx(losses.loss(data.task, out, data.y_test).item(), rel=1e-6)
