"""The training loop: one rule, one data set, recorded to a run file.

Metrics are logged at every step (the batch's loss and accuracy *before*
that step's update; ``step`` counts updates done after it). The network, the
rule, the batches and the evaluations come from ``repanalysis.training.parts``;
the schedule of checkpoints and evaluations, the record and how a run ends from
``repanalysis.training.bookkeeping``, shared with a run in stages (``--stages``), which
trains in ``repanalysis.training.pipeline``.

``resume`` continues an interrupted run from its last complete checkpoint, with
the state ``repanalysis.training.resume`` keeps at every checkpoint, to the file an
uninterrupted run would have written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from repanalysis.config import TrainConfig
from repanalysis.datasets import Dataset, load
from repanalysis.errors import UserError
from repanalysis.rules import Rule
from repanalysis.runfile.hdf5 import RunFile, RunWriter
from repanalysis.runtime.interrupts import BetweenSteps
from repanalysis.runtime.memory import check_fits
from repanalysis.runtime.outputs import check_file
from repanalysis.runtime.progress import Progress
from repanalysis.training import pipeline
from repanalysis.training import resume as resume_state
from repanalysis.training.bookkeeping import Bookkeeper, NonFinite, run_header
from repanalysis.training.parts import (
    NON_FINITE,
    Batches,
    TrainResult,
    build,
    load_arrays,
    memory_estimate,
    stored_config,
)


def choose_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def check_sizes(config: TrainConfig, data: Dataset, device: torch.device) -> None:
    """Refuse a batch larger than the training split, and a network that cannot fit in memory."""
    n = len(data.x_train)
    if config.batch_size > n:
        raise UserError(f"--batch-size {config.batch_size} is larger than the training split ({n} samples)")
    check_fits(memory_estimate(config, data.n_features, data.n_outputs),
               f"training this network ({_size_options(config)}, --batch-size {config.batch_size})",
               f"use a smaller {_size_options(config, values=False)} or --batch-size", device)


def _size_options(config: TrainConfig, values: bool = True) -> str:
    """The options that set the network's size, for messages (with their values)."""
    names = ("channels", "kernel_size", "depth") if config.model == "cnn" else ("width", "depth")
    return ", ".join(f"--{n.replace('_', '-')}" + (f" {getattr(config, n)}" if values else "") for n in names)


def _data(config: TrainConfig, data_dir, data: Dataset | None) -> Dataset:
    """``data`` (else the config's data set, loaded) with the config's validation split held out."""
    return (data or load(config.dataset, data_dir=data_dir, seed=config.data_seed)).with_validation(config.validation)


def _device(config: TrainConfig, name: str) -> torch.device:
    """The device ``--device name`` means for ``config``: a run in stages trains on the CPU."""
    if config.stages > 1:
        return pipeline.stage_device(name)
    return choose_device(name)


def train(config: TrainConfig, out: str | Path | None = None, *, data_dir=None, device: str = "auto",
          overwrite: bool = False, quiet: bool = False, data: Dataset | None = None) -> TrainResult:
    """Train ``config``; record to ``out`` unless it is None. A non-finite loss stops the run.

    Every check that can be made is made before ``out`` is touched. An existing
    ``out`` (``overwrite``) is replaced only at the first checkpoint after step 0,
    when the new run is under way; until then the new run lives in a temporary
    file beside it (see ``RunWriter``).
    """
    config = config.resolved()
    if out is not None:
        check_file(out, overwrite)
    data = _data(config, data_dir, data)
    dev = _device(config, device)
    check_sizes(config, data, dev)
    index = data.probe_index(config.probe_size)
    rule = build(config, data.task, data.n_features, data.n_outputs, dev)
    if config.stages > 1:
        pipeline.check(rule)
    writer = None if out is None else RunWriter(out, run_header(config, rule, data, index), overwrite=overwrite)
    if config.stages > 1:
        return pipeline.run(config, rule, data, index, writer, quiet)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)
    return _run(config, rule, stream, data, index, dev, writer, 0, quiet)


def resume(path: str | Path, *, data_dir=None, device: str = "auto", quiet: bool = False,
           data: Dataset | None = None) -> TrainResult | None:
    """Continue the interrupted run in ``path`` from its last complete checkpoint.

    The config comes from the file; what is kept of it is copied into a new file
    put in its place, and training goes on there; the finished file equals the one
    an uninterrupted run writes (see ``RunWriter.reopen`` and ``repanalysis.training.resume``).
    A complete run is left alone (returns None); a run that failed on a
    non-finite loss is refused, since it would fail again.
    """
    with RunFile(path) as run:
        if run.status == "complete":
            return None
        if run.model == "lstm":
            raise UserError(f"{path} is a recurrent run (--model lstm); those cannot be resumed yet: train it again "
                            "with --overwrite")
        if run.status == "failed" and str(run.error).startswith(NON_FINITE):
            raise UserError(f"{path} failed on a non-finite loss, and would fail again if resumed ({run.error})")
        config = stored_config(run)
        recorded_index = run.probe_index
    data = _data(config, data_dir, data)
    dev = _device(config, device)
    check_sizes(config, data, dev)
    index = data.probe_index(config.probe_size)
    if not np.array_equal(index, recorded_index):
        raise UserError(f"{path}: its probe set is not this {config.dataset} data set's; it cannot be resumed")
    rule = build(config, data.task, data.n_features, data.n_outputs, dev)
    if config.stages > 1:
        pipeline.check(rule)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)

    def load(step: int, params: dict, state: dict) -> None:  # a mismatch is refused before the file is rewritten
        load_arrays(rule, params, path)
        resume_state.restore(rule, stream, state, step)

    writer, step, params, state = RunWriter.reopen(path, load)
    if config.stages > 1:  # the stages restore the same state; the parent's rule records and evaluates
        return pipeline.run(config, rule, data, index, writer, quiet, step, {**params, **state})
    return _run(config, rule, stream, data, index, dev, writer, step, quiet, resumed=True)


def _run(config: TrainConfig, rule: Rule, stream: Batches, data: Dataset, index, dev: torch.device,
         writer: RunWriter | None, start: int, quiet: bool, resumed: bool = False) -> TrainResult:
    """Train from step ``start`` to the end; ``resumed``: the checkpoint at ``start`` is in the file already."""
    book = Bookkeeper(config, rule, data, index, writer, lambda: resume_state.capture(rule, stream), dev,
                      Progress(config.steps, f"train {config.rule}", quiet=quiet))
    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
    step = start
    interrupts = BetweenSteps()
    try:
        with book.running(lambda: step):
            book.begin(start, resumed)
            for step in range(start + 1, config.steps + 1):
                interrupts.check()
                idx = next(stream).to(dev)
                metrics = rule.step(x_train[idx], y_train[idx])
                row = {k: v.item() for k, v in metrics.items()}
                if not math.isfinite(row["train_loss"]):
                    raise NonFinite(step)
                book.step_done(step, row)
    finally:
        interrupts.close()
    return book.result()
