"""``noisy``: backprop whose error at chosen interfaces is the true gradient turned to a set cosine with itself.

The experimenter's handle on how wrong a signal is: at each ``--sg-at``
interface (default the middle one, where ``sg`` puts its module) the blocks
below learn from

    δ̂_n = ‖δ_n‖ · (c · δ_n / ‖δ_n‖ + √(1 − c²) · u_n),

per sample ``n``, where ``δ_n`` is the true gradient that reaches the
interface from the blocks above (trained by backprop), ``c`` is
``--signal-cosine`` and ``u_n`` a unit vector orthogonal to ``δ_n``, drawn
afresh at every step (a standard normal vector, its component along ``δ_n``
removed, normalised; a feature map is one vector per sample). So the signal
keeps the true gradient's norm, its cosine with it is exactly ``c``, and
its mean over the noise is ``c · δ_n``. A sample whose true gradient is zero
gets zero. At ``c = 1`` no noise is drawn and the rule is backprop, bit for
bit. The noise comes from the rule's own generator (seeded by the run's seed,
kept in the resume state); the shadow pass draws from a generator of its own,
seeded by the seed and the step, so recording never changes training.
"""

from __future__ import annotations

import contextlib
import math

import torch

from repanalysis.errors import UserError

from .base import Pass, Rule

NOISE_SEED_OFFSET = 104729


def turned(true: torch.Tensor, cosine: float, generator: torch.Generator) -> torch.Tensor:
    """``true`` (``[B, ...]``) with every sample's vector turned to ``cosine`` with itself, norm kept
    (see the module docstring)."""
    if cosine == 1.0:
        return true
    g = true.reshape(len(true), -1)
    noise = torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
    norm = g.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    noise = noise - (noise * unit).sum(1, keepdim=True) * unit
    noise = noise / noise.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    out = norm * (cosine * unit + math.sqrt(max(0.0, 1.0 - cosine * cosine)) * noise)
    return out.reshape(true.shape)


class NoisyGradient(Rule):
    """Cuts at ``--sg-at`` (default the middle interface); the signal there is ``turned`` true gradient."""

    name = "noisy"

    def __init__(self, network, task, n_outputs, config):
        super().__init__(network, task, n_outputs, config)
        n = len(network.blocks)
        at = [k - 1 for k in config.sg_at] if config.sg_at else [(n - 1) // 2]
        bad = [i + 1 for i in at if not 0 <= i < n]
        if bad:
            raise UserError(f"--sg-at names interfaces {bad}; this network has h1..h{n}")
        self.cuts = tuple(sorted(set(at)))
        self.noise = torch.Generator().manual_seed(config.seed + NOISE_SEED_OFFSET)

    def generators(self) -> dict[str, torch.Generator]:
        return {**super().generators(), "noise": self.noise}

    def signal(self, i: int, p: Pass) -> torch.Tensor:
        return turned(p.arriving[i], self.config.signal_cosine, self.noise)

    def probe(self, x: torch.Tensor, y: torch.Tensor):
        """The shadow pass (``Rule.probe``) with noise of its own, seeded by the seed and the step."""
        with self._shadow_noise():
            return super().probe(x, y)

    @contextlib.contextmanager
    def _shadow_noise(self):
        training = self.noise
        seed = ((self.config.seed + NOISE_SEED_OFFSET) * 1_000_003 + self.steps_done) % 2**63
        self.noise = torch.Generator().manual_seed(seed)
        try:
            yield
        finally:
            self.noise = training
