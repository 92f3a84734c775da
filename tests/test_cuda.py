"""The training code on CUDA (skipped without a GPU): every rule matches its CPU run."""

from __future__ import annotations

import pytest
import torch
from helpers import small_config

from repanalysis.datasets import load
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.training.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("rule", ["backprop", "sg", "dni", "cdni", "fa", "dfa"])
def test_cuda_run_matches_cpu_run(tmp_path, rule):
    data = load("digits")
    # no batch norm: a bias just before batch norm has a zero true gradient, so Adam turns
    # float rounding noise into full-size steps and such biases differ between devices
    config = small_config(rule=rule, steps=20)
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = tmp_path / f"{device}.h5"
        train(config, runs[device], device=device, quiet=True, data=data)
    with RunFile(runs["cpu"]) as cpu, RunFile(runs["cuda"]) as gpu:
        assert gpu.status == "complete"
        for name in cpu.param_names:
            torch.testing.assert_close(torch.tensor(gpu.param(name)), torch.tensor(cpu.param(name)),
                                       rtol=1e-3, atol=1e-4)
        for layer in cpu.layers:
            torch.testing.assert_close(torch.tensor(gpu.activations(layer)), torch.tensor(cpu.activations(layer)),
                                       rtol=1e-3, atol=1e-4)
