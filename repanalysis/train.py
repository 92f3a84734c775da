"""The training loop: one rule, one data set, recorded to a run file.

Checkpoints are taken at step 0 (before any update), every ``record_every``
steps and at the last step; evaluations on the whole test split (and on the
validation split, ``--validation`` training inputs held out) likewise at
``eval_every``. Metrics are logged at every step (the batch's loss and
accuracy *before* that step's update; ``step`` counts updates done after it).
Batches are drawn without replacement from a permutation of the training split
that is redrawn each epoch (the incomplete last batch is dropped), from a
generator seeded by the run's seed; the network and the rule's modules are
initialised from torch's global RNG seeded by the same seed.

``resume`` continues an interrupted run from its last complete checkpoint, with
the state ``repanalysis.resume`` keeps at every checkpoint, to the file an
uninterrupted run would have written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import resume as resume_state
from . import tasks
from .config import TrainConfig
from .datasets import IMAGES, Dataset, load
from .errors import UserError
from .interrupts import BetweenSteps
from .memory import check_fits
from .models import build_network
from .outputs import check_file
from .progress import Progress
from .recorder import Recorder, model_tensors
from .rules import Rule, make_rule
from .runfile import RunFile, RunWriter

NON_FINITE = "the training loss became non-finite"  # how a run that failed on it begins its error


@dataclass
class TrainResult:
    rule: Rule
    status: str
    steps_done: int
    last_eval: dict[str, float]


def choose_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


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
    losses, hits, n = [], [], len(x_all)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            x = x_all[start : start + chunk].to(device)
            y = y_all[start : start + chunk].to(device)
            out = net(x)
            losses.append(tasks.loss(task, out, y))
            hits.append(tasks.correct(task, out, y))
        losses = torch.stack(losses).tolist()
        hits = None if hits[0] is None else torch.stack(hits).tolist()
    total = 0.0
    for k, value in enumerate(losses):
        total += value * min(chunk, n - k * chunk)
    return {f"{prefix}_loss": total / n, f"{prefix}_acc": math.nan if hits is None else sum(hits) / n}


def state_tensors(rule: Rule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the network (``model.*``) and of the rule (``rule.*``), detached."""
    return {**model_tensors(rule.network), **model_tensors(rule.modules, "rule.")}


def state_arrays(rule: Rule) -> dict[str, np.ndarray]:
    """``state_tensors`` as numpy arrays (on the CPU they share the tensors' memory)."""
    return {k: v.cpu().numpy() for k, v in state_tensors(rule).items()}


def _network(config: TrainConfig, n_features: int, n_outputs: int):
    return build_network(
        config.model, n_features, n_outputs, depth=config.depth, width=config.width,
        activation=config.activation, batch_norm=config.batch_norm, channels=config.channels,
        kernel_size=config.kernel_size, pool=config.pool, input_shape=IMAGES.get(config.dataset),
        init=config.init, bn_gamma_init=config.bn_gamma_init, bn_beta_init=config.bn_beta_init,
    )


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


def check_sizes(config: TrainConfig, data: Dataset, device: torch.device) -> None:
    """Refuse a batch larger than the training split, and a network that cannot fit in memory."""
    n = len(data.x_train)
    if config.batch_size > n:
        raise UserError(f"--batch-size {config.batch_size} is larger than the training split ({n} samples)")
    check_fits(memory_estimate(config, data.n_features, data.n_outputs),
               f"training this network ({_size_options(config)}, --batch-size {config.batch_size})",
               f"use a smaller {_size_options(config, values=False)} or --batch-size", device)


def _size_options(config: TrainConfig, values: bool = True) -> str:
    """The options that set the network's size, for messages (with their values)."""
    names = ("channels", "kernel_size", "depth") if config.model == "cnn" else ("width", "depth")
    return ", ".join(f"--{n.replace('_', '-')}" + (f" {getattr(config, n)}" if values else "") for n in names)


def _data(config: TrainConfig, data_dir, data: Dataset | None) -> Dataset:
    """``data`` (else the config's data set, loaded) with the config's validation split held out."""
    return (data or load(config.dataset, data_dir=data_dir, seed=config.data_seed)).with_validation(config.validation)


