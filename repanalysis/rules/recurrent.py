"""Gradients over time: truncated BPTT, DNI at the window boundaries, and the true boundary gradient.

A sequence of ``L`` steps is cut into windows of ``T`` steps (the last one
shorter where ``T`` does not divide ``L``; ``T = None`` is one window, full
BPTT). The state is carried from window to window; the gradient is cut at
every boundary. Boundary ``k`` is the state after window ``k - 1``, the one
window ``k`` starts from.

Per-sample convention (as for the feed-forward modules): a module predicts
``∂L_n/∂[h, c]`` of sequence ``n``'s own loss; the batch loss is the mean of
``L_n``, so the signal a window's backward adds at its end is the prediction
divided by the batch size, as ``<prediction / B, [h, c]>``.

DNI (Jaderberg et al. 2016, §3.1): the module's target at boundary ``k`` is the
gradient that reaches it from window ``k``'s backward, which holds window
``k``'s loss and the module's own (detached) prediction at boundary ``k + 1``
pushed back through the window: bootstrapping. The end of a sequence has no
future and gets no signal.

Auxiliary task (the paper's "DNI + Aux"): the core also predicts, from the
state at boundary ``k``, the synthetic gradient ``2T`` steps after the start of
the window that ends there, i.e. the module's (detached) prediction at boundary
``k + 1``; at the end of the sequence that signal is zero. A second linear head
on ``[h, c]`` makes this prediction; its squared error (mean over sequences,
summed over its ``2H`` values, mean over boundaries) is added to the core's
loss, so its gradient reaches the LSTM through the window that ends at ``k``.
It does not enter the module's targets.
"""

from __future__ import annotations

from typing import Callable

import torch

from repanalysis.nn.recurrent import SequenceLSTM, State, joined, split
from repanalysis.nn.sequences import Batch, token_losses
from repanalysis.rules.synthetic import SyntheticGradientModule

#: ``future(k, state)``: the per-sample gradient ``[B, 2H]`` to add at boundary ``k`` given its detached
#: ``[h, c]``, or None for none.
Future = Callable[[int, torch.Tensor], torch.Tensor | None]


def windows(length: int, bptt: int | None) -> list[tuple[int, int]]:
    """The ``(start, stop)`` steps of each window of a sequence of ``length`` steps."""
    size = length if bptt is None else bptt
    return [(a, min(a + size, length)) for a in range(0, length, size)]


def boundaries(length: int, bptt: int | None) -> list[int]:
    """The steps after which the gradient is cut (every window's start but the first)."""
    return [a for a, _ in windows(length, bptt)][1:]


