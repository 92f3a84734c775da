"""What figures read: tidy tables, told apart by their columns, and run files; and how they summarise them.

Table kinds (``KINDS``), each recognised by the columns it must have:

- ``analysis``: ``repanalysis analyze`` (``measure, rule_a, seed_a, layer_a, step_a, ..., value``);
- ``probes``: ``repanalysis probe`` (``rule, seed, layer, step, probe, accuracy``);
- ``linear``: the reproduction's linear-problem table (``dataset, model, rule, seed,
  train_loss, map_cosine, map_distance``).

Summaries are over seeds: ``mean``, ``std`` (ddof 1; NaN with one seed: no spread) and ``n``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from repanalysis.analysis import tables
from repanalysis.errors import UserError
from repanalysis.runfile.checkpoints import chosen_checkpoints

KINDS = {
    "analysis": {"measure", "run_a", "rule_a", "seed_a", "layer_a", "step_a",
                 "run_b", "rule_b", "seed_b", "layer_b", "step_b", "value"},
    "probes": {"run", "rule", "seed", "layer", "step", "probe", "accuracy"},
    "linear": {"dataset", "model", "rule", "seed", "train_loss", "map_cosine", "map_distance"},
}


def table_kind(table: pd.DataFrame, name: str = "table") -> str:
    """The kind of ``table`` (a key of ``KINDS``); UserError if it is none of them or has no rows."""
    for kind, columns in KINDS.items():
        if columns <= set(table.columns):
            if table.empty:
                raise UserError(f"{name}: the {kind} table has no rows")
            return kind
    raise UserError(f"{name}: not an analysis, probe or linear-problem table "
                    f"(columns {', '.join(map(str, table.columns)) or 'none'})")


def read_table(path) -> tuple[str, pd.DataFrame]:
    """``(kind, table)`` read from a CSV file (``repanalysis.analysis.tables.read_table``)."""
    table = tables.read_table(path)
    return table_kind(table, str(path)), table


def split_inputs(inputs) -> tuple[dict[str, list[pd.DataFrame]], list[Path]]:
    """Tables by kind (``.csv``) and run files (``.h5``/``.hdf5``); UserError on anything else."""
    tables: dict[str, list[pd.DataFrame]] = {}
    runs = []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        if path.suffix.lower() == ".csv":
            kind, table = read_table(path)
            tables.setdefault(kind, []).append(table)
        elif path.suffix.lower() in (".h5", ".hdf5"):
            runs.append(path)
        else:
            raise UserError(f"{path}: give tables (.csv) or run files (.h5)")
    return tables, runs


def summarise(table: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """``by`` columns with the ``mean``, ``std`` (ddof 1; NaN for one row, which has no spread) and ``n`` of
    ``value``."""
    grouped = table.groupby(by, sort=False)[value]
    return grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})


def layer_positions(table: pd.DataFrame, *columns: tuple[str, str]) -> dict[str, int]:
    """Layer -> its position in the model, from ``(layer column, position column)`` pairs of ``table`` (the
    lowest where runs differ); empty for a table without its position columns."""
    found: dict[str, int] = {}
    for layer, position in columns:
        if layer in table and position in table:
            known = table[[layer, position]].dropna()
            for name, at in known.groupby(layer)[position].min().items():
                found[name] = min(int(at), found.get(name, int(at)))
    return found


#: The run and step columns of the table kinds that have checkpoints.
STEP_COLUMNS = {"analysis": ("run_a", "step_a"), "probes": ("run", "step")}


def at_checkpoints(kind: str, table: pd.DataFrame, choice) -> pd.DataFrame:
    """The rows of ``table`` (of ``kind``) at the checkpoints ``choice`` picks (``repanalysis.runfile.checkpoints``) of
    each run in it: all, each run's last step in the table, or given steps, each of which every run with
    rows per checkpoint must have (a UserError naming the first run without). Rows of no layer (the measures
    of a whole run) and tables without steps are kept whole."""
    if kind not in STEP_COLUMNS or choice == "all":
        return table
    run, step = STEP_COLUMNS[kind]
    layer = "layer_a" if kind == "analysis" else "layer"
    kept = table[layer].isna()
    for name, rows in table[~kept].groupby(run, sort=False):
        steps = sorted(int(s) for s in rows[step].unique())
        picked = [steps[c] for c in chosen_checkpoints(steps, choice, f"{name} (in the {kind} table)")]
        kept |= (table[run] == name) & table[step].isin(picked)
    return table[kept]


def checkpoint_at(run, step: int | None) -> int:
    """The checkpoint index of ``step`` in the open run file ``run`` (its last for None); a UserError naming the
    run if it has no checkpoint there."""
    return -1 if step is None else chosen_checkpoints(run.steps, (step,), str(run.path))[0]


def at_last_step(table: pd.DataFrame, run: str = "run_a", step: str = "step_a") -> pd.DataFrame:
    """The rows at each run's last step present in ``table``."""
    last = table.groupby(run)[step].transform("max")
    return table[table[step] == last]


def measure(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The analysis rows of one measure whose value is finite."""
    rows = table[table["measure"] == name]
    return rows[pd.to_numeric(rows["value"], errors="coerce").notna()]


def single_run(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of a single-run measure: those with no second run."""
    return rows[rows["run_b"].isna() | (rows["run_b"].astype(str) == "")]
