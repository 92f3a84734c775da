"""The parts a training run is made of, shared by the in-process loop (``repanalysis.training.train``), its stages in
processes (``repanalysis.training.pipeline``) and the analyses that rebuild a recorded network
(``analysis.synthetic_loss``, ``report``).

A run's network and rule are built from its resolved config (``build``), or from a run file at a checkpoint
(``rebuild``); batches are drawn without replacement from a permutation of the training split that is
redrawn each epoch (the incomplete last batch is dropped), from a generator seeded by the run's seed
(``Batches``); the network and the rule's modules are initialised from torch's global RNG seeded by the same
seed. ``evaluate`` scores a rule on the test (and validation) split; ``state_arrays`` and ``load_arrays``
move every parameter and buffer to and from named arrays (``/params``). What a loop does besides training
(the schedule, the record, how a run ends) is ``repanalysis.training.bookkeeping``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from repanalysis.config import TrainConfig
from repanalysis.datasets import IMAGES, Dataset
from repanalysis.errors import UserError
from repanalysis.nn import losses
from repanalysis.nn.feedforward import Architecture
from repanalysis.rules import Rule, make_rule
from repanalysis.runfile.hdf5 import RunFile
from repanalysis.runfile.recorder import model_tensors

NON_FINITE = "the training loss became non-finite"  # how a run that failed on it begins its error


@dataclass
class TrainResult:
    rule: Rule
    status: str
    steps_done: int
    last_eval: dict[str, float]


class Batches:
    """Endless index batches: a fresh permutation each epoch, the last incomplete batch dropped.

    ``state()`` continues the stream exactly: the generator's state at the start
    of the current epoch and how many batches were drawn from that epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.size, self.per_epoch = n, batch_size, n // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.restore(self.generator.get_state(), 0)

    def __next__(self) -> torch.Tensor:
        if self.position == self.per_epoch:
            self.restore(self.generator.get_state(), 0)
        start = self.position * self.size
        self.position += 1
        return self._order[start : start + self.size]

    def state(self) -> tuple[torch.Tensor, int]:
        return self._epoch_start, self.position

    def restore(self, epoch_start: torch.Tensor, position: int) -> None:
        self.generator.set_state(epoch_start)
        self._epoch_start, self.position = epoch_start, position
        self._order = torch.randperm(self.n, generator=self.generator)


