"""The cost account of a paper-preset grid: its wall time beside its floor, and where the rest goes.

Runs ``reproduce --preset paper`` on a slice of its grid (by default depths 20
and 50, ReLU, seeds 0 and 1: backprop and sg, 8 runs of 3000 steps) on a local
Dask cluster of ``--workers`` (1: in this process), in a fresh folder, and prints:

- the *floor*: the sum over the runs of a plain-PyTorch step doing the same
  arithmetic (backprop: an ``nn.Sequential`` of linear, batch norm and
  activation blocks and a head, one Adam; sg: the same cut at the module's
  interface, a linear label-conditioned module regressing the true gradient
  there, and a second Adam; ``bench_bounds.plain_sequential``), timed here on
  one thread as the tasks run, times the run's steps, divided by the workers;
- the *wall time* of the grid: the cluster's start (workers forked, what the
  tasks import) and ``reproduce`` to its report, and its ratio to the floor
  (target: 1.25);
- the *shares*: the workers' core-seconds (wall time x workers) by what they
  were spent on, timed inside the tasks by wrapping the functions that do
  each part (each part's own time, without the parts it calls): the training
  steps (``Rule.step``), evaluations (``train.evaluate``), recording (the
  probe pass and copies: ``Recorder.checkpoint`` without its file writes),
  file writes (``RunWriter``: creation, checkpoints, evaluations, metrics,
  closing), the rest of each training task (data, building, checks), the
  analysis tasks (of which reading the run files: ``_Run.load``), probes,
  figures; the work done in this process (claims, tables, the depth figures,
  the report), start-up, and what is left: idle workers (waiting at the end of
  a stage) and Dask's own overhead;
- the analysis against reading: the time of the analysis tasks against the time
  to read the run files' bytes once (each file read start to end, and every
  recorded array read through h5py), both from the page cache as the analysis
  finds them.

Timing figures need an otherwise idle machine; the shares' core-seconds
are less sensitive. A smaller grid checks that it runs, e.g.

    python benchmarks/bench_grid.py --steps 30 --depths 3,6
    python benchmarks/bench_grid.py [--depths 20,50] [--activations relu] [--seeds 2] [--steps 3000]
                                    [--workers 2] [--record-dtype float32] [--data-dir DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What the shares name: (share, module, attribute path of the function it wraps).
WRAPPED = [
    ("training: steps", "repanalysis.rules.base", "Rule.step"),
    ("training: evaluations", "repanalysis.training.train", "evaluate"),
    ("training: recording (probe pass, copies)", "repanalysis.runfile.recorder", "Recorder.checkpoint"),
    ("training: file writes", "repanalysis.runfile.hdf5", "RunWriter.__init__"),
    ("training: file writes", "repanalysis.runfile.hdf5", "RunWriter.checkpoint"),
    ("training: file writes", "repanalysis.runfile.hdf5", "RunWriter.evaluation"),
    ("training: file writes", "repanalysis.runfile.hdf5", "RunWriter.close"),
    ("training: file writes", "repanalysis.runfile.hdf5", "RunWriter.log"),
    ("training: the rest of the task (data, building, checks)", "repanalysis.experiments.sweep", "train_task"),
    ("analysis: reading run files", "repanalysis.analysis.runs", "_Run.load"),
    ("analysis: measures", "repanalysis.analysis.runs", "_task"),
    ("probes", "repanalysis.probes.table", "_probe_task"),
    ("figures", "figures.draw", "_draw"),
]
HERE = [  # in this process
    ("here: claims", "repanalysis.experiments.claims", "quantities"),
    ("here: claims", "repanalysis.experiments.claims", "judge"),
    ("here: depth figures", "repanalysis.figures.depth", "draw_depth_figures"),
    ("here: report", "repanalysis.experiments.report", "write_report"),
]


def install(wrapped) -> None:
    """Wrap each function of ``wrapped`` so that its own time (less that of wrapped functions it calls) adds
    to its share in ``repanalysis._grid_costs``; in whichever process this runs (a worker, or here)."""
    import functools
    import importlib

    import repanalysis

    if getattr(repanalysis, "_grid_costs", None) is not None:
        return
    totals: dict[str, float] = defaultdict(float)
    lock, local = threading.Lock(), threading.local()
    repanalysis._grid_costs = totals

    def wrap(share, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # time of wrapped calls inside this one
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                inner = stack.pop()
                if stack:
                    stack[-1] += spent
                with lock:
                    totals[share] += spent - inner
        return timed

    for share, module_name, path in wrapped:
        module = importlib.import_module(module_name.replace("figures.", "repanalysis.figures.", 1)
                                         if module_name.startswith("figures.") else module_name)
        owner, *rest = path.split(".")
        if rest:
            cls = getattr(module, owner)
            setattr(cls, rest[0], wrap(share, cls.__dict__[rest[0]]))
        else:
            setattr(module, owner, wrap(share, getattr(module, owner)))


def collect() -> dict[str, float]:
    import repanalysis

    return dict(getattr(repanalysis, "_grid_costs", None) or {})


def plain_step_seconds(rule: str, depth: int, width: int, activation: str, data, steps: int = 20,
                       repeats: int = 3) -> float:
    """Seconds per step of the plain-PyTorch step of ``rule``'s arithmetic (module docstring), one thread."""
    import torch
    from bench_bounds import alternate, batches, plain_sequential
    from torch import nn

    from repanalysis.rules.synthetic import default_sg_at

    torch.set_num_threads(1)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    net, opt = plain_sequential(data.n_features, data.n_outputs, depth, width, "cpu", act)
    xs = batches(data, steps)
    if rule == "backprop":
        def step(x, y):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    else:
        cut = 3 * (default_sg_at(depth)[0] + 1)  # the preset's one module, in the middle
        lower, upper = net[:cut], net[cut:]
        module = nn.Linear(width + data.n_outputs, width)
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
        module_opt = torch.optim.Adam(module.parameters(), lr=1e-3)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            module_opt.zero_grad(set_to_none=True)
            h = lower(x)
            top = h.detach().requires_grad_(True)
            nn.functional.cross_entropy(upper(top), y).backward()
            label = nn.functional.one_hot(y, data.n_outputs).to(x.dtype)
            prediction = module(torch.cat([top.detach(), label], 1))
            h.backward(prediction.detach() / len(y))
            (prediction - top.grad * len(y)).pow(2).sum(1).mean().backward()
            opt.step()
            module_opt.step()

    def run():
        for x, y in xs:
            step(x, y)
    return alternate({"plain": run}, repeats)["plain"] / len(xs)


