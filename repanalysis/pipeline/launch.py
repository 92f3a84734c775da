"""The parent of the stage processes: start them, assemble their reports into the run file, stop them on failure.

The parent holds the same seeded rule as the stages. It writes the run file
alone, with the in-process loop's own parts (``training_parts``): per step, one metrics row merged from
every stage's rows (which arrive in batches of steps); at a checkpoint (or evaluation) step, it loads every
stage's parameters at that step into its rule and records (or evaluates) as
the in-process loop does. Stages never wait for the parent.

A stage that raises, or dies, ends the run: the others are stopped, the run
file gets status "failed" and an error naming the stage, and a ``UserError``
says the same. When several stages fail, the one to blame is a stage that died
without a word, else one whose error was not a lost neighbour.
"""

from __future__ import annotations

import math
import os
import queue as queues
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ..config import TrainConfig
from ..datasets import Dataset
from ..errors import UserError
from ..progress import Progress
from ..rules import SyntheticGradients
from ..runfile import RunWriter
from ..training_parts import TrainResult, evaluate, load_arrays, non_finite, recorder
from .stages import Stage, partition, step_costs
from .worker import StageSpec, main

TIMEOUT_S = 300.0  # the longest any stage waits for a neighbour, and the parent for any report
GRACE_S = 2.0  # after a first failure, how long to listen for the others' reports


def stages(rule: SyntheticGradients) -> list[Stage]:
    """The rule's network cut into ``--stages`` stages of about equal estimated cost (``stages.step_costs``)."""
    ranges = partition(step_costs(rule, rule.config.batch_size), list(rule.cuts), rule.config.stages)
    return [Stage(rule, first, last) for first, last in ranges]


def run(config: TrainConfig, rule: SyntheticGradients, data: Dataset, index, writer: RunWriter | None,
        quiet: bool, start: int = 0, restored: dict | None = None) -> TrainResult:
    """Train ``config`` in ``config.stages`` stage processes; ``rule`` (the parent's copy) ends at the last step.

    A resumed run continues from step ``start`` (its checkpoint is in ``writer`` already) with ``restored``:
    every parameter and buffer at ``start`` (loaded into ``rule`` too) and the resume state.
    """
    parts = stages(rule)
    k, steps = len(parts), config.steps
    due_record = {s for s in range(start + 1, steps + 1) if s % config.record_every == 0 or s == steps}
    due_eval = {s for s in range(start + 1, steps + 1) if s % config.eval_every == 0 or s == steps}
    probe_x, probe_y = data.x_test[index], data.y_test[index]
    folder = tempfile.mkdtemp(prefix="repanalysis-stages-")
    context = mp.get_context("spawn")
    reports = context.Queue()
    current = context.RawArray("q", k)  # the step each stage is in (it writes its own), to name a stage's death
    inbox, forwarding = _inbox(reports)
    # Asynchronous stages share the cores; lock-step ones run one at a time, each with the threads of one
    # process, so their sums run in the in-process order (a thread count changes it, and Adam turns the
    # rounding of a zero gradient, a bias before batch norm, into steps of ~lr/10)
    threads = torch.get_num_threads() if config.sync else max(1, torch.get_num_threads() // k)
    procs = []
    for rank, part in enumerate(parts):
        spec = StageSpec(
            rank=rank, ranges=[(p.first, p.last) for p in parts], config=config, task=data.task,
            n_features=data.n_features, n_outputs=data.n_outputs, store=str(Path(folder) / "store"),
            threads=threads, timeout_s=TIMEOUT_S, due=due_record | due_eval,
            y_train=data.y_train, x_train=data.x_train if rank == 0 else None,
            parent=os.getpid(), start=start, restored=restored,
        )
        procs.append(context.Process(target=main, args=(spec, reports, current), name=f"repanalysis-stage-{rank + 1}",
                                     daemon=True))
    last_eval: dict[str, float] = {}
    progress = Progress(steps, f"train {config.rule} ({k} stages{', sync' if config.sync else ''})", quiet=quiet)
    assembly = _Assembly(k, start)
    recording = recorder(writer, rule, probe_x, probe_y, assembly.training_state)
    try:
        for proc in procs:
            proc.start()
        if recording is not None and restored is None:
            recording.checkpoint(start)
        if start % config.eval_every == 0 or start == steps:
            last_eval.update(step=start, **evaluate(rule, data, torch.device("cpu")))
            if recording is not None:
                recording.evaluation(**last_eval)
        finished: set[int] = set()
        heard = time.monotonic()
        while assembly.next <= steps or len(finished) < k:
            try:
                message = inbox.get(timeout=0.25)
            except queues.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in finished]
                if dead or time.monotonic() - heard > TIMEOUT_S + 30:
                    raise _failure(parts, procs, inbox, current, assembly, finished, None)
                continue
            heard = time.monotonic()
            kind, rank = message[0], message[1]
            if kind == "rows":
                for step, row in message[2]:
                    assembly.rows.setdefault(step, []).append(row)
            elif kind == "state":
                assembly.states.setdefault(message[2], []).append(message[3])
            elif kind == "done":
                finished.add(rank)
            elif kind == "nonfinite":
                raise _NonFinite(message[2])
            else:
                raise _failure(parts, procs, inbox, current, assembly, finished, message)
            for step, row, state in assembly.ready(due_record | due_eval):
                if recording is not None:
                    recording.log(step, **{k: v for k, v in row.items() if k != "step"})
                if state is not None:
                    load_arrays(rule, state)
                    if recording is not None and step in due_record:
                        recording.checkpoint(step)
                    if step in due_eval:
                        last_eval.update(step=step, **evaluate(rule, data, torch.device("cpu")))
                        if recording is not None:
                            recording.evaluation(**last_eval)
                progress.update(step, f"loss {row.get('train_loss', math.nan):.4f}")
    except _NonFinite as err:
        _stop(procs)
        progress.close()
        raise non_finite(recording, err.args[0]) from None
    except _StageFailed as err:
        progress.close()
        if recording is not None:
            recording.close("failed", error=str(err))
        raise UserError(str(err)) from None
    except BaseException as err:
        _stop(procs)
        progress.close()
        if recording is not None:
            recording.close("failed", error=f"stopped at step {assembly.next - 1}: {type(err).__name__}")
        raise
    finally:
        _stop(procs)
        forwarding.set()
        shutil.rmtree(folder, ignore_errors=True)
    progress.close()
    if recording is not None:
        recording.close("complete")
    return TrainResult(rule, "complete", steps, last_eval)


