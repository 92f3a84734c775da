"""Cost of the resume state: bytes in the run file and seconds per checkpoint.

MNIST, 256-unit MLPs with batch norm (depth 6 and 50), batch 256, Adam: short
runs with a checkpoint every 5 steps, recorded with and without the resume state
(repeats alternate). A checkpoint's time is that of writing it
(``RunWriter.checkpoint``) plus capturing the resume state; the probe pass is
the same on both sides and left out. Bytes: one resume slot (the file holds two,
whatever the number of checkpoints) against one checkpoint's ``/params`` row.

    python benchmarks/bench_resume.py [--depths 6,50] [--repeats 3] [--data-dir DIR]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import h5py
from common import dataset, median, mnist_config, parser

from repanalysis.runfile.hdf5 import RunWriter
from repanalysis.training import resume, train


def timed_checkpoints(config, data, out: Path, keep_state: bool) -> list[float]:
    """Train ``config`` to ``out``; the seconds each checkpoint took to capture and write.

    The capture runs in the training thread and the write on the recorder's
    writer thread: each is timed on its own and the two are added per checkpoint.
    """
    captured, written = [], []
    write, capture = RunWriter.checkpoint, resume.capture

    def timed_write(self, *args, **kwargs):
        start = time.perf_counter()
        write(self, *args, **kwargs)
        written.append(time.perf_counter() - start)

    def timed_capture(rule, batches):
        start = time.perf_counter()
        state = capture(rule, batches) if keep_state else None
        captured.append(time.perf_counter() - start)
        return state

    RunWriter.checkpoint, resume.capture = timed_write, timed_capture
    try:
        train.train(config, out, overwrite=True, quiet=True, data=data)
    finally:
        RunWriter.checkpoint, resume.capture = write, capture
    return [a + b for a, b in zip(captured, written, strict=True)]


def slot_bytes(path: Path) -> tuple[int, int]:
    """Bytes of one resume slot and of one checkpoint's parameters and buffers."""
    with h5py.File(path, "r") as f:
        slot = sum(ds.nbytes for ds in f["resume/0"].values())
        params = sum(ds.nbytes // ds.shape[0] for ds in f["params"].values())
    return slot, params


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--depths", default="6,50")
    p.set_defaults(repeats=3, steps=20)
    args = p.parse_args()
    data = dataset(args)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.steps} steps, a checkpoint every 5, {args.repeats} repeats")
    for depth in map(int, args.depths.split(",")):
        config = mnist_config(args, depth=depth, record_every=5, eval_every=args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {True: Path(tmp) / "state.h5", False: Path(tmp) / "plain.h5"}
            times = {True: [], False: []}
            for _ in range(args.repeats):
                for keep in (False, True):
                    times[keep] += timed_checkpoints(config, data, runs[keep], keep)
            slot, params = slot_bytes(runs[True])
            sizes = {keep: path.stat().st_size for keep, path in runs.items()}
        with_state, without = median(times[True]), median(times[False])
        print(f"depth {depth}: one slot {slot / 2**20:.2f} MiB (parameters per checkpoint {params / 2**20:.2f} MiB); "
              f"file {sizes[False] / 2**20:.1f} -> {sizes[True] / 2**20:.1f} MiB; per checkpoint "
              f"{1e3 * without:.1f} -> {1e3 * with_state:.1f} ms (+{1e3 * (with_state - without):.1f} ms)")


if __name__ == "__main__":
    main()
