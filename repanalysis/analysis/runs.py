"""Comparisons over run files, as one tidy table: ``analyze`` (written and read by ``repanalysis.analysis.tables``).

One row per value, columns ``COLUMNS``: the measure, then each side's run (the
path as given), rule, seed, layer, the layer's ``position`` in the model (the
run file's: 0 for the lowest interface; sort by it, not by name, for the
model's order) and step, then the value. Single-run measures leave the
``*_b`` columns empty. Measures (``MEASURES``):

- per run, layer and checkpoint: ``effective_rank``, ``stable_rank``,
  ``participation_ratio``, ``numerical_rank`` (one spectrum of the centred
  activations, ``spectrum.spectrum``); ``weight_frobenius``, ``weight_spectral``
  (the weight *feeding* the layer, ``model.blocks.<k>.linear.weight``, or
  ``model.blocks.<k>.conv.weight`` read as the ``[out, in·k·k]`` matrix that
  acts on each input patch; none for runs recorded from other models);
  where the layer has a ``signal``: ``grad_cosine`` (mean per-sample cosine),
  ``grad_rel_error``, ``grad_sign_agreement``, ``grad_regression_loss``, from
  ``gradients.gradient_error`` on ``N·signal`` and ``N·true_grad`` (per-sample
  units, ``N`` the probe size: the regression loss is then the SG module's
  ``mean_n ‖M(h_n) - δ_n‖²``; the other three do not depend on the scale);
  where the layer has an ``update`` (``Rule.probe``): ``update_cosine``, the
  cosine of the parameter gradient of the block below the layer under the
  rule with the true one (the error that reaches the weights), and
  ``update_rel_error``, ``‖g_rule − g_true‖ / ‖g_true‖`` from that cosine and
  the norm ratio ``r``: ``√(1 + r² − 2r·cos)`` (1 for a zero update);
- per SG run (sg, dni, cdni), layer with a module and checkpoint:
  ``synthetic_loss_corr``, ``synthetic_loss_gap`` (``synthetic_loss.synthetic_losses``
  with its defaults);
- across runs, same layer, checkpoints of equal step: ``linear_cka``,
  ``linear_cka_debiased``, ``svcca``, ``pwcca``, ``cca``, ``procrustes``, ``rsa``
  (``rdm`` with the correlation metric, Spearman comparison: ``rsa``'s
  defaults; each RDM is ranked once, and Spearman's correlation taken as
  Pearson's of the ranks). Side ``a`` is each run, side ``b`` its reference:
  ``reference`` when given (a run that is the reference file is compared
  with itself); else the first ``backprop`` run with the same seed among the inputs (a
  reference that is not among ``runs`` gets no rows of its own). Every
  pair of ``backprop`` runs with different seeds (the ceiling) is also
  compared, the earlier input on side ``a``. Compared runs must share the data
  set, data seed and probe indices, or ``analyze`` refuses;
- within a run at its last checkpoint: ``linear_cka`` between each pair of
  layers (``layer_a`` below ``layer_b``; equal layers, trivially 1, left out);
  ``rsa_to_last_layer_euclidean`` and ``rsa_to_last_layer_correlation``: RSA of
  every layer below the last with the last layer (side ``b``; none where the
  run did not record its last layer), Spearman correlation of the RDMs' upper
  triangles, the RDMs Euclidean or 1 − Pearson correlation
  (``rdm``'s two metrics; the name says which);
- per run, layer and checkpoint: ``weight_frobenius_relative``, ``‖W_t‖_F /
  ‖W_0‖_F`` of the weight feeding the layer against its value at the first
  checkpoint (step 0: the initial weights). ``h1``'s weight reads the inputs
  (784 of them on MNIST), so its norm is on another scale than the others':
  figures mark it, and the report's slopes leave it out;
- per run (layer empty, step the last step): ``train_loss_area``, the mean
  training loss over every logged step (the area under the training-loss
  curve divided by the number of steps: lower is faster convergence for runs
  of equal length); ``steps_to_test_acc_<p>`` for ``p`` in ``ACCURACY_LEVELS``
  (percent): the first evaluated step whose test accuracy is at least
  ``p``% (NaN when never reached; no row for a run never evaluated; a run
  evaluated every K steps reads to within K steps);
- within a run, every checkpoint against the first and the last:
  ``linear_cka_to_first_checkpoint``, ``linear_cka_to_last_checkpoint`` (each
  layer against itself at that checkpoint; 1 at the checkpoint itself).

The measures per checkpoint (per layer, across runs, and the synthetic loss) are taken at the checkpoints
``checkpoints`` chooses (``repanalysis.runfile.checkpoints``: all, each run's last, or given steps; a run without a
given step is refused); the measures of a whole run and those at its last checkpoint are unchanged by it.

Measures once named otherwise (``RENAMED``: ``linear_cka_to_first``,
``linear_cka_to_last``, ``rsa_to_last_euclidean``, ``rsa_to_last_correlation``)
are refused under their old names with one line naming the new ones.

Feature maps (``[N, C, H, W]`` per checkpoint): every activation measure
reads them as rows by ``maps`` (``runfile.as_rows``): ``flatten`` (default;
each position of each channel is a feature, ``D = C·H·W``) or ``channels``
(each channel's mean over its positions, ``D = C``); the gradient measures
always compare the flattened maps (the error at every position). ``N·D`` is
counted on the stored map, so a large map is streamed, pooled block by block.

Undefined values get no row (but for a level never reached, above). A measure that refuses degenerate data (CCA
with ``rank X + rank Y >= N``, zero variance, a constant sample in a
correlation RDM) and the measures' warnings are gathered and reported as one
warning per kind at the end, with a count and the first place it happened.
NaN or Inf in activations, true gradients or signals are a ``UserError``
naming the run, layer and step. Runs whose status is "running" or "failed"
are analysed as far as they go, with one warning per file.

Memory and reads: each ``[N, D]`` checkpoint array is read once per layer
pass (the first and last checkpoints of every run are kept for the whole
pass), in float64; the measures across a run's layers read its last
checkpoint once more, all of them from one read. Arrays with ``N·D > STREAM_ABOVE`` are never loaded: the
moment-based measures (spectra, linear CKA, CCA, SVCCA, PWCCA, Procrustes)
stream them in row chunks from the file (``streaming.Moments``), RSA is
skipped (its ``[N, N]`` RDMs), and the gradient measures still load the two
arrays of one checkpoint.

Speed: the analysis runs its linear algebra single-threaded
(``threadpoolctl.threadpool_limits(1)``, for BLAS and OpenMP, torch's
included). Its many small products gain nothing from threads, and torch's
OpenMP pool beside OpenBLAS's made them 25 to 100 times slower on a busy
two-core machine.
"""

