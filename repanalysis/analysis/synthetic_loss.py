"""The synthetic loss an SG module implies, against the true loss (Czarnecki et al. 2017, claim 3 of the
toolkit's ``docs/science.md``).

A module ``M`` at interface ``h`` predicts the per-sample gradient ``∂L_n/∂h_n``,
so it defines, up to a constant, a *synthetic loss* whose gradient it is. Along a
straight path ``h(t) = h0 + t·d``, ``d = m - h0``, ``t ∈ [0, 1]``, anchored at the
true loss at ``h0``::

    S(t) = L(h0) + ∫_0^t M(h(s), c)·d ds

and the true loss is ``L(t) = loss(head(blocks above(h(t))), y)``, per sample
(``losses.per_sample_loss``; the units of the module's prediction, not divided
by the batch size).

Conventions:

- ``h0``: the recorded probe activations at the checkpoint, as stored
  (feature maps too; the probe inputs themselves are not in the run file); ``m``: the mean activation of the
  sample's class over the probe set (classification), or of the whole probe set
  (binary and regression tasks);
- ``t`` takes ``points`` equally spaced values in ``(0, 1]``; ``t = 0`` is left
  out, since ``S(0) = L(0)`` by construction;
- the integral is composite Gauss–Legendre quadrature with ``order`` nodes on
  each interval between consecutive ``t`` (exact for integrands polynomial in
  ``s`` of degree ``< 2·order``); for a linear module (no hidden layer, linear
  output) with a fixed condition, ``M(h) = hA + cB + b`` is affine in ``h`` and
  the closed form ``t·M(h0)·d + (t²/2)·(dA)·d`` is used instead;
- the condition ``c`` is the label (or target), nothing, or, for
  error-conditioned modules, the per-sample output error ``∂L_n/∂p_n`` at
  ``h(s)`` itself;
- network and modules run in eval mode (batch norm uses running statistics),
  in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from repanalysis.errors import UserError
from repanalysis.measures._arrays import as_float64
from repanalysis.nn import losses
from repanalysis.rules.base import evaluating
from repanalysis.rules.synthetic import SyntheticGradientModule, SyntheticGradients
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.parts import rebuild

Gradient = Callable[[torch.Tensor], torch.Tensor]


def path_integral(grad: Gradient, h0: torch.Tensor, direction: torch.Tensor, ts, order: int = 4) -> torch.Tensor:
    """``[n, len(ts)]``: ``∫_0^t grad(h0 + s·d)·d ds`` per sample, for each ``t`` in ``ts``.

    ``grad(h)`` maps ``[n, ...]`` points (vectors or feature maps) to gradients of the same shape, sample by sample.
    ``ts`` must be increasing and non-negative. Composite Gauss–Legendre with
    ``order`` nodes on ``[0, t_1], [t_1, t_2], ...``, summed cumulatively.
    """
    ts = torch.as_tensor(ts, dtype=h0.dtype)
    if order < 1 or ts.ndim != 1 or (ts < 0).any() or (ts.diff() <= 0).any():
        raise ValueError("path_integral needs order >= 1 and increasing, non-negative ts")
    nodes, weights = (torch.as_tensor(a, dtype=h0.dtype) for a in np.polynomial.legendre.leggauss(order))
    edges = torch.cat([ts.new_zeros(1), ts])
    pieces = []
    for a, b in zip(edges[:-1], edges[1:]):
        half = (b - a) / 2
        at = [a + half * (x + 1) for x in nodes]
        pieces.append(half * sum(w * (grad(h0 + s * direction) * direction).flatten(1).sum(1)
                                 for s, w in zip(at, weights)))
    return torch.stack(pieces, 1).cumsum(1)


def linear_path_integral(grad: Gradient, module: SyntheticGradientModule, h0: torch.Tensor,
                         direction: torch.Tensor, ts) -> torch.Tensor:
    """``[n, len(ts)]``: the exact ``∫_0^t M(h0 + s·d, c)·d ds = t·M(h0, c)·d + (t²/2)·(dA)·d``.

    ``grad`` is the module's prediction as a function of ``h`` (``module_gradient``),
    with a condition ``c`` fixed along the path; ``module`` must be linear (no
    hidden layer, linear output): ``M(h, c) = hA + cB + b``, ``A`` the ``[D, D]``
    block of its weight that acts on ``h``.
    """
    if not is_affine(module):
        raise ValueError("the closed form needs a linear module (no hidden layer, linear output)")
    ts = torch.as_tensor(ts, dtype=h0.dtype)
    a = module.out.weight[:, : h0.shape[1]].T
    first = (grad(h0) * direction).sum(1)
    second = ((direction @ a) * direction).sum(1)
    return first[:, None] * ts + 0.5 * second[:, None] * ts**2


def is_affine(module) -> bool:
    """Whether ``M(h, c)`` is a linear module, affine in ``h`` (vector module, no hidden layer, linear output)."""
    return isinstance(module, SyntheticGradientModule) and len(module.hidden) == 0 and module.output == "linear"


def output_error(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[n, k]``: the per-sample output error ``∂L_n/∂p_n``."""
    with torch.enable_grad():
        output = output.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(losses.per_sample_loss(task, output, target).sum(), output)
    return grad


