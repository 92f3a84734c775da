"""A spec's runs as tasks on an ``Executor``; the run folder is the state.

Each planned run is one task, the only writer of ``<run folder>/<name>``. When
it starts, the task looks at that file:

- "complete" with the planned config: kept;
- "running" (its process was killed) or "failed" by an interruption (Ctrl-C,
  an error outside the numbers), with the planned config: resumed from its
  last checkpoint (``train.resume``), to the file an uninterrupted run writes;
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

import functools
import json
from pathlib import Path

from repanalysis.config import TrainConfig
from repanalysis.errors import UserError
from repanalysis.experiments.spec import PlannedRun
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runtime.executor import Executor
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
