"""One stage in its own process: receive a batch's activations, train, pass them on; never wait for a gradient.

Stage ``r`` of ``K`` (rank ``r`` of a torch.distributed gloo group, joined
through a file store, so no port is ever chosen; gloo itself listens on
ephemeral loopback ports). Per step ``t`` (1-based):

1. every stage draws batch ``t``'s indices from the in-process batch stream (the
   same seeded stream in every stage, so labels never travel); the bottom stage
   takes the inputs, any other stage receives the activations from the stage
   below (a receive posted one step ahead, so they land in a waiting buffer);
2. it runs its blocks and sends the boundary activations up at once;
3. it backpropagates: the boundary module's prediction (or the loss, on the top
   stage) and its other modules' predictions train its blocks; the gradient that
   reached its input is sent down (the regression target of the module below);
4. it updates its blocks;
5. it takes the boundary module's targets that have arrived from above
   (asynchronous), or waits for batch ``t``'s target (``--sync``, lock-step:
   the in-process rule's arithmetic), and trains its modules in one optimiser
   step: those below the boundary on this pass's targets, the boundary module
   on the oldest target taken (predicting anew on its batch's activations, or,
   for this step's own batch, reusing the pass's prediction; any further
   target gets a step of its own). A target for batch ``t'`` used at step ``t``
   has *staleness* ``t - t'``, logged as ``staleness/<interface>``. (Blocks and
   modules have disjoint parameters and optimisers, so updating the blocks
   first changes no number.)

A stage keeps at most ``WINDOW`` sends of activations unfinished, its oldest
waited for first (back-pressure on activations, never a wait for a gradient);
with the receive the stage above posts a step ahead, it runs at most
``WINDOW + 1`` batches ahead of it. After its last step a stage still receives
the targets in flight (unused) so that every send completes. Every blocking wait has a time
limit; a lost peer is reported as such, so the parent can name the stage that
failed first. A stage whose parent is gone (killed: nobody records the run)
exits at its next step or wait.

A resumed run's stages start from the checkpoint's parameters and resume state
(``repanalysis.training.resume``): optimisers, batch stream, coin. In lock-step that
continues the run exactly; asynchronously, the boundary targets still in flight
at the checkpoint (for the last few batches, within the window a stage may run
ahead) are not kept, so the boundary module never trains on them.

Messages to the parent (a multiprocessing queue) are the ``Message`` classes
below: ``Metrics``, every step's metrics, a batch of steps per message (sent at
every checkpoint or evaluation step, at the last step, and otherwise every
``ROWS_EVERY_S`` seconds or ``ROWS_MAX`` steps: one message per step cost the
stage and the parent about a millisecond of CPU a step on the shared cores);
``StageState`` at every checkpoint or evaluation step, after that step's rows;
``NonFiniteLoss``, ``StageError`` and ``Done``. The step a stage is in is also
written to a shared array (``current[rank]``) at every step, so that the
parent can name it when the stage dies between messages. A stage that fails prints its traceback,
unless it only lost a neighbour: that follows another stage's failure, and the
user sees the parent's one line naming the stage to blame.
"""

from __future__ import annotations

import datetime
import math
import os
import queue as queues
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from repanalysis.config import TrainConfig
from repanalysis.training import resume as resume_state
from repanalysis.training.parts import Batches, build, load_arrays
from repanalysis.training.pipeline.stages import Stage

WINDOW = 2  # unfinished sends of activations a stage may have (it runs at most WINDOW + 1 batches ahead)
TARGETS_AHEAD = 4  # receives of boundary targets kept posted
ROWS_EVERY_S = 0.5  # metrics rows go to the parent at least this often (and at every due step) ...
ROWS_MAX = 256  # ... or once this many are waiting
TAG_H, TAG_TARGET = 1, 3


@dataclass
class Message:
    """What stage ``rank`` (0-based) tells the parent."""

    rank: int


@dataclass
class Metrics(Message):
    """Metrics rows ``(step, {name: value})`` of consecutive steps, in step order."""

    rows: list[tuple[int, dict[str, float]]]