def truncated_backward(model: SequenceLSTM, batch: Batch, bptt: int | None, future: Future | None = None,
                       ends: Callable[[int, torch.Tensor], None] | None = None
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Accumulate into the parameters' ``.grad`` the gradient of the batch loss by BPTT truncated at
    ``bptt``, with ``future``'s signal added at the end of every window but the last.

    ``ends(k, state)``, where given, sees each boundary's ``[h, c]`` with its graph (through window
    ``k - 1``), and every window's graph is kept, so that a loss on those states can be differentiated after
    this returns.

    Returns the batch loss (nats, detached) and, per boundary ``k = 1 ..``, the per-sample gradient
    ``[B, 2H]`` that window ``k``'s backward brings to its starting state (DNI's target).
    """
    size = len(batch)
    state: State = model.initial_state(size)
    spans = windows(batch.length, bptt)
    total = torch.zeros(())
    arriving = []
    for k, (a, b) in enumerate(spans):
        start = None
        if k > 0:
            start = tuple(s.detach().requires_grad_() for s in state)
            state = start
        logits, state = model(batch.inputs[:, a:b], state)
        loss = token_losses(logits, batch, a).mean()
        objective = loss
        signal = future(k + 1, joined(state).detach()) if future is not None and k + 1 < len(spans) else None
        if signal is not None:
            objective = objective + (joined(state) * signal.detach()).sum() / size
        if ends is not None and k + 1 < len(spans):
            ends(k + 1, joined(state))
        objective.backward(retain_graph=ends is not None)
        if start is not None:
            arriving.append(torch.cat([s.grad for s in start], 1) * size)
        total = total + loss.detach()
    return total, arriving


def boundary_module(hidden: int) -> SyntheticGradientModule:
    """DNI's module at the window boundary: the feed-forward rules' linear module on ``[h, c]``,
    ``M(s) = sA + b``, zero at the start (zero weights and bias). Give it a detached state."""
    return SyntheticGradientModule(2 * hidden, 0, hidden=0, hidden_width=1, batch_norm=False, output="linear")


def dni_backward(model: SequenceLSTM, module: SyntheticGradientModule, batch: Batch, bptt: int | None,
                 aux: SyntheticGradientModule | None = None) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                      torch.Tensor | None]:
    """``truncated_backward`` with ``module``'s predictions as the signal, then the gradient of the module's
    regression loss accumulated into its ``.grad``: the mean over boundaries of
    ``mean_n ‖M(s_k)_n - t_k,n‖²`` with the bootstrapped targets ``t_k`` (detached). With ``aux`` (a
    ``boundary_module``), also the auxiliary loss (``auxiliary_loss``) accumulated into the LSTM's and
    ``aux``'s ``.grad``.

    Returns the batch loss, the regression loss and the auxiliary loss (None where the sequence has no
    boundary, or no ``aux``).
    """
    predictions: dict[int, torch.Tensor] = {}
    states: dict[int, torch.Tensor] = {}

    def future(k: int, state: torch.Tensor) -> torch.Tensor:
        predictions[k] = module(state)
        return predictions[k]

    loss, arriving = truncated_backward(model, batch, bptt, future, ends=None if aux is None else states.__setitem__)
    if not arriving:
        return loss, None, None
    regression = torch.stack([(predictions[k] - target.detach()).pow(2).sum(1).mean()
                              for k, target in enumerate(arriving, 1)]).mean()
    regression.backward()
    if aux is None:
        return loss, regression.detach(), None
    auxiliary = auxiliary_loss(aux, [states[k] for k in sorted(states)],
                               [predictions[k] for k in sorted(predictions)])
    auxiliary.backward()
    return loss, regression.detach(), auxiliary.detach()


def auxiliary_loss(aux: SyntheticGradientModule, states: list[torch.Tensor],
                   signals: list[torch.Tensor]) -> torch.Tensor:
    """The auxiliary task's loss: ``aux`` at each boundary's state ``states[k]`` against the synthetic
    gradient at the next boundary, ``signals[k + 1]`` (detached; zero after the last boundary, the end of the
    sequence): ``mean_k mean_n ‖aux(s_k)_n - signal_{k+1},n‖²``."""
    ahead = [s.detach() for s in signals[1:]] + [torch.zeros_like(signals[-1])]
    return torch.stack([(aux(state) - target).pow(2).sum(1).mean() for state, target in zip(states, ahead)]).mean()


def state_gradients(model: SequenceLSTM, batch: Batch, bptt: int | None, future: Future | None = None
                    ) -> torch.Tensor:
    """Per-sample ``∂L_n/∂[h, c]`` at the state after every step, as a rule's backward gives it: ``[B, L, 2H]``
    (detached). At step ``t`` that is the gradient of the loss after ``t`` through ``t``'s window only (BPTT
    truncated at ``bptt``; None: the whole sequence, the true gradient) plus, with ``future``, its signal at
    the window's end pushed back (DNI); zero where nothing reaches the state (the window's end without a
    signal, the sequence's last step)."""
    state = model.initial_state(len(batch))
    per_window = []
    for k, (a, b) in enumerate(windows(batch.length, bptt)):
        state = tuple(s.detach() for s in state)
        taps, logits = [], []
        for t in range(a, b):
            out, state = model(batch.inputs[:, t:t + 1], state)
            logits.append(out)
            taps.append(torch.zeros_like(joined(state), requires_grad=True))
            state = split(joined(state) + taps[-1])
        objective = token_losses(torch.cat(logits, 1), batch, a).sum()
        if future is not None and b < batch.length:
            objective = objective + (joined(state) * future(k + 1, joined(state).detach()).detach()).sum()
        grads = torch.autograd.grad(objective, taps, allow_unused=True)
        per_window += [torch.zeros_like(tap) if g is None else g for tap, g in zip(taps, grads)]
    return torch.stack(per_window, 1)


def true_boundary_gradients(model: SequenceLSTM, batch: Batch, at: list[int]) -> torch.Tensor:
    """Per-sample ``∂L_n/∂[h, c]`` of each sequence's whole loss at the state after each step in ``at``, by
    one unroll over the whole sequence (``state_gradients``): ``[B, len(at), 2H]`` (detached)."""
    return state_gradients(model, batch, None)[:, [t - 1 for t in at]]