from __future__ import annotations

import contextlib
import re
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
from threadpoolctl import threadpool_limits

from repanalysis.errors import UserError, refuse_renamed
from repanalysis.measures import similarity
from repanalysis.measures._arrays import as_float64, at, collected, warn
from repanalysis.measures.gradients import gradient_error
from repanalysis.measures.rdm import compare_rdms, rdm
from repanalysis.measures.spectrum import (
    effective_rank,
    numerical_rank,
    participation_ratio,
    spectrum,
    stable_rank,
    weight_frobenius,
    weight_norms,
)
from repanalysis.measures.streaming import Moments, RowView
from repanalysis.runfile.checkpoints import Choice, chosen_checkpoints, parse_checkpoints
from repanalysis.runfile.hdf5 import MAPS, RunFile, as_rows

from .synthetic_loss import synthetic_losses

SPECTRUM = ("effective_rank", "stable_rank", "participation_ratio", "numerical_rank")
WEIGHTS = {"weight_frobenius": "frobenius", "weight_spectral": "spectral"}
GRADIENT = {"grad_cosine": "mean_cosine", "grad_rel_error": "relative_error",
            "grad_sign_agreement": "sign_agreement", "grad_regression_loss": "regression_loss"}
UPDATE = ("update_cosine", "update_rel_error")
SYNTHETIC = {"synthetic_loss_corr": "corr", "synthetic_loss_gap": "gap"}
#: Cross-run measures computed from second moments: (function of ``similarity`` and method of ``Moments``, options).
MOMENT_BASED = {"linear_cka": ("linear_cka", {}), "linear_cka_debiased": ("linear_cka", {"debiased": True}),
                "svcca": ("svcca", {}), "pwcca": ("pwcca", {}), "cca": ("cca", {}), "procrustes": ("procrustes", {})}
