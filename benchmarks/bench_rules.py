"""Step time of each rule against backprop, same network and batches, in one process.

6 hidden layers x 256 units with batch norm on MNIST, batch 256. Each repeat
times ``--steps`` training steps (no recording) per rule, rules interleaved;
the table gives median seconds per step and the ratio to backprop.

    python benchmarks/bench_rules.py [--steps 300] [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

from common import dataset, median, mnist_config, parser, timed

from repanalysis.training.train import train

RULES = ("backprop", "sg", "dni", "cdni", "fa", "dfa")


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = dataset(args)
    times = {rule: [] for rule in RULES}
    for rule in RULES:  # warm-up
        train(mnist_config(args, rule=rule, steps=5), None, quiet=True, data=data, device=args.device)
    for _ in range(args.repeats):
        for rule in RULES:
            config = mnist_config(args, rule=rule, record_every=10**9, eval_every=10**9)
            steps = config.steps
            times[rule].append(timed(lambda: train(config, None, quiet=True, data=data, device=args.device)) / steps)
    base = median(times["backprop"])
    print(f"| rule | ms per step (median of {args.repeats}) | ratio to backprop |")
    print("|---|---|---|")
    for rule in RULES:
        print(f"| {rule} | {1000 * median(times[rule]):.2f} | {median(times[rule]) / base:.2f} |")


if __name__ == "__main__":
    main()
