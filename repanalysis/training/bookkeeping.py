"""What a training loop does besides training, the same whether a run trains in this process (``train``) or in
stage processes (``pipeline``): the run file's header, the schedule of checkpoints and evaluations, the record,
the progress line, and how a run ends.

Checkpoints are due at step 0 (before any update), every ``record_every`` steps and at the last step;
evaluations on the whole test split (and on the validation split) likewise at ``eval_every``. Each step's
metrics row is logged under the number of updates done after it. A run ends "complete", or "failed" with an
error: a non-finite loss (``NonFinite``), a failure described in one line (``RunFailed``), or any other
exception (``stopped at step S: <its type>``, re-raised).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from repanalysis.config import TrainConfig
from repanalysis.datasets import Dataset
from repanalysis.errors import UserError
from repanalysis.rules import Rule
from repanalysis.runfile.hdf5 import RunHeader, RunWriter
from repanalysis.runfile.recorder import Recorder
from repanalysis.runtime.progress import Progress
from repanalysis.training.parts import NON_FINITE, TrainResult, evaluate, recorded_layers, state_tensors


class NonFinite(Exception):
    """The training loss became non-finite at step ``step``."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class RunFailed(Exception):
    """The run failed for the reason in its message, a line for the user and the run file."""


def run_header(config: TrainConfig, rule: Rule, data: Dataset, index) -> RunHeader:
    """What the run file of ``config`` (resolved), trained as ``rule`` on ``data`` with the probe inputs
    ``index`` of its test split, says before its first checkpoint."""
    kept = set(recorded_layers(config, rule))
    net = rule.network
    return RunHeader(
        rule=config.rule, model=config.model, dataset=config.dataset, seed=config.seed,
        config_json=config.to_json(), task=data.task, n_features=data.n_features, n_outputs=data.n_outputs,
        probe_index=index, probe_labels=data.probe_labels(index),
        probe_targets=data.y_test[index].numpy() if data.task == "regression" else None,
        layers=[(name, w, block.kind) for name, w, block in zip(net.interfaces, net.widths, net.blocks) if name in kept],
        record_bn=config.record_bn, record_dtype=config.record_dtype, interfaces=net.interfaces,
    )


def recorder(writer: RunWriter | None, rule: Rule, probe_x, probe_y, training_state) -> Recorder | None:
    """The ``Recorder`` of a run of ``rule`` on ``writer`` (None: nothing is recorded); its checkpoints
    keep the layers of ``recorded_layers`` and ``training_state()``, what ``resume`` needs
    (``repanalysis.training.resume``)."""
    if writer is None:
        return None
    kept = recorded_layers(rule.config, rule)
    if len(kept) == len(rule.network.interfaces):
        shadow = lambda: rule.probe(probe_x, probe_y)  # noqa: E731
    else:
        def shadow():
            layers = rule.probe(probe_x, probe_y)
            return {name: layers[name] for name in kept}
    return Recorder.attach(writer, shadow, lambda: state_tensors(rule), training_state, probe_x.device)


class Bookkeeper:
    """The record of one run of ``rule`` (resolved ``config``) on ``data``, from step ``start`` on.

    ``writer`` None records nothing (the evaluations are still taken); ``training_state()`` is the resume
    state a checkpoint keeps; ``device``: where ``rule`` evaluates and records; ``progress``: the progress line,
    updated at every step and closed at the end.
    The caller trains; ``step_done`` takes each step's row, in step order, with ``rule`` holding the
    parameters after that step wherever ``due`` says a checkpoint or evaluation is due.
    """

    def __init__(self, config: TrainConfig, rule: Rule, data: Dataset, index, writer: RunWriter | None,
                 training_state: Callable[[], dict], device: torch.device, progress: Progress):
        self.config, self.rule, self.data, self.device, self.progress = config, rule, data, device, progress
        probe_x, probe_y = data.x_test[index].to(device), data.y_test[index].to(device)
        self.recording = recorder(writer, rule, probe_x, probe_y, training_state)
        self.last_eval: dict[str, float] = {}

    def checkpoint_due(self, step: int) -> bool:
        return step % self.config.record_every == 0 or step == self.config.steps

    def evaluation_due(self, step: int) -> bool:
        return step % self.config.eval_every == 0 or step == self.config.steps

    def due(self, step: int) -> bool:
        """Whether ``rule``'s parameters after ``step`` are needed (a checkpoint or an evaluation)."""
        return self.checkpoint_due(step) or self.evaluation_due(step)

    def begin(self, start: int, resumed: bool = False) -> None:
        """Record step ``start`` before any update from it (``resumed``: its checkpoint is in the file already)."""
        if not resumed:
            self._checkpoint(start)
        if self.evaluation_due(start):
            self._evaluation(start)

    def step_done(self, step: int, row: dict[str, float]) -> None:
        """Log ``step``'s metrics ``row``; checkpoint and evaluate ``rule`` where due."""
        if self.recording is not None:
            self.recording.log(step, **row)
        if self.checkpoint_due(step):
            self._checkpoint(step)
        if self.evaluation_due(step):
            self._evaluation(step)
        self.progress.update(step, f"loss {row.get('train_loss', math.nan):.4f}")

    def _checkpoint(self, step: int) -> None:
        if self.recording is not None:
            self.recording.checkpoint(step)

    def _evaluation(self, step: int) -> None:
        self.last_eval.update(step=step, **evaluate(self.rule, self.data, self.device))
        if self.recording is not None:
            self.recording.evaluation(**self.last_eval)

    @contextlib.contextmanager
    def running(self, at: Callable[[], int]):
        """Train inside: the run file is closed "complete" when the block ends, else "failed" with the error
        (``at()``: the step it stopped at, for an unexpected exception, which goes on); a ``NonFinite`` or
        ``RunFailed`` becomes a ``UserError`` saying the same."""
        try:
            yield self
        except NonFinite as err:
            self.progress.close()
            raise self._non_finite(err.step) from None
        except RunFailed as err:
            self.progress.close()
            self._close("failed", error=str(err))
            raise UserError(str(err)) from None
        except BaseException as err:
            self.progress.close()
            self._close("failed", error=f"stopped at step {at()}: {type(err).__name__}")
            raise
        self.progress.close()
        self._close("complete")

    def result(self) -> TrainResult:
        """The finished run: ``rule`` at the last step and the last evaluation."""
        return TrainResult(self.rule, "complete", self.config.steps, self.last_eval)

    def _close(self, status: str, **attrs) -> None:
        if self.recording is not None:
            self.recording.close(status, **attrs)

    def _non_finite(self, step: int) -> UserError:
        """Close the run as failed on a non-finite loss at ``step``; the error to raise."""
        message = f"{NON_FINITE} at step {step}; the run stopped there"
        recording = self.recording
        if recording is not None:
            kept = recording.replacing
            recording.close("failed", error=message)
            message += (f" ({recording.path} was left as it was)" if kept
                        else f" ({recording.path} keeps the checkpoints before it, status 'failed')")
        return UserError(message)