ACROSS = ("linear_cka", "linear_cka_debiased", "svcca", "pwcca", "cca", "procrustes", "rsa")
OVER_TIME = ("linear_cka_to_first_checkpoint", "linear_cka_to_last_checkpoint")
RSA_TO_LAST_LAYER = {"rsa_to_last_layer_euclidean": "euclidean", "rsa_to_last_layer_correlation": "correlation"}
ACCURACY_LEVELS = (90, 95, 97)
STEPS_TO = tuple(f"steps_to_test_acc_{p}" for p in ACCURACY_LEVELS)
PER_RUN = ("train_loss_area",) + STEPS_TO
MEASURES = (SPECTRUM + tuple(WEIGHTS) + ("weight_frobenius_relative",) + tuple(GRADIENT) + UPDATE + tuple(SYNTHETIC)
            + ACROSS + OVER_TIME + tuple(RSA_TO_LAST_LAYER) + PER_RUN)
#: Former names of measures, refused with their new names: each name says what it compares with.
RENAMED = {"linear_cka_to_first": "linear_cka_to_first_checkpoint",
           "linear_cka_to_last": "linear_cka_to_last_checkpoint",
           "rsa_to_last_euclidean": "rsa_to_last_layer_euclidean",
           "rsa_to_last_correlation": "rsa_to_last_layer_correlation"}
COLUMNS = ("measure", "run_a", "rule_a", "seed_a", "layer_a", "position_a", "step_a",
           "run_b", "rule_b", "seed_b", "layer_b", "position_b", "step_b", "value")
SG_RULES = ("sg", "dni", "cdni")
RSA_METRIC = "correlation"

#: Checkpoint arrays with more values than this (128 MiB in float64) are streamed, not loaded.
STREAM_ABOVE = 2**24

_NO_SIDE = (None,) * 6


class _Run:
    """One opened run file, under the name it was given; feature maps read by ``maps``.

    ``chosen``: the indices of the checkpoints measured (``repanalysis.runfile.checkpoints``); ``index``: their steps'
    checkpoint indices."""

    def __init__(self, name, file: RunFile, maps: str, checkpoints: Choice = "all"):
        self.name, self.file, self.maps = str(name), file, maps
        self.key = str(file.path.resolve())
        self.rule, self.seed = file.rule, file.seed
        self.steps = [int(s) for s in file.steps]
        self.chosen = chosen_checkpoints(self.steps, checkpoints, self.name)
        self.index = {self.steps[c]: c for c in reversed(self.chosen)}
        self.n = len(file.probe_index)
        self.position = {layer: file.layer_info(layer)["position"] for layer in file.layers}

    def side(self, layer: str, c: int) -> tuple:
        return (self.name, self.rule, self.seed, layer, self.position[layer], self.steps[c])

    def where(self, layer: str, c: int) -> str:
        return f"{self.name}, layer {layer}, step {self.steps[c]}"

    def load(self, layer: str, c: int, kind: str = "activations", *, stream: bool | None = None):
        """Checkpoint ``c`` as finite float64 ``[N, D]``, or a ``RowView`` of the file when streamed.

        Feature maps: activations by ``maps``, gradients flattened (``runfile.as_rows``)."""
        ds = self.file.array(layer, kind)
        rows = partial(as_rows, maps=self.maps if kind == "activations" else "flatten")
        if stream or (stream is None and np.prod(ds.shape[1:]) > STREAM_ABOVE):
            return RowView(ds, c, rows if ds.ndim > 3 else None)
        return as_float64(rows(ds[c]), kind, self.where(layer, c))

    def weight(self, layer: str) -> str | None:
        """The name in ``/params`` of the weight feeding ``layer`` (a linear map's or a convolution's), if any."""
        prefix = f"model.blocks.{self.position[layer]}."
        names = self.file.param_names
        return next((prefix + w for w in ("linear.weight", "conv.weight") if prefix + w in names), None)


