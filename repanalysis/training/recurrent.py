"""Training an LSTM on a sequence task with truncated BPTT or DNI, recorded to a run file.

Every step draws a batch of sequences, accumulates the gradient of its loss
over the windows (``rules``) and then updates the LSTM once (and the DNI
module once): the windows cut the gradient, not the updates. The LSTM and
the module are initialised from torch's global RNG seeded by the run's seed;
the batches come from a generator of their own, the Copy scores from another.

Copy and Repeat Copy: the curriculum (``sequences.Curriculum``) is scored every
``eval_every`` steps on 256 fresh sequences of the current length; the run's
score is the longest length solved. Language modelling: bits per character on the whole
held-out part every ``eval_every`` steps and at the end.

The run file is the feed-forward runs' (``runfile``) with the layers ``h`` and
``c`` holding, per checkpoint, the states after every step of the probe
sequences (``[N, L, H]``), and the group ``/boundary``: ``after_step [K]``
(the boundaries of the probe sequences at the run's ``bptt``),
``true_grad [T, N, K, 2H]`` (per-sample ``∂L_n/∂[h, c]`` of the whole
sequence's loss, by an unroll over the whole sequence) and, for DNI,
``prediction [T, N, K, 2H]`` (the module's output on the same states); the
group ``/probe`` holds the probe sequences themselves (``inputs``, ``targets``,
``mask``, each ``[N, L]``). Parameters are stored per checkpoint as for
feed-forward runs: the LSTM's, the module's (``rule.``) and the auxiliary
head's (``aux.``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from repanalysis.config import MAX_SEED, OPTIMIZERS
from repanalysis.errors import UserError
from repanalysis.nn.recurrent import SequenceLSTM
from repanalysis.nn.sequences import (
    Batch,
    CharText,
    Copy,
    Curriculum,
    RepeatCopy,
    bits,
    copy_score,
    read_text,
    token_losses,
)
from repanalysis.rules.base import make_optimizer
from repanalysis.rules.recurrent import (
    boundaries,
    boundary_module,
    dni_backward,
    true_boundary_gradients,
    truncated_backward,
)
from repanalysis.runfile.hdf5 import RunWriter
from repanalysis.runfile.recorder import model_tensors
from repanalysis.runtime.outputs import check_file
from repanalysis.runtime.progress import Progress

RECURRENT_RULES = ("backprop", "dni")
TASKS = ("copy", "repeatcopy", "charlm")
#: The generated tasks (with a curriculum).
GENERATED = ("copy", "repeatcopy")
#: Where ``--data-dir`` holds the language-modelling text, unless ``--text`` names it.
TEXT_IN_DATA_DIR = Path("tinyshakespeare") / "input.txt"
#: Sequences in each Copy score.
COPY_SCORE_SIZE = 256


@dataclass
class RecurrentConfig:
    """Settings of one recurrent run (``train --model lstm``); ``None``: the default ``resolved`` fills in.

    ``model`` and ``dataset`` name the run as a feed-forward config's do (the spec's run-file names)."""

    model: ClassVar[str] = "lstm"

    task: str = "copy"
    rule: str = "backprop"
    bptt: int | None = None  # the window T; None: full BPTT
    hidden: int = 64
    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    sg_lr: float | None = None  # the module's learning rate (default lr)
    aux: bool = False  # dni: the auxiliary task (``rules``), its head trained with the LSTM
    seed: int = 0
    record_every: int | None = None  # default steps/10
    eval_every: int | None = None  # default steps/50 for copy, steps/10 for charlm
    probe_size: int = 200
    copy_symbols: int = 8
    copy_start: int = 1
    copy_max: int = 64
    copy_threshold: float = 0.15  # bits per output symbol below which a length is solved
    repeat_max: int = 3  # repeatcopy: the repeat count is drawn from 1 .. repeat_max
    probe_length: int = 8  # copy: symbols in each probe sequence
    seq_length: int = 50  # charlm: steps per sequence
    text: str | None = None  # charlm: the text file (default: --data-dir's tinyshakespeare/input.txt)

    def resolved(self) -> "RecurrentConfig":
        """A copy with every default filled in and every setting checked (one line per mistake)."""
        c = dataclasses.replace(self)
        for option, value, choices in (("task", c.task, TASKS), ("rule", c.rule, RECURRENT_RULES),
                                       ("optimizer", c.optimizer, OPTIMIZERS)):
            if value not in choices:
                extra = "; an LSTM trains by backprop (truncated at --bptt) or dni" if option == "rule" else ""
                raise UserError(f"unknown {option} {value!r} for --model lstm; choose one of {', '.join(choices)}"
                                + extra)
        for name in ("hidden", "steps", "batch_size", "probe_size", "copy_symbols", "copy_start", "copy_max",
                     "repeat_max", "probe_length", "seq_length"):
            if getattr(c, name) < 1:
                option = "width" if name == "hidden" else name.replace("_", "-")
                raise UserError(f"--{option} must be at least 1, got {getattr(c, name)}")
        if c.bptt is not None and c.bptt < 1:
            raise UserError(f"--bptt must be at least 1, got {c.bptt}")
        for name in ("lr", "sg_lr", "copy_threshold"):
            value = getattr(c, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        if not 0 <= c.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {c.momentum}")
        if not 0 <= c.seed <= MAX_SEED:
            raise UserError(f"--seed must be from 0 to 2**63 - 1, got {c.seed}")
        if c.aux and c.rule != "dni":
            raise UserError(f"--aux is DNI's auxiliary task; it needs --rule dni, not {c.rule}")
        if c.copy_start > c.copy_max:
            raise UserError(f"--copy-start {c.copy_start} is above --copy-max {c.copy_max}")
        longest = generated_task(c).length_of(c.copy_max) if c.task in GENERATED else c.seq_length
        if c.bptt is not None and c.bptt > longest:
            form = "2 x --copy-max {0} + 1" if c.task == "copy" else "--copy-max {0} x (1 + --repeat-max {1}) + 1"
            what = (f"the longest {generated_task(c).title} sequence ({form.format(c.copy_max, c.repeat_max)} = "
                    f"{longest} steps)"
                    if c.task in GENERATED else f"the sequences (--seq-length {longest})")
            raise UserError(f"--bptt {c.bptt} is longer than {what}; use at most {longest}, or leave --bptt out "
                            "for full BPTT")
        c.sg_lr = c.lr if c.sg_lr is None else c.sg_lr
        c.record_every = c.record_every or max(1, c.steps // 10)
        c.eval_every = c.eval_every or max(1, c.steps // (50 if c.task in GENERATED else 10))
        if c.record_every < 1 or c.eval_every < 1:
            raise UserError("--record-every and --eval-every must be at least 1")
        return c

    @property
    def dataset(self) -> str:
        return self.task

    @property
    def label(self) -> str:
        """The rule as tables name it: ``backprop``, ``dni`` or ``dni+aux`` (DNI with the auxiliary task)."""
        return "dni+aux" if self.aux else self.rule

    def to_json(self) -> str:
        return json.dumps({"model": self.model, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RecurrentConfig":
        """The config of ``to_json``'s text (a run file's ``config``)."""
        fields = json.loads(text)
        fields.pop("model", None)
        return cls(**fields)

    def cost(self) -> int:
        """A rough number of multiply-adds to train this run (the longest sequence throughout)."""
        length = generated_task(self).length_of(self.copy_max) if self.task in GENERATED else self.seq_length
        return self.steps * self.batch_size * length * self.hidden ** 2


def generated_task(config: RecurrentConfig) -> Copy | RepeatCopy:
    """The generated task (``GENERATED``) of ``config``."""
    if config.task == "repeatcopy":
        return RepeatCopy(config.copy_symbols, config.repeat_max)
    return Copy(config.copy_symbols)


@dataclass
class RecurrentResult:
    steps_done: int
    score: dict[str, float]  # copy: longest (solved) and length (reached); charlm: test_bits

    def summary(self) -> str:
        if "longest" in self.score:
            return f"longest length solved {int(self.score['longest'])}"
        return f"held-out bits per character {self.score['test_bits']:.4f}"


def text_path(config: RecurrentConfig, data_dir) -> Path:
    """The language-modelling text: ``--text``, else ``TEXT_IN_DATA_DIR`` under ``--data-dir`` or
    ``$REPANALYSIS_DATA``."""
    if config.text is not None:
        return Path(config.text)
    folder = data_dir or os.environ.get("REPANALYSIS_DATA")
    if folder is None:
        raise UserError(f"--task charlm needs --text FILE, or --data-dir FOLDER holding {TEXT_IN_DATA_DIR}")
    return Path(folder) / TEXT_IN_DATA_DIR


@functools.lru_cache(maxsize=4)
def _text_vocabulary(path: str, size: int, mtime_ns: int) -> str:
    return "".join(sorted(set(read_text(path))))


def check_vocabulary(run_path, stored: str | None, config: RecurrentConfig, data_dir) -> None:
    """Refuse (one line) a language model's run file whose characters (its ``vocabulary`` attribute, JSON) are
    not those of the text ``config`` and ``data_dir`` name now: its numbers are about another text."""
    path = text_path(config, data_dir)
    read_text(path)  # refused in one line unless it is a text file
    chars = _text_vocabulary(str(path), path.stat().st_size, path.stat().st_mtime_ns)
    trained = json.loads(stored) if stored else ""
    if trained != chars:
        raise UserError(f"{run_path} was trained on a text of {len(trained)} distinct characters, and {path} has "
                        f"{len(chars)} (another vocabulary): give the data folder it was trained on, or another "
                        "output folder")


def derived_seed(seed: int, purpose: int) -> int:
    """A seed for one of a run's generators (``purpose``: 0 batches, 1 scores, 2 probe set)."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1, np.uint64)[0]) & MAX_SEED


