"""The executor on 1 and 2 workers: ``reproduce --quick`` end to end, and the analysis of paper-preset runs.

1. ``repanalysis reproduce --quick --workers N --out DIR`` for N = 1 and 2, each
   in a fresh folder, as subprocesses (repeats alternate); wall time and CPU
   time (of every process of the command) of each, the ratio 1 worker / 2
   workers, and a check that the tables are the same. ``--timeline`` adds
   where the time of the 2-worker reproduction goes (``timeline``).
2. The analysis ``reproduce`` makes of the paper preset's runs (its measures,
   cell by cell), in this process and on a local cluster of 2 workers (its
   start and close included); the ratio and a check that the tables are the
   same. The full preset's runs take hours to train and are not kept here, so
   by default a smaller set is trained first (``sweep`` on 2 workers, not
   timed): ``--depths 5,10 --activations relu --seed-count 2 --steps 300`` on MNIST
   (8 runs, 500 probe inputs, checkpoints at steps 0 and 300). ``--runs DIR``
   analyses the runs of an existing paper reproduction (``DIR/runs``) instead.

Parallel speed-ups show only on an otherwise idle machine: where the kernel
groups processes by session (``/proc/sys/kernel/sched_autogroup_enabled``),
a busy machine gives this benchmark's session one share of the CPU however
many worker processes it starts. The CPU times show what the workers cost in
all, whatever the load.

    python benchmarks/bench_executor.py [--repeats 1] [--data-dir DIR] [--runs DIR] [--skip-quick | --skip-analysis] [--timeline]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import psutil  # a dependency of Dask distributed

from repanalysis.analysis.runs import analyze
from repanalysis.experiments import Overrides, preset
from repanalysis.experiments.reproduce import reproduce
from repanalysis.experiments.selection import FIRST
from repanalysis.experiments.sweep import sweep
from repanalysis.measures import RepanalysisWarning
from repanalysis.runtime.executor import Executor

ROOT = Path(__file__).resolve().parents[1]
PAPER_SLICE = Overrides(depths=[5, 10], activations=["relu"], seed_count=2, steps=300)


def reproduce_quick(workers: int, out: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and every process under it) of one quick reproduction.

    The CPU time is sampled every 0.1 s from each process of the tree (the local workers are forked by a server
    process and are not the command's children, so its children's time misses them); what a process spends after
    its last sample is missed, a few tenths of a second in all."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "repanalysis.cli", "reproduce", "--quick", "--workers",
                                str(workers), "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    cpu: dict[int, float] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
        time.sleep(0.1)
    if process.wait() != 0:
        raise SystemExit(f"reproduce --quick --workers {workers} failed")
    return time.perf_counter() - start, sum(cpu.values())


def timeline(workers: int, out: Path) -> None:
    """Where the time of ``reproduce --quick`` goes on a local cluster already started: per batch of tasks (Dask's
    task stream, tasks named by batch) its first start and last end and the workers' time in its tasks; the
    core-seconds of the workers that no task used; the CPU time of this process (the client, the scheduler and
    the work done here: tables, claims, report)."""
    with Executor(workers) as executor:
        executor.map(abs, [(-1,)] * workers, label="start", quiet=True)
        executor.client.get_task_stream()  # starts recording
        cpu, start, epoch = time.process_time(), time.perf_counter(), time.time()
        reproduce(out, quick=True, executor=executor, quiet=True)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        stream = executor.client.get_task_stream(start=epoch)
    batches: dict[str, list[float]] = {}
    busy = 0.0
    for task in stream:
        for span in task["startstops"]:
            if span["action"] == "compute":
                first, last, used = batches.setdefault(task["key"].rsplit("-", 1)[0], [math.inf, 0.0, 0.0])
                batches[task["key"].rsplit("-", 1)[0]] = [min(first, span["start"] - epoch),
                                                          max(last, span["stop"] - epoch),
                                                          used + span["stop"] - span["start"]]
                busy += span["stop"] - span["start"]
    print(f"timeline of reproduce --quick on {workers} workers (cluster started before): {wall:.1f} s", flush=True)
    for label, (first, last, used) in sorted(batches.items(), key=lambda item: item[1][0]):
        print(f"  {label:>8}: {first:5.1f} s to {last:5.1f} s, {used:5.1f} s in tasks")
    print(f"  workers idle {workers * wall - busy:.1f} of {workers * wall:.1f} core-seconds; "
          f"this process used {cpu:.1f} s of CPU", flush=True)


def same_tables(a: Path, b: Path) -> bool:
    """Whether every table in ``a/tables`` equals ``b``'s, run paths aside."""
    for path in sorted((a / "tables").glob("*.csv")):
        if path.read_text().replace(str(a), "") != (b / "tables" / path.name).read_text().replace(str(b), ""):
            return False
    return True


