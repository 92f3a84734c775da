"""Wall time per epoch of dni in stages (``train --stages K``) against in-process dni and backprop,
and a pipeline model of the speed-up for K up to 64 stages, from measured compute, communication and overhead.

Network: MNIST, ``--depth`` (default 4) hidden layers of ``--width`` (default 512) units with batch
norm, dni (a linear module after every block), batch ``--batch`` (256), Adam; the stages are cut as
``train`` cuts them (by estimated cost, ``stages.step_costs``), and the script prints where. The
1.4x target holds at ``--depth 16 --width 256 --batch 64``, whose small matrices gain little from a
second intra-op thread (see the bound below). Every configuration uses ``--threads`` (default 2) threads in
all: in-process runs ``torch.set_num_threads(threads)``, K stages 1 thread each (threads // K). A
last row runs dni in one process on one thread: what the stages' split could at best halve, and a
check on the threads (if it beats the row with ``--threads``, two threads of one process are
waiting for each other: load).

Per epoch: one run of ``s + E`` steps (``s`` = ``--lead``, 20; ``E`` one epoch, 2 for the stages, 4
for the tiny net below), timed from its metrics rows as they reach the loop that logs them: the
seconds from the first batch of rows past step ``s`` to the last row, per step (a stage sends its
rows in batches, every 0.5 s; a batch's time is that of its last step). So the start-up (spawning
the stages, loading data, the pipeline's filling), which varies by seconds under load, is left out,
and reported apart. The fastest of ``--repeats`` (1) runs, configurations interleaved (load on a
shared machine only slows a run, so the fastest is the nearest to an idle one). No
recording, evaluation at step 0 and at the end only. A few minutes on the 2-core machine;
``--epoch-steps N`` times N steps instead of an epoch, for a shorter run.

Model: a stage's step costs its compute ``c_k`` (forward, backward, block and module updates, timed
alone on one thread, the stages and the whole net taking their steps in turn) and ``o``, the stage
machinery's own cost per step (its Python around the compute, posting and completing the sends and
receives, the receiver thread's hand-off, the metrics rows to the parent and the parent's assembly,
and the threads it shares the cores with). ``o`` is
measured, not fitted: the per-step time of the same K = 2 run on a D x 8 net (same batch; little
compute) less its ``max_k c_k``. In the asynchronous pipeline, steps overlap, so one step of the whole
net takes ``max_k c_k + o``; in one process on one thread it takes ``Σ_k c_k``; both are printed
against the measurements (K = 2 stages, and in-process dni on one thread), and so is the overhead
the K = 2 run implies (its step less ``max_k c_k``). Under load a small message's round trip grows
(4 ms for 8 KB, against 0.3 ms for 512 KB in one run at load 3), so the D x 8 run turns latency-bound
and overstates ``o``: trust ``o`` from an idle machine only. The loopback gloo round
trip ``m`` of a [batch, W] float32 tensor is printed too, but is not in the step: a stage's receives
are posted ahead and its sends wait only when 2 are unfinished, so latency is hidden as long as
``m`` stays under about 2 steps (what a message costs the CPU is in ``o``). On 2 cores the 2-thread
in-process run gains ``s2 = t(1 thread) / t(2 threads)`` from intra-op threads, and a perfect
2-stage pipeline (no ``o``, equal stages) at most ``t(1 thread) / 2``: the stages can beat it by at
most ``2 / s2``, so a 1.4x target needs ``s2 <= 1.43``; the script prints this bound and the one the
measured ``c_k`` and ``o`` allow. For K up to 64 the net is 64 equal blocks (W x W, with a module;
``b`` each) and the head and loss (``h``, on the top stage only): ``speed-up(K) = (64 b + h) /
((64 / K) b + h + o)`` over one process on one core (``o`` = 0 for K = 1). Assumes one core per stage
(a 2-core machine runs only K = 2 this way), a network that splits evenly, ``o`` independent of K
(each stage talks to two neighbours only; ``o`` as measured here, 2 stages on 2 cores with the
parent) and ``m`` under 2 steps of a stage; start-up and the K - 1 steps that fill the pipeline are
left out (an epoch has 234 steps at batch 256).

    python benchmarks/bench_pipeline.py [--depth 4] [--width 512] [--batch 256] [--threads 2] [--repeats 1]
                                        [--epoch-steps N] [--data-dir DIR] [--quick]
    python benchmarks/bench_pipeline.py --depth 16 --width 256 --batch 64 --repeats 2   # the target's network
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import parser

from repanalysis.config import TrainConfig
from repanalysis.datasets import load
from repanalysis.runtime.progress import Progress
from repanalysis.training import train as training
from repanalysis.training.parts import Batches, build
from repanalysis.training.pipeline import launch
from repanalysis.training.pipeline.launch import stages
from repanalysis.training.train import train


def config(args, **overrides) -> TrainConfig:
    base = dict(dataset="digits" if args.quick else "mnist", depth=args.depth, width=args.width,
                batch_size=args.batch if not args.quick else 64, rule="dni", record_every=10**9,
                eval_every=10**9, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


class _Clock(Progress):
    """``train``'s progress, noting when each step's row reached the loop that logs it (in process: after the
    step; in stages: when the parent has every stage's row, which come in batches)."""

    marks: list[tuple[float, int]] = []

    def update(self, done: int, note: str = "") -> None:
        _Clock.marks.append((time.perf_counter(), done))
        super().update(done, note)


training.Progress = launch.Progress = _Clock


def epoch_time(args, data, epochs: int = 1, **overrides) -> tuple[float, float]:
    """Seconds per epoch and start-up seconds of one ``train`` run of ``lead`` + ``epochs`` epochs (or
    ``--epoch-steps``) steps, timed from its rows: from the first batch of rows past step ``lead`` to the last
    row (a batch's rows reach the parent together; its time is that of its last step)."""
    per_epoch = len(data.x_train) // config(args).batch_size
    steps = args.lead + epochs * (args.epoch_steps or per_epoch)
    _Clock.marks = []
    start = time.perf_counter()
    train(config(args, steps=steps, **overrides), None, data=data, quiet=True)
    marks = _Clock.marks
    ends = [(t, s) for (t, s), (later, _) in zip(marks, marks[1:]) if later - t > 2e-4] + [marks[-1]]
    t_a, s_a = next((t, s) for t, s in ends if s >= args.lead)
    t_b, s_b = ends[-1]
    step = (t_b - t_a) / (s_b - s_a)
    return step * per_epoch, t_a - start - s_a * step


def stage_compute(args, data, depth: int, ks: tuple[int, ...], steps: int = 60, warmup: int = 5,
                  **overrides) -> list[list[float]]:
    """Median seconds per step of each stage of a dni net of ``depth`` blocks cut into each ``k`` of ``ks``
    stages, alone, one thread: one list per ``k``. The stages of every ``k`` take their steps in turn (after
    ``warmup`` steps each, not timed), so a drift of the machine's speed hits them alike."""
    torch.set_num_threads(1)
    cuts, timed = [], []
    for k in ks:
        c = config(args, depth=depth, stages=k, **overrides).resolved()
        parts = stages(build(c, data.task, data.n_features, data.n_outputs))
        cuts.append(len(parts))
        timed += [(part, Batches(len(data.x_train), c.batch_size, 0), c.batch_size, []) for part in parts]
    for step in range(1, warmup + steps + 1):
        for part, stream, batch, times in timed:
            idx = next(stream)
            x = data.x_train[idx] if part.first == 0 else torch.randn(batch, *part.input_shape)
            y = data.y_train[idx]
            start = time.perf_counter()
            trace, leaf = part.forward(x)
            back = part.backward(trace, leaf, y)
            part.update(step)
            h = trace.hidden[-1].detach()
            part.learn(back, torch.randn_like(h) * 1e-3 if part.boundary is not None else None, (h, y))
            if step > warmup:
                times.append(time.perf_counter() - start)
    torch.set_num_threads(args.threads)
    medians = [sorted(times)[len(times) // 2] for _, _, _, times in timed]
    return [medians[sum(cuts[:i]):sum(cuts[:i + 1])] for i in range(len(ks))]


def _ping(rank: int, store: str, shape, rounds: int, result) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    t = torch.randn(*shape)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        if rank == 0:
            dist.send(t, 1)
            dist.recv(t, 1)
        else:
            dist.recv(t, 0)
            dist.send(t, 0)
        times.append(time.perf_counter() - start)
    if rank == 0:
        result.put(sorted(times)[len(times) // 2])
    dist.destroy_process_group()


def round_trip(shape, rounds: int = 200) -> float:
    """Median seconds of a gloo loopback round trip of one float32 tensor of ``shape``."""
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=_ping, args=(r, os.path.join(folder, "store"), shape, rounds, result))
                 for r in range(2)]
        for p in procs:
            p.start()
        value = result.get(timeout=120)
        for p in procs:
            p.join(30)
    return value


TINY = 8  # the width of the net whose K = 2 run measures the per-step overhead o


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lead", type=int, default=20, help="steps timed alone, subtracted (start-up)")
    p.add_argument("--epoch-steps", type=int, default=0, help="time this many steps, not a whole epoch")
    p.set_defaults(repeats=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = load("digits") if args.quick else load("mnist", data_dir=args.data_dir)
    batch = config(args).batch_size
    per_epoch = len(data.x_train) // batch
    print(f"{'digits' if args.quick else 'MNIST'}: {len(data.x_train)} training inputs, batch {batch}, "
          f"{per_epoch} steps per epoch; {args.depth} x {args.width} dni; {args.threads} threads in all")
    parts = stages(build(config(args, stages=2).resolved(), data.task, data.n_features, data.n_outputs))
    print(f"K = 2 stages: {', '.join(part.name for part in parts)}")
    rows = [("backprop, in process", dict(rule="backprop"), args.threads),
            ("dni, in process (K = 1)", {}, args.threads),
            ("dni, K = 2 stages", dict(stages=2, epochs=2), args.threads),  # 2 epochs: start-up varies
            ("dni, in process, 1 thread", {}, 1),  # what the stages' split could at best halve
            (f"dni, K = 2 stages, {args.depth} x {TINY}", dict(stages=2, width=TINY, epochs=4), args.threads)]  # for o
    times = {name: [] for name, _, _ in rows}
    train(config(args, steps=1), None, data=data, quiet=True)  # warm-up: the first run imports seconds of modules
    for _ in range(args.repeats):
        for name, overrides, threads in rows:
            torch.set_num_threads(threads)
            times[name].append(epoch_time(args, data, **overrides))
    torch.set_num_threads(args.threads)
    measured = {}
    for name, _, _ in rows:
        each, startup = min(times[name])
        measured[name] = each
        print(f"{name:28s} {each:7.2f} s per epoch   (start-up {startup:5.2f} s)", flush=True)
    two, one, single = (measured[n] for n in ("dni, K = 2 stages", "dni, in process (K = 1)",
                                              "dni, in process, 1 thread"))
    print(f"speed-up of K = 2 against in-process dni: {one / two:.2f}x; against in-process backprop: "
          f"{measured['backprop, in process'] / two:.2f}x; against in-process dni on 1 thread: {single / two:.2f}x")

    c, (whole,) = stage_compute(args, data, depth=args.depth, ks=(2, 1))
    m = round_trip((batch, args.width))
    (tiny_c,) = stage_compute(args, data, depth=args.depth, ks=(2,), width=TINY)
    o = measured[f"dni, K = 2 stages, {args.depth} x {TINY}"] / per_epoch - max(tiny_c)
    print(f"compute per step, one thread: stage 1 {c[0] * 1e3:.2f} ms, stage 2 {c[1] * 1e3:.2f} ms; "
          f"whole net {whole * 1e3:.2f} ms; loopback round trip of [{batch}, {args.width}] float32: {m * 1e3:.2f} ms")
    print(f"overhead o: {args.depth} x {TINY} in 2 stages {measured[f'dni, K = 2 stages, {args.depth} x {TINY}'] / per_epoch * 1e3:.2f} ms "
          f"per step, less its compute {max(tiny_c) * 1e3:.2f} ms (stages {tiny_c[0] * 1e3:.2f}, "
          f"{tiny_c[1] * 1e3:.2f}): o = {o * 1e3:.2f} ms per step")
    print(f"(the overhead the K = 2 run itself implies, its step less max c_k: "
          f"{(two / per_epoch - max(c)) * 1e3:.2f} ms)")
    model_two, model_one = (max(c) + o) * per_epoch, whole * per_epoch
    print(f"model, K = 2: (max c_k + o) = {model_two:.2f} s per epoch, measured {two:.2f} "
          f"(error {100 * (model_two - two) / two:+.0f}%; without o: {max(c) * per_epoch:.2f} s)")
    print(f"model, K = 1 on one thread: sum c_k = {model_one:.2f} s per epoch, measured {single:.2f} "
          f"(error {100 * (model_one - single) / single:+.0f}%)")
    s2 = single / one
    print(f"bound on 2 cores: in-process 2 threads gain s2 = {s2:.2f}x over 1 thread; a perfect 2-stage pipeline "
          f"({single / 2:.2f} s per epoch) would be {2 / s2:.2f}x the 2-thread run (1.4x needs s2 <= 1.43); "
          f"with the measured stages (max c_k + o) {one / model_two:.2f}x")

    (blocks,) = stage_compute(args, data, depth=3, ks=(3,))  # h1 | h2 | h3 and the head: a middle block alone
    b, top = blocks[1], blocks[2]
    h = max(top - b, 0.0)
    print(f"per block (W x W with its module): {b * 1e3:.2f} ms; head and loss: {h * 1e3:.2f} ms")
    print("model for a 64-block net (speed-up over one process on one core; one core per stage):")
    for k in (1, 2, 4, 8, 16, 32, 64):
        serial = 64 * b + h
        piped = (64 / k) * b + h + (o if k > 1 else 0.0)
        print(f"  K = {k:2d}: {serial / piped:5.2f}x   ({piped * 1e3:.2f} ms per step)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
