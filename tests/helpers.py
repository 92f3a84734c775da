"""Small builders shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from repanalysis.config import TrainConfig
from repanalysis.datasets import load
from repanalysis.rules.base import Rule
from repanalysis.training.parts import build
from repanalysis.training.train import train


def small_config(**overrides) -> TrainConfig:
    """A tiny digits run: depth 3, width 16, 20 steps, checkpoints every 10 steps."""
    base = dict(rule="backprop", dataset="digits", depth=3, width=16, steps=20, batch_size=32,
                record_every=10, eval_every=10, probe_size=50, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def backprop_and_fa_runs(folder, steps: int) -> list:
    """Two tiny digits runs in ``folder``, backprop and fa (depth 2, width 8, 30 probe inputs), recorded and
    evaluated every ``steps / 2`` steps."""
    paths = []
    for rule in ("backprop", "fa"):
        config = TrainConfig(rule=rule, depth=2, width=8, steps=steps, batch_size=32, record_every=steps // 2,
                             eval_every=steps // 2, probe_size=30)
        paths.append(folder / f"{rule}.h5")
        train(config, paths[-1], device="cpu", quiet=True)
    return paths


def built(config: TrainConfig, data=None):
    """The seeded rule for ``config`` on ``data`` (digits by default), and the data."""
    data = data or load(config.dataset)
    config = config.resolved()
    return build(config, data.task, data.n_features, data.n_outputs), data


def batch(data, n: int = 32, offset: int = 0):
    return data.x_train[offset : offset + n], data.y_train[offset : offset + n]


def parameters_equal(a: torch.nn.Module, b: torch.nn.Module, exact: bool = True, **tol) -> bool:
    pa, pb = a.state_dict(), b.state_dict()
    if exact:
        return all(torch.equal(pa[k], pb[k]) for k in pa)
    return all(torch.allclose(pa[k].double(), pb[k].double(), **tol) for k in pa)



def python_sigint(request) -> None:
    """Give SIGINT Python's own handler for one test, put back after it (a shell that starts the
    suite in the background makes the process ignore SIGINT, and these tests send it on purpose)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))


def run_arrays(path) -> dict:
    """Every dataset of an HDF5 file, by its path in the file, as numpy arrays."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


TIMESTAMPS = {"created", "resumed"}  # the only root attributes a resumed run may differ in


def contents(path) -> tuple[dict, dict]:
    """Every dataset (dtype, shape, raw bytes) and every root attribute but the timestamps."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: arrays.__setitem__(name, (o.dtype, o.shape, o[()].tobytes()))
                     if isinstance(o, h5py.Dataset) else None)
        attrs = {k: v for k, v in f.attrs.items() if k not in TIMESTAMPS}
    return arrays, attrs


def interrupted_at(monkeypatch, step: int):
    """Make training raise KeyboardInterrupt on entering ``step`` (as a Ctrl-C there would)."""
    original = Rule.step

    def step_or_stop(self, x, y):
        if self.steps_done + 1 == step:
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Rule, "step", step_or_stop)


def train_interrupted(monkeypatch, config, path, data, step: int) -> None:
    """Train ``config`` into ``path`` until a Ctrl-C on entering ``step`` stops it."""
    with monkeypatch.context() as patch:
        interrupted_at(patch, step)
        with pytest.raises(KeyboardInterrupt):
            train(config, path, quiet=True, data=data)
