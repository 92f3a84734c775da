"""Cost of recording: the same training run with and without a run file, in one process.

6 hidden layers x 256 units with batch norm on MNIST, the default cadence
(a checkpoint every steps/10 steps, 200 probe inputs). Runs alternate, so
drifts in machine speed hit both sides; the medians and their ratio are printed.

    python benchmarks/bench_recording.py [--steps 300] [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import dataset, median, mnist_config, parser, timed

from repanalysis.train import train


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = dataset(args)
    config = mnist_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.h5"
        train(config, None, quiet=True, data=data, device=args.device)  # warm-up
        plain, recorded = [], []
        for _ in range(args.repeats):
            plain.append(timed(lambda: train(config, None, quiet=True, data=data, device=args.device)))
            recorded.append(timed(lambda: train(config, out, overwrite=True, quiet=True, data=data,
                                                device=args.device)))
        size = out.stat().st_size
    ratio = median(recorded) / median(plain)
    cfg = config.resolved()
    print(f"{cfg.steps} steps, checkpoint every {cfg.record_every} ({cfg.steps // cfg.record_every + 1} "
          f"checkpoints), probe {cfg.probe_size}, device {args.device}, {args.repeats} repeats")
    print(f"without recording: median {median(plain):.3f} s")
    print(f"with recording:    median {median(recorded):.3f} s  (run file {size / 2**20:.1f} MiB)")
    print(f"ratio {ratio:.3f}  (overhead {100 * (ratio - 1):.1f}%)")


if __name__ == "__main__":
    main()
