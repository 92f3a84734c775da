"""Fixed error-signal rules: Feedback Alignment, Direct Feedback Alignment, Kickback.

Each replaces the true error ``δi`` at a hidden interface with a fixed-form
estimate ``δ̂i`` (Czarnecki et al. 2017, §5); the block then backpropagates it
through its own activation and batch norm as usual. With ``e = ∂L/∂p`` the
error at the output (batch-mean units, ``[B, outputs]``):

- ``fa`` (Lillicrap et al. 2016): the backward pass uses fixed random matrices
  ``B_l`` in place of every transposed forward weight: ``δ̂i = g_{i+1} B_{i+1}``,
  with ``g_{i+1}`` the error at the next linear map's output (for a
  convolution, fixed random kernels ``B_l`` of the kernels' shape, in the
  transposed convolution that carries the error down);
- ``dfa`` (Nøkland 2016): ``δ̂i = e R_i`` with one fixed random ``R_i`` per layer
  (``[outputs, C·H·W]`` for a feature map, the product reshaped to the map);
- ``kickback`` (Balduzzi et al. 2015, one scalar output): ``δ̂i[n, j] = e[n] · Σ_k
  W_{i+1}[k, j] · 1[unit k of layer i+1 is active on sample n]``: the global error
  times the unit's influence on its *active* children (its outgoing weights to the
  units of the next layer whose rectified output is non-zero; the output unit is
  linear, always active, so the top hidden layer gets the exact gradient). Units
  here are the paper's positive rectilinear units (ReLU); the paper also allows
  negative ones (``min(0, x)``), not built here, and proves that Kickback follows
  the gradient when the network is *coherent*; coherence is not enforced.

Random matrices are drawn from ``U(-s/√fan_in, s/√fan_in)`` of the forward
layer they stand for (a convolution's fan-in: input channels × kernel area) (torch's default ``nn.Linear`` range, times ``s =
--feedback-scale``), from a generator seeded by the run's seed.
"""

from __future__ import annotations

import math

import torch

from repanalysis.errors import UserError

from .base import Pass, Rule


def _uniform(shape, fan_in: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    bound = scale / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class _FixedFeedback(Rule):
    """A rule whose fixed random matrices live in ``modules.feedback`` (recorded as buffers)."""

    def __init__(self, network, task, n_outputs, config):
        super().__init__(network, task, n_outputs, config)
        self._generator = torch.Generator().manual_seed(config.seed + 104729)
        self.modules["feedback"] = torch.nn.Module()

    def _add(self, name: str, matrix: torch.Tensor) -> None:
        device = next(self.network.parameters()).device
        self.modules["feedback"].register_buffer(name, matrix.to(device))


class FeedbackAlignment(_FixedFeedback):
    """``fa``: every linear map above the first sends the error down through ``B_l``."""

    name = "fa"

    def __init__(self, network, task, n_outputs, config):
        super().__init__(network, task, n_outputs, config)
        for k, layer in enumerate(network.linears()[1:], start=1):  # kernels [out, in, k, k] for convolutions
            fan_in = layer.weight[0].numel()
            self._add(f"B{k}", _uniform(layer.weight.shape, fan_in, config.feedback_scale, self._generator))

    def feedback(self):
        store = self.modules["feedback"]
        return [None] + [getattr(store, f"B{k}") for k in range(1, len(self.network.linears()))]


class DirectFeedbackAlignment(_FixedFeedback):
    """``dfa``: the output error goes straight to each hidden interface through ``R_i``."""

    name = "dfa"

    def __init__(self, network, task, n_outputs, config):
        super().__init__(network, task, n_outputs, config)
        self.cuts = tuple(range(network.followed_by_linear))
        for i in self.cuts:
            width = network.widths[i]
            self._add(f"R{i + 1}", _uniform((n_outputs, width), width, config.feedback_scale, self._generator))

    def signal(self, i: int, p: Pass) -> torch.Tensor:
        """``e R_i``, read in the interface's shape (a feature map's ``[B, C, H, W]``, flattened row-major in ``R_i``)."""
        return (p.output_grad @ getattr(self.modules["feedback"], f"R{i + 1}")).reshape(p.trace.hidden[i].shape)


class Kickback(Rule):
    """``kickback``: the scalar output error, times each unit's summed weights to its active children."""

    name = "kickback"

    def __init__(self, network, task, n_outputs, config):
        if n_outputs != 1:
            raise UserError(
                f"kickback needs a model with one scalar output (a regression or binary task); "
                f"this data set has {n_outputs} outputs"
            )
        if any(block.activation not in ("relu", "identity") for block in network.blocks):
            raise UserError("kickback is defined for rectilinear units: use --activation relu")
        super().__init__(network, task, n_outputs, config)
        self.cuts = tuple(range(network.followed_by_linear))

    def signal(self, i: int, p: Pass) -> torch.Tensor:
        outgoing = self.network.linears()[i + 1].weight.detach()  # [children, units]
        hidden = p.trace.hidden
        if i + 1 == len(hidden):  # the children are the linear output unit(s): always active
            return p.output_grad @ outgoing
        active = (hidden[i + 1].detach() != 0).to(outgoing.dtype)  # [B, children]
        return p.output_grad * (active @ outgoing)