def evaluate(rule: Rule, data: Dataset, device: torch.device, chunk: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy over the whole test split (``test_loss``, ``test_acc``), and over the
    validation split where the data set has one (``val_loss``, ``val_acc``), in eval mode.

    Forward passes only (``inference_mode``: no autograd records), on ``device``,
    in chunks of ``chunk`` samples; the per-chunk results reach the host once,
    at the end. Taken at step 0, every ``eval_every`` steps and at the last step.
    ``chunk`` defaults to 8192 on CUDA (fewer launches) and 2048 on the CPU:
    larger chunks' activations (8 MiB a layer at 8192 x 256) went back to the
    system between evaluations and were faulted in again each time (the 6 x 256
    MNIST net's 10,000 test inputs: 66 ms at 2048 against 82 ms at 8192, measured).
    """
    chunk = chunk or (8192 if device.type == "cuda" else 2048)
    net = rule.network
    was = net.training
    net.eval()
    out = _evaluate_split(net, data.task, data.x_test, data.y_test, device, chunk, "test")
    if data.x_val is not None:
        out.update(_evaluate_split(net, data.task, data.x_val, data.y_val, device, chunk, "val"))
    net.train(was)
    return out


def _evaluate_split(net, task: str, x_all, y_all, device, chunk: int, prefix: str) -> dict[str, float]:
    chunk_losses, hits, n = [], [], len(x_all)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            x = x_all[start : start + chunk].to(device)
            y = y_all[start : start + chunk].to(device)
            out = net(x)
            chunk_losses.append(losses.loss(task, out, y))
            hits.append(losses.correct(task, out, y))
        chunk_losses = torch.stack(chunk_losses).tolist()
        hits = None if hits[0] is None else torch.stack(hits).tolist()
    total = 0.0
    for k, value in enumerate(chunk_losses):
        total += value * min(chunk, n - k * chunk)
    return {f"{prefix}_loss": total / n, f"{prefix}_acc": math.nan if hits is None else sum(hits) / n}


def state_tensors(rule: Rule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the network (``model.*``) and of the rule (``rule.*``), detached."""
    return {**model_tensors(rule.network), **model_tensors(rule.modules, "rule.")}


def state_arrays(rule: Rule) -> dict[str, np.ndarray]:
    """``state_tensors`` as numpy arrays (on the CPU they share the tensors' memory)."""
    return {k: v.cpu().numpy() for k, v in state_tensors(rule).items()}


def _network(config: TrainConfig, n_features: int, n_outputs: int):
    return Architecture.of(config).build(n_features, n_outputs, IMAGES.get(config.dataset))


def build(config: TrainConfig, task: str, n_features: int, n_outputs: int, device="cpu") -> Rule:
    """The seeded network and rule for ``config`` (already resolved)."""
    torch.manual_seed(config.seed)
    network = _network(config, n_features, n_outputs).to(device)
    rule = make_rule(config, network, task, n_outputs)
    rule.modules.to(device)
    return rule


def load_arrays(rule: Rule, arrays: dict, source=None) -> None:
    """Load what ``state_arrays`` returned into the rule's network and modules; arrays read from the run file
    ``source`` whose names or shapes do not fit them are a ``UserError`` (nothing loaded)."""
    if source is not None:
        _check_fit(rule, arrays, source)
    for prefix, module in (("model.", rule.network), ("rule.", rule.modules)):
        state = {k[len(prefix):]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(prefix)}
        module.load_state_dict(state)


def _check_fit(rule: Rule, arrays: dict, source) -> None:
    """Refuse ``arrays`` (from the run file ``source``) unless they are the rule's parameters and buffers, each
    with its shape: a config changed after the run was written describes another network."""
    expected = {f"{prefix}{k}": tuple(v.shape) for prefix, module in (("model.", rule.network), ("rule.", rule.modules))
                for k, v in module.state_dict().items()}
    stored = {k: tuple(np.shape(v)) for k, v in arrays.items() if k.startswith(("model.", "rule."))}
    problems = [f"{k} is {list(stored[k])} in the file, {list(shape)} in the network"
                for k, shape in expected.items() if k in stored and stored[k] != shape]
    problems += [f"{k} is missing from the file" for k in expected if k not in stored]
    problems += [f"{k} is not in the network" for k in stored if k not in expected]
    if problems:
        more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(f"{source}: its parameters do not fit the network its config describes ({problems[0]}{more})")


def stored_config(run: RunFile) -> TrainConfig:
    """The resolved config a run file was written with; a ``UserError`` if it cannot be rebuilt."""
    try:
        return TrainConfig.from_json(run.file.attrs["config"]).resolved()
    except (KeyError, TypeError, ValueError, UserError) as err:
        raise UserError(f"{run.path}: its config cannot be rebuilt ({err})") from None


def rebuild(run: RunFile, checkpoint: int = -1, device="cpu") -> Rule:
    """The network and rule of a recorded run, with every parameter and buffer as at ``checkpoint``."""
    a = run.file.attrs
    rule = build(stored_config(run), str(a["task"]), int(a["n_features"]), int(a["n_outputs"]), device)
    load_arrays(rule, run.params(checkpoint), run.path)
    return rule


def memory_estimate(config: TrainConfig, n_features: int, n_outputs: int) -> int:
    """Bytes a training step needs, roughly: float32 weights four times over (value, gradient,
    Adam's two moments), twice for rules with a module or feedback matrix per layer, plus the
    batch's values (forward and backward) at the input, every interface and the output. The
    network is built on torch's meta device to count them, without memory."""
    with torch.device("meta"):
        network = _network(config, n_features, n_outputs)
    weights = sum(p.numel() for p in network.parameters())
    if config.rule not in ("backprop", "kickback"):
        weights *= 2
    return 4 * (4 * weights + 2 * config.batch_size * (n_features + sum(network.widths) + n_outputs))


def recorded_layers(config: TrainConfig, rule: Rule) -> list[str]:
    """The interfaces ``config.record_layers`` keeps (all by default), bottom to top."""
    names = rule.network.interfaces
    if config.record_layers is None:
        return list(names)
    bad = sorted(k for k in config.record_layers if k > len(names))
    if bad:
        raise UserError(f"--record-layers names interfaces {bad}; this network has h1..h{len(names)}")
    return [names[k - 1] for k in sorted(config.record_layers)]
