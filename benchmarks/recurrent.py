"""DNI against truncated BPTT on recurrent tasks: the README's "Recurrent networks" table.

Copy: the longest length solved (below 0.15 bits per output symbol on 256
fresh sequences, scored every 10 steps) within a fixed number of steps, at
T = 2 and 3 and with full BPTT. Character-level language modelling on
tinyshakespeare (first 90% train, last 10% held out, sequences of 50
characters): held-out bits per character after a fixed number of steps, at
T = 5 and with full BPTT (T = 50). LSTM of 128 units, batch 32, Adam at 3e-3
(the DNI module at 3e-4); one thread; one row per setting, every seed's
number and their mean.

    python benchmarks/recurrent.py [--seeds 1 2 3] [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from repanalysis.training.recurrent import RecurrentConfig, train_recurrent

ROOT = Path(__file__).resolve().parents[1]
#: (task, rule, bptt) of each row: the comparisons first, the full-BPTT references last.
SETTINGS = [("copy", "backprop", 2), ("copy", "dni", 2), ("copy", "backprop", 3), ("copy", "dni", 3),
            ("charlm", "backprop", 5), ("charlm", "dni", 5), ("copy", "backprop", None), ("charlm", "backprop", None)]


def config(task: str, rule: str, bptt: int | None, seed: int, args) -> RecurrentConfig:
    common = dict(task=task, rule=rule, bptt=bptt, seed=seed, hidden=128, batch_size=32, lr=3e-3, sg_lr=3e-4)
    if task == "copy":
        steps = 30 if args.quick else args.copy_steps
        return RecurrentConfig(steps=steps, eval_every=10, **common)
    steps = 10 if args.quick else args.lm_steps
    text = Path(args.data_dir) / "tinyshakespeare" / "input.txt"
    return RecurrentConfig(steps=steps, eval_every=steps, seq_length=50, text=str(text), **common)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("REPANALYSIS_DATA", str(ROOT.parent / "shared" / "datasets")),
                   help="folder holding tinyshakespeare/input.txt (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--copy-steps", type=int, default=3000)
    p.add_argument("--lm-steps", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="a few steps of each: a smoke run")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| task | rule | T | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | seconds per run |")
    print("|---|---|---|" + "---|" * (len(args.seeds) + 2))
    for task, rule, bptt in SETTINGS:
        values, start = [], time.perf_counter()
        for seed in args.seeds:
            score = train_recurrent(config(task, rule, bptt, seed, args), None, quiet=True).score
            values.append(score["longest"] if task == "copy" else score["test_bits"])
        seconds = (time.perf_counter() - start) / len(args.seeds)
        shown = [str(v) if task == "copy" else f"{v:.3f}" for v in values]
        mean = statistics.mean(values)
        mean_text = f"{mean:.1f}" if task == "copy" else f"{mean:.3f}"
        print(f"| {task} | {rule} | {bptt or 'full'} | {' | '.join(shown)} | {mean_text} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
