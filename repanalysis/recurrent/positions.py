"""The recurrent runs seen over positions in the truncation window, and over training.

``positions_table``: per run and probe step ``t = 1 .. L`` (the state after
step ``t``), where ``t`` sits in its window (``offset`` 1 .. T from the
window's start, ``to_boundary`` steps to the window's end) and, at the last
checkpoint:

- ``cka_to_bptt``: linear CKA (``analysis.similarity.linear_cka``, over the
  probe sequences) of the hidden state ``h`` after step ``t`` with that of the
  BPTT run of the same task, T and seed (same initial LSTM, same probe); nan
  for BPTT itself;
- ``grad_cosine``: the cosine, per probe sequence then averaged, of the
  gradient the run's rule gives the state ``[h, c]`` after ``t``
  (``rules.state_gradients``: BPTT within the window; DNI adds its module's
  signal at the window's end) with the true gradient of the loss after ``t``
  (full BPTT through the whole sequence). A rule that gives a zero gradient
  there (BPTT at a window's end) scores 0; sequences whose true gradient is
  zero (the last step) are left out.

``training_table``: per DNI run and checkpoint, the mean cosine of the
module's prediction with the true boundary gradient (``results.boundary_cosine``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..analysis.similarity import linear_cka
from ..markdown import md_table
from ..runfile import RunFile
from .model import SequenceLSTM
from .results import boundary_cosine, rule_label
from .rules import boundary_module, state_gradients, windows
from .tasks import Batch

POSITION_COLUMNS = ("run", "task", "rule", "bptt", "seed", "step", "offset", "to_boundary", "cka_to_bptt",
                    "grad_cosine")
TRAINING_COLUMNS = ("run", "task", "rule", "bptt", "seed", "step", "boundary_cosine")


def _networks(run: RunFile, config, checkpoint: int = -1):
    """The LSTM and (for DNI) the module of ``run`` at ``checkpoint``, in double precision."""
    params = run.params(checkpoint)
    model = SequenceLSTM(int(run.attrs["n_features"]), config.hidden, int(run.attrs["n_outputs"])).double()
    model.load_state_dict({k[len("model."):]: torch.from_numpy(v) for k, v in params.items()
                           if k.startswith("model.")})
    module = None
    if config.rule == "dni":
        module = boundary_module(config.hidden).double()
        module.load_state_dict({k[len("rule."):]: torch.from_numpy(v) for k, v in params.items()
                                if k.startswith("rule.")})
    return model, module


def _probe(run: RunFile) -> Batch:
    g = run.file["probe"]
    return Batch(torch.from_numpy(g["inputs"][:]), torch.from_numpy(g["targets"][:]),
                 torch.from_numpy(g["mask"][:]))


def mean_cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per step, the mean over sequences of the cosine of ``a`` with the reference ``b`` (both ``[N, L, D]``):
    ``[L]``; 0 where ``a`` is zero, sequences where ``b`` is zero left out (nan where every one is)."""
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    cosine = torch.where(norms > 0, dot / torch.where(norms > 0, norms, 1), 0.0)
    cosine = torch.where(b.norm(dim=-1) > 0, cosine, torch.nan)
    return np.nanmean(cosine.numpy(), axis=0) if cosine.isfinite().any() else np.full(a.shape[1], np.nan)


def _gradient_cosines(run: RunFile, config, probe: Batch) -> np.ndarray:
    model, module = _networks(run, config)
    true = state_gradients(model, probe, None)
    future = None if module is None else (lambda k, state: module(state))
    given = state_gradients(model, probe, config.bptt, future)
    return mean_cosines(given, true)


