"""Tidy tables on disk: CSV files written by ``write_table`` and read by ``read_table``, whoever made them.

Two conventions make a table load in pandas as it was made and keep it valid
where its folder goes:

- **Integers stay integers.** Seeds, steps, layer positions and the like
  (the columns ``INTEGER_COLUMNS``) are written without a decimal point, and
  ``read_table`` reads them as pandas' nullable ``Int64``, also where some
  rows leave them empty (a single-run measure's ``seed_b``, a per-run
  measure's ``position_a``), which plain ``pd.read_csv`` would turn into
  floats. A column that holds anything but whole numbers is left as it is.
- **Runs are named relative to the table.** A run file (the columns
  ``RUN_COLUMNS``) is written as its path relative to the folder the table
  is written in, with ``/`` (``../runs/sg_s0.h5`` for a table in
  ``tables/``), so a folder of runs and tables can be moved or shared and its
  tables still name its runs; ``read_table`` gives them back as absolute,
  normalised paths (``os.path.abspath``), which open from anywhere.
  In memory, a table names runs by their paths as given (relative to the
  current folder, or absolute).

Files are written atomically (``outputs.write_atomically``).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pandas as pd

from repanalysis.errors import UserError
from repanalysis.runtime.outputs import write_atomically

INTEGER_COLUMNS = ("seed", "seed_a", "seed_b", "step", "step_a", "step_b", "position", "position_a", "position_b",
                   "reference_seed", "depth", "folds", "steps", "seeds", "points")
RUN_COLUMNS = ("run", "run_a", "run_b")


def _integers(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each of ``INTEGER_COLUMNS`` that holds only whole numbers (or blanks) as ``Int64``."""
    casts = {}
    for column in INTEGER_COLUMNS:
        if column not in table or str(table[column].dtype) == "Int64":
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        present = table[column].notna()
        if values[present].notna().all() and (values[present] % 1 == 0).all():
            casts[column] = values
    return table.assign(**{c: v.astype("Int64") for c, v in casts.items()}) if casts else table


def _runs(table: pd.DataFrame, rename) -> pd.DataFrame:
    """``table`` with every non-empty entry of its ``RUN_COLUMNS`` passed through ``rename``."""
    found = {c: table[c].map(lambda v: v if pd.isna(v) or v == "" else rename(str(v)))
             for c in RUN_COLUMNS if c in table}
    return table.assign(**found) if found else table


def relative_run(path, folder) -> str:
    """``path`` (absolute, or relative to the current folder) relative to ``folder``, with ``/``."""
    absolute, start = os.path.abspath(path), os.path.abspath(folder)
    try:
        return PurePath(os.path.relpath(absolute, start)).as_posix()
    except ValueError:  # another drive (Windows): no relative path
        return absolute


def absolute_run(name: str, folder) -> str:
    """The absolute, normalised path of a run named ``name`` in a table in ``folder``."""
    return os.path.abspath(os.path.join(os.path.abspath(folder), name))


def write_table(table: pd.DataFrame, path) -> Path:
    """Write ``table`` as CSV (no index column) to ``path`` atomically, by the module's conventions."""
    folder = Path(path).parent
    out = _runs(_integers(table), lambda name: relative_run(name, folder))
    return write_atomically(path, lambda f: out.to_csv(f, index=False))


def read_table(path) -> pd.DataFrame:
    """The table in the CSV file ``path``: integer columns as ``Int64``, runs as absolute paths."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{path}: cannot read a table ({str(err).splitlines()[0]})") from None
    folder = Path(path).parent
    return _runs(_integers(table), lambda name: absolute_run(name, folder))
