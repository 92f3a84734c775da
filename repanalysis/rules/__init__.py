"""Training rules: each decides the error signal every block learns from.

``make_rule(config, network, task, n_outputs)`` builds the rule named by
``config.rule`` (one of ``RULES``).
"""

from repanalysis.config import RULES, TrainConfig
from repanalysis.errors import UserError

from .backprop import Backprop
from .base import Rule
from .feedback import DirectFeedbackAlignment, FeedbackAlignment, Kickback
from .noisy import NoisyGradient
from .synthetic import SyntheticGradientModule, SyntheticGradients, make_synthetic

__all__ = ["RULES", "Rule", "make_rule", "SyntheticGradientModule", "SyntheticGradients"]

_FIXED = {"backprop": Backprop, "fa": FeedbackAlignment, "dfa": DirectFeedbackAlignment, "kickback": Kickback,
          "noisy": NoisyGradient}


def make_rule(config: TrainConfig, network, task: str, n_outputs: int) -> Rule:
    """The rule ``config.rule`` for ``network``; ``config`` must be ``resolved()``."""
    if config.rule in _FIXED:
        return _FIXED[config.rule](network, task, n_outputs, config)
    if config.rule in ("sg", "dni", "cdni"):
        if config.rule == "cdni" and config.sg_condition == "none":
            raise UserError("cdni is label-conditioned: use --sg-condition label (or error), or --rule dni")
        return make_synthetic(config.rule, network, task, n_outputs, config)
    raise UserError(f"unknown rule {config.rule!r}; choose one of {', '.join(RULES)}")
