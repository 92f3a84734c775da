"""Wall time per epoch of dni in stages (``train --workers K``) against in-process dni and backprop,
and a pipeline model of the speed-up for K up to 64 stages, from measured compute and communication.

Network (balanced at K = 2): MNIST, 4 hidden layers of ``--width`` (default 512) units with batch
norm, dni (a linear module after every block), batch 256, Adam. Stage 1 holds h1-h2 and their
modules, stage 2 h3-h4, their modules and the head: 784W + 3W² against 4W² + 10W multiply-adds
per sample. Every configuration uses ``--threads`` (default 2) threads in all: in-process runs
``torch.set_num_threads(threads)``, K stages 1 thread each (threads // K). A last row runs dni in
one process on one thread: if it beats the row with ``--threads``, the threads are not paying (under
load, two threads of one process wait for each other) and the ratio against it says little.

Per epoch: ``t(s + E steps) - t(s steps)`` with ``E`` the steps of one epoch and ``s`` = ``--lead``
(20) steps, which leaves out the fixed start-up (spawning the stages, loading data) and the pipeline's
filling, reported apart; the median of ``--repeats`` (1) such pairs, configurations interleaved. No
recording, evaluation at step 0 and at the end only (the same in both runs of a pair). At load average 8
the script took 7 min 15 s (3 min 28 s of CPU time; before the last row was added), so a few minutes on
the idle 2-core machine; ``--epoch-steps N`` times N steps instead of an epoch, for a shorter run.

Model: a stage's step costs its compute ``c_k`` (forward, backward, module and block updates,
timed alone on one thread) plus ``m``, the time to send its activations up and its gradient down
and receive theirs (timed as a loopback gloo ping-pong of one [256, W] float32 tensor: ``m`` = one
round trip). In the asynchronous pipeline, steps overlap, so one step of the whole net takes
``max_k c_k + m``; in one process it takes ``Σ_k c_k``. For K up to 64 the net is 64 equal blocks
(W x W, with a module; ``b`` each) and the head and loss (``h``, on the top stage only):
``speed-up(K) = (64 b + h) / ((64 / K) b + h + m)`` (``m`` = 0 for K = 1). Assumes one core per
stage, a network that splits evenly, and ``m`` independent of K (each stage talks to two
neighbours only); start-up and the K - 1 steps that fill the pipeline are left out (an epoch has 234).

    python benchmarks/bench_pipeline.py [--width 512] [--threads 2] [--repeats 1] [--data-dir DIR] [--quick]
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
from repanalysis.pipeline.launch import stages
from repanalysis.train import Batches, build, train


def config(args, **overrides) -> TrainConfig:
    base = dict(dataset="digits" if args.quick else "mnist", depth=4, width=args.width, batch_size=256 if not args.quick else 64,
                rule="dni", record_every=10**9, eval_every=10**9, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


def epoch_time(args, data, **overrides) -> tuple[float, float]:
    """Seconds per epoch (``t(lead + epoch) - t(lead)``, scaled to a whole epoch when ``--epoch-steps`` is
    shorter) and the start-up seconds (``t(lead)`` less ``lead`` steps at that rate) of ``train``."""
    per_epoch = len(data.x_train) // config(args).batch_size
    span = args.epoch_steps or per_epoch
    times = []
    for steps in (args.lead, args.lead + span):
        c = config(args, steps=steps, **overrides)
        start = time.perf_counter()
        train(c, None, data=data, quiet=True)
        times.append(time.perf_counter() - start)
    step = (times[1] - times[0]) / span
    return step * per_epoch, times[0] - args.lead * step


def stage_compute(args, data, depth: int, k: int, steps: int = 30) -> list[float]:
    """Median seconds per step of each of ``k`` stages of a dni net of ``depth`` blocks, alone, one thread."""
    torch.set_num_threads(1)
    c = config(args, depth=depth, stages=k).resolved()
    rule = build(c, data.task, data.n_features, data.n_outputs)
    parts = stages(rule)
    stream = Batches(len(data.x_train), c.batch_size, 0)
    out = []
    for part in parts:
        times = []
        width_in = rule.network.blocks[part.first].linear.in_features
        for step in range(1, steps + 1):
            idx = next(stream)
            x = data.x_train[idx] if part.first == 0 else torch.randn(c.batch_size, width_in)
            y = data.y_train[idx]
            start = time.perf_counter()
            trace, leaf = part.forward(x)
            back = part.backward(trace, leaf, y)
            part.learn(back)
            part.update(step)
            if part.boundary is not None:
                part.learn_boundary(trace.hidden[-1].detach(), y, torch.randn_like(trace.hidden[-1]) * 1e-3)
            times.append(time.perf_counter() - start)
        out.append(sorted(times)[len(times) // 2])
    torch.set_num_threads(args.threads)
    return out


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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lead", type=int, default=20, help="steps timed alone, subtracted (start-up)")
    p.add_argument("--epoch-steps", type=int, default=0, help="time this many steps, not a whole epoch")
    p.set_defaults(repeats=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = load("digits") if args.quick else load("mnist", data_dir=args.data_dir)
    batch = config(args).batch_size
    print(f"{'digits' if args.quick else 'MNIST'}: {len(data.x_train)} training inputs, batch {batch}, "
          f"{len(data.x_train) // batch} steps per epoch; 4 x {args.width} dni; {args.threads} threads in all")
    rows = [("backprop, in process", dict(rule="backprop"), args.threads),
            ("dni, in process (K = 1)", {}, args.threads),
            ("dni, K = 2 stages", dict(stages=2), args.threads),
            ("dni, in process, 1 thread", {}, 1)]  # what one stage's thread could do alone: a check on the threads
    times = {name: [] for name, _, _ in rows}
    train(config(args, steps=1), None, data=data, quiet=True)  # warm-up: the first run imports seconds of modules
    for _ in range(args.repeats):
        for name, overrides, threads in rows:
            torch.set_num_threads(threads)
            times[name].append(epoch_time(args, data, **overrides))
    torch.set_num_threads(args.threads)
    measured = {}
    for name, _, _ in rows:
        each, startup = sorted(times[name])[len(times[name]) // 2]
        measured[name] = each
        print(f"{name:28s} {each:7.2f} s per epoch   (start-up {startup:5.2f} s)", flush=True)
    base = measured["dni, in process (K = 1)"]
    print(f"speed-up of K = 2 against in-process dni: {base / measured['dni, K = 2 stages']:.2f}x; "
          f"against in-process backprop: {measured['backprop, in process'] / measured['dni, K = 2 stages']:.2f}x")

    steps_per_epoch = len(data.x_train) // batch
    c = stage_compute(args, data, depth=4, k=2)
    m = round_trip((batch, args.width))
    whole = sum(stage_compute(args, data, depth=4, k=1))
    print(f"compute per step, one thread: stage 1 {c[0] * 1e3:.2f} ms, stage 2 {c[1] * 1e3:.2f} ms; "
          f"whole net {whole * 1e3:.2f} ms; loopback round trip of [{batch}, {args.width}] float32: {m * 1e3:.2f} ms")
    print(f"model, K = 2: {(max(c) + m) * steps_per_epoch:.2f} s per epoch (measured "
          f"{measured['dni, K = 2 stages']:.2f}); K = 1 on one thread: {whole * steps_per_epoch:.2f} s")

    blocks = stage_compute(args, data, depth=3, k=3)  # h1 | h2 | h3 and the head: a middle block alone
    b, top = blocks[1], blocks[2]
    h = max(top - b, 0.0)
    print(f"per block (W x W with its module): {b * 1e3:.2f} ms; head and loss: {h * 1e3:.2f} ms")
    print("model for a 64-block net (speed-up over one process on one core):")
    for k in (1, 2, 4, 8, 16, 32, 64):
        one = 64 * b + h
        piped = (64 / k) * b + h + (m if k > 1 else 0.0)
        print(f"  K = {k:2d}: {one / piped:5.2f}x   ({piped * 1e3:.2f} ms per step)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
