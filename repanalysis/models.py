"""Feed-forward networks as explicit stacks of blocks with named interfaces.

A network is ``x -> block 1 -> h1 -> block 2 -> h2 ... -> hN -> head -> output``.
Each block is ``linear -> (batch norm) -> activation``; the interfaces
``h1..hN`` are the blocks' outputs (after the activation), so a rule can attach
to any of them and the recorder can read them. The head is a linear map to the
outputs, or the identity for the linear model, whose only interface is its
output.

Models (``build_network``):

- ``mlp``: ``depth`` hidden blocks of ``width`` units, then a linear head;
- ``deeplinear``: the same with identity activations and no batch norm;
- ``linear``: one linear block straight to the outputs (linear or logistic
  regression, by the task's loss); its interface ``h1`` is the output itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda u: u,
}
MODELS = ("mlp", "linear", "deeplinear")
INITS = ("default", "orthogonal")
MAX_DEPTH = 200


class _FeedbackLinear(torch.autograd.Function):
    """``x Wᵀ + b`` whose backward sends the error to ``x`` through ``B`` instead of ``W``.

    ``B`` has the shape of ``W`` (``[out, in]``); the weight and bias gradients are
    the usual ones. With ``B = W`` this is exactly a linear layer.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        return grad_out @ feedback, grad_out.t() @ x, grad_out.sum(0), None


def linear(layer: nn.Linear, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``layer``; with ``feedback`` the input gradient goes through it (Feedback Alignment)."""
    if feedback is None:
        return layer(x)
    return _FeedbackLinear.apply(x, layer.weight, layer.bias, feedback)


class Block(nn.Module):
    """``activation(norm(linear(x)))``: one layer of the stack; its output is an interface."""

    def __init__(self, d_in: int, d_out: int, activation: str, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = nn.BatchNorm1d(d_out) if batch_norm else nn.Identity()
        self.activation = activation
        self.kind = "+".join(["linear"] + (["batchnorm"] if batch_norm else []) + [activation])

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        return ACTIVATIONS[self.activation](self.norm(linear(self.linear, x, feedback)))


@dataclass
class Trace:
    """One forward pass, kept for the rules and the recorder.

    ``hidden[i]`` is the output of block ``i`` (interface ``h{i+1}``), attached to
    the graph of the blocks below it. Where the pass was cut after block ``i``,
    ``inputs[i]`` is the detached leaf (``requires_grad``) that the blocks above
    read instead; elsewhere ``inputs[i]`` is ``hidden[i]`` itself.
    """

    hidden: list[torch.Tensor]
    inputs: list[torch.Tensor]
    output: torch.Tensor


class Network(nn.Module):
    """A stack of blocks and a head; ``interfaces`` names the blocks' outputs."""

    def __init__(self, blocks: list[Block], head: nn.Module, model: str):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.model = model

    @property
    def interfaces(self) -> list[str]:
        return [f"h{i + 1}" for i in range(len(self.blocks))]

    @property
    def widths(self) -> list[int]:
        return [block.linear.out_features for block in self.blocks]

    @property
    def followed_by_linear(self) -> int:
        """How many interfaces feed a linear map above them (all but the linear model's output)."""
        return len(self.linears()) - 1

    def linears(self) -> list[nn.Linear]:
        """Every linear map from bottom to top: the blocks' and the head's (if any)."""
        layers = [block.linear for block in self.blocks]
        return layers + ([self.head] if isinstance(self.head, nn.Linear) else [])

    def trace(self, x: torch.Tensor, cuts=(), feedback: list[torch.Tensor] | None = None) -> Trace:
        """Forward ``x``, cutting the graph after the blocks whose indices are in ``cuts``.

        ``feedback`` (one matrix per entry of ``linears()``) replaces every linear
        map's transposed weight in the backward pass.
        """
        hidden, inputs = [], []
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h, None if feedback is None else feedback[i])
            hidden.append(h)
            if i in cuts:
                h = h.detach().requires_grad_(True)
            inputs.append(h)
        if isinstance(self.head, nn.Linear):
            out = linear(self.head, h, None if feedback is None else feedback[-1])
        else:
            out = self.head(h)
        return Trace(hidden, inputs, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).output


def build_network(
    model: str,
    n_features: int,
    n_outputs: int,
    *,
    depth: int = 4,
    width: int = 64,
    activation: str = "relu",
    batch_norm: bool = False,
    init: str = "default",
    bn_gamma_init: float = 1.0,
    bn_beta_init: float = 0.0,
) -> Network:
    """Build one of ``MODELS``; parameters come from torch's global RNG (seed it first).

    Initialisation: ``init="default"`` is PyTorch's for ``nn.Linear`` (uniform in
    ``±1/sqrt(fan_in)``); ``"orthogonal"`` redraws the hidden blocks' weight
    matrices as (semi-)orthogonal, gain 1 (the head and all biases keep the
    default). Batch norm's scale and shift start at ``bn_gamma_init`` and
    ``bn_beta_init`` (PyTorch: 1 and 0). Together they decide how much of the
    input survives a deep stack at step 0 (README, "Training deep stacks").
    """
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if model == "linear":
        return Network([Block(n_features, n_outputs, "identity", False)], nn.Identity(), model)
    if not 1 <= depth <= MAX_DEPTH:
        raise UserError(f"--depth must be between 1 and {MAX_DEPTH}, got {depth}")
    if width < 1:
        raise UserError(f"--width must be at least 1, got {width}")
    if model == "deeplinear":
        activation, batch_norm = "identity", False
    sizes = [n_features] + [width] * depth
    blocks = [Block(sizes[i], sizes[i + 1], activation, batch_norm) for i in range(depth)]
    for block in blocks:
        if init == "orthogonal":
            nn.init.orthogonal_(block.linear.weight)
        if batch_norm:
            nn.init.constant_(block.norm.weight, bn_gamma_init)
            nn.init.constant_(block.norm.bias, bn_beta_init)
    return Network(blocks, nn.Linear(width, n_outputs), model)
