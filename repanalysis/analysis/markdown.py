"""The Markdown pieces of a report: a table, and a value over seeds as mean ± standard deviation."""

from __future__ import annotations

import numpy as np


def mean_std(values, digits: int = 3) -> str:
    """``"m ± s"`` over seeds (ddof 1), ``"m ± n/a"`` for one value, ``"n/a"`` for none."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if not len(values):
        return "n/a"
    spread = f"{values.std(ddof=1):.{digits}f}" if len(values) > 1 else "n/a"
    return f"{values.mean():.{digits}f} ± {spread}"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table of ``rows`` (cells as ``str`` gives them) under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
