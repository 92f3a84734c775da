"""Update-unlocked training: a synthetic-gradient rule's network in stages, each in its own process.

``train --stages K`` cuts the stack at ``K - 1`` of the rule's modules
(``stages.partition``) and runs each stage in its own process
(``worker``: torch.distributed, gloo), pipelined over batches: a stage updates
from its own modules at once and never waits for a gradient from above; the
targets of its top module arrive when they arrive. ``--sync`` runs the stages
in lock-step, which gives the in-process rule's parameters. The parent
(``launch``) writes the run file.
"""

from __future__ import annotations

import torch

from repanalysis.errors import UserError
from repanalysis.training.pipeline.launch import run, stages
from repanalysis.training.pipeline.stages import check as _check_rule

__all__ = ["check", "run", "stage_device"]


def check(rule) -> None:
    """Refuse, before anything is written, a rule or network that cannot be cut into ``--stages`` stages."""
    _check_rule(rule)
    stages(rule)


def stage_device(name: str) -> torch.device:
    """Stages run on the CPU (gloo); ``auto`` means the CPU here, and ``cuda`` is refused."""
    if name in ("auto", "cpu"):
        return torch.device("cpu")
    raise UserError(f"--stages runs its stages on the CPU (gloo); --device {name} is not supported with it yet")
