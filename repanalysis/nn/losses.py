"""Task losses and accuracy, by the data set's task.

Every loss is the *mean over the batch* of a per-sample loss, so the gradient
of the batch loss with respect to one sample's interface is ``1/B`` times that
sample's own gradient:

- ``classification``: softmax cross-entropy of the logits against integer labels;
- ``binary``: logistic loss (``log(1 + exp(-z))`` form) of one logit against 0/1;
- ``regression``: ``½‖p - y‖²`` per sample, so ``∂L_n/∂p_n = p_n - y_n``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TASKS = ("classification", "binary", "regression")


def per_sample_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: each sample's loss of ``output`` against ``target``."""
    if task == "classification":
        return F.cross_entropy(output, target, reduction="none")
    if task == "binary":
        return F.binary_cross_entropy_with_logits(output, target, reduction="none").sum(1)
    return 0.5 * (output - target).pow(2).sum(1)


def loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The batch-mean loss of ``output`` against ``target``."""
    return per_sample_loss(task, output, target).mean()


def correct(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Number of correct predictions in the batch (a 0-d tensor); ``None`` for regression."""
    if task == "classification":
        return (output.argmax(1) == target).sum()
    if task == "binary":
        return ((output > 0).to(target.dtype) == target).all(1).sum()
    return None


def accuracy(task: str, output: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction correct; NaN for regression, which has no accuracy."""
    hits = correct(task, output, target)
    return math.nan if hits is None else hits.item() / len(target)
