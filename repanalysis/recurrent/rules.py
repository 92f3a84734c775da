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
"""

from __future__ import annotations

from typing import Callable

import torch

from ..rules.synthetic import SyntheticGradientModule
from .model import SequenceLSTM, State, joined, split
from .tasks import Batch, token_losses

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


def truncated_backward(model: SequenceLSTM, batch: Batch, bptt: int | None,
                       future: Future | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Accumulate into the parameters' ``.grad`` the gradient of the batch loss by BPTT truncated at
    ``bptt``, with ``future``'s signal added at the end of every window but the last.

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
        objective.backward()
        if start is not None:
            arriving.append(torch.cat([s.grad for s in start], 1) * size)
        total = total + loss.detach()
    return total, arriving


def boundary_module(hidden: int) -> SyntheticGradientModule:
    """DNI's module at the window boundary: the feed-forward rules' linear module on ``[h, c]``,
    ``M(s) = sA + b``, zero at the start (zero weights and bias). Give it a detached state."""
    return SyntheticGradientModule(2 * hidden, 0, hidden=0, hidden_width=1, batch_norm=False, output="linear")


def dni_backward(model: SequenceLSTM, module: SyntheticGradientModule, batch: Batch,
                 bptt: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``truncated_backward`` with ``module``'s predictions as the signal, then the gradient of the module's
    regression loss accumulated into its ``.grad``: the mean over boundaries of
    ``mean_n ‖M(s_k)_n - t_k,n‖²`` with the bootstrapped targets ``t_k`` (detached).

    Returns the batch loss and the regression loss (None where the sequence has no boundary).
    """
    predictions: dict[int, torch.Tensor] = {}

    def future(k: int, state: torch.Tensor) -> torch.Tensor:
        predictions[k] = module(state)
        return predictions[k]

    loss, arriving = truncated_backward(model, batch, bptt, future)
    if not arriving:
        return loss, None
    regression = torch.stack([(predictions[k] - target.detach()).pow(2).sum(1).mean()
                              for k, target in enumerate(arriving, 1)]).mean()
    regression.backward()
    return loss, regression.detach()


def true_boundary_gradients(model: SequenceLSTM, batch: Batch, at: list[int]) -> torch.Tensor:
    """Per-sample ``∂L_n/∂[h, c]`` of each sequence's whole loss at the state after each step in ``at``, by
    one unroll over the whole sequence: ``[B, len(at), 2H]`` (detached)."""
    size = len(batch)
    state = model.initial_state(size)
    taps, logits = [], []
    edges = [0, *at, batch.length]
    for a, b in zip(edges, edges[1:]):
        if a > 0:
            tap = torch.zeros_like(joined(state), requires_grad=True)
            taps.append(tap)
            state = split(joined(state) + tap)
        out, state = model(batch.inputs[:, a:b], state)
        logits.append(out)
    losses = token_losses(torch.cat(logits, 1), batch)
    if not taps:
        return torch.zeros(size, 0, 2 * model.hidden)
    grads = torch.autograd.grad(losses.sum(), taps)
    return torch.stack(grads, 1)