@dataclass
class StageState(Message):
    """The stage's parameters and buffers after ``step`` (named as in ``/params``) and its share of the
    resume state (``repanalysis.training.resume``), in one dict."""

    step: int
    arrays: dict


@dataclass
class NonFiniteLoss(Message):
    """The loss (on the top stage) became non-finite at ``step``."""

    step: int


@dataclass
class StageError(Message):
    """The stage failed at ``step`` with the error ``text``; ``lost_peer``: it only lost a neighbour."""

    step: int
    text: str
    lost_peer: bool


@dataclass
class Done(Message):
    """The stage finished its last step."""


class PeerLost(RuntimeError):
    """A message to or from a neighbouring stage failed (it died, or timed out)."""


@dataclass
class StageSpec:
    """Everything one stage process needs (pickled to it at spawn)."""

    rank: int
    ranges: list[tuple[int, int]]
    config: TrainConfig
    task: str
    n_features: int
    n_outputs: int
    store: str  # the file store's path
    threads: int
    timeout_s: float
    due: set[int]  # steps whose state the parent needs (checkpoints and evaluations)
    y_train: torch.Tensor  # every stage draws its batches' labels itself
    x_train: torch.Tensor | None = None  # the bottom stage only
    parent: int = 0  # the parent's process id: a stage whose parent is gone (killed) exits
    start: int = 0  # the step to continue from (a resumed run)
    restored: dict | None = None  # at ``start``: every parameter and buffer, and the resume state