class SequenceTask:
    """The task of a run as the loop sees it: training batches, the probe set, evaluations."""

    def __init__(self, config: RecurrentConfig, data_dir):
        self.config = config
        if config.task in GENERATED:
            self.copy, self.text = generated_task(config), None
            self.curriculum = Curriculum(config.copy_start, config.copy_max, config.copy_threshold)
            self.vocab, self.n_outputs = self.copy.vocab, self.copy.n_outputs
            self.probe = self.copy.batch(config.probe_length, config.probe_size,
                                         torch.Generator().manual_seed(derived_seed(0, 2)))
            self.dataset = config.task
        else:
            path = text_path(config, data_dir)
            self.copy, self.text = None, CharText(read_text(path), config.seq_length, source=str(path))
            self.vocab, self.n_outputs = self.text.vocab, self.text.n_outputs
            if config.probe_size > self.text.n_held:
                raise UserError(f"--probe-size {config.probe_size} is more than the {self.text.n_held} held-out "
                                f"sequences of {config.seq_length} characters")
            self.probe = self.text.held_out(0, config.probe_size)
            self.dataset = f"{path.parent.name}/{path.name}"
        self.batches = torch.Generator().manual_seed(derived_seed(config.seed, 0))
        self.scores = torch.Generator().manual_seed(derived_seed(config.seed, 1))

    def batch(self) -> Batch:
        if self.copy is not None:
            return self.copy.batch(self.curriculum.length, self.config.batch_size, self.batches)
        return self.text.batch(self.config.batch_size, self.batches)

    def evaluate(self, model: SequenceLSTM) -> dict[str, float]:
        """Copy: score the current length (and move the curriculum on); charlm: held-out bits per character."""
        with torch.no_grad():
            if self.copy is not None:
                length = self.curriculum.length
                batch = self.copy.batch(length, COPY_SCORE_SIZE, self.scores)
                test_bits, error = copy_score(model(batch.inputs, model.initial_state(len(batch)))[0], batch)
                solved = self.curriculum.update(test_bits)
                return {"length": length, "test_bits": test_bits, "test_error": error, "solved": float(solved),
                        "longest": self.curriculum.longest}
            total, count = 0.0, 0
            for first in range(0, self.text.n_held, 512):
                batch = self.text.held_out(first, min(512, self.text.n_held - first))
                losses = token_losses(model(batch.inputs, model.initial_state(len(batch)))[0], batch)
                total, count = total + float(losses.sum()), count + len(batch)
            return {"test_bits": bits(total / count)}


