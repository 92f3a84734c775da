"""The recurrent runs seen over positions in the truncation window, and over training.

``positions_table``: per run and probe step ``t = 1 .. L`` (the state after
step ``t``), where ``t`` sits in its window (``offset`` 1 .. T from the
window's start, ``to_boundary`` steps to the window's end) and, at the last
checkpoint:

- ``cka_to_bptt``: debiased linear CKA (``analysis.similarity.linear_cka``, over the
  probe sequences) of the hidden state ``h`` after step ``t`` with that of the
  BPTT run of the same task, T and seed (same initial LSTM, same probe); nan
  for BPTT itself;
- ``grad_cosine``: the cosine, per probe sequence then averaged, of the
  gradient the run's rule gives the state ``[h, c]`` after ``t``
  (``rules.state_gradients``: BPTT within the window; DNI adds its module's
  signal at the window's end; the auxiliary task's own gradient is not part
  of it) with the true gradient of the loss after ``t``
  (full BPTT through the whole sequence). A rule that gives a zero gradient
  there (BPTT at a window's end) scores 0; sequences whose true gradient is
  zero (the last step) are left out;
- ``first_symbol`` (Copy and Repeat Copy): what the state carries, as the
  accuracy of reading the first input symbol off ``h`` after ``t`` with a
  ridge classifier (``decoding_accuracy``); nan for the language model.

``training_table``: per DNI run and checkpoint, the mean cosine of the
module's prediction with the true boundary gradient (``boundary_cosine``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from repanalysis.analysis.markdown import md_table
from repanalysis.measures.similarity import linear_cka
from repanalysis.nn.recurrent import SequenceLSTM
from repanalysis.nn.sequences import Batch
from repanalysis.rules.recurrent import boundary_module, state_gradients, windows
from repanalysis.runfile.hdf5 import RunFile

POSITION_COLUMNS = ("run", "task", "rule", "bptt", "seed", "step", "offset", "to_boundary", "cka_to_bptt",
                    "grad_cosine", "first_symbol")
TRAINING_COLUMNS = ("run", "task", "rule", "bptt", "seed", "step", "boundary_cosine")
#: The ridge classifier's folds and penalty (on standardised features, per sample).
DECODING_FOLDS, DECODING_RIDGE = 5, 1.0


def decoding_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Cross-validated accuracy of a ridge classifier reading ``labels [N]`` off ``x [N, D]``: sample ``i`` is
    in test fold ``i mod DECODING_FOLDS``; per fold, features standardised on the training part (constant ones
    left at zero), least squares onto one-hot labels with penalty ``DECODING_RIDGE · n_train``, the largest
    output taken."""
    classes, y = np.unique(labels, return_inverse=True)
    onehot = np.eye(len(classes))[y]
    fold = np.arange(len(labels)) % DECODING_FOLDS
    right = 0
    for k in range(DECODING_FOLDS):
        train, test = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0)
        scale = np.where(std > 0, std, np.inf)
        a, b = (x[train] - mean) / scale, (x[test] - mean) / scale
        weights = np.linalg.solve(a.T @ a + DECODING_RIDGE * train.sum() * np.eye(a.shape[1]),
                                  a.T @ (onehot[train] - onehot[train].mean(0)))
        right += int(((b @ weights).argmax(1) == y[test]).sum())
    return right / len(labels)


def boundary_cosine(run: RunFile, checkpoint: int = -1) -> float:
    """Mean cosine of the module's prediction with the true boundary gradient at ``checkpoint`` (nan
    without a module or a boundary)."""
    group = run.file.get("boundary")
    if group is None or "prediction" not in group or group["after_step"].shape[0] == 0:
        return float("nan")
    truth, prediction = group["true_grad"][checkpoint], group["prediction"][checkpoint]
    norms = np.linalg.norm(truth, axis=-1) * np.linalg.norm(prediction, axis=-1)
    cosines = (truth * prediction).sum(-1) / np.where(norms > 0, norms, np.nan)
    return float(np.nanmean(cosines)) if np.isfinite(cosines).any() else float("nan")


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
    kept = b.norm(dim=-1) > 0
    counted = kept.sum(0)
    return torch.where(counted > 0, (cosine * kept).sum(0) / counted.clamp(min=1), torch.nan).numpy()


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
            hidden[(c.task, c.bptt, c.seed, c.label)] = run.stored("h", "activations")
    for planned, path in paths.items():
        c = planned.config
        rule = c.label
        h = hidden[(c.task, c.bptt, c.seed, rule)]
        reference = hidden.get((c.task, c.bptt, c.seed, "backprop"))
        with RunFile(path) as run:
            probe = _probe(run)
            cosines = _gradient_cosines(run, c, probe)
            first = probe.inputs[:, 0].numpy()
            decoded = [decoding_accuracy(h[:, t], first) if c.task != "charlm" else np.nan
                       for t in range(probe.length)]
        for a, b in windows(probe.length, c.bptt):
            for t in range(a, b):
                cka = (linear_cka(h[:, t], reference[:, t], debiased=True) if rule != "backprop" and reference is not None
                       else np.nan)
                rows.append([str(path), c.task, rule, c.bptt, c.seed, t + 1, t + 1 - a, b - t - 1, cka,
                             float(cosines[t]), decoded[t]])
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
                rows.append([str(path), c.task, c.label, c.bptt, c.seed, int(step),
                             boundary_cosine(run, i)])
    return pd.DataFrame(rows, columns=list(TRAINING_COLUMNS))


def _by(rows: pd.DataFrame, column: str, values: str, order, form: str = "+.3f") -> list[list[str]]:
    """Per T and rule, the mean of ``values`` over seeds and probe steps at each value of ``column``."""
    body = []
    for (bptt, rule), group in rows.groupby(["bptt", "rule"], sort=False):
        means = group.groupby(column)[values].mean()
        if means.isna().all():
            continue
        body.append([str(int(bptt)), rule] + [format(means[v], form) if v in means and np.isfinite(means[v])
                                              else "—" for v in order])
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
    if rows["first_symbol"].notna().any():
        steps = sorted(rows["step"].unique())
        lines += ["What the state carries: the accuracy of reading the first input symbol off `h` after each probe "
                  f"step (ridge classifier, {DECODING_FOLDS}-fold cross-validated over the probe sequences; chance "
                  "is about one in the number of symbols):", ""]
        lines += md_table(["T", "rule"] + [str(t) for t in steps], _by(rows, "step", "first_symbol", steps, ".2f"))
        lines += [""]
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
