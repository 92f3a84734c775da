"""Run-level analysis: tables from run files.

``runs``: ``analyze``, the similarity of layers within and across runs, the gradient error and spectra over
checkpoints, as one tidy table; ``tables``: the tidy tables on disk (``write_table``, ``read_table``);
``synthetic_loss``: the loss along a synthetic gradient, from a network rebuilt at a checkpoint;
``explain``: error against divergence, the explanation's table; ``recurrent``: the recurrent runs' table
and its report lines; ``markdown``: a table and a value over seeds in Markdown.

The measures on arrays live in ``repanalysis.measures``; they are importable from here as well
(``from repanalysis.analysis import linear_cka``).
"""

from repanalysis import measures as _measures
from repanalysis.measures import *  # noqa: F403

__all__ = _measures.__all__