class _Notes:
    """Refusals and warnings of the measures, gathered and reported once per kind."""

    def __init__(self):
        self.kinds: dict[tuple[str, str], list] = {}

    def call(self, measure: str, place: str, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)``, or None where it refuses the data (a ``UserError``); ``place``: its ``where``."""
        value = None
        with collected() as caught:
            try:
                value = fn(*args, **kwargs)
            except UserError as err:
                self._add(measure, str(err), place, "skipped")
        for message in caught:
            self._add(measure, message, place, "warned")
        return value

    def absorb(self, kinds: dict) -> None:
        """Add another ``_Notes``' kinds (those of a task) to these."""
        for key, (message, count, what) in kinds.items():
            self.kinds.setdefault(key, [message, 0, what])[1] += count

    def _add(self, measure: str, message: str, place: str, what: str) -> None:
        kind = re.sub(r"\d+(\.\d+)?", "#", message.removesuffix(at(place)))
        entry = self.kinds.setdefault((measure, kind), [message, 0, what])
        entry[1] += 1

    def report(self) -> None:
        for (measure, _), (message, count, what) in self.kinds.items():
            detail = "value skipped" if what == "skipped" else "warning"
            warn(f"{measure}: {message} [{count} {detail}{'s' if count > 1 else ''} of this kind]")


def _streamed(*arrays) -> bool:
    return any(isinstance(a, RowView) for a in arrays)


def _similarities(x, y, where: str, kinds) -> dict:
    """Zero-argument calls computing each of ``kinds`` (keys of ``MOMENT_BASED``) for one pair.

    In memory for loaded arrays; else from ``Moments`` streamed here, at once,
    so that NaN or Inf in a streamed array raises rather than being skipped.
    """
    if _streamed(x, y):
        m = Moments.from_source(x, y, debiased="linear_cka_debiased" in kinds, where=where)
        return {k: partial(getattr(m, MOMENT_BASED[k][0]), **MOMENT_BASED[k][1]) for k in kinds}
    return {k: partial(getattr(similarity, MOMENT_BASED[k][0]), x, y, where=where, **MOMENT_BASED[k][1])
            for k in kinds}


def _cka(notes: _Notes, measure: str, x, y, where: str):
    return notes.call(measure, where, _similarities(x, y, where, ["linear_cka"])["linear_cka"])


def _ranked_rdm(x: np.ndarray, where: str, metric: str = RSA_METRIC) -> np.ndarray:
    """The ``metric`` RDM of ``x`` with its upper triangle replaced by its ranks (ties averaged): Spearman's
    correlation of two RDMs is then Pearson's of these, each ranked once however many it is compared with."""
    d = rdm(x, metric, where=where)
    upper = np.triu_indices(len(d), 1)
    d[upper] = scipy.stats.rankdata(d[upper])
    return d


def _pair_values(notes: _Notes, wanted: set, x, y, where: str, rdms: tuple) -> dict[str, float]:
    """The cross-run measures of one pair of ``[N, D]`` arrays; ``rdms``: their ranked RDMs (or Nones)."""
    calls = _similarities(x, y, where, [k for k in MOMENT_BASED if k in wanted])
    out = {name: notes.call(name, where, fn) for name, fn in calls.items()}
    if "rsa" in wanted and all(r is not None for r in rdms):
        out["rsa"] = notes.call("rsa", where, compare_rdms, *rdms, compare="pearson", where=where)
    return out


def _spectrum_values(notes: _Notes, wanted: set, x, where: str) -> dict[str, float]:
    if _streamed(x):
        moments = Moments.from_source(x, debiased=False, where=where)
        sp = notes.call("spectrum", where, moments.spectrum)
    else:
        sp = notes.call("spectrum", where, spectrum, x, where=where)
    if sp is None:
        return {}
    fns = dict(zip(SPECTRUM, (effective_rank, stable_rank, participation_ratio, numerical_rank)))
    return {name: notes.call(name, where, fns[name], sp, where=where) for name in SPECTRUM if name in wanted}


