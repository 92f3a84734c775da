"""A synthetic-gradient rule's network cut into contiguous stages, and one stage's training step.

The stack is split only where the rule has a module (a *cut*), so that a stage
never needs a gradient from the stage above to update its blocks: the module at
its top interface (the *boundary*) supplies it at once. What crosses a
boundary: the activations and the labels going up; the gradient that arrived at
the upper stage's input (the boundary module's regression target, in batch-mean
units) going down.

A ``Stage`` runs on a whole ``SyntheticGradients`` rule (every process builds
the same seeded rule) but touches only its own blocks, modules and optimisers,
so its arithmetic is the in-process rule's: in lock-step, stages give the
in-process parameters (tested). Every target here is ``arriving · B`` (the
gradient that reached the cut from the segment above, per sample): that is the
in-process target at the top module and wherever ``--sg-lambda`` is 0, which
``check`` requires of every other module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.nn.feedforward import Network, Trace
from repanalysis.rules import SyntheticGradients
from repanalysis.rules.base import batch_statistics, evaluating
from repanalysis.training import resume as resume_state
from repanalysis.training.parts import state_arrays

BLOCK_OVERHEAD = 28_000_000
"""What a block's training step costs besides its multiply-adds, in multiply-adds: its Python and small
operations (batch norm, activation, its own and its module's optimiser steps). Measured on the 2-core
machine, one thread: a 4-unit block with its module takes 0.92 ms a step, and the arithmetic of wide
blocks runs at about 30 G multiply-adds a second."""


def step_costs(rule: SyntheticGradients, batch: int) -> list[int]:
    """Estimated cost of one training step of each block, in multiply-adds, with its module and (the top
    block) the head: the forward's multiply-adds per sample (counted by torch's ``FlopCounterMode``)
    three times for a block (forward, input and weight gradients; twice for the bottom block, which sends
    no gradient down) and for the head, twice for a module (forward, weight gradient), times ``batch``,
    plus ``BLOCK_OVERHEAD``."""
    net = rule.network
    n = 2  # samples counted (batch norm, in eval mode, changes nothing)
    first = net.blocks[0].weighted
    h = torch.zeros(n, *(net.input_shape or (first.in_features,)))
    cond_dim = 0 if rule.condition == "none" else rule.n_outputs
    costs = []
    with evaluating(net, rule.modules), torch.no_grad():
        for i, block in enumerate(net.blocks):
            work = (2 if i == 0 else 3) * _madds(block, h)
            h = block(h)
            if i in rule.cuts:
                module, condition = rule.modules[net.interfaces[i]], torch.zeros(n, cond_dim) if cond_dim else None
                work += 2 * _madds(lambda z: module(z, condition), h)
            if i == len(net.blocks) - 1:
                work += 3 * _madds(lambda z: net.forward_from(i, z), h)
            costs.append(round(batch * work) + BLOCK_OVERHEAD)
    return costs


def _madds(fn, x: torch.Tensor) -> float:
    """Multiply-adds per sample of ``fn(x)`` (``x`` holds several samples)."""
    with FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 2 / len(x)


def partition(costs: list[int], cuts: list[int], k: int) -> list[tuple[int, int]]:
    """``k`` contiguous block ranges ``(first, last)`` (0-based, inclusive), split only after blocks in
    ``cuts``, that make the costliest stage as cheap as it can be (``costs``: one per block); of equal
    choices, ties go to the lower boundary.

    The top block is never a boundary (the top stage keeps a block besides the head).
    """
    n = len(costs)
    usable = sorted(c for c in set(cuts) if c < n - 1)
    if k - 1 > len(usable):
        raise UserError(f"--stages {k} needs {k - 1} interface(s) with a module below the top block to split "
                        f"at; this network and rule have {len(usable)}")
    ends = usable + [n - 1]
    below = [0]
    for c in costs:
        below.append(below[-1] + c)
    # worst[j][e]: the least cost of the costliest stage when blocks 0..ends[e] make j + 1 stages,
    # the last ending at ends[e]; split[j][e]: where the stage before it ends (an index into ends)
    worst = [[below[end + 1] for end in ends]]
    split: list[list[int]] = [[-1] * len(ends)]
    for j in range(1, k):
        row, back = [], []
        for e, end in enumerate(ends):
            best, arg = None, -1
            for d in range(j - 1, e):
                value = max(worst[j - 1][d], below[end + 1] - below[ends[d] + 1])
                if best is None or value < best:
                    best, arg = value, d
            row.append(best)
            back.append(arg)
        worst.append(row)
        split.append(back)
    bounds, e = [], len(ends) - 1
    for j in range(k - 1, 0, -1):
        e = split[j][e]
        bounds.append(ends[e])
    bounds.reverse()
    firsts = [0] + [b + 1 for b in bounds]
    return list(zip(firsts, bounds + [n - 1]))


def check(rule: SyntheticGradients) -> None:
    """Refuse what a stage cannot do without waiting for the stages above it."""
    config = rule.config
    if config.sg_condition == "error":
        raise UserError("--sg-condition error conditions every module on the output error, which a stage would "
                        "have to wait for; use label or none with --stages")
    if config.sg_lambda > 0 and len(rule.cuts) > 1:
        raise UserError(f"--sg-lambda {config.sg_lambda} mixes the true gradient into lower modules' targets, "
                        "which a stage would have to wait for; use --sg-lambda 0 with --stages and several modules")


@dataclass
class Backward:
    """What a stage's backward pass produced: the gradient at its input (to send down; None on the
    bottom stage), the per-sample targets of its own modules below the boundary, and its metrics."""

    input_grad: torch.Tensor | None
    targets: dict[int, torch.Tensor]
    predictions: dict[int, torch.Tensor]
    metrics: dict[str, torch.Tensor]


class Stage:
    """Blocks ``first..last`` of ``rule.network`` (and the head on the top stage) with the modules at their cuts."""

    def __init__(self, rule: SyntheticGradients, first: int, last: int):
        net = rule.network
        self.rule, self.first, self.last = rule, first, last
        self.top = last == len(net.blocks) - 1
        self.cuts = [c for c in sorted(rule.cuts) if first <= c <= last]
        self.boundary = None if self.top else last  # its module's target comes from the stage above
        if not self.top and last not in rule.cuts:
            raise ValueError(f"a stage must end at a cut; block {last} has no module")
        self.blocks = list(net.blocks[first : last + 1])
        self.view = Network(self.blocks, net.head if self.top else nn.Identity(), net.model,
                            net.input_shape if first == 0 else None)
        self.boundary_shape = None if self.top else net.shapes[last]  # per sample: what goes up and comes down
        self.input_shape = net.shapes[first - 1] if first else None  # per sample, from the stage below
        names = [f"model.blocks.{i}." for i in range(first, last + 1)] + [f"rule.{net.interfaces[c]}." for c in self.cuts]
        self.prefixes = tuple(names + (["model.head."] if self.top else []))

    @property
    def name(self) -> str:
        """E.g. ``h1-h2`` or ``h3-h4 and the head``."""
        names = self.rule.network.interfaces
        span = names[self.first] + ("" if self.first == self.last else f"-{names[self.last]}")
        return span + (" and the head" if self.top else "")

    def forward(self, x: torch.Tensor) -> tuple[Trace, torch.Tensor]:
        """Zero the gradients and run the stage's blocks on ``x``, cut at its modules; returns the
        trace and the input leaf (which gathers the gradient to send down on stages above the first)."""
        self.rule.begin_step()
        x = x.detach().requires_grad_(self.first > 0)
        return self.view.trace(x, [c - self.first for c in self.cuts]), x

    def backward(self, trace: Trace, x: torch.Tensor, y: torch.Tensor) -> Backward:
        """Backpropagate each segment from the top down: the loss on the top stage, else the boundary
        module's prediction; below each module, its prediction. Gradients go into the blocks' ``.grad``."""
        rule, first, batch = self.rule, self.first, len(y)
        local = [c - first for c in self.cuts]
        segments = []  # (node, its gradient, blocks from..to (local, inclusive))
        metrics: dict[str, torch.Tensor] = {}
        predictions: dict[int, torch.Tensor] = {}
        top = len(self.blocks) - 1
        if self.top:
            loss = losses.loss(rule.task, trace.output, y)
            metrics = rule.train_metrics(loss, trace.output, y)
            segments.append((loss, None, (local[-1] + 1 if local else 0), top))
        for j in range(len(local) - 1, -1, -1):
            c = local[j]
            predictions[c + first] = rule.predict(c + first, trace.hidden[c], y, None)
            segments.append((trace.hidden[c], predictions[c + first].detach() / batch, local[j - 1] + 1 if j else 0, c))
        arriving: dict[int, torch.Tensor] = {}
        for node, grad, low, high in segments:
            parts = self.blocks[low : high + 1] + ([rule.network.head] if grad is None else [])
            params = [q for part in parts for q in part.parameters()]
            leaf = trace.inputs[low - 1] if low else (x if first > 0 else None)
            grads = rule.backprop_segment(node, grad, [leaf] if leaf is not None else [], params)
            if leaf is not None:
                arriving[low - 1] = grads[0]
        targets = {c + first: arriving[c] * batch for c in local if c in arriving}
        return Backward(arriving.get(-1), targets, predictions, metrics)

    def learn(self, backward: Backward | None, target: torch.Tensor | None = None,
              batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step of this stage's modules: those below the boundary on their targets from the
        stage's own pass (``backward``), and, with ``target`` (the gradient that arrived from above), the
        boundary module: for ``batch = (h, y)``, an earlier batch, predicting anew with its current
        parameters (its batch norm's running statistics, which saw that batch at its pass, left as they
        were); for this pass's batch (``batch`` None), with the pass's own prediction (the same numbers).

        The modules' parameters are disjoint, so one step over all of them is, bit for bit, one step per
        module (the in-process rule steps them all at once).
        """
        predictions = dict(backward.predictions) if backward is not None else {}
        targets = dict(backward.targets) if backward is not None else {}
        with contextlib.ExitStack() as after:
            if target is not None:
                if batch is not None:  # the running statistics are put back after the regression's backward
                    after.enter_context(batch_statistics(self.rule.modules[self.rule.network.interfaces[self.boundary]]))
                    predictions[self.boundary] = self.rule.predict(self.boundary, *batch, None)
                targets[self.boundary] = target * len(target)
            return self.rule.regress(predictions, targets) if targets else {}

    def update(self, step: int) -> None:
        """Step this stage's blocks' optimisers as the in-process rule would at ``step`` (1-based).

        The rule's update draws every block's coin (``--update-prob``) in order and
        sets every rate; only this stage's blocks have gradients, so only they move.
        """
        self.rule.apply_update(step)

    def state(self) -> dict[str, np.ndarray]:
        """Copies of this stage's parameters and buffers, named as in ``/params`` (copies: they are sent
        while training goes on)."""
        return {k: v.copy() for k, v in state_arrays(self.rule).items() if k.startswith(self.prefixes)}

    def training_state(self, batches) -> dict[str, np.ndarray]:
        """Copies of this stage's share of the resume state (``repanalysis.training.resume``): its own parameters'
        optimiser state, the coin's state (every stage draws the same coins) and, on the bottom stage
        (``batches``), the batch stream's."""
        own = tuple(f"optimizer.{prefix}" for prefix in self.prefixes)
        return {k: np.array(v, copy=True) for k, v in resume_state.capture(self.rule, batches).items()
                if k.startswith(own) or not k.startswith("optimizer.")}
