"""The training loop: one rule, one data set, recorded to a run file.

Checkpoints are taken at step 0 (before any update), every ``record_every``
steps and at the last step; evaluations on the whole test split likewise at
``eval_every``. Metrics are logged at every step (the batch's loss and
accuracy *before* that step's update; ``step`` counts updates done after it).
Batches are drawn without replacement from a permutation of the training split
that is redrawn each epoch (the incomplete last batch is dropped), from a
generator seeded by the run's seed; the network and the rule's modules are
initialised from torch's global RNG seeded by the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import tasks
from .config import TrainConfig
from .datasets import Dataset, load
from .errors import UserError
from .memory import check_fits
from .models import build_network
from .outputs import check_file
from .progress import Progress
from .rules import Rule, make_rule
from .runfile import RunFile, RunWriter


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


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless index batches: a fresh permutation each epoch, last incomplete batch dropped."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def evaluate(rule: Rule, data: Dataset, device: torch.device, chunk: int = 8192) -> dict[str, float]:
    """Mean test loss and accuracy over the whole test split, in eval mode."""
    net, task = rule.network, data.task
    was = net.training
    net.eval()
    total, hits, n = 0.0, 0, len(data.x_test)
    with torch.no_grad():
        for start in range(0, n, chunk):
            x = data.x_test[start : start + chunk].to(device)
            y = data.y_test[start : start + chunk].to(device)
            out = net(x)
            total += tasks.loss(task, out, y).item() * len(x)
            c = tasks.correct(task, out, y)
            hits = None if c is None else hits + c.item()
    net.train(was)
    return {"test_loss": total / n, "test_acc": math.nan if hits is None else hits / n}


def state_arrays(rule: Rule) -> dict[str, "torch.Tensor"]:
    """Every parameter and buffer of the network (``model.*``) and of the rule (``rule.*``)."""
    out = {f"model.{k}": v for k, v in rule.network.state_dict().items()}
    out.update({f"rule.{k}": v for k, v in rule.modules.state_dict().items()})
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def build(config: TrainConfig, task: str, n_features: int, n_outputs: int, device="cpu") -> Rule:
    """The seeded network and rule for ``config`` (already resolved)."""
    torch.manual_seed(config.seed)
    network = build_network(
        config.model, n_features, n_outputs, depth=config.depth, width=config.width,
        activation=config.activation, batch_norm=config.batch_norm,
    ).to(device)
    rule = make_rule(config, network, task, n_outputs)
    rule.modules.to(device)
    return rule


def rebuild(run: RunFile, checkpoint: int = -1, device="cpu") -> Rule:
    """The network and rule of a recorded run, with every parameter and buffer as at ``checkpoint``."""
    config = TrainConfig.from_json(run.file.attrs["config"]).resolved()
    a = run.file.attrs
    rule = build(config, str(a["task"]), int(a["n_features"]), int(a["n_outputs"]), device)
    arrays = run.params(checkpoint)
    for prefix, module in (("model.", rule.network), ("rule.", rule.modules)):
        state = {k[len(prefix):]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(prefix)}
        module.load_state_dict(state)
    return rule


def memory_estimate(config: TrainConfig, n_features: int, n_outputs: int) -> int:
    """Bytes a training step needs, roughly: float32 weights four times over (value, gradient,
    Adam's two moments), twice for rules with a module or feedback matrix per layer, plus the
    batch's activations (forward and backward) at every layer."""
    widths = [n_features] + ([config.width] * config.depth if config.model == "mlp" else []) + [n_outputs]
    weights = sum(a * b + b for a, b in zip(widths, widths[1:]))
    if config.rule not in ("backprop", "kickback"):
        weights *= 2
    return 4 * (4 * weights + 2 * config.batch_size * sum(widths))


def check_sizes(config: TrainConfig, data: Dataset, device: torch.device) -> None:
    """Refuse a batch larger than the training split, and a network that cannot fit in memory."""
    n = len(data.x_train)
    if config.batch_size > n:
        raise UserError(f"--batch-size {config.batch_size} is larger than the training split ({n} samples)")
    check_fits(memory_estimate(config, data.n_features, data.n_outputs),
               f"training this network (--width {config.width}, --depth {config.depth}, "
               f"--batch-size {config.batch_size})", "use a smaller --width, --depth or --batch-size", device)


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
    data = data or load(config.dataset, data_dir=data_dir, seed=config.data_seed)
    dev = choose_device(device)
    check_sizes(config, data, dev)
    index = data.probe_index(config.probe_size)
    rule = build(config, data.task, data.n_features, data.n_outputs, dev)
    probe_x, probe_y = data.x_test[index].to(dev), data.y_test[index].to(dev)
    writer = None
    if out is not None:
        writer = RunWriter(
            out, rule=config.rule, model=config.model, dataset=config.dataset, seed=config.seed,
            config_json=config.to_json(), task=data.task, n_features=data.n_features,
            n_outputs=data.n_outputs, probe_index=index, probe_labels=data.probe_labels(index),
            probe_targets=data.y_test[index].numpy() if data.task == "regression" else None,
            layers=[(name, w, block.kind) for name, w, block in
                    zip(rule.network.interfaces, rule.network.widths, rule.network.blocks)],
            overwrite=overwrite, record_bn=config.record_bn,
        )

    def checkpoint(step: int) -> None:
        if writer is None:
            return
        probe = rule.probe(probe_x, probe_y)
        layers = {name: {k: v.cpu().numpy() for k, v in arrays.items()} for name, arrays in probe.items()}
        writer.checkpoint(step, layers, state_arrays(rule))
        if step > 0:
            writer.commit()

    last_eval: dict[str, float] = {}

    def evaluation(step: int) -> None:
        last_eval.update(step=step, **evaluate(rule, data, dev))
        if writer is not None:
            writer.evaluation(dict(last_eval))

    gen = torch.Generator().manual_seed(config.seed)
    stream = batches(len(data.x_train), config.batch_size, gen)
    x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
    progress = Progress(config.steps, f"train {config.rule}", quiet=quiet)
    step = 0
    try:
        checkpoint(0)
        evaluation(0)
        for step in range(1, config.steps + 1):
            idx = next(stream).to(dev)
            metrics = rule.step(x_train[idx], y_train[idx])
            row = {"step": float(step), **{k: v.item() for k, v in metrics.items()}}
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(step)
            if writer is not None:
                writer.log(row)
            if step % config.record_every == 0 or step == config.steps:
                checkpoint(step)
            if step % config.eval_every == 0 or step == config.steps:
                evaluation(step)
            progress.update(step, f"loss {row['train_loss']:.4f}")
    except FloatingPointError:
        progress.close()
        message = f"the training loss became non-finite at step {step}; the run stopped there"
        if writer is not None:
            kept = writer.replacing
            writer.close("failed", error=message)
            message += (f" ({out} was left as it was)" if kept
                        else f" ({out} keeps the checkpoints before it, status 'failed')")
        raise UserError(message) from None
    except BaseException as err:
        progress.close()
        if writer is not None:
            writer.close("failed", error=f"stopped at step {step}: {type(err).__name__}")
        raise
    progress.close()
    if writer is not None:
        writer.close("complete")
    return TrainResult(rule, "complete", config.steps, last_eval)