def _check_comparable(a: _Run, b: _Run) -> None:
    """Refuse a pair of runs that do not share the probe set."""
    fa, fb = a.file, b.file
    if fa.dataset != fb.dataset:
        why = f"data sets {fa.dataset} and {fb.dataset}"
    elif fa.config.get("data_seed") != fb.config.get("data_seed"):
        why = f"data seeds {fa.config.get('data_seed')} and {fb.config.get('data_seed')}"
    elif not np.array_equal(fa.probe_index, fb.probe_index):
        why = f"probe indices differ ({a.n} and {b.n} probe inputs)"
    else:
        return
    raise UserError(f"{a.name} and {b.name} cannot be compared: {why}; runs compared must share "
                    f"the data set and the probe indices (train them with the same --probe-size)")


def _pairs(runs: list[_Run], reference: _Run | None) -> list[tuple[_Run, _Run]]:
    """(run, reference) pairs; see the module docstring."""
    if reference is not None:
        return [(run, reference) for run in runs]
    backprop = [run for run in runs if run.rule == "backprop"]
    pairs = []
    for run in runs:
        if run.rule == "backprop":
            continue
        same = [b for b in backprop if b.seed == run.seed]
        if not same:
            warn(f"{run.name}: no backprop run with seed {run.seed} among the inputs, so no cross-run "
                 f"comparison for it (pass a reference run)")
            continue
        if len(same) > 1:
            warn(f"{run.name}: several backprop runs have seed {run.seed}; it is compared with {same[0].name}")
        pairs.append((run, same[0]))
    pairs += [(a, b) for i, a in enumerate(backprop) for b in backprop[i + 1:] if a.seed != b.seed]
    return pairs


