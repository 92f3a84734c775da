"""The rule interface: one training step, and the shadow pass that records it.

A rule trains a ``Network`` by deciding which error signal each block learns
from. Every rule here is written in one form: the forward pass is *cut* after
some blocks (``cuts``), the rule *injects* a signal at each cut, and each
segment between cuts is trained by backpropagating the loss (top segment) or
the injected signal (the others) through that segment alone. A rule may also
replace the transposed weights of the backward pass (``feedback``, for Feedback
Alignment) and train modules of its own (``learn``, for synthetic gradients).

Signals are in the units of the gradient of the *batch-mean* loss: on a batch
of B samples, a rule that knew the true gradient would inject ``∂L_n/∂h_n / B``.
Every block (and the head) is updated on its own (its coin, its warm-up): one
multi-tensor optimiser step covers them all, skipping the blocks held back, and
computes exactly what one optimiser per block would.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.nn.feedforward import Network, Trace


def make_optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum; one multi-tensor (``foreach``) step over all of ``params``.

    The update of each parameter is elementwise and independent of the others,
    so one optimiser over many parameters computes what one optimiser per
    parameter group would, bit for bit; a parameter whose ``.grad`` is None
    is left alone (its value and its state).
    """
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True)


def lr_factor(config: TrainConfig, step: int) -> float | None:
    """The blocks' learning rate at ``step`` (1-based) as a multiple of ``--lr``; None for a constant rate.

    ``warmup_steps`` W: the factor rises linearly, ``step / W``, over the first W
    steps. ``lr_schedule="cosine"``: then it falls as ``½(1 + cos(π·t))``, ``t``
    running from 0 after the warm-up to 1 at the last step (the last step still
    moves: ``t = (step - W - 1) / (steps - W)``).
    """
    warm = config.warmup_steps
    if config.lr_schedule == "constant" and not warm:
        return None
    if step <= warm:
        return step / warm
    if config.lr_schedule == "constant":
        return 1.0
    t = (step - warm - 1) / max(1, config.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class Pass:
    """What one forward and backward pass under a rule produced.

    ``arriving[i]``: the gradient that reached the leaf after cut ``i`` from the
    segment above (the true gradient for the top cut when no feedback is used).
    ``signals[i]``: what the rule injected at cut ``i``. ``interface_grads[i]``:
    the error at interface ``i`` under this rule (filled on request).
    """

    trace: Trace
    target: torch.Tensor
    loss: torch.Tensor
    output_grad: torch.Tensor | None = None
    arriving: dict[int, torch.Tensor] = field(default_factory=dict)
    signals: dict[int, torch.Tensor] = field(default_factory=dict)
    interface_grads: dict[int, torch.Tensor] = field(default_factory=dict)
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)  # learned modules' outputs, attached
    condition: torch.Tensor | None = None  # what learned modules are conditioned on, made once per pass
    parameter_grads: dict[int, torch.Tensor] = field(default_factory=dict)  # id(parameter) -> its gradient


