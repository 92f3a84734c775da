"""The executor on 1 and 2 workers: ``reproduce --quick`` end to end, and the analysis of paper-preset runs.

1. ``repanalysis reproduce --quick --workers N --out DIR`` for N = 1 and 2, each
   in a fresh folder, as subprocesses (repeats alternate); wall time of each,
   the ratio 1 worker / 2 workers, and a check that the tables are the same.
2. The analysis ``reproduce`` makes of the paper preset's runs (its measures,
   cell by cell), in this process and on a local cluster of 2 workers (its
   start and close included); the ratio and a check that the tables are the
   same.

Parallel speed-ups show only on an otherwise idle machine: where the kernel
groups processes by session (``/proc/sys/kernel/sched_autogroup_enabled``),
a busy machine gives this benchmark's session one share of the CPU however
many worker processes it starts. The CPU time printed beside each
reproduction shows what the workers cost in all. The full preset's runs take hours to train and are not kept here, so
   by default a smaller set is trained first (``sweep`` on 2 workers, not
   timed): ``--depths 5,10 --activations relu --seeds 2 --steps 300`` on MNIST
   (8 runs, 500 probe inputs, checkpoints at steps 0 and 300). ``--runs DIR``
   analyses the runs of an existing paper reproduction (``DIR/runs``) instead.

    python benchmarks/bench_executor.py [--repeats 1] [--data-dir DIR] [--runs DIR] [--skip-quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from repanalysis.analysis import RepanalysisWarning
from repanalysis.analysis.runs import analyze
from repanalysis.executor import Executor
from repanalysis.experiments import Overrides, preset
from repanalysis.reproduce import sweep

ROOT = Path(__file__).resolve().parents[1]
PAPER_SLICE = Overrides(depths=[5, 10], activations=["relu"], seeds=2, steps=300)


def reproduce_quick(workers: int, out: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and every process it started) of one quick reproduction."""
    cpu = _children_cpu()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "repanalysis.cli", "reproduce", "--quick", "--workers", str(workers),
                    "--out", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    for r in spec.runs():
        if (run_dir / r.name).is_file():
            cells.setdefault(r.cell, []).append(run_dir / r.name)
    return list(cells.values()), list(spec.experiments["depth"].measures)


def timed_analysis(cells, measures, workers: int) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    with Executor(workers) as executor:
        tables = [analyze(cell, measures=measures, quiet=True, executor=executor) for cell in cells]
    return time.perf_counter() - start, pd.concat(tables, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("REPANALYSIS_DATA", str(ROOT.parent / "shared" / "datasets")))
    p.add_argument("--runs", type=Path, help="a paper reproduction's folder whose runs/ to analyse")
    p.add_argument("--skip-quick", action="store_true", help="only the analysis part")
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
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