def _inbox(reports) -> tuple[queues.Queue, threading.Event]:
    """The stages' messages, moved from ``reports`` by a thread until the returned event is set.

    A stage killed while it sends leaves a partial message in the pipe, on which a read waits for ever, and
    holds the queue's write lock for ever; so only this daemon thread reads ``reports``, and the parent never
    writes to it (a put would leave a feeder thread that the interpreter joins at exit: a hang after the run).
    """
    inbox: queues.Queue = queues.Queue()
    stop = threading.Event()

    def forward():
        while not stop.is_set():
            try:
                inbox.put(reports.get(timeout=0.25))
            except queues.Empty:
                continue

    threading.Thread(target=forward, name="repanalysis stage reports", daemon=True).start()
    return inbox, stop


class _Assembly:
    """Per-step reports of ``k`` stages after step ``start``, released in step order once every stage's row
    (and, where due, state) is in: ``ready`` yields ``(step, merged row, merged state or None)``;
    ``training_state()`` is the resume state of the last merged state (what ``Recorder`` keeps)."""

    def __init__(self, k: int, start: int = 0):
        self.k, self.next = k, start + 1
        self.rows: dict[int, list[dict]] = {}
        self.states: dict[int, list[dict]] = {}
        self.last: dict = {}

    def training_state(self) -> dict:
        return {k: v for k, v in self.last.items() if not k.startswith(("model.", "rule."))}

    def ready(self, due: set[int]):
        while len(self.rows.get(self.next, ())) == self.k:
            step = self.next
            if step in due and len(self.states.get(step, ())) < self.k:
                return
            row = {"step": float(step)}
            for part in self.rows.pop(step):
                row.update(part)
            state = None
            if step in due:
                state = {}
                for part in self.states.pop(step):
                    state.update(part)
                self.last = state
            self.next += 1
            yield step, row, state


class _StageFailed(Exception):
    """A stage failed; the message names it."""


class _NonFinite(Exception):
    """The top stage's loss became non-finite at the step in ``args[0]``."""


def _failure(parts, procs, inbox, current, assembly, finished, first) -> _StageFailed:
    """Listen a moment for every stage's report, stop them all, and name the stage to blame."""
    errors = {}  # rank -> (step, text, lost_peer)
    if first is not None:
        errors[first[1]] = first[2:]
    until = time.monotonic() + GRACE_S
    while time.monotonic() < until and any(p.exitcode is None for p in procs):
        try:
            message = inbox.get(timeout=0.1)
        except queues.Empty:
            continue
        if message[0] == "error":
            errors.setdefault(message[1], message[2:])
        elif message[0] == "done":
            finished.add(message[1])
    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in errors and r not in finished]
    _stop(procs)
    k = len(parts)
    if dead:
        r = dead[0]
        code = procs[r].exitcode
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        step = current[r] or assembly.next
        return _StageFailed(f"stage {r + 1} of {k} ({parts[r].name}) died during step {step} ({how}); "
                            "the run stopped")
    if errors:
        r = min(errors, key=lambda rank: (errors[rank][2], rank))
        step, text, _ = errors[r]
        return _StageFailed(f"stage {r + 1} of {k} ({parts[r].name}) failed at step {step}: {text}")
    quiet = [r for r in range(k) if r not in finished]
    return _StageFailed(f"stage(s) {', '.join(str(r + 1) for r in quiet)} of {k} reported nothing for "
                        f"{TIMEOUT_S + 30:.0f} s; the run stopped")


def _stop(procs) -> None:
    """End every stage process still running: terminate, then kill after 5 s."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
