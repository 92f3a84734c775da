"""The parent of the stage processes: start them, assemble their reports into the run file, stop them on failure.

The parent holds the same seeded rule as the stages. It writes the run file
alone, through the in-process loop's own ``Bookkeeper`` (``repanalysis.training.bookkeeping``): per step, one
metrics row merged from every stage's rows (which arrive in batches of steps); at a checkpoint (or
evaluation) step, it first loads every stage's parameters at that step into its rule. Stages never wait
for the parent; what they say is the messages of ``worker``, and what the parent knows of them, a
``_Group``.

A stage that raises, or dies, ends the run: the others are stopped, the run
file gets status "failed" and an error naming the stage, and a ``UserError``
says the same. When several stages fail, the one to blame is a stage that died
without a word, else one whose error was not a lost neighbour.
"""

from __future__ import annotations

import os
import queue as queues
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.multiprocessing as mp

from repanalysis.config import TrainConfig
from repanalysis.datasets import Dataset
from repanalysis.rules import SyntheticGradients
from repanalysis.runfile.hdf5 import RunWriter
from repanalysis.runtime.progress import Progress
from repanalysis.training.bookkeeping import Bookkeeper, NonFinite, RunFailed
from repanalysis.training.parts import TrainResult, load_arrays
from repanalysis.training.pipeline.stages import Stage, partition, step_costs
from repanalysis.training.pipeline.worker import Done, Metrics, NonFiniteLoss, StageError, StageSpec, StageState, main

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
    assembly = _Assembly(k, start)
    label = f"train {config.rule} ({k} stages{', sync' if config.sync else ''})"
    book = Bookkeeper(config, rule, data, index, writer, assembly.training_state, torch.device("cpu"),
                      Progress(steps, label, quiet=quiet))
    due = {s for s in range(start + 1, steps + 1) if book.due(s)}
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
    for rank in range(k):
        spec = StageSpec(
            rank=rank, ranges=[(p.first, p.last) for p in parts], config=config, task=data.task,
            n_features=data.n_features, n_outputs=data.n_outputs, store=str(Path(folder) / "store"),
            threads=threads, timeout_s=TIMEOUT_S, due=due,
            y_train=data.y_train, x_train=data.x_train if rank == 0 else None,
            parent=os.getpid(), start=start, restored=restored,
        )
        procs.append(context.Process(target=main, args=(spec, reports, current), name=f"repanalysis-stage-{rank + 1}",
                                     daemon=True))
    group = _Group(parts, procs, inbox, current, assembly)
    with book.running(lambda: assembly.next - 1):
        try:
            for proc in procs:
                proc.start()
            book.begin(start, resumed=restored is not None)
            group.listen(steps, due, book)
        finally:
            group.stop()
            forwarding.set()
            shutil.rmtree(folder, ignore_errors=True)
    return book.result()


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
            row = {}
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


@dataclass
class _Group:
    """The stage processes of one run (``procs``, running ``parts``) as the parent sees them: their messages
    (``inbox``), the step each is in (``current``, shared), their reports assembled, and those finished."""

    parts: list[Stage]
    procs: list
    inbox: queues.Queue
    current: object
    assembly: _Assembly
    finished: set[int] = field(default_factory=set)

    def listen(self, steps: int, due: set[int], book: Bookkeeper) -> None:
        """Hand every step's assembled report to ``book``, in step order, with ``book.rule`` holding the
        parameters after the step where one is ``due``, until every stage has finished; a stage's failure
        ends it (``RunFailed``, ``NonFinite``)."""
        assembly, heard = self.assembly, time.monotonic()
        while assembly.next <= steps or len(self.finished) < len(self.procs):
            try:
                message = self.inbox.get(timeout=0.25)
            except queues.Empty:
                dead = [r for r, p in enumerate(self.procs) if p.exitcode is not None and r not in self.finished]
                if dead or time.monotonic() - heard > TIMEOUT_S + 30:
                    raise self.failure(None)
                continue
            heard = time.monotonic()
            if isinstance(message, Metrics):
                for step, row in message.rows:
                    assembly.rows.setdefault(step, []).append(row)
            elif isinstance(message, StageState):
                assembly.states.setdefault(message.step, []).append(message.arrays)
            elif isinstance(message, Done):
                self.finished.add(message.rank)
            elif isinstance(message, NonFiniteLoss):
                raise NonFinite(message.step)
            else:
                raise self.failure(message)
            for step, row, state in assembly.ready(due):
                if state is not None:
                    load_arrays(book.rule, state)
                book.step_done(step, row)

    def failure(self, first: StageError | None) -> RunFailed:
        """Listen a moment for every stage's report, stop them all, and name the stage to blame."""
        procs, k = self.procs, len(self.parts)
        errors: dict[int, StageError] = {}
        if first is not None:
            errors[first.rank] = first
        until = time.monotonic() + GRACE_S
        while time.monotonic() < until and any(p.exitcode is None for p in procs):
            try:
                message = self.inbox.get(timeout=0.1)
            except queues.Empty:
                continue
            if isinstance(message, StageError):
                errors.setdefault(message.rank, message)
            elif isinstance(message, Done):
                self.finished.add(message.rank)
        dead = [r for r, p in enumerate(procs)
                if p.exitcode not in (None, 0) and r not in errors and r not in self.finished]
        self.stop()
        if dead:
            r = dead[0]
            code = procs[r].exitcode
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            step = self.current[r] or self.assembly.next
            return RunFailed(f"stage {r + 1} of {k} ({self.parts[r].name}) died during step {step} ({how}); "
                             "the run stopped")
        if errors:
            blamed = min(errors.values(), key=lambda e: (e.lost_peer, e.rank))
            return RunFailed(f"stage {blamed.rank + 1} of {k} ({self.parts[blamed.rank].name}) failed at step "
                             f"{blamed.step}: {blamed.text}")
        quiet = [r for r in range(k) if r not in self.finished]
        return RunFailed(f"stage(s) {', '.join(str(r + 1) for r in quiet)} of {k} reported nothing for "
                         f"{TIMEOUT_S + 30:.0f} s; the run stopped")

    def stop(self) -> None:
        """End every stage process still running: terminate, then kill after 5 s."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            if proc.pid is not None:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
