"""Synthetic gradients: the ``sg``, ``dni`` and ``cdni`` rules and their modules.

A module ``Mi`` at interface ``hi`` predicts the *per-sample* error
``∂L_n/∂h_n`` from ``hi`` (and, conditioned, from the one-hot label or the
per-sample output error ``∂L_n/∂p_n``); linear layers for a vector
interface, and for a feature map linear layers on the flattened map or
convolutions (``make_module``). The blocks below ``hi`` learn from the
prediction (divided by the batch size, to match the batch-mean loss), at once,
without waiting for the layers above. The module regresses a target with
``L_SG = w · mean_n ‖Mi(h_n, c_n) - t_n‖²`` (the squared norm over all of a
sample's values, a feature map's included), its input and target detached:

- the top module's target is the true gradient at its interface;
- a lower module's target is ``λ·δi + (1-λ)·b_i``, where ``b_i`` is the next
  module's prediction pushed back through the blocks between the two
  (Jaderberg et al. 2016; ``λ = 1`` for ``sg``, 0 for ``dni`` and ``cdni`` by default).

Every target is computed from the same forward pass, before any block updates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from repanalysis.errors import UserError

from .base import Pass, Rule, make_optimizer


class SyntheticGradientModule(nn.Module):
    """``M(h, c)``: ``hidden`` layers of ``linear -> (batch norm) -> ReLU``, then a linear output.

    With no hidden layer this is the linear module ``M(h, c) = hA + cB + b``. The
    output layer starts at zero weights and zero bias, so the first prediction
    is exactly zero; with ``output="tanh"`` the prediction is ``tanh`` of it
    (bounded in (-1, 1), the range of a log loss's gradient; zero at zero).
    """

    def __init__(self, width: int, condition_dim: int, hidden: int, hidden_width: int, batch_norm: bool, output: str):
        super().__init__()
        layers: list[nn.Module] = []
        d = width + condition_dim
        for _ in range(hidden):
            layers += [nn.Linear(d, hidden_width)] + ([nn.BatchNorm1d(hidden_width)] if batch_norm else []) + [nn.ReLU()]
            d = hidden_width
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(d, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.output = output

    def forward(self, h: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        z = h if condition is None else torch.cat([h, condition], 1)
        z = self.out(self.hidden(z))
        return torch.tanh(z) if self.output == "tanh" else z


class ConvSyntheticGradientModule(nn.Module):
    """``M(h, c)`` for a feature map ``h [B, C, H, W]``: convolutions, ending in a zero-initialised one.

    ``hidden`` layers of ``conv (kernel_size², "same" padding, hidden_width
    channels) -> (batch norm) -> ReLU``, then an output convolution to ``C``
    channels that starts at zero weights and zero bias (the first prediction
    is exactly zero). The condition ``c [B, K]`` enters as ``K`` constant
    planes (each value broadcast over the map) beside ``h``'s channels, as
    the 2016 paper conditions its convolutional modules on the label.
    ``output="tanh"`` as for ``SyntheticGradientModule``.
    """

    def __init__(self, channels: int, condition_dim: int, hidden: int, hidden_width: int, batch_norm: bool,
                 output: str, kernel_size: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels + condition_dim
        for _ in range(hidden):
            layers += ([nn.Conv2d(c, hidden_width, kernel_size, padding=kernel_size // 2)]
                       + ([nn.BatchNorm2d(hidden_width)] if batch_norm else []) + [nn.ReLU()])
            c = hidden_width
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.output = output

    def forward(self, h: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            planes = condition[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, planes], 1)
        z = self.out(self.hidden(h))
        return torch.tanh(z) if self.output == "tanh" else z


class FlatSyntheticGradientModule(SyntheticGradientModule):
    """``SyntheticGradientModule`` on the flattened map ``h [B, C, H, W] -> [B, C·H·W]``, its output read back
    as the map.

    Every value of the prediction can depend on every position of the map and
    on the condition position by position (which convolutions, alike at every
    position, cannot). Its first layer has ``C·H·W`` inputs and its output
    ``C·H·W`` values: with no hidden layer, ``(C·H·W)²`` weights.
    """

    def __init__(self, shape: tuple[int, int, int], condition_dim: int, hidden: int, hidden_width: int,
                 batch_norm: bool, output: str):
        super().__init__(math.prod(shape), condition_dim, hidden, hidden_width, batch_norm, output)

    def forward(self, h: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(h.flatten(1), condition).reshape(h.shape)


def make_module(shape: tuple[int, ...], condition_dim: int, config) -> nn.Module:
    """The module for an interface of ``shape`` per sample, sized by ``--sg-hidden``, ``--sg-width``,
    ``--sg-batch-norm``, ``--sg-output``: linear layers for ``(units,)``; for a feature map
    ``(C, H, W)``, by ``--sg-map``, linear layers on the flattened map (``flat``) or convolutions (``conv``)."""
    sizes = (config.sg_hidden, config.sg_width, config.sg_batch_norm, config.sg_output)
    if len(shape) == 1:
        return SyntheticGradientModule(shape[0], condition_dim, *sizes)
    if config.sg_map == "flat":
        return FlatSyntheticGradientModule(shape, condition_dim, *sizes)
    return ConvSyntheticGradientModule(shape[0], condition_dim, *sizes)


class SyntheticGradients(Rule):
    """Modules at chosen interfaces (``cuts``); blocks above the top module learn by backprop."""

    name = "sg"

    def __init__(self, network, task, n_outputs, config, at: list[int]):
        super().__init__(network, task, n_outputs, config)
        n = len(network.blocks)
        bad = [i + 1 for i in at if not 0 <= i < n]
        if bad:
            raise UserError(f"--sg-at names interfaces {bad}; this network has h1..h{n}")
        self.cuts = tuple(sorted(set(at)))
        self.condition = config.sg_condition
        self.retain_graph = config.sg_lambda > 0 and len(self.cuts) > 1  # targets() pushes δ down through them
        cond_dim = 0 if self.condition == "none" else n_outputs
        for i in self.cuts:
            self.modules[network.interfaces[i]] = make_module(network.shapes[i], cond_dim, config)
        self.module_optimizers = [make_optimizer(config.sg_optimizer, self.modules.parameters(), config.sg_lr,
                                                 config.momentum)]

    def held_below(self) -> int:
        """During the first ``--sg-warmup`` steps the blocks below the top module hold still while it fits
        (and any rule's ``--hold-steps`` hold)."""
        warm = max(self.cuts) + 1 if self.steps_done <= self.config.sg_warmup else 0
        return max(warm, super().held_below())

    def conditioning(self, target: torch.Tensor, output_error: torch.Tensor | None, dtype) -> torch.Tensor | None:
        """What the modules are conditioned on, by ``--sg-condition``: the one-hot label (the target itself
        for regression and binary tasks), the per-sample output error ``∂L_n/∂p_n``, or nothing."""
        if self.condition == "none":
            return None
        if self.condition == "error":
            return output_error.detach()
        if self.task == "classification":
            return F.one_hot(target, self.n_outputs).to(dtype)
        return target

    def predict(self, i: int, h: torch.Tensor, target: torch.Tensor, output_error: torch.Tensor) -> torch.Tensor:
        """Module ``i``'s per-sample prediction at ``h``; ``output_error`` is per-sample ``∂L_n/∂p_n``."""
        return self._output(i, h, self.conditioning(target, output_error, h.dtype))

    def _output(self, i: int, h: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return self.modules[self.network.interfaces[i]](h.detach(), condition)

    def signal(self, i: int, p: Pass) -> torch.Tensor:
        batch = len(p.target)
        h = p.trace.hidden[i]
        if p.condition is None and self.condition != "none":  # made once per pass, for every module
            p.condition = self.conditioning(p.target, None if p.output_grad is None else p.output_grad * batch,
                                            h.dtype)
        prediction = self._output(i, h, p.condition)
        p.predictions[i] = prediction
        return prediction.detach() / batch

    def targets(self, p: Pass) -> dict[int, torch.Tensor]:
        """Per-sample regression targets at each cut (see the module docstring)."""
        lam = self.config.sg_lambda
        batch = len(p.target)
        cuts = sorted(self.cuts)
        out = {cuts[-1]: p.arriving[cuts[-1]] * batch}
        true = p.arriving[cuts[-1]]
        for below, above in zip(cuts[-2::-1], cuts[:0:-1]):
            target = p.arriving[below] if lam == 0 else (1 - lam) * p.arriving[below]
            if lam > 0:
                (true,) = torch.autograd.grad(p.trace.hidden[above], p.trace.inputs[below], true, retain_graph=True)
                target = target + lam * true
            out[below] = target * batch
        return out

    def learn(self, p: Pass) -> dict[str, torch.Tensor]:
        return self.regress(p.predictions, self.targets(p))

    def regress(self, predictions: dict[int, torch.Tensor], targets: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step of the modules at the cuts in ``targets``: ``predictions`` (attached
        to the modules) regress the per-sample ``targets``. Modules not named keep still."""
        metrics = {}
        for opt in self.module_optimizers:
            opt.zero_grad(set_to_none=True)
        weight = self.config.sg_loss_weight
        total = None
        for i, target in targets.items():
            loss = (predictions[i] - target.detach()).pow(2).flatten(1).sum(1).mean()
            metrics[f"sg_loss/{self.network.interfaces[i]}"] = loss.detach()
            weighted = loss if weight == 1 else weight * loss
            total = weighted if total is None else total + weighted
        total.backward()
        for opt in self.module_optimizers:
            opt.step()
        return metrics


def default_sg_at(n_interfaces: int) -> list[int]:
    """One module in the middle of the hidden stack (0-based), as in the 2017 paper's MNIST runs."""
    return [(n_interfaces - 1) // 2]


def make_synthetic(rule: str, network, task, n_outputs, config) -> SyntheticGradients:
    """``sg`` at ``--sg-at`` (or the middle); ``dni``/``cdni`` after every block."""
    n = len(network.blocks)
    if rule == "sg":
        at = [k - 1 for k in config.sg_at] if config.sg_at else default_sg_at(n)
    else:
        at = list(range(n))
    made = SyntheticGradients(network, task, n_outputs, config, at)
    made.name = rule
    return made
