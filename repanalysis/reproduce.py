"""``reproduce``: train every rule, record, analyse, probe, draw, and write ``DIR/report.md``.

Three experiments share one output folder (``plan`` lists their runs):

- ``main``: backprop, sg (one linear, label-conditioned module in the middle),
  dni, cdni, fa and dfa on the classification data set: a ReLU net with batch
  norm and 5 hidden layers (claims 3, 4 and 5);
- ``regression``: backprop, fa, dfa and kickback (which needs one output) on
  ``nonlinear-regression-2d`` (claim 5);
- ``linear``: the linear and the 10-hidden-layer deep linear model with backprop
  and with a linear SG (for the linear model it sits on the output) on the
  artificial problems (claims 1 and 2; ``--quick`` keeps the 2-d ones).

Layout of ``DIR``: ``runs/*.h5``, ``tables/{analysis,probes,regression_analysis,
linear}.csv``, ``figures/*.png|svg``, ``report.md``, and ``.reproduce.json``
(what each table and figure set was made from).

Reuse, make-style: a run file is kept when its status is "complete" and its
config equals the planned one (anything else under that name is retrained);
a table or figure set is kept when its inputs (names, sizes, modification
times) and settings are what they were made from. The report is always
rewritten. Tables, figures, the report and the manifest are written through
temporary files, so none is ever half-written. Training runs in up to one
single-threaded worker process per CPU core.

``python -m repanalysis.reproduce --gallery`` runs the default reproduction into
``out/reproduce`` (reusing what is there) and replaces the PNGs in ``docs/gallery/``
with its figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .datasets import DATASETS, load
from .datasets.toy import NAMES as ARTIFICIAL
from .errors import UserError
from .progress import Progress
from .runfile import RunFile

MAIN_RULES = ("backprop", "sg", "dni", "cdni", "fa", "dfa")
REGRESSION_RULES = ("backprop", "fa", "dfa", "kickback")
REGRESSION_DATASET = "nonlinear-regression-2d"
LINEAR_RULES = ("backprop", "sg")
LINEAR_MODELS = ("linear", "deeplinear")
DEFAULT_SEEDS = {False: 3, True: 2}

# Settings shared by each experiment's runs; the second entry is what --quick changes.
SETTINGS = {
    "main": ({"model": "mlp", "depth": 5, "width": 64, "activation": "relu", "batch_norm": True, "steps": 1000,
              "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "record_every": 100, "eval_every": 50,
              "probe_size": 200},
             {"width": 32, "steps": 120, "record_every": 30, "eval_every": 10, "probe_size": 100}),
    "regression": ({"dataset": REGRESSION_DATASET, "model": "mlp", "depth": 3, "width": 32, "activation": "relu",
                    "batch_norm": False,
                    "steps": 1000, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "record_every": 100,
                    "eval_every": 50, "probe_size": 200},
                   {"steps": 120, "record_every": 30, "eval_every": 10, "probe_size": 100}),
    "linear": ({"depth": 10, "width": 16, "steps": 1000, "batch_size": 64, "optimizer": "adam", "lr": 3e-3,
                "record_every": 1000, "eval_every": 100, "probe_size": 100, "sg_hidden": 0},
               {"steps": 150, "lr": 1e-2, "record_every": 150, "eval_every": 15}),
}
PROBE_OPTIONS = {False: {"folds": 5}, True: {"folds": 3}}
EXPERIMENTS = {
    "main": "every rule but kickback on the classification data set; a ReLU net with batch norm and 5 hidden "
            "layers; sg has one linear, label-conditioned module in the middle (h3), dni/cdni one per layer "
            "(claims 3, 4, 5).",
    "regression": "backprop, fa, dfa and kickback (which needs one output) on nonlinear-regression-2d (claim 5).",
    "linear": "the linear model (its module sits on the output) and the deep linear model (10 hidden layers, "
              "module in the middle; activation and batch norm do not apply) with backprop and a linear, "
              "label-conditioned SG on the artificial problems (claims 1, 2).",
}


@dataclass(frozen=True)
class PlannedRun:
    """One run of the reproduction: its experiment, file name and resolved config."""

    experiment: str
    config: TrainConfig

    @property
    def name(self) -> str:
        c = self.config
        return f"{self.experiment}_{c.dataset}_{c.model}_{c.rule}_s{c.seed}.h5"


def _config(experiment: str, quick: bool, **fields) -> TrainConfig:
    base, smaller = SETTINGS[experiment]
    return TrainConfig(**{**base, **(smaller if quick else {}), **fields}).resolved()


def plan(dataset: str = "digits", quick: bool = False, seeds: int | None = None) -> list[PlannedRun]:
    """Every run of the reproduction, in training order."""
    seeds = DEFAULT_SEEDS[quick] if seeds is None else seeds
    runs = []
    for seed in range(seeds):
        runs += [PlannedRun("main", _config("main", quick, dataset=dataset, rule=rule, seed=seed))
                 for rule in MAIN_RULES]
        runs += [PlannedRun("regression", _config("regression", quick, rule=rule, seed=seed))
                 for rule in REGRESSION_RULES]
        problems = [name for name in ARTIFICIAL if not quick or name.endswith("-2d")]
        runs += [PlannedRun("linear", _config("linear", quick, dataset=problem, model=model, rule=rule, seed=seed))
                 for problem in problems for model in LINEAR_MODELS for rule in LINEAR_RULES]
    return runs


# -- runs ---------------------------------------------------------------------------

def is_complete(path: Path, config: TrainConfig) -> bool:
    """Whether ``path`` is a complete run file of exactly ``config``."""
    if not path.is_file():
        return False
    try:
        with RunFile(path) as run:
            return run.status == "complete" and TrainConfig.from_json(json.dumps(run.config)).resolved() == config
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return False


LOADED: dict[tuple[str, int], object] = {}
"""Data sets ``train_missing`` loads before it forks its workers, which inherit them (cleared after)."""


def _train_one(config_json: str, path: str, data_dir) -> str | None:
    """Train one run; the error message if it failed, else None."""
    from .train import train

    config = TrainConfig.from_json(config_json)
    try:
        train(config, path, data_dir=data_dir, device="cpu", overwrite=True, quiet=True,
              data=LOADED.get((config.dataset, config.data_seed)))
    except UserError as err:
        return str(err)
    return None


def _workers(n_runs: int) -> int:
    """Worker processes for ``n_runs`` runs: one per CPU core where processes can fork, else none (1)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(n_runs, os.cpu_count() or 1))