def positions_table(paths) -> pd.DataFrame:
    """One row per run of ``paths`` (``{planned run: path}``) and probe step: ``POSITION_COLUMNS``."""
    hidden, rows = {}, []
    for planned, path in paths.items():
        c = planned.config
        with RunFile(path) as run:
            hidden[(c.task, c.bptt, c.seed, rule_label(c))] = run.stored("h", "activations")
    for planned, path in paths.items():
        c = planned.config
        rule = rule_label(c)
        h = hidden[(c.task, c.bptt, c.seed, rule)]
        reference = hidden.get((c.task, c.bptt, c.seed, "backprop"))
        with RunFile(path) as run:
            probe = _probe(run)
            cosines = _gradient_cosines(run, c, probe)
        for a, b in windows(probe.length, c.bptt):
            for t in range(a, b):
                cka = (linear_cka(h[:, t], reference[:, t], debiased=True) if rule != "backprop" and reference is not None
                       else np.nan)
                rows.append([str(path), c.task, rule, c.bptt, c.seed, t + 1, t + 1 - a, b - t - 1, cka,
                             float(cosines[t])])
    return pd.DataFrame(rows, columns=list(POSITION_COLUMNS))


def training_table(paths) -> pd.DataFrame:
    """One row per DNI run of ``paths`` and checkpoint: ``TRAINING_COLUMNS``."""
    rows = []
    for planned, path in paths.items():
        c = planned.config
        if c.rule != "dni":
            continue
        with RunFile(path) as run:
            for i, step in enumerate(run.steps):
                rows.append([str(path), c.task, rule_label(c), c.bptt, c.seed, int(step),
                             boundary_cosine(run, i)])
    return pd.DataFrame(rows, columns=list(TRAINING_COLUMNS))


def _by(rows: pd.DataFrame, column: str, values: str, order) -> list[list[str]]:
    """Per T and rule, the mean of ``values`` over seeds and probe steps at each value of ``column``."""
    body = []
    for (bptt, rule), group in rows.groupby(["bptt", "rule"], sort=False):
        means = group.groupby(column)[values].mean()
        if means.isna().all():
            continue
        body.append([str(int(bptt)), rule] + [f"{means[v]:+.3f}" if v in means and np.isfinite(means[v]) else "—"
                                              for v in order])
    return body


def position_lines(task: str, positions: pd.DataFrame, training: pd.DataFrame) -> list[str]:
    """The report's views of one task over positions in the window and over training."""
    rows = positions[positions["task"] == task]
    if rows.empty:
        return []
    longest = int(rows["bptt"].max())
    lines = ["Where in the window (probe sequences, last checkpoint; mean over seeds and over the probe steps at "
             "the same place in their windows). The cosine of the gradient the rule gives the state `[h, c]` "
             "after a step with the true gradient of the loss after it (full BPTT), against the steps left to "
             "the window's end (0: the boundary itself, where BPTT gives nothing, scored 0, and DNI gives its "
             "module's prediction):", ""]
    distances = list(range(longest - 1, -1, -1))
    lines += md_table(["T", "rule"] + [str(d) for d in distances], _by(rows, "to_boundary", "grad_cosine",
                                                                        distances)) + [""]
    offsets = list(range(1, longest + 1))
    similar = _by(rows, "offset", "cka_to_bptt", offsets)
    if similar:
        lines += ["Linear CKA of the hidden state `h` after each step with the BPTT run's (same task, T and seed, "
                  "same initial LSTM), against the step's place in its window (1: the window's first step):", ""]
        lines += md_table(["T", "rule"] + [str(o) for o in offsets], similar) + [""]
    over = training[training["task"] == task]
    if not over.empty:
        steps = sorted(over["step"].unique())
        body = []
        for (bptt, rule), group in over.groupby(["bptt", "rule"], sort=False):
            means = group.groupby("step")["boundary_cosine"].mean()
            body.append([str(int(bptt)), rule] + [f"{means[s]:+.3f}" if np.isfinite(means[s]) else "—"
                                                  for s in steps])
        lines += ["The module's prediction against the true boundary gradient over training (mean cosine over "
                  "seeds, probe sequences and boundaries; — while it has never had a target):", ""]
        lines += md_table(["T", "rule"] + [f"step {int(s)}" for s in steps], body) + [""]
    return lines