def _device(config: TrainConfig, name: str) -> torch.device:
    """The device ``--device name`` means for ``config``: a run in stages trains on the CPU."""
    if config.stages > 1:
        from . import pipeline

        return pipeline.stage_device(name)
    return choose_device(name)


def train(config: TrainConfig, out: str | Path | None = None, *, data_dir=None, device: str = "auto",
          overwrite: bool = False, quiet: bool = False, data: Dataset | None = None) -> TrainResult:
    """Train ``config``; record to ``out`` unless it is None. A non-finite loss stops the run.

    Every check that can be made is made before ``out`` is touched. An existing
    ``out`` (``overwrite``) is replaced only at the first checkpoint after step 0,
    when the new run is under way; until then the new run lives in a temporary
    file beside it (see ``RunWriter``).
    """
    config = config.resolved()
    if out is not None:
        check_file(out, overwrite)
    data = _data(config, data_dir, data)
    dev = _device(config, device)
    check_sizes(config, data, dev)
    index = data.probe_index(config.probe_size)
    rule = build(config, data.task, data.n_features, data.n_outputs, dev)
    if config.stages > 1:
        from . import pipeline

        pipeline.check(rule)
    kept = set(recorded_layers(config, rule))
    writer = None
    if out is not None:
        writer = RunWriter(
            out, rule=config.rule, model=config.model, dataset=config.dataset, seed=config.seed,
            config_json=config.to_json(), task=data.task, n_features=data.n_features,
            n_outputs=data.n_outputs, probe_index=index, probe_labels=data.probe_labels(index),
            probe_targets=data.y_test[index].numpy() if data.task == "regression" else None,
            layers=[(name, w, block.kind) for name, w, block in
                    zip(rule.network.interfaces, rule.network.widths, rule.network.blocks) if name in kept],
            overwrite=overwrite, record_bn=config.record_bn, record_dtype=config.record_dtype,
            interfaces=rule.network.interfaces,
        )
    if config.stages > 1:
        return pipeline.run(config, rule, data, index, writer, quiet)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)
    return _run(config, rule, stream, data, index, dev, writer, 0, quiet)


def resume(path: str | Path, *, data_dir=None, device: str = "auto", quiet: bool = False,
           data: Dataset | None = None) -> TrainResult | None:
    """Continue the interrupted run in ``path`` from its last complete checkpoint.

    The config comes from the file; what is kept of it is copied into a new file
    put in its place, and training goes on there; the finished file equals the one
    an uninterrupted run writes (see ``RunWriter.reopen`` and ``repanalysis.resume``).
    A complete run is left alone (returns None); a run that failed on a
    non-finite loss is refused, since it would fail again.
    """
    with RunFile(path) as run:
        if run.status == "complete":
            return None
        if run.model == "lstm":
            raise UserError(f"{path} is a recurrent run (--model lstm); those cannot be resumed yet: train it again "
                            "with --overwrite")
        if run.status == "failed" and str(run.error).startswith(NON_FINITE):
            raise UserError(f"{path} failed on a non-finite loss, and would fail again if resumed ({run.error})")
        config = stored_config(run)
        recorded_index = run.probe_index
    data = _data(config, data_dir, data)
    dev = _device(config, device)
    check_sizes(config, data, dev)
    index = data.probe_index(config.probe_size)
    if not np.array_equal(index, recorded_index):
        raise UserError(f"{path}: its probe set is not this {config.dataset} data set's; it cannot be resumed")
    rule = build(config, data.task, data.n_features, data.n_outputs, dev)
    if config.stages > 1:
        from . import pipeline

        pipeline.check(rule)
    stream = Batches(len(data.x_train), config.batch_size, config.seed)

    def load(step: int, params: dict, state: dict) -> None:  # a mismatch is refused before the file is rewritten
        load_arrays(rule, params, path)
        resume_state.restore(rule, stream, state, step)

    writer, step, params, state = RunWriter.reopen(path, load)
    if config.stages > 1:  # the stages restore the same state; the parent's rule records and evaluates
        return pipeline.run(config, rule, data, index, writer, quiet, step, {**params, **state})
    return _run(config, rule, stream, data, index, dev, writer, step, quiet, resumed=True)