def file_read_seconds(paths: list[Path]) -> tuple[float, float, int]:
    """Seconds to read the files' bytes start to end, and every recorded array through h5py; their bytes."""
    import h5py

    from repanalysis.runfile import dtypes

    start = time.perf_counter()
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 * 2**20):
                total += len(chunk)
    raw = time.perf_counter() - start
    start = time.perf_counter()
    for path in paths:
        with h5py.File(path, "r") as f:
            for layer in f["layers"].values():
                for ds in layer.values():
                    dtypes.read(ds)
    return raw, time.perf_counter() - start, total


def main() -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="20,50")
    p.add_argument("--activations", default="relu")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, help="steps per run (default: the preset's, 3000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--record-dtype", default="float32", help="the runs' recording dtype (a spec setting)")
    default = os.environ.get("REPANALYSIS_DATA", str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--data-dir", default=default, help="folder with the MNIST files (default %(default)s)")
    p.add_argument("--keep", type=Path, help="write the reproduction here and keep it (default: a temporary folder)")
    args = p.parse_args()

    import dataclasses

    from repanalysis.datasets import load
    from repanalysis.experiments import Overrides, preset
    from repanalysis.experiments.reproduce import reproduce
    from repanalysis.runtime.executor import Executor

    imports = time.perf_counter() - started
    spec = preset("paper")
    exp = spec.experiments["depth"]
    # The grid's own runs at the preset's lr (1e-3, a candidate of both rules): the selection runs
    # before them are a second grid, and what they cost is this one's account again.
    spec = dataclasses.replace(spec, experiments={"depth": dataclasses.replace(
        exp, select=None, settings={**exp.settings, "record_dtype": args.record_dtype})})
    overrides = Overrides(depths=[int(d) for d in args.depths.split(",")], activations=args.activations.split(","),
                          seeds=args.seeds, steps=args.steps)
    runs = spec.runs(overrides=overrides)
    data = load("mnist", data_dir=args.data_dir)
    floor_per_step = {}
    for r in runs:
        c = r.config
        key = (c.rule, c.depth, c.width, c.activation)
        if key not in floor_per_step:
            floor_per_step[key] = plain_step_seconds(c.rule, c.depth, c.width, c.activation, data)
    steps_core = sum(floor_per_step[(r.config.rule, r.config.depth, r.config.width, r.config.activation)]
                     * r.config.steps for r in runs)
    floor = steps_core / args.workers
    print(f"{len(runs)} runs ({', '.join(sorted({r.config.rule for r in runs}))}; depths {args.depths}; "
          f"{args.activations}; {args.seeds} seeds; {runs[0].config.steps} steps; record dtype {args.record_dtype}) "
          f"on {args.workers} worker(s); load average at the start {os.getloadavg()[0]:.2f}", flush=True)
    for (rule, depth, width, activation), seconds in sorted(floor_per_step.items()):
        print(f"  plain-PyTorch step, {rule} depth {depth} x {width} {activation}: {1e3 * seconds:.1f} ms")

    with contextlib.ExitStack() as stack:
        out = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.keep and out.exists():
            shutil.rmtree(out)
        install(HERE + (WRAPPED if args.workers == 1 else []))
        start = time.perf_counter()
        executor = stack.enter_context(Executor(args.workers))
        if not executor.in_process:
            executor.map(abs, [(-1,)] * args.workers, label="start", quiet=True)
            executor.client.run(install, WRAPPED)
        startup = time.perf_counter() - start
        reproduce(out, spec=spec, overrides=overrides, data_dir=args.data_dir, executor=executor, quiet=True)
        wall = time.perf_counter() - start
        shares: dict[str, float] = defaultdict(float)
        parts = [collect()] + ([] if executor.in_process else list(executor.client.run(collect).values()))
        for part in parts:
            for share, seconds in part.items():
                shares[share] += seconds
        files = sorted((out / "runs").glob("*.h5"))
        raw, arrays, size = file_read_seconds(files)
    end_load = os.getloadavg()[0]

    cores = wall * args.workers
    here = sum(v for k, v in shares.items() if k.startswith("here"))
    in_tasks = sum(v for k, v in shares.items() if not k.startswith("here"))
    rows = [(k, shares[k]) for k in dict.fromkeys(s for s, _, _ in WRAPPED + HERE) if k in shares]
    rows.append(("start-up: the cluster (workers forked, their imports)", startup * args.workers))
    rows.append(("start-up: this script's imports (not in the wall time)", imports))
    rows.append(("the rest: workers idle, Dask, this process's other work",
                 cores - in_tasks - startup * args.workers - (here if executor.in_process else 0)))
    print(f"\nwall time {wall:.1f} s against the floor {floor:.1f} s: {wall / floor:.2f}x (target 1.25x); "
          f"load average at the end {end_load:.2f}")
    print(f"{'share':<58} {'core-s':>8} {'of wall x workers':>18}")
    for name, seconds in rows:
        print(f"{name:<58} {seconds:8.1f} {seconds / cores:17.1%}")
    beside = "" if executor.in_process else ", on its own core beside the workers"
    print(f"(the steps' floor is {steps_core:.1f} core-s, {steps_core / cores:.1%}; "
          f"work in this process: {here:.1f} s{beside})")
    analysis = shares.get("analysis: measures", 0.0) + shares.get("analysis: reading run files", 0.0)
    print(f"\nanalysis: {analysis:.1f} core-s in its tasks, {shares.get('analysis: reading run files', 0.0):.1f} "
          f"of them loading arrays; the {len(files)} run files ({size / 2**30:.2f} GiB) read start to end in "
          f"{raw:.1f} s ({size / 2**20 / max(raw, 1e-9):.0f} MiB/s), every recorded array through h5py in "
          f"{arrays:.1f} s; analysis / reading the arrays {analysis / max(arrays, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
