"""``reproduce``: run a spec's experiments (train, record, analyse, probe, draw) and write ``DIR/report.md``.

A spec (``experiments.spec``; the presets ``digits`` and ``paper``, or a
user's TOML file) lists experiments; each is a grid of runs with the tables,
figures and claims it asks for. Per experiment ``E``:

- ``runs/*.h5``: one run file per planned run (``PlannedRun.name``);
- ``tables/E_analysis.csv``: ``analysis.runs.analyze`` of each cell of the
  grid (runs that differ only in rule and seed are compared with each other),
  concatenated; ``tables/E_probes.csv``: probes at the last checkpoint;
  ``tables/E_linear.csv``: the linear-problem table (``report.linear_table``);
  ``tables/E_quantities.csv``: the per-run values the claims use
  (``claims.quantities``); ``tables/E_pairs.csv``: the cross-seed CKA of
  every layer of every pair of runs that claim 4d reads (``claims.pairs``);
  tables name their runs relative to ``tables/`` (``repanalysis.analysis.tables``),
  so the folder can be moved and still be reused;
- figures (PNG and SVG) in ``figures/``, by the experiment's figure sets:
  ``standard``, every figure of its tables and run files per cell (tagged with
  the experiment's name, and the cell where the grid has several, except for
  the spec's first experiment with one cell); ``tables``, the figures of its
  tables alone, once (tagged only where another experiment makes tables of
  the same kind); ``depth``, the across-depth set (``figures.depth``) with
  RDM grids at the chosen depths (``rdm_depths`` that the grid has; else its
  smallest and largest depth), tagged except for the spec's first experiment;
- the claims it names, judged in ``report.md``, with ``.reproduce.json``
  (what each table and figure set was made from).

Reuse, make-style: a run file is kept when its status is "complete" and its
config equals the planned one, resumed when it was interrupted, and trained
again otherwise (``sweep``); a table or figure set is kept when its inputs
(names, sizes, modification times) and settings are what they were made from.
The report is always rewritten. Tables, figures, the report and the manifest
are written through temporary files, so none is ever half-written. Training,
analyses, probes and figures run as tasks on an ``executor.Executor``
(default: a local Dask cluster of one single-threaded worker per CPU core);
the tables, claims and report are made in this process. Each experiment's
chain of stages (train, tables, claims, figures) is one job of
``Executor.concurrently``: on a cluster the experiments run at once, so the
workers do not wait at the end of one experiment's stage; in this process,
one after another. ``sweep.sweep()`` is the training stage alone. With more than
one local worker, a script that calls them needs the
``if __name__ == "__main__":`` guard (Dask's worker processes import the
script again, as spawned processes do).

``python -m repanalysis.experiments.reproduce --gallery`` runs the default reproduction into
``out/reproduce`` (reusing what is there) and replaces the PNGs in ``docs/gallery/``
with its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from repanalysis.errors import UserError
from repanalysis.experiments.selection import Choice
from repanalysis.experiments.spec import Overrides, PlannedRun, Spec, value_text
from repanalysis.experiments.sweep import applied_spec, failures, output_folder, train_runs, train_selection
from repanalysis.runtime.executor import Executor, default_workers, one_thread
from repanalysis.runtime.outputs import folder_lock

# -- make-style reuse -----------------------------------------------------------------

class Manifest:
    """``DIR/.reproduce.json``: for each product, the signature of what it was made from and the files it made.

    Files are recorded relative to ``DIR``, so a moved folder is still reused.
    """

    def __init__(self, out: Path):
        self.out = out
        self.path = out / ".reproduce.json"
        self.lock = threading.Lock()
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
        from repanalysis.experiments.report import write_text

        names = [str(Path(p).relative_to(self.out)) for p in outputs]
        with self.lock:  # experiments record from their own threads
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

def _command(spec_arg: str, quick: bool, overrides: Overrides, data_dir, out: Path) -> str:
    """The command line that reproduces this run of ``reproduce``."""
    o = overrides
    parts = ["repanalysis reproduce", spec_arg] + (["--quick"] if quick else [])
    parts += [f"--{flag} {','.join(map(str, v))}" for flag, v in
              (("depths", o.depths), ("activations", o.activations), ("widths", o.widths)) if v is not None]
    if o.seeds is not None:  # one seed is written "5,": --seeds refuses a lone number, which reads as a count
        parts.append(f"--seeds {','.join(map(str, o.seeds))}" + ("," if len(o.seeds) == 1 else ""))
    parts += [f"--{flag} {v}" for flag, v in (("seed-count", o.seed_count), ("steps", o.steps),
                                               ("dataset", o.dataset)) if v is not None]
    return " ".join(parts + ([f"--data-dir {data_dir}"] if data_dir else []) + [f"--out {out}"])


def reproduce(out_dir, *, spec: Spec | None = None, quick: bool = False, overrides: Overrides | None = None,
              data_dir=None, executor: Executor | None = None, quiet: bool = False, overwrite: bool = False,
              failed: dict[str, str] | None = None) -> Path:
    """Run (or reuse) ``spec`` (default: the ``digits`` preset) into ``out_dir``; return the path of ``report.md``.

    Runs, analyses and probes are tasks on ``executor`` (default: a local Dask
    cluster of one worker per core, closed at the end). ``out_dir`` is held
    against other writers; ``overwrite``: write into a non-empty folder that
    ``reproduce`` or ``sweep`` did not make. ``failed``: a dict that receives
    ``{run file name: error}`` for every run that failed (a selection's
    candidates included); the report is written without them and lists them.
    """
    spec, overrides, applied = applied_spec(spec, quick, overrides)
    spec_arg = f"--preset {spec.preset}" if spec.preset else f"--spec {spec.source}"
    out = output_folder(out_dir, overwrite)
    command = _command(spec_arg, quick, overrides, data_dir, out)
    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(out))
        executor = executor or stack.enter_context(Executor(default_workers()))
        executor.start()  # the workers start while this process imports what it needs
        stack.enter_context(one_thread())
        choice, tried = train_selection(applied, out / "runs", executor, data_dir, quiet)
        report, lost = _reproduce(out, applied, applied.runs(choice=choice), command, quick=quick,
                                  data_dir=data_dir, executor=executor, quiet=quiet, choice=choice)
        if failed is not None:
            failed.update({**failures(tried), **lost})
        return report


def _cells(runs: list[PlannedRun]) -> dict[tuple, list[PlannedRun]]:
    cells: dict[tuple, list[PlannedRun]] = {}
    for r in runs:
        cells.setdefault(r.cell, []).append(r)
    return cells


def _slug(cell) -> str:
    return "_".join(value_text(v) if k == "activation" else f"{k[0]}{value_text(v)}" for k, v in cell)


@dataclass
class _Chain:
    """What every experiment's chain of stages shares: the output folder, its manifest, the applied spec, and
    how to run (``quick``, ``data_dir``, ``executor``, ``quiet``)."""

    out: Path
    manifest: Manifest
    spec: Spec
    quick: bool
    data_dir: object
    executor: Executor
    quiet: bool


@dataclass
class _Tables:
    """An experiment's tables before its figures: their paths by kind (``made``: analysis, probes, linear,
    recurrent), the quantities' path and frame, the analysis frame, and the explanation frame's path."""

    made: dict[str, Path] = field(default_factory=dict)
    quantities_path: Path | None = None
    quantities: object = None
    analysis: object = None
    explain_path: Path | None = None


@dataclass
class _Outcome:
    """One experiment's chain, done: its claims' results and quantities (None where every run failed, and
    for a recurrent experiment), ``{run: path}``, its figures, ``{failed run: error}``, and its explanation
    (``(frame, fits)``; a recurrent experiment's tables by kind: recurrent, positions, training; or None)."""

    results: list | None
    quantities: object
    paths: dict[PlannedRun, Path]
    figures: list[Path]
    failed: dict[str, str]
    explained: object = None


def _figures(chain: _Chain, index: int, exp, planned: list[PlannedRun], paths: dict[PlannedRun, Path],
             tables: _Tables) -> list[Path]:
    """The figure sets ``exp.figures`` asks for (see the module docstring), each reused when fresh."""
    from repanalysis.figures import draw_figures
    from repanalysis.figures.depth import draw_depth_figures

    out, manifest, spec, executor, quiet = chain.out, chain.manifest, chain.spec, chain.executor, chain.quiet
    made, files = tables.made, list(paths.values())
    name, figures = exp.name, []
    cells = _cells(planned)
    if "standard" in exp.figures:
        for cell, cell_runs in cells.items():
            cell_files = [out / "runs" / r.name for r in cell_runs]
            tag = None if index == 0 and len(cells) == 1 else name + (f"_{_slug(cell)}" if len(cells) > 1 else "")
            inputs = list(made.values()) + cell_files
            figures += _made(manifest, f"figures/{name}/{_slug(cell)}", inputs, tag,
                             lambda: draw_figures(inputs, out / "figures", quiet, tag=tag, executor=executor,
                                                  overwrite=True))
    if "tables" in exp.figures:
        shared = any(set(e.tables) & set(exp.tables) for e in spec.experiments.values() if e is not exp)
        tag = name if shared else None
        tables_only = list(made.values())
        figures += _made(manifest, f"figures/{name}/tables", tables_only, tag,
                         lambda: draw_figures(tables_only, out / "figures", quiet, tag=tag,
                                                      executor=executor, overwrite=True))
    if "depth" in exp.figures:
        inputs = [tables.quantities_path] + list(made.values()) + files
        depths = sorted({r.config.depth for r in planned})
        chosen = [d for d in exp.rdm_depths if d in depths] or sorted({depths[0], depths[-1]})
        tag = None if index == 0 else name
        figures += _made(manifest, f"figures/{name}/depth", inputs, [chosen, tag],
                         lambda: draw_depth_figures(tables.quantities, tables.analysis, paths, out / "figures",
                                                    rdm_depths=chosen, tag=tag))
    if "recurrent" in exp.figures:
        from repanalysis.analysis.tables import read_table
        from repanalysis.figures.recurrent import draw_recurrent_figures

        tag = None if index == 0 else name
        inputs = [made[kind] for kind in ("recurrent", "positions", "training")]
        figures += _made(manifest, f"figures/{name}/recurrent", inputs, tag,
                         lambda: draw_recurrent_figures(*map(read_table, inputs), out / "figures", tag=tag))
    explain_path = tables.explain_path
    if "explain" in exp.figures and explain_path is not None:
        from repanalysis.analysis.tables import read_table
        from repanalysis.figures.explain import draw_explain_figures

        tag = None if index == 0 else name
        figures += _made(manifest, f"figures/{name}/explain", [explain_path], tag,
                         lambda: draw_explain_figures(read_table(explain_path), out / "figures", tag=tag))
    return figures


def _reproduce(out: Path, spec: Spec, runs: list[PlannedRun], command: str, *, quick: bool, data_dir,
               executor: Executor, quiet: bool, choice: Choice | None = None) -> tuple[Path, dict[str, str]]:
    """Each experiment's chain (``_experiment``), the experiments at once on a cluster; then the report.
    ``(the report's path, {run file name: error} of the runs that failed)``."""
    from repanalysis.experiments.report import write_report

    chain = _Chain(out, Manifest(out), spec, quick, data_dir, executor, quiet)
    jobs = [functools.partial(_experiment, chain, i, exp, [r for r in runs if r.experiment == name])
            for i, (name, exp) in enumerate(spec.experiments.items())]
    done = executor.concurrently(jobs)
    results, quantities, paths, figures, failed, explained, recurrent = {}, {}, {}, [], {}, {}, {}
    for name, outcome in zip(spec.experiments, done):
        paths[name] = outcome.paths
        if outcome.quantities is not None:
            results[name], quantities[name] = outcome.results, outcome.quantities
        if outcome.explained is not None:
            (recurrent if spec.experiments[name].recurrent else explained)[name] = outcome.explained
        figures += outcome.figures
        failed.update(outcome.failed)
    failed = {r.name: failed[r.name] for r in runs if r.name in failed}
    return write_report(out, spec=spec, runs=runs, results=results, quantities=quantities, paths=paths,
                        failed=failed, figures=figures, command=command, quick=quick, choice=choice,
                        explained=explained, recurrent=recurrent), failed


def _experiment(chain: _Chain, index: int, exp, runs: list[PlannedRun]) -> _Outcome:
    """One experiment's stages: train its runs, its tables, its claims, its figures."""
    import pandas as pd

    from repanalysis.analysis.explain import explain_frame, explain_table, run_losses
    from repanalysis.analysis.runs import analyze
    from repanalysis.analysis.tables import read_table, write_table
    from repanalysis.experiments import claims as claims_module
    from repanalysis.experiments.report import linear_table
    from repanalysis.probes import probe_runs

    out, name, quiet, executor, data_dir = chain.out, exp.name, chain.quiet, chain.executor, chain.data_dir
    failed = failures(train_runs(runs, out / "runs", executor, data_dir=data_dir, quiet=quiet))

    def table(product: str, inputs: list[Path], compute, settings=None) -> Path:
        """``tables/<product>``: the table ``compute()`` returns, written atomically, unless it is fresh."""
        path = out / "tables" / product

        def make() -> list[Path]:
            write_table(compute(), path)
            return [path]

        return _made(chain.manifest, product, inputs, settings, make)[0]

    runs_dir = Path(os.path.abspath(out / "runs"))  # as the tables' runs read back (``tables.read_table``)

    def analysis(cells) -> pd.DataFrame:
        parts = [analyze([runs_dir / r.name for r in cell], measures=exp.measures, quiet=quiet, executor=executor)
                 for cell in cells.values()]
        return pd.concat(parts, ignore_index=True)

    planned = [r for r in runs if r.name not in failed]
    paths = {r: runs_dir / r.name for r in planned}
    files = list(paths.values())
    if not files:
        return _Outcome(None, None, paths, [], failed)
    cells = _cells(planned)
    tables = _Tables()
    made = tables.made
    if exp.recurrent:
        from repanalysis.analysis.recurrent import results_table
        from repanalysis.analysis.recurrent_positions import positions_table, training_table

        made["recurrent"] = table(f"{name}_recurrent.csv", files, lambda: results_table(paths))
        made["positions"] = table(f"{name}_recurrent_positions.csv", files, lambda: positions_table(paths))
        made["training"] = table(f"{name}_recurrent_training.csv", files, lambda: training_table(paths))
        return _Outcome(None, None, paths, _figures(chain, index, exp, planned, paths, tables), failed,
                        {kind: read_table(made[kind]) for kind in ("recurrent", "positions", "training")})
    measures = list(exp.measures) if exp.measures else None
    if "analysis" in exp.tables:
        made["analysis"] = table(f"{name}_analysis.csv", files, lambda: analysis(cells), measures)
    if "probes" in exp.tables:
        options = {"folds": 3 if chain.quick else exp.probe_folds}
        made["probes"] = table(f"{name}_probes.csv", files, lambda: probe_runs(
            files, checkpoints="last", quiet=quiet, executor=executor, **options), options)
    if "linear" in exp.tables:
        made["linear"] = table(f"{name}_linear.csv", files, lambda: linear_table(files, data_dir=data_dir))
    frames = {kind: read_table(path) for kind, path in made.items()}
    context = claims_module.Context(name, paths, frames.get("analysis"), frames.get("linear"), compare=exp.compare)
    need_cka = bool(claims_module.NEEDS_CKA & set(exp.claims))
    pair_table = [table(f"{name}_pairs.csv", files, lambda: claims_module.pairs(context))] if need_cka else []
    context.pairs = read_table(pair_table[0]) if pair_table else None
    tables.quantities_path = table(f"{name}_quantities.csv", files + list(made.values()) + pair_table,
                                   lambda: claims_module.quantities(context, cka=need_cka), need_cka)
    context.quantities = tables.quantities = read_table(tables.quantities_path)
    tables.analysis = frames.get("analysis")
    results = [claims_module.judge(key, claims_module.CLAIMS[key], context) for key in exp.claims]
    explained = None
    if "explain" in exp.tables:
        frame_path = tables.explain_path = table(
            f"{name}_explain_frame.csv", files + [made["analysis"]],
            lambda: explain_frame(frames["analysis"], _run_frame(paths), run_losses(files)))
        explained = (read_table(frame_path), read_table(table(
            f"{name}_explain.csv", [frame_path], lambda: explain_table(read_table(frame_path)))))
    figures = _figures(chain, index, exp, planned, paths, tables)
    return _Outcome(results, tables.quantities, paths, figures, failed, explained)


def _run_frame(paths: dict[PlannedRun, Path]):
    """One row per run file: its path, cell (scope), arm (the rule where the grid has no arms), rule, seed
    and length, as ``analysis.explain.explain_frame`` reads them."""
    import pandas as pd

    from repanalysis.experiments.claims import scope_label, variant

    return pd.DataFrame([(str(path), scope_label(r.cell), dict(r.axes).get("arm", variant(r.config)),
                          variant(r.config), r.config.seed, r.config.steps) for r, path in paths.items()],
                        columns=["run", "scope", "arm", "rule", "seed", "steps"])


# -- command line (the gallery) -----------------------------------------------------

GALLERY = Path(__file__).resolve().parent.parent / "docs" / "gallery"


def main(argv=None) -> int:
    """``python -m repanalysis.experiments.reproduce [--out DIR] [--quick] [--gallery]``: the digits preset."""
    parser = argparse.ArgumentParser(prog="python -m repanalysis.experiments.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/reproduce", help="output folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--gallery", action="store_true", help=f"copy the PNG figures into {GALLERY}")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        report = reproduce(args.out, quick=args.quick, quiet=args.quiet)
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