def paper_cells(run_dir: Path) -> tuple[list[list[Path]], list[str]]:
    """The paper preset's runs found in ``run_dir`` (a slice names its runs as the full preset does),
    grouped by cell as ``reproduce`` analyses them, and the preset's measures."""
    spec = preset("paper")
    cells: dict[tuple, list[Path]] = {}
    for r in spec.runs(choice=FIRST):  # run names do not depend on what a selection chose
        if (run_dir / r.name).is_file():
            cells.setdefault(r.cell, []).append(run_dir / r.name)
    return list(cells.values()), list(spec.experiments["depth"].measures)


def timed_analysis(cells, measures, workers: int) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    with Executor(workers) as executor:
        tables = [analyze(cell, measures=measures, quiet=True, executor=executor) for cell in cells]
    return time.perf_counter() - start, pd.concat(tables, ignore_index=True)


def compare_analysis(args, tmp: Path) -> None:
    """Part 2: the analysis of paper-preset runs in this process and on 2 workers."""
    if args.runs:
        run_dir = args.runs / "runs"
    else:
        run_dir = tmp / "paper" / "runs"
        start = time.perf_counter()
        with Executor(2) as executor:
            sweep(tmp / "paper", spec=preset("paper"), overrides=PAPER_SLICE, data_dir=args.data_dir,
                  executor=executor, quiet=True)
        print(f"trained the paper slice ({PAPER_SLICE}) in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    with Executor(2) as executor:
        executor.map(abs, [(-1,), (-2,)], label="nothing", quiet=True)
    print(f"a local cluster of 2 workers: started, ran 2 empty tasks and closed in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    cells, measures = paper_cells(run_dir)
    print(f"analysing {sum(map(len, cells))} runs in {len(cells)} cells", flush=True)
    serial, table_1 = timed_analysis(cells, measures, 1)
    print(f"analysis, in this process: {serial:.1f} s", flush=True)
    parallel, table_2 = timed_analysis(cells, measures, 2)
    print(f"analysis, 2 workers: {parallel:.1f} s; ratio {serial / parallel:.2f}; "
          f"tables the same: {table_1.equals(table_2)} ({len(table_1)} rows)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("REPANALYSIS_DATA", str(ROOT.parent / "shared" / "datasets")))
    p.add_argument("--runs", type=Path, help="a paper reproduction's folder whose runs/ to analyse")
    p.add_argument("--skip-quick", action="store_true", help="only the analysis part")
    p.add_argument("--skip-analysis", action="store_true", help="only the reproduce --quick part")
    p.add_argument("--timeline", action="store_true", help="also the timeline of reproduce --quick on 2 workers")
    args = p.parse_args()
    warnings.simplefilter("ignore", RepanalysisWarning)
    print(f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_quick:
            times: dict[int, list[float]] = {1: [], 2: []}
            for repeat in range(args.repeats):
                for workers in (1, 2):
                    wall, cpu = reproduce_quick(workers, tmp / f"quick{workers}_{repeat}")
                    times[workers].append(wall)
                    print(f"reproduce --quick --workers {workers}: {wall:.1f} s (CPU time of all its processes "
                          f"{cpu:.1f} s; load average now {os.getloadavg()[0]:.1f})", flush=True)
            best = {w: min(t) for w, t in times.items()}
            print(f"reproduce --quick: 1 worker {best[1]:.1f} s, 2 workers {best[2]:.1f} s, "
                  f"ratio {best[1] / best[2]:.2f} (fastest of {args.repeats}); tables the same: "
                  f"{same_tables(tmp / 'quick1_0', tmp / 'quick2_0')}", flush=True)
        if args.timeline:
            timeline(2, tmp / "timeline")
        if not args.skip_analysis:
            compare_analysis(args, tmp)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
