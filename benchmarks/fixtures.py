"""Activation-like pairs of float32 matrices for the measures' benchmarks (numpy only).

Isotropic data hide what real activations show: a few strong directions over a
noise floor (condition numbers in the tens to thousands) and, after ReLU, many
silent units.
"""

from __future__ import annotations

import math

import numpy as np


def low_rank_pair(n: int, d: int, seed: int = 0):
    """``X = Z·A + noise``, ``Y = Z·B + noise`` (float32): condition numbers about 50 and 25 at d = 1024."""
    g = np.random.default_rng(seed)
    k = d // 8
    z = g.standard_normal((n, k), dtype=np.float32)
    x = z @ g.standard_normal((k, d), dtype=np.float32) / np.float32(math.sqrt(k))
    y = z @ g.standard_normal((k, d), dtype=np.float32) / np.float32(math.sqrt(k))
    x += np.float32(0.12) * g.standard_normal((n, d), dtype=np.float32)
    y += np.float32(0.25) * g.standard_normal((n, d), dtype=np.float32)
    return x, y


def sparse_relu_pair(n: int, d: int, seed: int = 1):
    """ReLU of a shared low-rank input with a negative bias: most units silent on most samples."""
    g = np.random.default_rng(seed)
    k = d // 4
    z = g.standard_normal((n, k), dtype=np.float32)
    pre = [z @ g.standard_normal((k, d), dtype=np.float32) / np.float32(math.sqrt(k))
           + np.float32(0.3) * g.standard_normal((n, d), dtype=np.float32) for _ in range(2)]
    return tuple(np.maximum(p - np.float32(0.8), 0, dtype=np.float32) for p in pre)


FIXTURES = {"low-rank": low_rank_pair, "sparse-relu": sparse_relu_pair}
