"""Backpropagation: every block learns from the true gradient ``δi = ∂L/∂hi``."""

from .base import Rule


class Backprop(Rule):
    """No cuts, no feedback: the base ``Rule`` machinery is exactly backprop."""

    name = "backprop"