def module_gradient(rule: SyntheticGradients, i: int, target: torch.Tensor) -> Gradient:
    """Module ``i``'s per-sample prediction as a function of ``h`` (the condition follows ``h`` if it is the error)."""
    def grad(h: torch.Tensor) -> torch.Tensor:
        error = output_error(rule.task, rule.network.forward_from(i, h), target) if rule.condition == "error" else None
        return rule.predict(i, h, target, error)

    return grad


def probe_target(run: RunFile, task: str) -> torch.Tensor:
    """The probe set's loss targets in float64 (int64 labels for classification)."""
    if task == "classification":
        return torch.as_tensor(run.probe_labels)
    if task == "binary":
        return torch.as_tensor(run.probe_labels, dtype=torch.float64)[:, None]
    return torch.as_tensor(run.probe_targets, dtype=torch.float64)


def path_ends(h0: torch.Tensor, task: str, labels: torch.Tensor) -> torch.Tensor:
    """``h0``'s shape: each path's end, its class mean (classification) or the overall mean."""
    if task != "classification":
        return h0.mean(0, keepdim=True).expand_as(h0)
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = h0.new_zeros(len(classes), *h0.shape[1:]).index_add_(0, inverse, h0)
    counts = torch.bincount(inverse, minlength=len(classes)).to(h0.dtype)
    return (sums / counts.reshape(-1, *[1] * (h0.ndim - 1)))[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat arrays; NaN if either is constant."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def losses_along_path(rule: SyntheticGradients, i: int, h0: torch.Tensor, target: torch.Tensor, ts,
                      order: int = 4) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(true, synthetic, method)`` at interface ``i``: ``[n, len(ts)]`` per-sample losses along the paths.

    ``rule`` must be in eval mode, in ``h0``'s dtype. ``method`` is "closed form"
    (linear module, fixed condition) or "gauss-legendre".
    """
    direction = path_ends(h0, rule.task, target) - h0

    def true_at(t) -> torch.Tensor:
        return losses.per_sample_loss(rule.task, rule.network.forward_from(i, h0 + t * direction), target)

    module, grad = rule.modules[rule.network.interfaces[i]], module_gradient(rule, i, target)
    if is_affine(module) and rule.condition != "error":
        integral, method = linear_path_integral(grad, module, h0, direction, ts), "closed form"
    else:
        integral, method = path_integral(grad, h0, direction, ts, order), "gauss-legendre"
    return torch.stack([true_at(t) for t in ts], 1), true_at(0.0)[:, None] + integral, method


def synthetic_losses(run: RunFile, checkpoint: int = -1, layers: list[str] | None = None, *,
                     points: int = 8, order: int = 4) -> dict[str, dict]:
    """Synthetic against true loss at every recorded interface with a module (or those in ``layers``).

    Per layer: ``t`` ``[K]``, ``true`` and ``synthetic`` ``[n, K]`` (per-sample
    losses along the paths), ``anchor`` ``[n]`` (the true loss at ``h0``), ``corr`` (Pearson, over all ``n·K`` points, of the
    *changes* ``L(h(t)) - L(h0)`` of the two losses along the paths; NaN where the
    module predicts nothing, as at step 0), ``gap`` (mean ``|synthetic - true|``)
    and ``method``. See the module docstring for the conventions. Both losses
    share each sample's anchor ``L(h0)``; correlating the losses themselves would
    be high by construction, so the anchor is taken off first.
    """
    if points < 1:
        raise UserError(f"points must be at least 1, got {points}")
    rule = rebuild(run, checkpoint)
    if not isinstance(rule, SyntheticGradients):
        raise UserError(f"{run.path}: rule {run.rule} has no synthetic-gradient modules")
    names = {rule.network.interfaces[i]: i for i in rule.cuts}
    unknown = sorted(set(layers or ()) - set(names))
    if unknown:
        raise UserError(f"{run.path}: no synthetic-gradient module at {', '.join(unknown)}; "
                        f"modules sit at {', '.join(names)}")
    rule.network.double()
    rule.modules.double()
    target = probe_target(run, rule.task)
    step = int(run.steps[checkpoint])
    ts = torch.linspace(0, 1, points + 1, dtype=torch.float64)[1:]
    out = {}
    with evaluating(rule.network, rule.modules), torch.no_grad():
        for name in layers or [name for name in names if name in run.layers]:
            h0 = as_float64(run.stored(name, "activations", checkpoint), "activations",
                            f"{run.path}, layer {name}, step {step}", ndim=None)
            true, synthetic, method = losses_along_path(rule, names[name], torch.from_numpy(h0), target, ts, order)
            anchor = losses.per_sample_loss(rule.task, rule.network.forward_from(names[name], torch.from_numpy(h0)),
                                           target).numpy()[:, None]
            true, synthetic = true.numpy(), synthetic.numpy()
            out[name] = {"t": ts.numpy(), "true": true, "synthetic": synthetic, "anchor": anchor[:, 0],
                         "method": method,
                         "corr": pearson((true - anchor).ravel(), (synthetic - anchor).ravel()),
                         "gap": float(np.abs(synthetic - true).mean())}
    return out


def synthetic_loss(run: RunFile, checkpoint: int, layer: str, *, points: int = 8, order: int = 4) -> dict:
    """``synthetic_losses`` for one layer."""
    return synthetic_losses(run, checkpoint, [layer], points=points, order=order)[layer]
