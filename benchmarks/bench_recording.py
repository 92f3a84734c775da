"""Cost of recording: the same training run with and without a run file, in one process.

6 hidden layers x 256 units with batch norm on MNIST, the default cadence
(a checkpoint every steps/10 steps, 200 probe inputs), each recorded run to a
new file (replacing an existing one, with ``--overwrite``, costs some 12 ms
more at the end: ext4 starts writing the new file back when it is renamed over
the old, and closing it waits). Runs alternate, so
drifts in machine speed hit both sides; printed: the ratio of the medians,
the median of the pairs' ratios, and the recording's own time (the seconds
spent in the recorder's calls and the run file's opening, timed inside each
recorded run) over the median plain run. The last is the cost as accounted;
the ratios also see what recording does to the training around it (caches),
and the machine's drift (on the shared 2-core machine, ±20% between minutes:
more than the effect at 3-4 s a run).

    python benchmarks/bench_recording.py [--steps 300] [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

from common import dataset, median, mnist_config, parser, timed

from repanalysis.runfile.hdf5 import RunWriter
from repanalysis.runfile.recorder import Recorder
from repanalysis.training.train import train

TIMED = ((Recorder, ("checkpoint", "evaluation", "log", "close")), (RunWriter, ("__init__",)))


def _accounting(spent: list[float]):
    """Wrap the recorder's calls and the writer's opening so that each adds its seconds to ``spent[0]``
    (not nested: a recorder call opens no writer); returns a function that unwraps them."""
    originals = []
    for cls, names in TIMED:
        for name in names:
            original = getattr(cls, name)

            @functools.wraps(original)
            def timed_call(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - start

            originals.append((cls, name, original))
            setattr(cls, name, timed_call)

    def undo():
        for cls, name, original in originals:
            setattr(cls, name, original)
    return undo


def measure(config, data, device, repeats: int) -> dict[str, float]:
    """Seconds of plain and recorded runs (medians), the median of the pairs' ratios, the recording's own
    seconds (median) and the run file's size in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        train(config, None, quiet=True, data=data, device=device)  # warm-up
        plain, recorded, own = [], [], []
        for i in range(repeats):
            plain.append(timed(lambda: train(config, None, quiet=True, data=data, device=device)))
            out = Path(tmp) / f"run{i}.h5"  # a new file, as a run usually writes
            spent = [0.0]
            undo = _accounting(spent)
            try:
                recorded.append(timed(lambda: train(config, out, quiet=True, data=data, device=device)))
            finally:
                undo()
            own.append(spent[0])
            size = out.stat().st_size / 2**20
            out.unlink()
    return {"plain": median(plain), "recorded": median(recorded), "size": size, "own": median(own),
            "pairs": median(r / p for r, p in zip(recorded, plain))}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    config = mnist_config(args)
    m = measure(config, dataset(args), args.device, args.repeats)
    cfg = config.resolved()
    print(f"{cfg.steps} steps, checkpoint every {cfg.record_every} ({cfg.steps // cfg.record_every + 1} "
          f"checkpoints), probe {cfg.probe_size}, device {args.device}, {args.repeats} repeats")
    print(f"without recording: median {m['plain']:.3f} s")
    print(f"with recording:    median {m['recorded']:.3f} s  (run file {m['size']:.1f} MiB)")
    print(f"ratio of the medians {m['recorded'] / m['plain']:.3f}; median of the pairs' ratios {m['pairs']:.3f}")
    print(f"the recording's own time: median {m['own']:.3f} s a run, {100 * m['own'] / m['plain']:.1f}% "
          f"of the plain run")


if __name__ == "__main__":
    main()
