"""The recurrent experiments of a reproduction: one row per run, and the report's section on them.

``results_table``: per run, its task, rule (``dni+aux`` for DNI with the
auxiliary task), window ``T``, seed and score (the
longest length solved for Copy and Repeat Copy, held-out bits per character
for the language model), and, for DNI, the cosine of the module's prediction
with the true gradient of the future loss at the window boundaries of the
probe sequences at the last checkpoint (mean over sequences and boundaries;
``train`` records both; nan for a module that never had a target, whose
prediction is still zero and has no direction). ``report_lines``: per task, every seed's score at
every ``T`` under every rule, and each DNI arm against BPTT (and DNI + aux against DNI) at the same ``T``: paired
differences over seeds (runs of one seed share their initial LSTM and their
batches until their curricula part), with the exact sign-flip p-value
(``stats.paired_effect``); then the views over positions and over training
(``positions.position_lines``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from repanalysis.analysis.markdown import md_table, mean_std
from repanalysis.analysis.recurrent_positions import boundary_cosine, position_lines
from repanalysis.measures import stats
from repanalysis.nn.sequences import Copy, RepeatCopy
from repanalysis.runfile.hdf5 import RunFile

#: The score of each task: (its column's meaning, +1 where higher is better, -1 where lower is).
SCORES = {"copy": ("longest length solved", 1), "repeatcopy": ("longest length solved", 1),
          "charlm": ("held-out bits per character", -1)}
TASK_NAMES = {"copy": Copy.title, "repeatcopy": RepeatCopy.title, "charlm": "character-level language model"}
COLUMNS = ("run", "task", "rule", "bptt", "seed", "steps", "score", "boundary_cosine")
#: The pairs of rules compared at each T (the first minus the second), and how the report names them.
COMPARISONS = (("dni", "backprop", "DNI − BPTT"), ("dni+aux", "backprop", "DNI + aux − BPTT"),
               ("dni+aux", "dni", "DNI + aux − DNI"))


def results_table(paths) -> pd.DataFrame:
    """One row per run file of ``paths`` (``{planned run: path}``): ``COLUMNS``."""
    rows = []
    for planned, path in paths.items():
        c = planned.config
        with RunFile(path) as run:
            evals = run.evals
            score = evals["test_bits" if c.task == "charlm" else "longest"][-1]
            rows.append([str(path), c.task, c.label, c.bptt, c.seed, int(evals["step"][-1]), float(score),
                         boundary_cosine(run)])
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _window(bptt) -> str:
    return "full" if pd.isna(bptt) else str(int(bptt))


def _value(task: str, value: float) -> str:
    return f"{value:.3f}" if task == "charlm" else f"{value:.0f}"


def report_lines(experiment: str, recurrent: pd.DataFrame, positions: pd.DataFrame | None = None,
                 training: pd.DataFrame | None = None) -> list[str]:
    """The report's section on one recurrent experiment's tables: ``results_table`` and, where given,
    ``positions.positions_table`` and ``positions.training_table``."""
    lines = []
    for task, rows in recurrent.groupby("task", sort=False):
        meaning, better = SCORES[task]
        seeds = sorted(rows["seed"].unique())
        lines += [f"## {TASK_NAMES[task]} ({experiment}): {meaning} at each window T", "",
                  f"Per seed, and mean ± std over seeds (ddof 1); {'higher' if better > 0 else 'lower'} is better. "
                  "DNI's cosine: its module's prediction against the true gradient of the future loss at the "
                  "window boundaries of the probe sequences, last checkpoint (mean over sequences and "
                  "boundaries; n/a for BPTT, and for a module that never had a target, whose prediction is "
                  "still zero).", ""]
        header = ["T", "rule"] + [f"seed {s}" for s in seeds] + ["mean ± std", "DNI's cosine"]
        body = []
        for (bptt, rule), group in rows.groupby([rows["bptt"].map(_window), "rule"], sort=False):
            per_seed = group.set_index("seed")["score"]
            body.append([bptt, rule] + [_value(task, per_seed[s]) if s in per_seed else "—" for s in seeds]
                        + [mean_std(per_seed, 3 if task == "charlm" else 1), mean_std(group["boundary_cosine"])])
        lines += md_table(header, body) + [""]
        lines += _comparison(task, rows, better)
        if positions is not None and training is not None:
            lines += position_lines(task, positions, training)
    return lines


def _comparison(task: str, rows: pd.DataFrame, better: int) -> list[str]:
    """Each pair of ``COMPARISONS`` at each T, paired by seed."""
    body = []
    for first, second, name in COMPARISONS:
        for bptt, group in rows.groupby(rows["bptt"].map(_window), sort=False):
            wide = group.pivot_table(index="seed", columns="rule", values="score")
            if not {first, second} <= set(wide.columns):
                continue
            difference = (wide[first] - wide[second]).dropna()
            effect = stats.paired_effect(difference.to_numpy())
            wins = int((better * difference > 0).sum())
            ties = int((difference == 0).sum())
            digits = 3 if task == "charlm" else 2
            body.append([name, bptt, len(difference), effect.text(digits), f"{wins} better, {ties} tied, "
                         f"{len(difference) - wins - ties} worse", "n/a" if not np.isfinite(effect.p_perm)
                         else f"{effect.p_perm:.3f}"])
    if not body:
        return []
    return ["Each DNI arm against BPTT, and DNI + aux against DNI, at the same T, paired by seed: the mean "
            f"difference with its 95% t-interval from {stats.MIN_SEEDS} seeds on (else the range of the seeds' "
            "differences), how many seeds the first did better in, and the exact two-sided sign-flip p-value (its "
            "smallest value is 2/2ⁿ with n seeds: 0.25 with 3).", "",
            *md_table(["comparison", "T", "seeds", "difference", "the first, per seed", "p (sign flip)"], body), "",
            "What this can and cannot show: one network size, one step budget and one learning rate per rule "
            "(the same for every T), so a difference is about this budget, not about what either rule reaches "
            "when trained to the end. While a sequence fits in one window there is no boundary: DNI's runs are "
            "then BPTT's exactly (same start, same batches), and they part only once the curriculum's sequences "
            "are longer than T.", ""]
