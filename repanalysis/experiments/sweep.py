"""A spec's runs as tasks on an ``Executor``; the run folder is the state. ``sweep()`` trains a spec's runs
(a selection's candidates first) and no more; ``reproduce`` does the same before its analyses.

Each planned run is one task, the only writer of ``<run folder>/<name>``. When
it starts, the task looks at that file:

- "complete" with the planned config: kept;
- "running" (its process was killed) or "failed" by an interruption (Ctrl-C,
  an error outside the numbers), with the planned config: resumed from its
  last checkpoint (``training.train.resume``), to the file an uninterrupted run writes;
- anything else (no file, a foreign or damaged one, another config, a run
  that failed on a non-finite loss, one that cannot be resumed, a recurrent
  run that did not complete): trained from step 0, replacing it.

A recurrent run (``model = "lstm"``, ``training.recurrent``) is kept or trained
the same way; a complete language model whose characters are not those of
the text it would be read with now is refused in one line before anything is
trained (``training.recurrent.check_vocabulary``).

So rerunning a sweep after a crash does only what is missing, and a task that
Dask reruns after its worker died resumes what that worker left. Tasks train
on the CPU, quietly; the longest runs are submitted first.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.experiments.selection import Choice, choose
from repanalysis.experiments.spec import Overrides, PlannedRun, Spec, preset
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime.executor import Executor, default_workers
from repanalysis.runtime.outputs import check_state_folder, folder_lock
from repanalysis.training.recurrent import RecurrentConfig, check_vocabulary, train_recurrent

#: Reruns of a training task that raised (an error of the file system, say); each resumes the run.
RETRIES = 2


def config_of(config_json: str) -> TrainConfig | RecurrentConfig:
    """The resolved config of a run's JSON: a ``RecurrentConfig`` for ``model = "lstm"``."""
    kind = RecurrentConfig if json.loads(config_json).get("model") == RecurrentConfig.model else TrainConfig
    return kind.from_json(config_json).resolved()


def file_state(path: Path, config: TrainConfig | RecurrentConfig, data_dir=None) -> str:
    """What a task does with ``path`` for ``config`` (resolved): "keep", "resume" or "train" (see the module);
    ``data_dir``: where a language model's text is (``check_vocabulary``)."""
    from repanalysis.training.parts import NON_FINITE

    if not path.is_file():
        return "train"
    recurrent = isinstance(config, RecurrentConfig)
    try:
        with RunFile(path) as run:
            if config_of(json.dumps(run.config)) != config:
                return "train"
            if run.status != "complete":
                return "train" if recurrent or run.status == "failed" and str(run.error).startswith(NON_FINITE) \
                    else "resume"
            vocabulary = run.attrs.get("vocabulary")
    except (UserError, OSError, KeyError, TypeError, ValueError):
        return "train"
    if recurrent and config.task == "charlm":
        check_vocabulary(path, vocabulary, config, data_dir)
    return "keep"


@functools.lru_cache(maxsize=2)
def _dataset(name: str, seed: int, data_dir: str | None):
    """A data set, loaded once per worker process for the runs that follow on it."""
    from repanalysis.datasets import load

    return load(name, data_dir=data_dir, seed=seed)


def train_task(config_json: str, path: str, data_dir: str | None) -> tuple[str, str | None]:
    """Keep, resume or train one run (see the module); ``(what was done, error message or None)``."""
    from repanalysis.training.parts import NON_FINITE
    from repanalysis.training.train import resume, train

    config = config_of(config_json)
    action = file_state(Path(path), config, data_dir)
    if action == "keep":
        return "kept", None
    try:
        if isinstance(config, RecurrentConfig):
            train_recurrent(config, path, data_dir=data_dir, overwrite=True, quiet=True)
            return "trained", None
        data = _dataset(config.dataset, config.data_seed, data_dir)
        if action == "resume":
            try:
                resume(path, data_dir=data_dir, device="cpu", quiet=True, data=data)
                return "resumed", None
            except UserError as err:
                if str(err).startswith(NON_FINITE):
                    raise
                # not resumable after all (no whole resume state, say): train from step 0 below
        train(config, path, data_dir=data_dir, device="cpu", overwrite=True, quiet=True, data=data)
        return "trained", None
    except UserError as err:
        return "failed", str(err)


