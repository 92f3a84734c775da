"""``draw_figures``: every figure the given tables and run files allow, as PNG and SVG.

Figures (file stems) and what they need:

- ``learning_curves``, ``rdms``, ``spectra``: run files of one data set and model;
- ``similarity_to_backprop``, ``layer_cka``, ``effective_rank``, ``weight_norm``,
  ``gradient_alignment``, ``synthetic_loss``: an analysis table;
- ``probe_accuracy``: a probe table;
- ``linear_problems``: the reproduction's linear-problem table.

Several tables of one kind are concatenated. ``checkpoints`` chooses what
they read (``repanalysis.runfile.checkpoints``): all (default), each run's last, or
given steps; the tables keep the rows at those steps (``inputs.at_checkpoints``),
the figures of one checkpoint show the last of them (titled by its step when
steps are given: every run has them), and ``rdms`` and ``spectra`` read the
run files there. With ``tag`` every stem gets
``_<tag>`` and every title `` — <tag>``, so figures of several experiments
can share a folder. The output folder follows the rules of every output
(``repanalysis.runtime.outputs``): checked before any drawing, no file in it replaced
unless ``overwrite`` (any file a figure of the inputs could be written to
counts), and a folder made for a call that fails removed again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import seaborn as sns

from repanalysis.errors import UserError
from repanalysis.runfile.checkpoints import parse_checkpoints
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime.outputs import check_files_in_folder, new_folder

from . import curves, heatmaps, layers, linear, rdms, spectra, training
from .inputs import at_checkpoints, checkpoint_at, split_inputs
from .style import FORMATS, save

FROM_TABLES = {
    "analysis": {
        "similarity_to_backprop": layers.similarity_to_backprop,
        "layer_cka": heatmaps.layer_cka,
        "effective_rank": layers.effective_rank,
        "weight_norm": layers.weight_norm,
        "gradient_alignment": training.gradient_alignment,
        "synthetic_loss": training.synthetic_loss,
    },
    "probes": {"probe_accuracy": layers.probe_accuracy},
    "linear": {"linear_problems": linear.linear_problems},
}
FROM_RUNS = {"learning_curves": curves.learning_curves, "rdms": rdms.rdm_grid, "spectra": spectra.spectra}
DRAWERS = {stem: draw for figures in FROM_TABLES.values() for stem, draw in figures.items()} | FROM_RUNS
#: The run-file figures that show one checkpoint (they take its ``step``).
AT_STEP = ("rdms", "spectra")


def _check_runs(runs: list[Path], step: int | None) -> None:
    """Refuse run files from more than one data set and model (their figures would mix them), or without a
    checkpoint at ``step``."""
    kinds = {}
    for path in runs:
        with RunFile(path) as run:
            kinds.setdefault((run.dataset, run.model), path)
            checkpoint_at(run, step)
    if len(kinds) > 1:
        listed = "; ".join(f"{d}/{m} ({p})" for (d, m), p in kinds.items())
        raise UserError(f"the run files come from several data sets or models: {listed}; draw each group separately")


def _name(stem: str, tag: str | None) -> str:
    return f"{stem}_{tag}" if tag else stem


def _draw(stem: str, data, out: Path, tag: str | None, step: int | None = None) -> list[Path]:
    """Draw figure ``stem`` from ``data`` (a table, or run-file paths) into ``out``, its one checkpoint at ``step``
    (None: the last); the files (none if empty)."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig = DRAWERS[stem](data, step=step) if stem in AT_STEP else DRAWERS[stem](data)
        if fig is None:
            return []
        if step is not None:
            fig.suptitle(re.sub(r"(the )?last checkpoint", f"step {step}", fig.get_suptitle()))
        if tag:
            fig.suptitle(f"{fig.get_suptitle()} — {tag}")
        return save(fig, out, _name(stem, tag))


def draw_figures(inputs, out_dir, quiet: bool = False, *, tag: str | None = None, executor=None,
                 overwrite: bool = False, checkpoints="all") -> list[Path]:
    """Draw what ``inputs`` (tables ``.csv``, run files ``.h5``) allow into ``out_dir``, at ``checkpoints``
    (see the module docstring); return the files.

    ``overwrite``: replace figure files that exist in ``out_dir`` (else refused before any drawing).
    One task per figure on ``executor`` (a ``repanalysis.runtime.executor.Executor``; default: this process).
    """
    from repanalysis.runtime.executor import Executor

    checkpoints = parse_checkpoints(checkpoints)
    step = None if isinstance(checkpoints, str) else checkpoints[-1]
    tables, runs = split_inputs(inputs)
    if runs:
        _check_runs(runs, step)
    out = Path(out_dir)
    tables = {kind: at_checkpoints(kind, pd.concat(parts, ignore_index=True), checkpoints)
              for kind, parts in tables.items()}
    jobs = [(stem, tables[kind], out.resolve(), tag, step)
            for kind, figures in FROM_TABLES.items() if kind in tables for stem in figures]
    jobs += [(stem, [Path(p).resolve() for p in runs], out.resolve(), tag, step) for stem in FROM_RUNS if runs]
    if not jobs:
        raise UserError("nothing to draw: give an analysis, probe or linear-problem table, or run files")
    names = [f"{_name(stem, tag)}.{fmt}" for stem, *_ in jobs for fmt in FORMATS]
    check_files_in_folder(out, names, overwrite)
    with new_folder(out):
        written = [out / path.name
                   for files in (executor or Executor()).map(_draw, jobs, label="figures", quiet=quiet)
                   for path in files]
        if not written:
            raise UserError("nothing to draw: the inputs hold none of the measures the figures show")
    return written