class Rule:
    """Backprop by default; subclasses change ``cuts``, ``feedback``, ``signal`` and ``learn``."""

    name = "backprop"

    def __init__(self, network: Network, task: str, n_outputs: int, config: TrainConfig):
        self.network = network
        self.task = task
        self.n_outputs = n_outputs
        self.config = config
        self.cuts: tuple[int, ...] = ()
        self.modules = nn.ModuleDict()  # the rule's own state, recorded under /params/rule.*
        # Each block's parameters, then the head's, listed once (a module's ``parameters()`` walks its tree)
        self._own = [list(part.parameters()) for part in list(network.blocks) + [network.head]]
        # The blocks and the head that have parameters, bottom up: each is updated, or held, as one.
        self.parts = [ps for ps in self._own if ps]
        self.optimizers = [make_optimizer(config.optimizer, [q for ps in self.parts for q in ps], config.lr,
                                          config.momentum)]  # one, over every part (the list: see resume)
        self.module_optimizers: list[torch.optim.Optimizer] = []  # the rule's modules' (none by default)
        self.coin = torch.Generator().manual_seed(config.seed + 7919)  # --update-prob's draws
        self.retain_graph = False  # whether ``learn`` differentiates through the segments after ``backward``
        self.steps_done = 0
        if config.hold_at is not None and config.hold_at > len(network.blocks):
            raise UserError(f"--hold-at {config.hold_at} names no interface; this network has "
                            f"h1..h{len(network.blocks)}")

    # -- what subclasses change -------------------------------------------------

    def feedback(self) -> list[torch.Tensor | None] | None:
        """Matrices that replace each linear map's weight in the backward pass, or None."""
        return None

    def signal(self, i: int, p: Pass) -> torch.Tensor:
        """The signal to inject at cut ``i``, given what the segments above produced."""
        raise NotImplementedError

    def learn(self, p: Pass) -> dict[str, torch.Tensor]:
        """Train the rule's own modules after the backward pass; return their metrics."""
        return {}

    def held_below(self) -> int:
        """How many bottom blocks skip this step's update: during the first ``--hold-steps`` steps, every
        block up to interface ``--hold-at`` (default ``default_hold``); none after them."""
        c = self.config
        if self.steps_done > c.hold_steps:
            return 0
        return (c.hold_at - 1 if c.hold_at is not None else self.default_hold()) + 1

    def default_hold(self) -> int:
        """The interface (0-based) up to which ``--hold-steps`` holds blocks by default: the rule's top cut,
        or the middle interface for a rule without cuts (where ``sg`` puts its module by default)."""
        return max(self.cuts) if self.cuts else (len(self.network.blocks) - 1) // 2

    def generators(self) -> dict[str, torch.Generator]:
        """The rule's own random generators by name, which a run's resume state keeps."""
        return {"coin": self.coin}

    def signalled(self) -> list[int]:
        """Interfaces whose error under this rule is not the true gradient."""
        if self.feedback() is not None:
            return list(range(self.network.followed_by_linear))
        return list(range(max(self.cuts) + 1)) if self.cuts else []

    # -- the shared machinery ---------------------------------------------------

    def parameters(self):
        """Every trainable tensor the rule owns (its modules'), for optimisers and checks."""
        return self.modules.parameters()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on a batch; returns detached 0-d metric tensors."""
        self.begin_step()
        p = self.backward(x, y, into_parameters=True)
        metrics = self.train_metrics(p.loss, p.trace.output, y)
        metrics.update(self.learn(p))
        self.apply_update(self.steps_done + 1)
        return metrics

    def train_metrics(self, loss: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """A step's ``train_loss`` (its batch's ``loss``) and, where the task has one, ``train_acc``."""
        metrics = {"train_loss": loss.detach()}
        hits = losses.correct(self.task, output.detach(), y)
        if hits is not None:
            metrics["train_acc"] = hits / len(y)
        return metrics

    def begin_step(self) -> None:
        """Start a training step: clear every part's gradients; network and modules in training mode."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.network.train()
        self.modules.train()

    def backward(self, x, y, *, into_parameters: bool, interfaces: bool = False,
                 keep_parameters: bool = False) -> Pass:
        """Forward with cuts, then backpropagate every segment from the top down.

        With ``into_parameters`` the parameter gradients are accumulated in
        ``.grad``; with ``keep_parameters`` they are kept in the pass
        (``parameter_grads``) and ``.grad`` is left alone; with ``interfaces``
        the error at every interface is kept.
        """
        net = self.network
        trace = net.trace(x, self.cuts, self.feedback())
        p = Pass(trace, y, losses.loss(self.task, trace.output, y))
        bounds = sorted(self.cuts)
        tops = [len(net.blocks) - 1] if not bounds else [len(net.blocks) - 1] + bounds[::-1]
        for k, top in enumerate(tops):
            below = bounds[len(bounds) - 1 - k] if k < len(bounds) else None
            first = 0 if below is None else below + 1
            owners = list(range(first, top + 1)) + ([len(net.blocks)] if k == 0 else [])
            params = [q for j in owners for q in self._own[j]] if into_parameters or keep_parameters else []
            inside = [i for i in range(first, top + 1) if interfaces and (k == 0 or i != top)]
            wanted = [trace.inputs[below]] if below is not None else []
            wanted += [trace.output] if k == 0 else []
            wanted += [trace.hidden[i] for i in inside]
            if k == 0:
                node, grad = p.loss, None
            else:
                node, grad = trace.hidden[top], self.signal(top, p)
                p.signals[top] = grad
                if interfaces:
                    p.interface_grads[top] = grad
            if not wanted and not params:
                continue
            grads = self.backprop_segment(node, grad, wanted, params,
                                          p.parameter_grads if keep_parameters else None)
            if below is not None:
                p.arriving[below] = grads.pop(0)
            if k == 0:
                p.output_grad = grads.pop(0)
            for i in inside:
                p.interface_grads[i] = grads.pop(0)
        return p

    def backprop_segment(self, node: torch.Tensor, grad: torch.Tensor | None, inputs: list[torch.Tensor],
                         params: list[torch.Tensor], kept: dict[int, torch.Tensor] | None = None
                         ) -> list[torch.Tensor | None]:
        """Backpropagate ``node`` (a loss, ``grad`` None; else an interface, ``grad`` the signal injected
        there) through one segment: returns the gradients at ``inputs`` and adds those of ``params`` to
        their ``.grad`` (with ``kept``, to ``kept[id(parameter)]`` instead, ``.grad`` left alone)."""
        grads = torch.autograd.grad(node, inputs + params, grad, retain_graph=self.retain_graph, allow_unused=True)
        for q, g in zip(params, grads[len(inputs):]):
            if g is None:
                continue
            if kept is not None:
                before = kept.get(id(q))
                kept[id(q)] = g if before is None else before + g
            else:
                q.grad = g if q.grad is None else q.grad + g
        return list(grads[:len(inputs)])

    def apply_update(self, step: int) -> None:
        """Update every part as at ``step`` (1-based; ``steps_done`` becomes it), at the scheduled rate,
        unless its coin or the warm-up holds it.

        Each part draws its coin in order, bottom up; a held part's gradients are
        dropped, so the one optimiser step leaves it (and its state) as it was.
        """
        self.steps_done = step
        prob = self.config.update_prob
        factor = lr_factor(self.config, self.steps_done)
        held = self.held_below()
        for k, params in enumerate(self.parts):
            if not ((prob >= 1.0 or torch.rand((), generator=self.coin).item() < prob) and k >= held):
                for q in params:
                    q.grad = None
        for opt in self.optimizers:
            if factor is not None:
                for group in opt.param_groups:
                    group["lr"] = self.config.lr * factor
            opt.step()

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """The shadow pass on the probe set: changes no parameter, buffer or optimiser state.

        Returns, per interface name: ``activations``, ``true_grad`` (the gradient
        of the probe-mean loss) and, where the rule's error differs from it,
        ``signal`` (the error the rule delivers there, in the same units) and
        ``update``: the error that reaches the weights of the block below the
        interface, ``[cosine, norm ratio]`` of that block's parameter gradient
        under the rule against under the true gradient (all its parameters as
        one vector, float64 sums; NaN where the true one is zero).
        ``config.record_bn`` chooses how batch norm normalises (``RECORD_BN``):
        ``"batch"``, with the probe set's own statistics, as in a training step
        (the running statistics are restored bit for bit afterwards); ``"eval"``,
        with the running statistics, as at test time.
        """
        mode = batch_statistics if self.config.record_bn == "batch" else evaluating
        signalled = self.signalled()
        weights = [q for i in signalled for q in self._own[i]]
        with mode(self.network, self.modules):
            trace = self.network.trace(x)
            n = len(trace.hidden)
            true = torch.autograd.grad(losses.loss(self.task, trace.output, y), list(trace.hidden) + weights,
                                       allow_unused=True)
            true_weights = dict(zip(map(id, weights), true[n:]))
            rule_pass = (self.backward(x, y, into_parameters=False, interfaces=True, keep_parameters=True)
                         if signalled else None)
        out = {}
        for i, name in enumerate(self.network.interfaces):
            record = {"activations": trace.hidden[i].detach(), "true_grad": true[i].detach()}
            if i in signalled:
                record["signal"] = rule_pass.interface_grads[i].detach()
                record["update"] = _agreement([rule_pass.parameter_grads.get(id(q)) for q in self._own[i]],
                                              [true_weights[id(q)] for q in self._own[i]])
            out[name] = record
        return out