def main(spec: StageSpec, queue, current) -> None:
    """Process entry point: run the stage, report to ``queue`` (and its step to the shared
    ``current[spec.rank]``), exit 1 on any failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    worker = None
    try:
        _check_parent(spec)
        torch.set_num_threads(spec.threads)
        loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
        if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback
        store = dist.FileStore(spec.store, len(spec.ranges))
        dist.init_process_group("gloo", store=store, rank=spec.rank, world_size=len(spec.ranges),
                                timeout=datetime.timedelta(seconds=spec.timeout_s))
        worker = _Worker(spec, queue, current)
        worker.run()
        queue.put(Done(spec.rank))
    except FloatingPointError as err:
        queue.put(NonFiniteLoss(spec.rank, err.args[0]))
        sys.exit(1)
    except BaseException as err:
        if os.getppid() != spec.parent:  # nobody reads the queue: do not wait to flush it at exit
            queue.cancel_join_thread()
            shutil.rmtree(Path(spec.store).parent, ignore_errors=True)  # the parent would have removed it
            os._exit(1)
        if not isinstance(err, PeerLost):  # a lost neighbour follows another stage's failure, which the parent names
            traceback.print_exc()
        step = worker.step if worker is not None else 0
        queue.put(StageError(spec.rank, step, f"{type(err).__name__}: {err}", isinstance(err, PeerLost)))
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class ParentGone(RuntimeError):
    """The parent process is gone (killed): nobody records this run any more."""


def _check_parent(spec: StageSpec) -> None:
    if os.getppid() != spec.parent:
        raise ParentGone("the parent process is gone")


class Rows:
    """Metrics rows on their way to the parent: kept, and sent as one ``Metrics`` message at a step in ``due``
    (before that step's state), or once ``ROWS_MAX`` are kept or ``ROWS_EVERY_S`` seconds have passed since
    the last message (``clock``: seconds)."""

    def __init__(self, queue, rank: int, due: set[int], clock=time.monotonic):
        self.queue, self.rank, self.due, self.clock = queue, rank, due, clock
        self.kept: list[tuple[int, dict]] = []
        self.sent_at = clock()

    def add(self, step: int, metrics: dict) -> None:
        """Keep ``step``'s row (0-d tensors or numbers); send the rows kept if it is time."""
        self.kept.append((step, metrics))
        now = self.clock()
        if step in self.due or len(self.kept) >= ROWS_MAX or now - self.sent_at >= ROWS_EVERY_S:
            self.queue.put(Metrics(self.rank, [(t, {k: float(v) for k, v in row.items()}) for t, row in self.kept]))
            self.kept, self.sent_at = [], now


class _Sends:
    """Sends to one peer in flight, kept alive (with their tensors); at most ``limit`` messages, the
    oldest waited for first (gloo completes a send only in ``wait``)."""

    def __init__(self, peer: int, timeout: datetime.timedelta, limit: int, group=None):
        self.peer, self.timeout, self.limit, self.group, self.works = peer, timeout, limit, group, deque()

    def send(self, tag: int, *tensors: torch.Tensor) -> None:
        while len(self.works) + len(tensors) > self.limit:
            _wait(self.works.popleft()[0], self.peer, self.timeout)
        for t in tensors:
            t = t.contiguous()
            self.works.append((_call(self.peer, dist.isend, t, self.peer, group=self.group, tag=tag), t))
            tag += 1

    def wait_all(self) -> None:
        while self.works:
            _wait(self.works.popleft()[0], self.peer, self.timeout)


def _call(peer: int, op, *args, **kwargs):
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:
        raise PeerLost(f"lost contact with stage {peer + 1} ({str(err).splitlines()[0]})") from None


def _wait(work, peer: int, timeout: datetime.timedelta) -> None:
    try:
        work.wait(timeout)
    except RuntimeError as err:
        raise PeerLost(f"lost contact with stage {peer + 1} ({str(err).splitlines()[0]})") from None


class _Worker:
    def __init__(self, spec: StageSpec, queue, current):
        self.spec, self.queue, self.current, self.config = spec, queue, current, spec.config
        rule = build(spec.config, spec.task, spec.n_features, spec.n_outputs)
        first, last = spec.ranges[spec.rank]
        self.stage = Stage(rule, first, last)
        self.timeout = datetime.timedelta(seconds=spec.timeout_s)
        k = len(spec.ranges)
        self.below = spec.rank - 1 if spec.rank > 0 else None
        self.above = spec.rank + 1 if spec.rank < k - 1 else None
        # targets travel in a group of their own, received by a thread that keeps TARGETS_AHEAD receives posted
        targets = dist.new_group(backend="gloo", timeout=self.timeout)
        self.up = _Sends(self.above, self.timeout, WINDOW) if self.above is not None else None
        self.down = _Sends(self.below, self.timeout, 2, targets) if self.below is not None else None
        self.waiting: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batches whose boundary target is due
        self.next_target = spec.start + 1
        self.stream = Batches(len(spec.y_train), spec.config.batch_size, spec.config.seed)
        if spec.restored is not None:
            load_arrays(rule, spec.restored)
            resume_state.restore(rule, self.stream, spec.restored, spec.start)
        self.inbox: queues.Queue = queues.Queue()
        self.receiver = None
        if self.above is not None:
            self.receiver = threading.Thread(target=self._receive_targets, args=(targets, self.stage.boundary_shape),
                                             daemon=True)
            self.receiver.start()
        self.step = 0
        self.rows = Rows(queue, spec.rank, spec.due | {spec.config.steps})

    def run(self) -> None:
        config, spec = self.config, self.spec
        stream = self.stream
        boundary = self.stage.boundary
        posted = self._post_receive() if self.below is not None and spec.start < config.steps else None
        names = self.stage.rule.network.interfaces
        for step in range(spec.start + 1, config.steps + 1):
            self.step = self.current[spec.rank] = step
            _check_parent(spec)
            idx = next(stream)
            y = spec.y_train[idx]
            if posted is None:
                x = spec.x_train[idx]
            else:
                x, work = posted
                _wait(work, self.below, self.timeout)
                posted = self._post_receive() if step < config.steps else None
            trace, leaf = self.stage.forward(x)
            if self.up is not None:
                h = trace.hidden[-1].detach()
                self.up.send(TAG_H, h)
                self.waiting[step] = (h, y)
            back = self.stage.backward(trace, leaf, y)
            if self.down is not None:
                self.down.send(TAG_TARGET, back.input_grad.detach())
            metrics = dict(back.metrics)
            if "train_loss" in metrics and not math.isfinite(metrics["train_loss"].item()):
                raise FloatingPointError(step)
            self.stage.update(step)
            metrics.update({f"staleness/{names[c]}": 0.0 for c in back.targets})
            if boundary is None:
                metrics.update(self.stage.learn(back))
            else:
                metrics.update(self._learn_with_boundary(step, back, names[boundary]))
            self.rows.add(step, metrics)
            if step in spec.due:
                bottom = stream if self.below is None else None  # the stream's state is the bottom stage's to report
                self.queue.put(StageState(spec.rank, step, {**self.stage.state(), **self.stage.training_state(bottom)}))
        for sends in (self.up, self.down):
            if sends is not None:
                sends.wait_all()
        if self.receiver is not None:  # it takes the targets still in flight (unused), so every send completes
            self.receiver.join(self.spec.timeout_s)
            if self.receiver.is_alive():
                raise PeerLost(f"stage {self.above + 1} sent no target for {self.spec.timeout_s:.0f} s")

    def _post_receive(self) -> tuple[torch.Tensor, object]:
        """A buffer for the next batch's activations from the stage below, and its receive, posted now."""
        x = torch.empty(self.config.batch_size, *self.stage.input_shape)
        return x, _call(self.below, dist.irecv, x, self.below, tag=TAG_H)

    def _receive_targets(self, group, shape: tuple[int, ...]) -> None:
        """The receiver thread: every batch's boundary target, in order, into ``inbox`` (an error ends it).

        ``TARGETS_AHEAD`` receives are kept posted (gloo sends a message only once its receive is posted), so
        the stage above never waits for this thread, which must take the interpreter lock from the
        training thread before it can post the next one."""
        steps = iter(range(self.spec.start + 1, self.config.steps + 1))
        posted: deque = deque()

        def post() -> None:
            t = next(steps, None)
            if t is not None:
                buffer = torch.empty(self.config.batch_size, *shape)
                posted.append((t, buffer, _call(self.above, dist.irecv, buffer, self.above, group=group,
                                                tag=TAG_TARGET)))

        try:
            for _ in range(TARGETS_AHEAD):
                post()
            while posted:
                t, buffer, work = posted.popleft()
                _wait(work, self.above, self.timeout)
                post()
                self.inbox.put((t, buffer))
        except BaseException as err:
            self.inbox.put((None, err))

    def _take_target(self, block: bool) -> tuple[int, torch.Tensor] | None:
        """The next boundary target ``(step, gradient)`` if it has arrived (or, with ``block``, when it does)."""
        try:
            t, target = self.inbox.get(timeout=self.spec.timeout_s) if block else self.inbox.get_nowait()
        except queues.Empty:
            if block:
                raise PeerLost(f"stage {self.above + 1} sent no target for {self.spec.timeout_s:.0f} s") from None
            return None
        if t is None:
            raise target
        self.next_target = t + 1
        return t, target

    def _learn_with_boundary(self, step: int, back, name: str) -> dict[str, float]:
        """Train the stage's modules, the boundary module on the targets that have arrived (in ``--sync``:
        batch ``step``'s); the oldest in the same optimiser step as the modules below it."""
        arrived = []
        while True:
            got = self._take_target(block=self.config.sync and self.next_target <= step)
            if got is None:
                break
            arrived.append(got)
            if self.config.sync or self.next_target > step:
                break
        key = f"sg_loss/{name}"
        if not arrived:
            return {**self.stage.learn(back), key: math.nan, f"staleness/{name}": math.nan}
        metrics, losses = {}, []
        for i, (t, target) in enumerate(arrived):
            batch = self.waiting.pop(t)
            learned = self.stage.learn(back if i == 0 else None, target, None if i == 0 and t == step else batch)
            losses.append(learned.pop(key).item())
            metrics.update(learned)
        ages = [step - t for t, _ in arrived]
        return {**metrics, key: sum(losses) / len(losses), f"staleness/{name}": sum(ages) / len(ages)}