def train_recurrent(config: RecurrentConfig, out=None, *, data_dir=None, overwrite: bool = False,
                    quiet: bool = False) -> RecurrentResult:
    """Train ``config``; record to ``out`` unless it is None. Every check is made before ``out`` is touched;
    a non-finite loss stops the run (a ``UserError``; the file is closed as failed)."""
    config = config.resolved()
    if out is not None:
        check_file(out, overwrite)
    task = SequenceTask(config, data_dir)
    torch.manual_seed(config.seed)
    model = SequenceLSTM(task.vocab, config.hidden, task.n_outputs)
    module = boundary_module(config.hidden) if config.rule == "dni" else None
    aux = boundary_module(config.hidden) if config.aux else None
    core = [*model.parameters(), *(aux.parameters() if aux is not None else ())]
    optimizer = make_optimizer(config.optimizer, core, config.lr, config.momentum)
    module_optimizer = (make_optimizer(config.optimizer, module.parameters(), config.sg_lr, config.momentum)
                        if module is not None else None)
    at = boundaries(task.probe.length, config.bptt)
    writer = _writer(config, task, at, out, overwrite) if out is not None else None
    progress = Progress(config.steps, f"{config.rule} T={config.bptt or 'full'}", quiet=quiet)
    last: dict[str, float] = {}
    try:
        if writer is not None:
            _record(writer, model, module, aux, task.probe, at, 0)
        for step in range(1, config.steps + 1):
            row = {"step": step}
            if task.copy is not None:
                row["length"] = task.curriculum.length
            batch = task.batch()
            optimizer.zero_grad(set_to_none=True)
            if module is None:
                loss, _ = truncated_backward(model, batch, config.bptt)
            else:
                module_optimizer.zero_grad(set_to_none=True)
                loss, regression, auxiliary = dni_backward(model, module, batch, config.bptt, aux)
                if regression is not None:
                    module_optimizer.step()
                row["sg_loss"] = math.nan if regression is None else float(regression)  # nan: no boundary
                if aux is not None:
                    row["aux_loss"] = math.nan if auxiliary is None else float(auxiliary)
            if not math.isfinite(float(loss)):
                message = f"the training loss became non-finite at step {step}; the run stopped there"
                if writer is not None:
                    writer.close("failed", error=message)
                    writer = None
                raise UserError(message)
            optimizer.step()
            row["loss_bits"] = bits(loss)
            if writer is not None:
                writer.log(row)
            if step % config.eval_every == 0 or step == config.steps:
                last = {"step": step, **task.evaluate(model)}
                if writer is not None:
                    writer.evaluation(last)
            if writer is not None and (step % config.record_every == 0 or step == config.steps):
                _record(writer, model, module, aux, task.probe, at, step)
            progress.update(step, f"loss {row['loss_bits']:.3f} bits" + (
                f", N {task.curriculum.length}" if task.copy is not None else ""))
        if writer is not None:
            writer.close("complete")
            writer = None
    except BaseException as err:
        if writer is not None:
            writer.close("failed", error=str(err) or type(err).__name__)
        raise
    finally:
        progress.close()
    score = {"longest": task.curriculum.longest, "length": task.curriculum.length} if task.copy else {
        "test_bits": last["test_bits"]}
    return RecurrentResult(config.steps, score)


