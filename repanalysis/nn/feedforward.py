"""Feed-forward networks as explicit stacks of blocks with named interfaces.

A network is ``x -> block 1 -> h1 -> block 2 -> h2 ... -> hN -> head -> output``.
Each block is ``linear -> (batch norm) -> activation``; the interfaces
``h1..hN`` are the blocks' outputs (after the activation), so a rule can attach
to any of them and the recorder can read them. The head is a linear map to the
outputs, or the identity for the linear model, whose only interface is its
output.

Models (``Architecture``, ``build_network``):

- ``mlp``: ``depth`` hidden blocks of ``width`` units, then a linear head;
- ``deeplinear``: the same with identity activations and no batch norm;
- ``linear``: one linear block straight to the outputs (linear or logistic
  regression, by the task's loss); its interface ``h1`` is the output itself;
- ``cnn``: ``depth`` convolutional blocks (``ConvBlock``: convolution of
  ``channels`` kernels of ``kernel_size``², stride 1, "same" zero padding, a
  bias only without batch norm ->
  (batch norm) -> activation -> (2x2 max pooling, stride 2, a last odd row or
  column pooled alone)), then a linear head on the flattened last map. The
  inputs are the data set's images (``input_shape``), read from its flat rows;
  interfaces ``h1..hN`` are the blocks' outputs, ``[B, C, H, W]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from repanalysis.errors import UserError

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda u: u,
}
MODELS = ("mlp", "linear", "deeplinear", "cnn")
POOLING = ("max", "none")
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


class _FeedbackConv2d(torch.autograd.Function):
    """``conv2d(x, W) + b`` (``b`` may be None) whose backward sends the error to ``x`` through the kernels
    ``B`` instead of ``W``.

    ``B`` has the shape of ``W`` (``[out, in, k, k]``); the weight and bias
    gradients are the usual ones. With ``B = W`` this is exactly the convolution.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, padding):
        ctx.save_for_backward(x, weight, feedback)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, feedback = ctx.saved_tensors
        grad_x = torch.nn.grad.conv2d_input(x.shape, feedback, grad_out, padding=ctx.padding)
        grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=ctx.padding)
        grad_b = None if not ctx.needs_input_grad[2] else grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def convolve(layer: nn.Conv2d, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``layer`` (stride 1); with ``feedback`` the input gradient goes through it (Feedback Alignment)."""
    if feedback is None:
        return layer(x)
    return _FeedbackConv2d.apply(x, layer.weight, layer.bias, feedback, layer.padding)


class Block(nn.Module):
    """``activation(norm(linear(x)))``: one layer of the stack; its output is an interface."""

    def __init__(self, d_in: int, d_out: int, activation: str, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = nn.BatchNorm1d(d_out) if batch_norm else nn.Identity()
        self.activation = activation
        self.kind = "+".join(["linear"] + (["batchnorm"] if batch_norm else []) + [activation])

        self.out_shape = (d_out,)

    @property
    def weighted(self) -> nn.Linear:
        """The block's weighted map."""
        return self.linear

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        return ACTIVATIONS[self.activation](self.norm(linear(self.linear, x, feedback)))


class ConvBlock(nn.Module):
    """``pool(activation(norm(conv(x))))``: one convolutional stage; its output is an interface."""

    def __init__(self, in_shape: tuple[int, int, int], channels: int, kernel_size: int, activation: str,
                 batch_norm: bool, pool: str):
        super().__init__()
        # no bias before batch norm: it would be removed by the normalisation, and its gradient is rounding noise
        self.conv = nn.Conv2d(in_shape[0], channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.activation, self.pool = activation, pool
        self.kind = "+".join(["conv"] + (["batchnorm"] if batch_norm else []) + [activation]
                             + (["maxpool"] if pool == "max" else []))
        side = (lambda n: (n + 1) // 2) if pool == "max" else (lambda n: n)
        self.out_shape = (channels, side(in_shape[1]), side(in_shape[2]))

    @property
    def weighted(self) -> nn.Conv2d:
        """The block's weighted map."""
        return self.conv

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        h = ACTIVATIONS[self.activation](self.norm(convolve(self.conv, x, feedback)))
        return F.max_pool2d(h, 2, ceil_mode=True) if self.pool == "max" else h


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

    def __init__(self, blocks: list[nn.Module], head: nn.Module, model: str,
                 input_shape: tuple[int, ...] | None = None):
        """``input_shape``: the shape each flat input row is read as (images), or None to keep rows as they are."""
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.model = model
        self.input_shape = input_shape

    @property
    def interfaces(self) -> list[str]:
        return [f"h{i + 1}" for i in range(len(self.blocks))]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Each interface's shape per sample: ``(units,)``, or ``(channels, height, width)`` for a feature map."""
        return [block.out_shape for block in self.blocks]

    @property
    def widths(self) -> list[int]:
        """Each interface's number of values per sample."""
        return [math.prod(shape) for shape in self.shapes]

    @property
    def followed_by_linear(self) -> int:
        """How many interfaces feed a weighted map above them (all but the linear model's output)."""
        return len(self.linears()) - 1

    def linears(self) -> list[nn.Module]:
        """Every weighted map from bottom to top: the blocks' (linear maps or convolutions) and the head's (if any)."""
        layers = [block.weighted for block in self.blocks]
        return layers + ([self.head] if isinstance(self.head, nn.Linear) else [])

    def trace(self, x: torch.Tensor, cuts=(), feedback: list[torch.Tensor] | None = None) -> Trace:
        """Forward ``x``, cutting the graph after the blocks whose indices are in ``cuts``.

        ``feedback`` (one matrix per entry of ``linears()``) replaces every linear
        map's transposed weight in the backward pass.
        """
        hidden, inputs = [], []
        h = x if self.input_shape is None else x.reshape(len(x), *self.input_shape)
        for i, block in enumerate(self.blocks):
            h = block(h, None if feedback is None else feedback[i])
            hidden.append(h)
            if i in cuts:
                h = h.detach().requires_grad_(True)
            inputs.append(h)
        return Trace(hidden, inputs, self._head(h, None if feedback is None else feedback[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).output

    def forward_from(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """The output from interface ``i``'s (0-based) value ``h``: the blocks above it, then the head."""
        for block in self.blocks[i + 1:]:
            h = block(h)
        return self._head(h)

    def _head(self, h: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        """The head on the top interface's value (flattened for a linear head: a feature map's)."""
        if isinstance(self.head, nn.Linear):
            return linear(self.head, h.flatten(1), feedback)
        return self.head(h)


@dataclass(frozen=True)
class Architecture:
    """A network to build: one of ``MODELS`` and its settings, named as ``TrainConfig`` names them (``of``).

    ``channels``, ``kernel_size`` and ``pool`` are for ``cnn``; ``width`` is for the others.

    Initialisation: ``init="default"`` is PyTorch's (uniform in
    ``±1/sqrt(fan_in)``); ``"orthogonal"`` redraws the hidden blocks' weights
    as (semi-)orthogonal matrices ``[out, in]`` (a kernel as ``[out, in·k·k]``),
    gain 1; the head and all biases keep the default. Batch norm's scale and
    shift start at ``bn_gamma_init`` and ``bn_beta_init`` (PyTorch: 1 and 0).
    Together they decide how much of the input survives a deep stack at step
    0 (README, "Training deep stacks").
    """

    model: str = "mlp"
    depth: int = 4
    width: int = 64
    activation: str = "relu"
    batch_norm: bool = False
    channels: int = 32
    kernel_size: int = 3
    pool: str = "max"
    init: str = "default"
    bn_gamma_init: float = 1.0
    bn_beta_init: float = 0.0

    @classmethod
    def of(cls, settings) -> "Architecture":
        """The architecture that ``settings`` (a ``TrainConfig``, or anything with these attributes) describes."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def build(self, n_features: int, n_outputs: int, input_shape: tuple[int, int, int] | None = None) -> Network:
        """The network, its parameters drawn from torch's global RNG (seed it first); ``input_shape``: the
        images' ``[channels, height, width]`` (``cnn``)."""
        model, activation, batch_norm = self.model, self.activation, self.batch_norm
        if model not in MODELS:
            raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        if self.init not in INITS:
            raise UserError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if model == "linear":
            return Network([Block(n_features, n_outputs, "identity", False)], nn.Identity(), model)
        if not 1 <= self.depth <= MAX_DEPTH:
            raise UserError(f"--depth must be between 1 and {MAX_DEPTH}, got {self.depth}")
        if model == "cnn":
            network = self._cnn(n_features, n_outputs, input_shape)
        else:
            if self.width < 1:
                raise UserError(f"--width must be at least 1, got {self.width}")
            if model == "deeplinear":
                activation, batch_norm = "identity", False
            sizes = [n_features] + [self.width] * self.depth
            blocks = [Block(sizes[i], sizes[i + 1], activation, batch_norm) for i in range(self.depth)]
            network = Network(blocks, nn.Linear(self.width, n_outputs), model)
        for block in network.blocks:
            if self.init == "orthogonal":
                nn.init.orthogonal_(block.weighted.weight)
            if batch_norm:
                nn.init.constant_(block.norm.weight, self.bn_gamma_init)
                nn.init.constant_(block.norm.bias, self.bn_beta_init)
        return network

    def _cnn(self, n_features: int, n_outputs: int, input_shape) -> Network:
        if input_shape is None or math.prod(input_shape) != n_features:
            raise UserError("--model cnn needs a data set of images (digits or mnist)")
        if self.channels < 1:
            raise UserError(f"--channels must be at least 1, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise UserError(f"--kernel-size must be odd and positive (the maps keep their size), got {self.kernel_size}")
        if self.pool not in POOLING:
            raise UserError(f"unknown pooling {self.pool!r}; choose one of {', '.join(POOLING)}")
        blocks, shape = [], tuple(input_shape)
        for _ in range(self.depth):
            blocks.append(ConvBlock(shape, self.channels, self.kernel_size, self.activation, self.batch_norm, self.pool))
            shape = blocks[-1].out_shape
        return Network(blocks, nn.Linear(math.prod(shape), n_outputs), "cnn", tuple(input_shape))


def build_network(model: str, n_features: int, n_outputs: int, *, input_shape: tuple[int, int, int] | None = None,
                  **settings) -> Network:
    """``Architecture(model, **settings).build(n_features, n_outputs, input_shape)``: one of ``MODELS``, its
    parameters drawn from torch's global RNG (seed it first)."""
    return Architecture(model, **settings).build(n_features, n_outputs, input_shape)
