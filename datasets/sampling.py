"""Deterministic subsets: the rule behind fixed splits and probe sets.

Both functions shuffle all positions once with ``numpy.random.default_rng(seed)``
and take a prefix of that order, so a subset of one size is contained in the
subset of any larger size drawn with the same seed. They return indices sorted
ascending, as int64.
"""

import numpy as np


def random_subset(n: int, size: int, seed: int = 0) -> np.ndarray:
    """The first ``size`` of ``n`` positions in the shuffled order."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:size]).astype(np.int64)


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` positions of the 1-D ``labels``, as equally many per class as possible.

    Quotas are dealt one at a time, round-robin over the classes in ascending
    label order, skipping classes that have run out: every class gets
    ``min(count, q)`` or ``q + 1`` for a common ``q``, the extra ones going to
    the lowest labels. Class ``c`` then contributes its first ``quota[c]``
    positions in the shuffled order.
    """
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = _round_robin_quotas(counts, size)
    order = np.random.default_rng(seed).permutation(len(labels))
    class_in_order = inverse[order]
    chosen = [order[class_in_order == c][:quota] for c, quota in enumerate(quotas)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _round_robin_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Per-class quotas summing to ``size`` (at most ``counts.sum()``), dealt round-robin."""
    quotas = np.zeros_like(counts)
    left = size
    while left:
        open_classes = np.flatnonzero(quotas < counts)
        share = left // len(open_classes)
        if share == 0:
            quotas[open_classes[:left]] += 1
            break
        added = np.minimum(share, counts[open_classes] - quotas[open_classes])
        quotas[open_classes] += added
        left -= int(added.sum())
    return quotas
