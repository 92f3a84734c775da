"""Every rule on a 3-block CNN on MNIST: test accuracy after one epoch, step time, and the cost of a checkpoint.

The network is ``repanalysis train --model cnn --depth 3`` (32 channels, 3x3
kernels, batch norm, ReLU, 2x2 max pooling; 28 -> 14 -> 7 -> 4), batch 256,
Adam 1e-3, every rule on its defaults; one epoch is 234 steps. backprop and
cdni (the target: cdni within 1.5 points of backprop) run for ``--seeds``,
dni, fa and dfa for ``--other-seeds``. Each run trains exactly as ``train``
does without a run file (``build``, ``Batches``, ``Rule.step``), so the step
time is the training steps alone; the test accuracy is measured once at the
end. Then ``Recorder.checkpoint`` (the default 200 probe inputs, every
parameter, an HDF5 write) is timed on the backprop network in a plain loop,
against its training steps. Meant to take 10-12 minutes on two idle cores.

    python benchmarks/bench_cnn.py [--steps 234] [--seeds 0 1 2] [--other-seeds 0] [--channels 32]
                                   [--data-dir DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import parser

from repanalysis import Recorder
from repanalysis.config import TrainConfig
from repanalysis.datasets import load
from repanalysis.nn import losses
from repanalysis.training.parts import Batches, build, evaluate
from repanalysis.training.train import choose_device

RULES = ("backprop", "cdni", "dni", "fa", "dfa")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(config: TrainConfig, data, device):
    """``(test accuracy, seconds per step, rule)`` of one training run without recording."""
    config = config.resolved()
    rule = build(config, data.task, data.n_features, data.n_outputs, device)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)
    x, y = data.x_train.to(device), data.y_train.to(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(config.steps):
        i = next(stream).to(device)
        rule.step(x[i], y[i])
    sync(device)
    seconds = (time.perf_counter() - start) / config.steps
    return evaluate(rule, data, device)["test_acc"], seconds, rule


def checkpoint_cost(rule, data, device, probe_size: int, repeats: int = 5) -> float:
    """Median seconds of one ``Recorder.checkpoint`` of ``rule``'s network, every block recorded."""
    net = rule.network
    index = data.probe_index(probe_size)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        with Recorder(Path(tmp) / "run.h5", net, dict(zip(net.interfaces, net.blocks)),
                      (data.x_test[index], data.y_test[index]), lambda out, y: losses.loss(data.task, out, y)) as rec:
            for step in range(repeats):
                sync(device)
                start = time.perf_counter()
                rec.checkpoint(step)
                sync(device)
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of backprop and cdni")
    p.add_argument("--other-seeds", type=int, nargs="+", default=[0], help="seeds of dni, fa and dfa")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--rules", nargs="+", default=list(RULES), help="backprop first: the ratios are against it")
    p.set_defaults(steps=None)
    args = p.parse_args()
    device = choose_device(args.device)
    data = load("digits") if args.quick else load("mnist", data_dir=args.data_dir)
    steps = args.steps or len(data.x_train) // 256
    seeds = {rule: args.seeds if rule in ("backprop", "cdni") else args.other_seeds for rule in args.rules}
    acc = {rule: {} for rule in args.rules}
    per_step = {rule: [] for rule in args.rules}
    kept = None
    began = time.perf_counter()
    for seed in sorted({s for rule in args.rules for s in seeds[rule]}):
        for rule in (r for r in args.rules if seed in seeds[r]):
            config = TrainConfig(rule=rule, dataset=data.name, model="cnn", depth=3, channels=args.channels,
                                 batch_norm=True, steps=steps, batch_size=256, lr=1e-3, seed=seed)
            a, s, trained = run(config, data, device)
            acc[rule][seed] = a
            per_step[rule].append(s)
            kept = kept or (trained if rule == "backprop" else None)
            print(f"seed {seed} {rule}: test accuracy {100 * a:.2f}%, {1000 * s:.1f} ms/step "
                  f"({time.perf_counter() - began:.0f} s so far)", flush=True)
    print(f"\n{data.name}, 3-block CNN ({args.channels} channels), {steps} steps of batch 256, device {device}\n")
    print("| rule | test accuracy by seed | mean | ms/step | ratio to backprop |")
    print("|---|---|---|---|---|")
    base = statistics.median(per_step[args.rules[0]])
    for rule in args.rules:
        ms = statistics.median(per_step[rule])
        cells = ", ".join(f"{100 * a:.2f}% ({seed})" for seed, a in acc[rule].items())
        mean = 100 * statistics.mean(acc[rule].values())
        print(f"| {rule} | {cells} | {mean:.2f}% | {1000 * ms:.1f} | {ms / base:.2f} |")
    if "backprop" in acc and "cdni" in acc:
        both = [s for s in acc["cdni"] if s in acc["backprop"]]
        gaps = [100 * (acc["backprop"][s] - acc["cdni"][s]) for s in both]
        print(f"\ncdni behind backprop: {statistics.mean(gaps):.2f} points on average "
              f"({', '.join(f'{g:.2f}' for g in gaps)} by seed; target: at most 1.5)")
    if kept is not None:
        cost = checkpoint_cost(kept, data, device, 200)
        step = statistics.median(per_step["backprop"])
        print(f"\nRecorder.checkpoint (200 probe inputs, 3 maps, every parameter): {1000 * cost:.1f} ms "
              f"= {cost / step:.1f} backprop steps")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