def train_missing(runs: list[PlannedRun], run_dir: Path, data_dir, quiet: bool) -> dict[str, str]:
    """Train every planned run that is not already complete; ``{file name: error}`` of those that failed.

    With several workers, runs train in forked processes (fork, not spawn: a
    caller's script needs no ``__main__`` guard); with one, in this process.
    """
    todo = [r for r in runs if not is_complete(run_dir / r.name, r.config)]
    failed: dict[str, str] = {}
    if not todo:
        return failed
    for r in todo:
        key = (r.config.dataset, r.config.data_seed)
        if key not in LOADED:
            LOADED[key] = load(key[0], data_dir=data_dir, seed=key[1])
    workers = _workers(len(todo))
    progress = Progress(len(todo), f"train ({workers} worker{'s' if workers > 1 else ''})", quiet=quiet)
    jobs = [(r.name, (r.config.to_json(), str(run_dir / r.name), data_dir)) for r in todo]
    pool = None
    try:
        if workers == 1:
            results = ((name, _train_one(*args)) for name, args in jobs)
        else:
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            futures = {pool.submit(_train_one, *args): name for name, args in jobs}
            results = ((futures[f], f.result()) for f in concurrent.futures.as_completed(futures))
        for done, (name, error) in enumerate(results, 1):
            if error:
                failed[name] = error
            progress.update(done, name)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        LOADED.clear()
    return failed


# -- make-style reuse -----------------------------------------------------------------

