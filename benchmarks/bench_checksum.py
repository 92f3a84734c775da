"""Cost of the run file's Fletcher-32 checksums: writing and reading one run file with and without them.

The file is that of the benchmarks' network recorded with ``--rule sg`` (6
hidden layers of 256 units with batch norm, MNIST's 784 inputs, 200 probe
inputs, 11 checkpoints: activations, true gradients and signals of every
layer, every parameter and buffer, Adam's resume state), filled with random
float32 values and written through ``RunWriter`` directly, so the timings are
the file's alone, without training. Reading is every layer array and every
parameter at every checkpoint through ``RunFile``. With and without the
checksum alternate, each to a new file; printed: the medians and their ratio.

    python benchmarks/bench_checksum.py [--repeats 5] [--checkpoints 11]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from repanalysis.runfile import dtypes
from repanalysis.runfile.hdf5 import RunFile, RunWriter

DEPTH, WIDTH, INPUTS, OUTPUTS, PROBE = 6, 256, 784, 10, 200


def _contents(rng) -> tuple[dict, dict, dict]:
    """One checkpoint's layer arrays, parameters and resume state, of the benchmarks' network's shapes."""
    layers = {f"h{k + 1}": {kind: rng.standard_normal((PROBE, WIDTH), dtype=np.float32)
                            for kind in ("activations", "true_grad", "signal")} for k in range(DEPTH)}
    params = {}
    for k in range(DEPTH):
        params[f"model.blocks.{k}.linear.weight"] = rng.standard_normal((WIDTH, INPUTS if k == 0 else WIDTH),
                                                                        dtype=np.float32)
        for name in ("linear.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"):
            params[f"model.blocks.{k}.{name}"] = rng.standard_normal(WIDTH, dtype=np.float32)
        params[f"model.blocks.{k}.norm.num_batches_tracked"] = np.array(100, dtype=np.int64)
    params["model.head.weight"] = rng.standard_normal((OUTPUTS, WIDTH), dtype=np.float32)
    params["model.head.bias"] = rng.standard_normal(OUTPUTS, dtype=np.float32)
    resume = {f"optimizer.{name}.{key}": value for name, value in params.items() if value.dtype == np.float32
              for key in ("exp_avg", "exp_avg_sq")}
    resume.update({f"optimizer.{name}.step": np.array(100.0, dtype=np.float32) for name in params})
    return layers, params, resume


def write(path: Path, contents, checkpoints: int) -> None:
    layers, params, resume = contents
    writer = RunWriter(path, rule="sg", model="mlp", dataset="mnist", seed=0, config_json="{}",
                       task="classification", n_features=INPUTS, n_outputs=OUTPUTS, probe_index=np.arange(PROBE),
                       probe_labels=np.arange(PROBE) % OUTPUTS,
                       layers=[(name, WIDTH, "linear+batchnorm+relu") for name in layers])
    for c in range(checkpoints):
        writer.log({"step": float(c), "train_loss": 1.0})
        writer.checkpoint(c * 30, layers, params, resume)
        writer.evaluation({"step": float(c * 30), "test_loss": 1.0, "test_acc": 0.5})
    writer.close()


def read(path: Path) -> None:
    with RunFile(path) as run:
        for c in range(len(run.steps)):
            for layer in run.layers:
                for kind in ("activations", "true_grad", "signal"):
                    run.stored(layer, kind, c)
            run.params(c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpoints", type=int, default=11)
    args = p.parse_args()
    contents = _contents(np.random.default_rng(0))
    checked = dtypes.checksummed
    times = {(side, what): [] for side in ("with", "without") for what in ("write", "read")}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for i in range(args.repeats + 1):  # the first round warms up, and is not counted
            for side in ("with", "without"):
                dtypes.checksummed = checked if side == "with" else (lambda shape: {})
                path = Path(tmp) / f"{side}{i}.h5"
                try:
                    start = time.perf_counter()
                    write(path, contents, args.checkpoints)
                    wrote = time.perf_counter() - start
                finally:
                    dtypes.checksummed = checked
                with RunFile(path) as run:  # the filter is there, or not, as asked
                    assert run.file["layers/h1/activations"].fletcher32 == (side == "with")
                start = time.perf_counter()
                read(path)
                if i:
                    times[side, "write"].append(wrote)
                    times[side, "read"].append(time.perf_counter() - start)
                size = path.stat().st_size / 2**20
                path.unlink()
    median = {key: float(np.median(values)) for key, values in times.items()}
    print(f"run file of {size:.1f} MiB ({args.checkpoints} checkpoints, {DEPTH}x{WIDTH}, probe {PROBE}), "
          f"{args.repeats} repeats, medians:")
    print("| | without checksums | with Fletcher-32 | ratio |")
    print("|---|---|---|---|")
    for what in ("write", "read"):
        a, b = median["without", what], median["with", what]
        print(f"| {what} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f} |")


if __name__ == "__main__":
    main()
