"""Recurrent networks: truncated BPTT and DNI against full BPTT, the recorded boundary gradient, Copy's scorer,
the language-modelling split, and bad input."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from repanalysis.cli import main
from repanalysis.nn.recurrent import SequenceLSTM, joined
from repanalysis.nn.sequences import Batch, CharText, Copy, Curriculum, RepeatCopy, copy_score, token_losses
from repanalysis.rules.recurrent import (
    auxiliary_loss,
    boundaries,
    boundary_module,
    dni_backward,
    true_boundary_gradients,
    truncated_backward,
    windows,
)
from repanalysis.training.recurrent import RecurrentConfig, SequenceTask, train_recurrent


def _model(seed: int = 0) -> SequenceLSTM:
    torch.manual_seed(seed)
    return SequenceLSTM(Copy().vocab, 6, Copy().n_outputs).double()


def _batch(n: int = 4, size: int = 5, seed: int = 1) -> Batch:
    return Copy().batch(n, size, torch.Generator().manual_seed(seed))


def _full_gradient(model: SequenceLSTM, batch: Batch) -> list[torch.Tensor]:
    """The gradient of the batch loss by one forward over the whole sequence (no windows)."""
    logits, _ = model(batch.inputs, model.initial_state(len(batch)))
    return list(torch.autograd.grad(token_losses(logits, batch).mean(), list(model.parameters())))


def _grads(model: SequenceLSTM) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-12) -> bool:
    return all(torch.allclose(x, y, rtol=0, atol=tol) for x, y in zip(a, b))


def test_windows_cover_the_sequence():
    assert windows(7, None) == [(0, 7)]
    assert windows(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert windows(6, 3) == [(0, 3), (3, 6)]
    assert boundaries(7, 3) == [3, 6]
    assert boundaries(7, 7) == [] and boundaries(7, None) == []


@pytest.mark.parametrize("bptt", [None, 9])
def test_one_window_is_full_bptt_for_both_rules(bptt):
    model, batch = _model(), _batch()  # 9 steps
    full = _full_gradient(model, batch)
    truncated_backward(model, batch, bptt)
    assert _close(_grads(model), full)
    model.zero_grad()
    module = boundary_module(model.hidden).double()
    with torch.no_grad():  # a module that would change the gradient if it were used
        module.out.bias.fill_(1.0)
    _, regression, auxiliary = dni_backward(model, module, batch, bptt, boundary_module(model.hidden).double())
    assert regression is None and auxiliary is None and module.out.bias.grad is None
    assert _close(_grads(model), full)


def test_runs_with_the_whole_sequence_as_window_end_with_the_same_parameters(tmp_path):
    """The loop: full BPTT, truncated BPTT and DNI at T = L (Copy held at N = 3, L = 7) give the same
    parameters after 6 steps, bit for bit."""
    common = dict(task="copy", copy_start=3, copy_max=3, steps=6, hidden=8, batch_size=4, probe_size=2,
                  probe_length=3, record_every=6, eval_every=3, seed=3)
    runs = {name: tmp_path / f"{name}.h5" for name in ("full", "bptt", "dni")}
    train_recurrent(RecurrentConfig(**common), runs["full"], quiet=True)
    train_recurrent(RecurrentConfig(rule="backprop", bptt=7, **common), runs["bptt"], quiet=True)
    train_recurrent(RecurrentConfig(rule="dni", bptt=7, **common), runs["dni"], quiet=True)
    files = {name: h5py.File(path, "r") for name, path in runs.items()}
    names = [n for n in files["full"]["params"]]
    assert len(names) == 7 and all(files["full"]["params"][n].shape[0] == 2 for n in names)
    for n in names:
        first = files["full"]["params"][n]
        assert not np.array_equal(first[0], first[-1])  # trained
        for other in ("bptt", "dni"):
            assert np.array_equal(first[-1], files[other]["params"][n][-1]), (other, n)


@pytest.mark.parametrize("bptt", [1, 2, 4])
def test_an_oracle_module_makes_truncated_bptt_full_bptt(bptt):
    model, batch = _model(), _batch()
    full = _full_gradient(model, batch)
    at = boundaries(batch.length, bptt)
    true = true_boundary_gradients(model, batch, at)
    truncated_backward(model, batch, bptt)
    assert not _close(_grads(model), full, 1e-6)  # the cut loses the future
    model.zero_grad()
    _, arriving = truncated_backward(model, batch, bptt, future=lambda k, state: true[:, k - 1])
    assert _close(_grads(model), full)
    # with the true future at a window's end, what reaches its start is the true gradient there
    for k, got in enumerate(arriving):
        assert torch.allclose(got, true[:, k], rtol=0, atol=1e-12)


def test_dni_targets_bootstrap_the_next_prediction():
    """The module's target at boundary k is window k's gradient plus its prediction at k + 1 pushed back:
    with zero-initialised modules at the start, the target of the last boundary is the true gradient there."""
    model, batch = _model(), _batch()
    module = boundary_module(model.hidden).double()
    at = boundaries(batch.length, 3)
    true = true_boundary_gradients(model, batch, at)
    seen = {}

    def future(k, state):
        seen[k] = module(state)
        return seen[k]

    _, arriving = truncated_backward(model, batch, 3, future)
    assert torch.allclose(arriving[-1], true[:, -1], rtol=0, atol=1e-12)
    assert not torch.allclose(arriving[0], true[:, 0], rtol=0, atol=1e-6)  # window 1 sees no further


def test_the_recorded_boundary_gradient_is_the_true_one(tmp_path):
    out = tmp_path / "dni.h5"
    config = RecurrentConfig(task="copy", rule="dni", bptt=3, steps=4, hidden=8, batch_size=4, probe_size=3,
                             probe_length=4, record_every=2, eval_every=2)
    train_recurrent(config, out, quiet=True)
    probe = SequenceTask(config.resolved(), None).probe  # 9 steps: boundaries after steps 3 and 6
    with h5py.File(out, "r") as f:
        assert f["boundary/after_step"][:].tolist() == [3, 6]
        assert f["boundary/true_grad"].shape == (3, 3, 2, 16) == f["boundary/prediction"].shape
        h, c = f["layers/h/activations"][-1], f["layers/c/activations"][-1]
        recorded, predicted = f["boundary/true_grad"][-1], f["boundary/prediction"][-1]
        params = {name[len("model."):]: torch.from_numpy(f["params"][name][-1])
                  for name in f["params"] if name.startswith("model.")}
        module_params = {name[len("rule."):]: torch.from_numpy(f["params"][name][-1])
                         for name in f["params"] if name.startswith("rule.")}
    assert h.shape == (3, 9, 8)
    model = SequenceLSTM(Copy().vocab, 8, Copy().n_outputs)
    model.load_state_dict(params)
    module = boundary_module(8)
    module.load_state_dict(module_params)
    for k, t in enumerate([3, 6]):
        # independently: from the recorded state after step t, run the rest and differentiate its loss
        state = [torch.from_numpy(h[:, t - 1]).requires_grad_(), torch.from_numpy(c[:, t - 1]).requires_grad_()]
        logits, _ = model(probe.inputs[:, t:], tuple(state))
        loss = token_losses(logits, probe, start=t).sum()
        expected = torch.cat(torch.autograd.grad(loss, state), 1).numpy()
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(recorded[:, k], expected, rtol=0, atol=1e-6)
        with torch.no_grad():
            mine = module(torch.from_numpy(np.concatenate([h[:, t - 1], c[:, t - 1]], 1))).numpy()
        np.testing.assert_allclose(predicted[:, k], mine, rtol=0, atol=1e-6)


def test_copy_batches_and_scorer_on_known_answers():
    batch = _batch(n=3, size=4)
    assert batch.inputs[:, 3].tolist() == [8] * 4 and (batch.inputs[:, 4:] == 9).all()
    assert torch.equal(batch.targets[:, 4:], batch.inputs[:, :3])
    assert batch.mask.sum(1).tolist() == [3] * 4 and not batch.mask[:, :4].any()
    right = torch.nn.functional.one_hot(batch.targets, 8).double()
    garbage = torch.randn(4, 7, 8, generator=torch.Generator().manual_seed(0)).double() * 50
    outside = ~batch.mask[:, :, None]
    perfect = torch.where(outside, garbage, right * 1000)
    assert copy_score(perfect, batch) == (0.0, 0.0)
    uniform = torch.where(outside, garbage, torch.zeros_like(right))
    bits_uniform, error_uniform = copy_score(uniform, batch)
    assert bits_uniform == pytest.approx(3.0, abs=1e-12)  # log2 of 8 symbols
    assert error_uniform == pytest.approx(float((batch.targets[batch.mask] != 0).double().mean()))
    half = torch.full_like(right, math.log(0.5 / 7)).masked_fill(right.bool(), math.log(0.5))  # p = 1/2: 1 bit
    half = torch.where(outside, garbage, half)
    assert copy_score(half, batch) == (pytest.approx(1.0, abs=1e-12), 0.0)


def test_the_curriculum_lengthens_on_solved_lengths_up_to_its_cap():
    curriculum = Curriculum(start=1, cap=3, threshold=0.15)
    assert not curriculum.update(0.2) and (curriculum.length, curriculum.longest) == (1, 0)
    assert curriculum.update(0.1) and (curriculum.length, curriculum.longest) == (2, 1)
    assert not curriculum.update(0.15) and curriculum.longest == 1
    assert curriculum.update(0.0) and curriculum.update(0.0) and (curriculum.length, curriculum.longest) == (3, 3)


def test_the_text_split_and_its_sequences():
    text = "".join(chr(ord("a") + i % 7) for i in range(200))
    task = CharText(text, length=8)
    assert task.chars == list("abcdefg") and task.vocab == 7
    assert len(task.train_ids) == 180 and len(task.held_ids) == 20
    held = task.held_out()
    assert len(held) == 2 and held.length == 8  # (20 - 1) // 8 whole sequences
    codes = [ord(ch) - ord("a") for ch in text[180:]]
    assert held.inputs.flatten().tolist() == codes[:16]
    assert held.targets.flatten().tolist() == codes[1:17]
    batch = task.batch(5, torch.Generator().manual_seed(0))
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    assert ((batch.inputs[:, 1:] - batch.inputs[:, :-1]) % 7 == 1).all()  # consecutive characters


def _refused(args, capsys, out) -> str:
    assert main(["train", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("repanalysis: error: ")
    assert list(out.parent.iterdir()) == []  # no run file, no temporary or lock file
    return err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs" / "run.h5"
    out.parent.mkdir()
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)))
    nul = tmp_path / "nul.txt"
    nul.write_text("to be\0or not")
    assert "longer than the longest Copy sequence" in _refused(
        ["--model", "lstm", "--copy-max", "3", "--bptt", "8"], capsys, out)
    assert "longer than the sequences (--seq-length 20)" in _refused(
        ["--model", "lstm", "--task", "charlm", "--text", str(nul), "--seq-length", "20", "--bptt", "21"], capsys,
        out)
    assert "mlp has no recurrent interface" in _refused(["--rule", "dni", "--bptt", "3"], capsys, out)
    assert "cnn has no recurrent interface" in _refused(["--model", "cnn", "--task", "copy"], capsys, out)
    assert "not a UTF-8 text file" in _refused(["--model", "lstm", "--task", "charlm", "--text", str(binary)],
                                              capsys, out)
    assert "not a text file (it holds NUL" in _refused(["--model", "lstm", "--task", "charlm", "--text", str(nul)],
                                                       capsys, out)
    assert "choose one of backprop, dni" in _refused(["--model", "lstm", "--rule", "cdni"], capsys, out)
    assert "--depth cannot be given with --model lstm" in _refused(["--model", "lstm", "--depth", "3"], capsys, out)


def test_train_lstm_on_the_command_line(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    out = tmp_path / "lm.h5"
    assert main(["train", "--model", "lstm", "--task", "charlm", "--text", str(text), "--rule", "dni",
                 "--bptt", "4", "--seq-length", "12", "--width", "8", "--steps", "3", "--probe-size", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert "held-out bits per character" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "complete" and f.attrs["model"] == "lstm"
        assert f["layers/h/activations"].shape == (4, 2, 12, 8)  # checkpoints at 0 and every step (steps/10 < 1)
        assert f["boundary/after_step"][:].tolist() == [4, 8]
        assert f["eval/test_bits"].shape == (3,) and np.isfinite(f["eval/test_bits"][:]).all()


def test_a_recurrent_run_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "copy.h5"
    train_recurrent(RecurrentConfig(steps=2, hidden=4, batch_size=2, probe_size=2, probe_length=2), out, quiet=True)
    with h5py.File(out, "a") as f:
        f.attrs["status"] = "running"  # as a killed run leaves it
    before = out.read_bytes()
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "is a recurrent run (--model lstm); those cannot be resumed" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_repeat_copy_batches_on_known_answers():
    task = RepeatCopy(symbols=4, repeats=3)
    batch = task.batch(2, 64, torch.Generator().manual_seed(0))
    assert task.vocab == 8 and task.length_of(2) == 9 and batch.inputs.shape == (64, 9)
    counts = batch.inputs[:, 2] - 4 + 1  # the count token: symbols + R - 1
    assert set(counts.tolist()) == {1, 2, 3} and (batch.inputs[:, 3:] == 7).all()
    for row in range(64):
        r, x = int(counts[row]), batch.inputs[row, :2]
        assert batch.mask[row].tolist() == [False] * 3 + [True] * (2 * r) + [False] * (6 - 2 * r)
        assert torch.equal(batch.targets[row, 3:3 + 2 * r], x.repeat(r))
    right = torch.nn.functional.one_hot(batch.targets, 4).double() * 1000
    assert copy_score(right, batch) == (0.0, 0.0)


def test_a_window_longer_than_repeat_copy_is_refused(tmp_path, capsys):
    err = _refused(["--model", "lstm", "--task", "repeatcopy", "--copy-max", "2", "--repeat-max", "2", "--bptt",
                    "8"], capsys, tmp_path / "run.h5")
    assert "--bptt 8 is longer than the longest Repeat Copy sequence (--copy-max 2 x (1 + --repeat-max 2) + 1 = " \
           "7 steps)" in err
    assert RecurrentConfig(task="repeatcopy", copy_max=2, repeat_max=2, bptt=7).resolved().bptt == 7


def _constant_module(hidden: int, value: float):
    """A boundary module whose prediction is ``value`` everywhere (zero weights, constant bias)."""
    module = boundary_module(hidden).double()
    with torch.no_grad():
        module.out.bias.fill_(value)
    return module


def test_the_auxiliary_task_on_a_known_answer():
    """A module that predicts c everywhere and a zero auxiliary head: the head's targets are c at every boundary
    but the last (whose next signal is the end of the sequence, zero), so its bias gradient is -2c (K-1)/K per
    value, its loss c² · 2H · (K-1)/K; a zero head sends nothing to the LSTM."""
    model, batch, c = _model(), _batch(), 0.3  # 9 steps, T = 2: boundaries after 2, 4, 6, 8 (K = 4)
    _, _, plain = dni_backward(model, _constant_module(model.hidden, c), batch, 2)
    without = _grads(model)
    model.zero_grad()
    head = boundary_module(model.hidden).double()
    _, _, auxiliary = dni_backward(model, _constant_module(model.hidden, c), batch, 2, head)
    assert plain is None
    assert float(auxiliary) == pytest.approx(c ** 2 * 2 * model.hidden * 3 / 4, rel=1e-12)
    assert torch.allclose(head.out.bias.grad, torch.full((2 * model.hidden,), -2 * c * 3 / 4, dtype=torch.double),
                          rtol=0, atol=1e-12)
    assert _close(_grads(model), without)


def test_the_auxiliary_gradient_is_that_of_its_loss_on_each_window():
    """Independently: the LSTM's gradient with the auxiliary task is DNI's plus, per boundary k, the gradient of
    ``‖aux(s_k) − M(s_k+1)‖²`` (mean over sequences and boundaries) through window k − 1 alone, from its
    detached start; the module's own gradient is unchanged."""
    torch.manual_seed(5)
    model, batch, bptt = _model(), _batch(n=5, size=3), 3  # 11 steps: boundaries after 3, 6, 9
    module, head = boundary_module(model.hidden).double(), boundary_module(model.hidden).double()
    with torch.no_grad():
        for layer in (module.out, head.out):
            layer.weight.normal_(0, 0.3)
            layer.bias.normal_(0, 0.1)
    dni_backward(model, module, batch, bptt)
    dni_grads, module_grads = _grads(model), [p.grad.clone() for p in module.parameters()]
    model.zero_grad()
    module.zero_grad()
    dni_backward(model, module, batch, bptt, head)
    with_aux = _grads(model)
    assert _close([p.grad for p in module.parameters()], module_grads)
    at = boundaries(batch.length, bptt)
    with torch.no_grad():  # the states at the boundaries, by one unroll
        h, c = model.states(batch.inputs, model.initial_state(len(batch)))
    states = [torch.cat([h[:, t - 1], c[:, t - 1]], 1) for t in at]
    with torch.no_grad():
        targets = [module(s) for s in states[1:]] + [torch.zeros_like(states[0])]
    expected = [torch.zeros_like(p) for p in model.parameters()]
    starts = [0, *at]
    for k, t in enumerate(at):
        start = states[k - 1] if k > 0 else None
        state = model.initial_state(len(batch)) if start is None else (start[:, :model.hidden],
                                                                       start[:, model.hidden:])
        _, end = model(batch.inputs[:, starts[k]:t], state)
        loss = (head(joined(end)) - targets[k]).pow(2).sum(1).mean() / len(at)
        for total, g in zip(expected, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)):
            if g is not None:  # the readout plays no part in the state
                total += g
    assert max(float(e.abs().max()) for e in expected) > 1e-4
    assert _close([a - b for a, b in zip(with_aux, dni_grads)], expected, 1e-10)
    with torch.no_grad():
        assert float(auxiliary_loss(head, states, [module(s) for s in states])) == pytest.approx(
            float(sum((head(s) - t).pow(2).sum(1).mean() for s, t in zip(states, targets)) / len(at)), rel=1e-12)


def test_the_auxiliary_task_needs_dni(tmp_path, capsys):
    err = _refused(["--model", "lstm", "--aux", "--bptt", "2"], capsys, tmp_path / "run.h5")
    assert "--aux is DNI's auxiliary task; it needs --rule dni, not backprop" in err