def check_measures(measures) -> set[str]:
    """The measures wanted (None: all of ``MEASURES``); unknown and former names (``RENAMED``) are refused."""
    refuse_renamed(measures or (), RENAMED, "measure")
    wanted = set(MEASURES if measures is None else measures)
    unknown = sorted(wanted - set(MEASURES))
    if unknown:
        raise UserError(f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    return wanted


def _open(stack: contextlib.ExitStack, path, maps: str, checkpoints: Choice) -> _Run:
    run = _Run(path, stack.enter_context(RunFile(path)), maps, checkpoints)
    if run.file.status != "complete":
        warn(f"{run.name}: status {run.file.status!r}; analysing the {len(run.steps)} checkpoint(s) it has")
    return run


def analyze(runs, *, reference=None, measures=None, maps: str = "flatten", checkpoints="all", quiet: bool = False,
            executor=None) -> pd.DataFrame:
    """The tidy table of ``measures`` (default: all of ``MEASURES`` that apply) over run files.

    ``runs``: run-file paths; ``reference``: the run every run is compared with
    (default: the backprop run with the same seed); ``maps``: how feature maps'
    activations are read (``runfile.MAPS``); ``checkpoints``: the checkpoints of the measures per checkpoint
    (``repanalysis.runfile.checkpoints``: ``"all"``, ``"last"`` or steps; the measures of a whole run, and those at its
    last checkpoint, are the same whichever). See the module docstring.
    The work is split into tasks (``_task``) on ``executor`` (an
    ``executor.Executor``; default: this process): one per layer, one per run,
    one per checkpoint of each SG run; their rows are put together in that
    order, so the table is the same, row for row, wherever they ran.
    """
    from repanalysis.runtime.executor import Executor

    wanted = check_measures(measures)
    checkpoints = parse_checkpoints(checkpoints)
    if maps not in MAPS:
        raise UserError(f"unknown maps convention {maps!r}; choose one of {', '.join(MAPS)}")
    if not runs:
        raise UserError("analyze needs at least one run file")
    with contextlib.ExitStack() as stack:
        opened = [_open(stack, path, maps, checkpoints) for path in runs]
        ref = _open(stack, reference, maps, checkpoints) if reference is not None else None
        pairs = _pairs(opened, ref) if wanted & set(ACROSS) else []
        for a, b in pairs:
            _check_comparable(a, b)
        layers = list(dict.fromkeys(layer for run in opened for layer in run.file.layers))
        sg_runs = ([i for i, run in enumerate(opened) if run.rule in SG_RULES and not run.file.config.get("external")]
                   if wanted & set(SYNTHETIC) else [])
        slots = {layer: sorted({s for run in opened + [b for _, b in pairs] if layer in run.file.layers
                                for s in run.index}) for layer in layers}
        sg_checkpoints = {i: opened[i].chosen for i in sg_runs}
    index = {id(run): i for i, run in enumerate(opened + [ref])}
    named = [(str(path), str(Path(path).resolve())) for path in runs]
    if reference is not None:
        named.append((str(reference), str(Path(reference).resolve())))
    shared = (named, len(opened), [(index[id(a)], index[id(b)]) for a, b in pairs], sorted(wanted), maps,
              checkpoints)
    tasks = [(shared, ("layer", layer, slots[layer])) for layer in layers]
    tasks += [(shared, ("run", i)) for i in range(len(opened))]
    tasks += [(shared, ("synthetic", i, c)) for i in sg_runs for c in sg_checkpoints[i]]
    results = (executor or Executor()).map(_task, tasks, label="analyze", quiet=quiet)
    notes = _Notes()
    rows: list[tuple] = []
    for task_rows, kinds in results:
        rows += task_rows
        notes.absorb(kinds)
    notes.report()
    table = pd.DataFrame([r for r in rows if r[0] in STEPS_TO or (r[-1] is not None and np.isfinite(r[-1]))],
                         columns=list(COLUMNS))
    ints = {c: "Int64" for c in ("seed_a", "position_a", "step_a", "seed_b", "position_b", "step_b")}
    return table.astype({**ints, "value": "float64"})


def _task(shared: tuple, task: tuple) -> tuple[list[tuple], dict]:
    """One part of ``analyze``: ``(rows, the notes' kinds)``.

    ``shared``: ``(runs as (name given, absolute path), the reference last
    when given; how many are not the reference; pairs as indices into them;
    measures; how feature maps are read, ``runfile.MAPS``; the checkpoints chosen)``; ``task``:
    ``("layer", layer, steps)``, ``("run", i)`` or ``("synthetic", i, checkpoint)``.
    """
    named, n_runs, pair_indices, wanted, maps, checkpoints = shared
    wanted = set(wanted)
    notes = _Notes()
    with contextlib.ExitStack() as stack:
        stack.enter_context(threadpool_limits(1))
        cache: dict[int, _Run] = {}

        def run(i: int) -> _Run:
            if i not in cache:
                cache[i] = _Run(named[i][0], stack.enter_context(RunFile(named[i][1])), maps, checkpoints)
            return cache[i]

        kind = task[0]
        if kind == "layer":
            _, layer, steps = task
            runs = [run(i) for i in range(n_runs)]
            pairs = [(run(a), run(b)) for a, b in pair_indices]
            rows = _layer_pass(layer, steps, runs, pairs, wanted, notes)
        elif kind == "run":
            r = run(task[1])
            last = _last_checkpoint(r) if wanted & ({"linear_cka"} | set(RSA_TO_LAST_LAYER)) else {}
            rows = _across_layers(r, last, notes) if "linear_cka" in wanted else []
            rows += _to_last_layer(r, last, wanted, notes) + _per_run(r, wanted)
        else:
            r, c = run(task[1]), task[2]
            rows = [(m, *r.side(layer, c), *_NO_SIDE, result[k])
                    for layer, result in synthetic_losses(r.file, c).items()
                    for m, k in SYNTHETIC.items() if m in wanted]
    return rows, notes.kinds


def _layer_pass(layer: str, steps: list[int], runs: list[_Run], pairs, wanted: set, notes: _Notes) -> list[tuple]:
    """The rows of one layer, step by step: the single-run, over-time and cross-run measures."""
    runs = [run for run in runs if layer in run.file.layers]
    pairs = [(a, b) for a, b in pairs if layer in a.file.layers and layer in b.file.layers]
    by_key = {run.key: run for run in runs + [b for _, b in pairs]}
    keep_ends = bool(wanted & set(OVER_TIME))
    held: dict[tuple[str, int], object] = {}

    def get(run: _Run, c: int):
        if (run.key, c) not in held:
            held[(run.key, c)] = run.load(layer, c)
        return held[(run.key, c)]

    rows = []
    for step in steps:
        for run in runs:
            if step in run.index:
                rows += _single(run, layer, run.index[step], wanted, notes, get)
        rdms: dict[str, object] = {}
        for a, b in pairs:
            if step not in a.index or step not in b.index:
                continue
            ca, cb = a.index[step], b.index[step]
            x, y = get(a, ca), get(b, cb)
            for run, c, arr in ((a, ca, x), (b, cb, y)):
                if "rsa" in wanted and run.key not in rdms:
                    rdms[run.key] = None if _streamed(arr) else notes.call(
                        "rsa", run.where(layer, c), _ranked_rdm, arr, run.where(layer, c))
            where = f"{a.name} vs {b.name}, layer {layer}, step {step}"
            values = _pair_values(notes, wanted, x, y, where, (rdms.get(a.key), rdms.get(b.key)))
            rows += [(m, *a.side(layer, ca), *b.side(layer, cb), v) for m, v in values.items()]
        held = {k: v for k, v in held.items() if keep_ends and k[1] in (0, len(by_key[k[0]].steps) - 1)}
    return rows


def _single(run: _Run, layer: str, c: int, wanted: set, notes: _Notes, get) -> list[tuple]:
    """Rows of the single-run measures of one layer at checkpoint ``c`` (and its over-time CKA)."""
    where, side = run.where(layer, c), run.side(layer, c)
    values: dict[str, float] = {}
    if wanted & set(SPECTRUM):
        values.update(_spectrum_values(notes, wanted, get(run, c), where))
    name = run.weight(layer) if wanted & (set(WEIGHTS) | {"weight_frobenius_relative"}) else None
    if name is not None:
        norms_of = weight_norms if "weight_spectral" in wanted else weight_frobenius  # no SVD unless asked for
        norms = notes.call("weight norms", where, norms_of, run.file.param(name, c), where=where) or {}
        values.update({m: norms.get(k) for m, k in WEIGHTS.items() if m in wanted})
        if "weight_frobenius_relative" in wanted and norms:
            initial = float(np.linalg.norm(run.file.param(name, 0).astype(np.float64)))
            values["weight_frobenius_relative"] = norms["frobenius"] / initial if initial > 0 else None
    if wanted & set(GRADIENT) and run.file.has(layer, "signal"):
        signal = run.load(layer, c, "signal", stream=False) * run.n
        true = run.load(layer, c, "true_grad", stream=False) * run.n
        errors = notes.call("gradient error", where, gradient_error, signal, true, where=where) or {}
        values.update({m: errors.get(k) for m, k in GRADIENT.items() if m in wanted})
    if wanted & set(UPDATE) and run.file.has(layer, "update"):
        values.update({m: v for m, v in _update_values(run.file.update(layer)[c]).items() if m in wanted})
    rows = [(m, *side, *_NO_SIDE, v) for m, v in values.items()]
    for measure, end in zip(OVER_TIME, (0, len(run.steps) - 1)):
        if measure in wanted:
            value = _cka(notes, measure, get(run, c), get(run, end), where)
            rows.append((measure, *side, *run.side(layer, end), value))
    return rows


def _update_values(update: np.ndarray) -> dict[str, float]:
    """``update_cosine`` and ``update_rel_error`` from one checkpoint's recorded ``[cosine, norm ratio]``."""
    cosine, ratio = float(update[0]), float(update[1])
    if ratio == 0.0:
        return {"update_cosine": None, "update_rel_error": 1.0}
    return {"update_cosine": cosine, "update_rel_error": float(np.sqrt(max(0.0, 1 + ratio**2 - 2 * ratio * cosine)))}


def _last_checkpoint(run: _Run) -> dict:
    """Every layer's activations at the run's last checkpoint, read once for the measures across its layers:
    loaded, or all streamed where together they hold more than ``STREAM_ABOVE`` values."""
    if not run.steps:
        return {}
    layers = run.file.layers
    total = sum(np.prod(run.file.array(layer, "activations").shape[1:]) for layer in layers)
    return {layer: run.load(layer, len(run.steps) - 1, stream=total > STREAM_ABOVE) for layer in layers}


def _across_layers(run: _Run, last_arrays: dict, notes: _Notes) -> list[tuple]:
    """Linear CKA between every pair of layers of ``run`` at its last checkpoint (``last_arrays``)."""
    if not run.steps:
        return []
    last, layers = len(run.steps) - 1, run.file.layers
    arrays = [last_arrays[layer] for layer in layers]
    grams: dict[str, np.ndarray | None] = {}

    def gram(layer: str, x) -> np.ndarray | None:
        """The layer's centred Gram matrix, made once, where linear CKA takes the Gram route."""
        if layer not in grams:
            with collected():  # a layer that cannot be measured is refused, and noted, pair by pair below
                try:
                    grams[layer] = similarity.centred_linear_gram(x)
                except UserError:
                    grams[layer] = None
        return grams[layer]

    rows = []
    for i, (la, x) in enumerate(zip(layers, arrays)):
        for lb, y in zip(layers[i + 1:], arrays[i + 1:]):
            where = f"{run.name}, layers {la} and {lb}, step {run.steps[last]}"
            by_gram = not _streamed(x, y) and x.shape[1] + y.shape[1] >= x.shape[0]  # linear_cka's own choice
            k, l = (gram(la, x), gram(lb, y)) if by_gram else (None, None)
            if k is not None and l is not None:
                value = notes.call("linear_cka", where, similarity.linear_cka_from_grams, k, l, where=where)
            else:
                value = _cka(notes, "linear_cka", x, y, where)
            rows.append(("linear_cka", *run.side(la, last), *run.side(lb, last), value))
    return rows


def _to_last_layer(run: _Run, last_arrays: dict, wanted: set, notes: _Notes) -> list[tuple]:
    """RSA of every layer below the last with the last layer, at the last checkpoint (``last_arrays``, each
    read again on its own where they were streamed together), per ``RSA_TO_LAST_LAYER`` metric."""
    metrics = {m: metric for m, metric in RSA_TO_LAST_LAYER.items() if m in wanted}
    layers = run.file.layers
    if not metrics or not run.steps or len(layers) < 2 or layers[-1] != run.file.interfaces[-1]:
        return []  # no last layer recorded (train --record-layers): nothing to compare with
    last, top = len(run.steps) - 1, layers[-1]
    arrays = {layer: run.load(layer, last) if _streamed(a) else a for layer, a in last_arrays.items()}
    if _streamed(*arrays.values()):
        return []  # [N, N] RDMs of more samples than fit are not attempted (see the module docstring)
    rows = []
    for measure, metric in metrics.items():
        where = f"{run.name}, step {run.steps[last]}"
        reference = notes.call(measure, f"{where}, layer {top}", _ranked_rdm, arrays[top], where, metric)
        if reference is None:
            continue
        for layer in layers[:-1]:
            place = f"{run.name}, layers {layer} and {top}, step {run.steps[last]}"
            d = notes.call(measure, place, _ranked_rdm, arrays[layer], place, metric)
            value = None if d is None else notes.call(measure, place, compare_rdms, d, reference, compare="pearson",
                                                      where=place)
            rows.append((measure, *run.side(layer, last), *run.side(top, last), value))
    return rows


def _per_run(run: _Run, wanted: set) -> list[tuple]:
    """The run-level measures (``PER_RUN``) from the run's metrics and evaluations."""
    rows = []
    side = (run.name, run.rule, run.seed, None, None, run.steps[-1] if run.steps else None)
    losses = run.file.metrics.get("train_loss", np.zeros(0)) if "train_loss_area" in wanted else np.zeros(0)
    if len(losses):
        rows.append(("train_loss_area", *side, *_NO_SIDE, float(np.mean(losses))))
    evals = run.file.evals
    for level in ACCURACY_LEVELS:
        measure = f"steps_to_test_acc_{level}"
        if measure in wanted and "test_acc" in evals:
            reached = np.flatnonzero(evals["test_acc"] >= level / 100)
            step = float(evals["step"][reached[0]]) if reached.size else np.nan
            rows.append((measure, *side, *_NO_SIDE, step))
    return rows
