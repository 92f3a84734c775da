"""Test accuracy of cdni against backprop on MNIST: 4 x 256 batch-norm MLP, 3 epochs.

Batch 256 (234 full batches an epoch, so 702 steps), Adam at 1e-3 for the
network and for the linear, label-conditioned modules; one row per seed.

    python benchmarks/mnist_accuracy.py [--seeds 0 1 2] [--data-dir DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import statistics

from common import parser

from repanalysis.config import TrainConfig
from repanalysis.datasets import load
from repanalysis.training.train import train

RULES = ("backprop", "cdni")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    data = load("mnist", data_dir=args.data_dir)
    steps = args.epochs * (len(data.x_train) // 256)
    acc = {rule: [] for rule in RULES}
    print(f"| seed | {' | '.join(RULES)} |\n|---|---|---|")
    for seed in args.seeds:
        for rule in RULES:
            config = TrainConfig(rule=rule, dataset="mnist", model="mlp", depth=4, width=256, batch_norm=True,
                                 steps=steps, batch_size=256, lr=1e-3, seed=seed)
            acc[rule].append(train(config, None, quiet=True, data=data, device=args.device).last_eval["test_acc"])
        print(f"| {seed} | " + " | ".join(f"{100 * acc[r][-1]:.2f}%" for r in RULES) + " |")
    summary = [f"{100 * statistics.mean(acc[r]):.2f}%" for r in RULES]
    print(f"| mean | {' | '.join(summary)} |")


if __name__ == "__main__":
    main()