def _writer(config: RecurrentConfig, task: SequenceTask, at: list[int], out, overwrite: bool) -> RunWriter:
    steps, hidden = task.probe.length, config.hidden
    writer = RunWriter(
        out, rule=config.rule, model="lstm", dataset=task.dataset, seed=config.seed, config_json=config.to_json(),
        task=task.config.task, n_features=task.vocab, n_outputs=task.n_outputs,
        probe_index=np.arange(config.probe_size),
        layers=[(name, steps * hidden, f"lstm {name} per step [L={steps}, H={hidden}]") for name in ("h", "c")],
        overwrite=overwrite)
    try:
        if task.text is not None:
            writer.file.attrs["vocabulary"] = json.dumps("".join(task.text.chars))
        writer.add("boundary/after_step", np.asarray(at, dtype=np.int64))
        for name in ("inputs", "targets", "mask"):
            writer.add(f"probe/{name}", getattr(task.probe, name).numpy())
    except BaseException:
        writer.abandon()
        raise
    return writer


def _record(writer: RunWriter, model: SequenceLSTM, module, aux, probe: Batch, at: list[int], step: int) -> None:
    """One checkpoint: the probe sequences' states, the true boundary gradients (and the module's predictions),
    every parameter."""
    with torch.no_grad():
        h, c = model.states(probe.inputs, model.initial_state(len(probe)))
    if at:
        writer.append_row("boundary", "true_grad", true_boundary_gradients(model, probe, at).numpy())
        if module is not None:
            index = torch.tensor(at) - 1
            with torch.no_grad():
                states = torch.cat([h[:, index], c[:, index]], 2).reshape(-1, 2 * model.hidden)
                prediction = module(states).reshape(len(probe), len(at), -1)
            writer.append_row("boundary", "prediction", prediction.numpy())
    params = {**model_tensors(model), **(model_tensors(module, "rule.") if module is not None else {}),
              **(model_tensors(aux, "aux.") if aux is not None else {})}
    writer.checkpoint(step, {"h": {"activations": h.numpy()}, "c": {"activations": c.numpy()}},
                      {k: v.numpy().copy() for k, v in params.items()})