def _agreement(rule: list[torch.Tensor | None], true: list[torch.Tensor | None]) -> torch.Tensor:
    """``[cosine, ‖rule‖ / ‖true‖]`` of two gradients given part by part (None: zero), in float64 sums."""
    dot = rule_sq = true_sq = torch.zeros((), dtype=torch.float64)
    for r, t in zip(rule, true):
        r = None if r is None else r.detach().double()
        t = None if t is None else t.detach().double()
        if r is not None:
            rule_sq = rule_sq + r.pow(2).sum()
        if t is not None:
            true_sq = true_sq + t.pow(2).sum()
        if r is not None and t is not None:
            dot = dot + (r * t).sum()
    nan = torch.tensor(math.nan, dtype=torch.float64)
    cosine = dot / (rule_sq * true_sq).sqrt() if rule_sq > 0 and true_sq > 0 else nan
    ratio = (rule_sq / true_sq).sqrt() if true_sq > 0 else nan
    return torch.stack([cosine, ratio])


@contextlib.contextmanager
def _in_mode(training: bool, *modules: nn.Module):
    """Run ``modules`` in training (or eval) mode, then restore each one's own mode."""
    modes = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.train(training)
    try:
        yield
    finally:
        for group in modes:
            for m, mode in group:
                m.train(mode)


def evaluating(*modules: nn.Module):
    """Run ``modules`` in eval mode (batch norm with running statistics), then restore each one's own mode."""
    return _in_mode(False, *modules)


@contextlib.contextmanager
def batch_statistics(*modules: nn.Module):
    """Run ``modules`` in training mode, then restore each one's mode and every buffer.

    Batch norm then normalises with the batch's own statistics; the running
    statistics it updates meanwhile (and its step counter), like any other
    buffer, are put back exactly.
    """
    buffers = [b for module in modules for b in module.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        with _in_mode(True, *modules):
            yield
    finally:
        for b, value in zip(buffers, saved):
            b.copy_(value)