def _cost(run: PlannedRun) -> int:
    """A rough number of multiply-adds to train ``run``, to submit the longest first."""
    c = run.config
    if isinstance(c, RecurrentConfig):
        return c.cost()
    return c.steps * c.batch_size * (c.depth + 1) * c.width ** 2


def train_runs(runs: list[PlannedRun], run_dir: Path, executor: Executor, *, data_dir=None,
               quiet: bool = False) -> dict[str, tuple[str, str | None]]:
    """Keep, resume or train every planned run into ``run_dir``; ``{file name: (what was done, error)}``."""
    run_dir = Path(run_dir).resolve()
    data_dir = None if data_dir is None else str(Path(data_dir).resolve())
    todo = sorted((r for r in runs if file_state(run_dir / r.name, r.config, data_dir) != "keep"), key=_cost,
                  reverse=True)
    results = executor.map(train_task, [(r.config.to_json(), str(run_dir / r.name), data_dir) for r in todo],
                           label="train", quiet=quiet, retries=RETRIES, failed=lambda result: result[1] is not None)
    done = {r.name: ("kept", None) for r in runs}
    done.update({r.name: result for r, result in zip(todo, results)})
    return done


def failures(done: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    """``{file name: error}`` of the runs that failed."""
    return {name: error for name, (_, error) in done.items() if error is not None}


# -- a spec's runs, planned and trained ---------------------------------------------------

def output_folder(out_dir, overwrite: bool, subfolders=("runs", "tables", "figures")) -> Path:
    """The output folder, checked (``outputs.check_state_folder``) and with its subfolders."""
    out = check_state_folder(out_dir, overwrite)
    for sub in subfolders:
        (out / sub).mkdir(exist_ok=True)
    return out


def applied_spec(spec: Spec | None, quick: bool, overrides: Overrides | None) -> tuple[Spec, Overrides, Spec]:
    """``(spec, overrides, the spec with them applied)``; a bad override is a ``UserError``."""
    spec = spec or preset("digits")
    overrides = overrides or Overrides()
    if overrides.dataset is not None and overrides.dataset not in ("digits", "mnist"):
        raise UserError(f"--dataset must be a classification data set (digits or mnist), not {overrides.dataset!r}")
    if overrides.dataset is not None and any(exp.recurrent for exp in spec.experiments.values()):
        raise UserError(f"--dataset: the spec {spec.name!r} has recurrent experiments, whose data are their tasks "
                        "(a language model's text is under --data-dir)")
    applied = spec.applied(overrides, quick)
    applied.check()  # every config resolves: refused before anything is trained
    return spec, overrides, applied


def train_selection(applied: Spec, run_dir: Path, executor: Executor, data_dir, quiet: bool
                    ) -> tuple[Choice | None, dict[str, tuple[str, str | None]]]:
    """Train the selections' candidate runs (``experiments.selection``) and choose; ``(choice, what was
    done with each candidate run)``, ``(None, {})`` for a spec that does not select."""
    if not applied.selects:
        return None, {}
    candidates = applied.candidate_runs()
    done = train_runs(candidates, run_dir, executor, data_dir=data_dir, quiet=quiet)
    return choose(applied.experiments, candidates, run_dir, failures(done)), done


def sweep(out_dir, *, spec: Spec | None = None, quick: bool = False, overrides: Overrides | None = None,
          data_dir=None, executor: Executor | None = None, quiet: bool = False,
          overwrite: bool = False) -> dict[str, tuple[str, str | None]]:
    """Train (or keep, or resume) the runs of ``spec`` into ``out_dir/runs``, as ``reproduce`` does (a
    selection's candidates first), and no more; ``{file name: (what was done, error or None)}`` (see
    ``train_runs``). ``overwrite``: write into a non-empty folder that ``reproduce`` or ``sweep`` did
    not make."""
    _, _, applied = applied_spec(spec, quick, overrides)
    out = output_folder(out_dir, overwrite, ("runs",))
    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(out))
        executor = executor or stack.enter_context(Executor(default_workers()))
        choice, done = train_selection(applied, out / "runs", executor, data_dir, quiet)
        return {**done, **train_runs(applied.runs(choice=choice), out / "runs", executor, data_dir=data_dir,
                                     quiet=quiet)}
