"""The training state a checkpoint keeps beyond the parameters, so that a run continues exactly.

``capture`` turns it into named arrays (the run file's ``/resume/<slot>/``) and
``restore`` puts them back:

- ``optimizer.<parameter>.<key>``: every optimiser's state per parameter (the
  blocks', the head's and the rule's modules'), named like ``/params`` (e.g.
  ``optimizer.model.blocks.0.linear.weight.exp_avg``); Adam's ``step``,
  ``exp_avg``, ``exp_avg_sq``, SGD's ``momentum_buffer``. A parameter whose
  optimiser has never stepped has none, as in torch;
- ``batches.epoch_start``, ``batches.position``: the batch generator's state
  at the start of the current epoch and the batches drawn in it (``Batches``);
- ``coin``: the state of the update-probability coin's generator, and under
  the rule's other names (``Rule.generators``; ``noise`` for ``noisy``) the
  states of its other generators.

Parameters and buffers are the checkpoint's ``/params`` row. The rule's step
counter is the checkpoint's step. torch's global generator is used only to
initialise, so it is not kept. Learning rates are set from the schedule before
every update, so they are not kept either.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from repanalysis.errors import UserError
from repanalysis.rules import Rule

_OPT = "optimizer."


def _names(rule: Rule) -> dict[int, str]:
    """``id(parameter)`` -> its qualified name in ``/params``."""
    named = [(f"model.{k}", p) for k, p in rule.network.named_parameters()]
    named += [(f"rule.{k}", p) for k, p in rule.modules.named_parameters()]
    return {id(p): name for name, p in named}


def _optimizers(rule: Rule) -> list[torch.optim.Optimizer]:
    return rule.optimizers + rule.module_optimizers


def capture(rule: Rule, batches=None) -> dict[str, torch.Tensor | np.ndarray]:
    """The rule's optimiser and coin states and the batch stream's state (unless ``batches`` is None, as on a
    pipeline stage above the bottom one, which reports no stream), as named tensors (and one number).

    The optimiser's tensors are its own (detached, not copied): the caller
    copies what it keeps past the next update.
    """
    names = _names(rule)
    out = {}
    for opt in _optimizers(rule):
        for param, state in opt.state.items():
            for key, value in state.items():
                out[f"{_OPT}{names[id(param)]}.{key}"] = value.detach()
    if batches is not None:
        epoch_start, position = batches.state()
        out["batches.epoch_start"] = epoch_start
        out["batches.position"] = np.int64(position)
    for name, generator in rule.generators().items():
        out[name] = generator.get_state()
    return out


def restore(rule: Rule, batches, arrays: dict[str, np.ndarray], step: int) -> None:
    """Put back what ``capture`` returned at ``step`` (the parameters are loaded separately; ``batches``
    None: no batch stream to restore)."""
    per_param: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, value in arrays.items():
        if name.startswith(_OPT):
            qualified, key = name[len(_OPT):].rsplit(".", 1)
            per_param[qualified][key] = torch.from_numpy(np.asarray(value))
    names = _names(rule)
    used = set()
    for opt in _optimizers(rule):
        saved = opt.state_dict()
        ids = [i for group in saved["param_groups"] for i in group["params"]]
        params = [names[id(p)] for group in opt.param_groups for p in group["params"]]
        saved["state"] = {i: per_param[name] for i, name in zip(ids, params) if name in per_param}
        used.update(name for name in params if name in per_param)
        opt.load_state_dict(saved)
    unknown = sorted(set(per_param) - used)
    if unknown:
        raise UserError(f"the resume state has optimiser state for {', '.join(unknown)}, which this run does not have")
    if batches is not None:
        batches.restore(torch.from_numpy(np.asarray(arrays["batches.epoch_start"])), int(arrays["batches.position"]))
    for name, generator in rule.generators().items():
        generator.set_state(torch.from_numpy(np.asarray(arrays[name])))
    rule.steps_done = step