class Manifest:
    """``DIR/.reproduce.json``: for each product, the signature of what it was made from and the files it made.

    Files are recorded relative to ``DIR``, so a moved folder is still reused.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out / ".reproduce.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def signature(inputs: list[Path], settings) -> dict:
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(inputs)]
        return {"inputs": files, "settings": settings}

    def outputs(self, product: str) -> list[Path]:
        return [self.out / name for name in self.entries[product]["outputs"]]

    def fresh(self, product: str, signature: dict) -> bool:
        """Whether ``product`` was made from ``signature`` and every file it made still exists."""
        entry = self.entries.get(product)
        return (entry is not None and entry["signature"] == signature and bool(entry["outputs"])
                and all(p.exists() for p in self.outputs(product)))

    def record(self, product: str, signature: dict, outputs: list[Path]) -> None:
        from .report import write_text

        names = [str(Path(p).relative_to(self.out)) for p in outputs]
        self.entries[product] = {"signature": signature, "outputs": names}
        write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def _made(manifest: Manifest, product: str, inputs: list[Path], settings, make) -> list[Path]:
    """``make()`` (which returns the files it wrote) unless ``product`` is fresh for ``inputs``."""
    signature = Manifest.signature(inputs, settings)
    if manifest.fresh(product, signature):
        return manifest.outputs(product)
    outputs = make()
    manifest.record(product, signature, outputs)
    return outputs


# -- the whole chain ----------------------------------------------------------------

@contextlib.contextmanager
def one_thread():
    """torch and BLAS use one thread each inside (restored after).

    The matrices here are small, and the cores are shared with the training
    workers: more threads only contend (several times slower on a busy machine).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _output_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; give a folder for the reproduction")
    for sub in ("runs", "tables", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def reproduce(out_dir, *, dataset: str = "digits", quick: bool = False, seeds: int | None = None,
              data_dir=None, quiet: bool = False) -> Path:
    """Run (or reuse) the whole reproduction into ``out_dir``; return the path of ``report.md``."""
    if dataset not in DATASETS or dataset in ARTIFICIAL:
        raise UserError(f"--dataset must be a classification data set (digits or mnist), not {dataset!r}")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    out = _output_dir(out_dir)
    runs = plan(dataset, quick, seeds)
    command = (f"repanalysis reproduce --dataset {dataset}{' --quick' if quick else ''} "
               f"--seeds {len({r.config.seed for r in runs})}"
               + (f" --data-dir {data_dir}" if data_dir else "") + f" --out {out}")
    with one_thread():
        return _reproduce(out, runs, command, quick=quick, data_dir=data_dir, quiet=quiet)


def _reproduce(out: Path, runs: list[PlannedRun], command: str, *, quick: bool, data_dir, quiet: bool) -> Path:
    """The stages of ``reproduce``: train, tables, figures, report."""
    from .analysis.runs import analyze, write_table
    from .figures import draw_figures
    from .probes import probe_runs
    from .report import linear_table, write_report

    failed = train_missing(runs, out / "runs", data_dir, quiet)
    manifest = Manifest(out)
    paths = {e: [out / "runs" / r.name for r in runs if r.experiment == e and r.name not in failed]
             for e in SETTINGS}

    def table(product: str, inputs: list[Path], compute, settings=None) -> Path:
        """``tables/<product>``: the table ``compute()`` returns, written atomically, unless it is fresh."""
        path = out / "tables" / product

        def make() -> list[Path]:
            write_table(compute(), path)
            return [path]

        return _made(manifest, product, inputs, settings, make)[0]

    main_analysis = table("analysis.csv", paths["main"], lambda: analyze(paths["main"], quiet=quiet))
    options = PROBE_OPTIONS[quick]
    probes = table("probes.csv", paths["main"],
                   lambda: probe_runs(paths["main"], checkpoints="last", quiet=quiet, **options), options)
    regression = table("regression_analysis.csv", paths["regression"],
                       lambda: analyze(paths["regression"], quiet=quiet))
    linear = table("linear.csv", paths["linear"], lambda: linear_table(paths["linear"], data_dir=data_dir))
    figures = out / "figures"
    drawn = _made(manifest, "figures/main", [main_analysis, probes, linear] + paths["main"], None,
                  lambda: draw_figures([main_analysis, probes, linear] + paths["main"], figures, quiet))
    drawn += _made(manifest, "figures/regression", [regression] + paths["regression"], "regression",
                   lambda: draw_figures([regression] + paths["regression"], figures, quiet, tag="regression"))
    return write_report(out, runs=runs, experiments=EXPERIMENTS, failed=failed, paths=paths, figures=drawn,
                        tables={"main": main_analysis, "regression": regression, "linear": linear},
                        command=command, quick=quick)


# -- command line (the gallery) -----------------------------------------------------

GALLERY = Path(__file__).resolve().parent.parent / "docs" / "gallery"


def main(argv=None) -> int:
    """``python -m repanalysis.reproduce [--out DIR] [--quick] [--gallery]``."""
    parser = argparse.ArgumentParser(prog="python -m repanalysis.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/reproduce", help="output folder (default %(default)s)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--gallery", action="store_true", help=f"copy the PNG figures into {GALLERY}")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        report = reproduce(args.out, dataset=args.dataset, quick=args.quick, seeds=args.seeds,
                           data_dir=args.data_dir, quiet=args.quiet)
    except UserError as err:
        print(f"repanalysis: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report} in {time.monotonic() - start:.0f} s")
    if args.gallery:
        GALLERY.mkdir(parents=True, exist_ok=True)
        for stale in GALLERY.glob("*.png"):
            stale.unlink()
        for png in sorted((report.parent / "figures").glob("*.png")):
            shutil.copyfile(png, GALLERY / png.name)
        print(f"copied the PNG figures into {GALLERY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