def recorded_layers(config: TrainConfig, rule: Rule) -> list[str]:
    """The interfaces ``config.record_layers`` keeps (all by default), bottom to top."""
    names = rule.network.interfaces
    if config.record_layers is None:
        return list(names)
    bad = sorted(k for k in config.record_layers if k > len(names))
    if bad:
        raise UserError(f"--record-layers names interfaces {bad}; this network has h1..h{len(names)}")
    return [names[k - 1] for k in sorted(config.record_layers)]


def recorder(writer: RunWriter | None, rule: Rule, probe_x, probe_y, training_state):
    """The ``Recorder`` of a run of ``rule`` on ``writer`` (None: nothing is recorded); its checkpoints
    keep the layers of ``recorded_layers`` and ``training_state()``, what ``resume`` needs
    (``repanalysis.resume``)."""
    if writer is None:
        return None
    kept = recorded_layers(rule.config, rule)
    if len(kept) == len(rule.network.interfaces):
        shadow = lambda: rule.probe(probe_x, probe_y)  # noqa: E731
    else:
        def shadow():
            layers = rule.probe(probe_x, probe_y)
            return {name: layers[name] for name in kept}
    return Recorder.attach(writer, shadow, lambda: state_tensors(rule), training_state, probe_x.device)


def non_finite(recorder: Recorder | None, step: int) -> UserError:
    """Close the run as failed on a non-finite loss at ``step``; the error to raise."""
    message = f"{NON_FINITE} at step {step}; the run stopped there"
    if recorder is not None:
        kept = recorder.replacing
        recorder.close("failed", error=message)
        message += (f" ({recorder.path} was left as it was)" if kept
                    else f" ({recorder.path} keeps the checkpoints before it, status 'failed')")
    return UserError(message)


def _run(config: TrainConfig, rule: Rule, stream: Batches, data: Dataset, index, dev: torch.device,
         writer: RunWriter | None, start: int, quiet: bool, resumed: bool = False) -> TrainResult:
    """Train from step ``start`` to the end; ``resumed``: the checkpoint at ``start`` is in the file already."""
    probe_x, probe_y = data.x_test[index].to(dev), data.y_test[index].to(dev)
    recording = recorder(writer, rule, probe_x, probe_y, lambda: resume_state.capture(rule, stream))

    def checkpoint(step: int) -> None:
        if recording is not None:
            recording.checkpoint(step)

    last_eval: dict[str, float] = {}

    def evaluation(step: int) -> None:
        last_eval.update(step=step, **evaluate(rule, data, dev))
        if recording is not None:
            recording.evaluation(**last_eval)

    def due(step: int, every: int) -> bool:
        return step % every == 0 or step == config.steps

    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
    progress = Progress(config.steps, f"train {config.rule}", quiet=quiet)
    step = start
    interrupts = BetweenSteps()
    try:
        if not resumed:
            checkpoint(start)
        if due(start, config.eval_every):
            evaluation(start)
        for step in range(start + 1, config.steps + 1):
            interrupts.check()
            idx = next(stream).to(dev)
            metrics = rule.step(x_train[idx], y_train[idx])
            row = {k: v.item() for k, v in metrics.items()}
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(step)
            if recording is not None:
                recording.log(step, **row)
            if due(step, config.record_every):
                checkpoint(step)
            if due(step, config.eval_every):
                evaluation(step)
            progress.update(step, f"loss {row['train_loss']:.4f}")
    except FloatingPointError:
        progress.close()
        raise non_finite(recording, step) from None
    except BaseException as err:
        progress.close()
        if recording is not None:
            recording.close("failed", error=f"stopped at step {step}: {type(err).__name__}")
        raise
    finally:
        interrupts.close()
    progress.close()
    if recording is not None:
        recording.close("complete")
    return TrainResult(rule, "complete", config.steps, last_eval)
