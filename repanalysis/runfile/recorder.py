"""``Recorder``: write a run file from any ``torch.nn.Module``, inside your own training loop.

    rec = Recorder("run.h5", model, layers={"conv": model[1], "fc": model[5]},
                   probe=(x_probe, y_probe), loss=torch.nn.functional.cross_entropy)
    for step, (x, y) in enumerate(batches):
        if step % 100 == 0:
            rec.checkpoint(step)
        ...                                # your own update
    rec.close()                            # status "complete"; or use a with-block

Conventions:

- a *layer* is the output of a named module (a forward hook; of its last call
  in a forward pass), stored as produced: ``[T, N, D]`` for vectors,
  ``[T, N, C, H, W]`` for feature maps;
- ``true_grad`` is ``torch.autograd.grad`` of ``loss(model(x_probe), y_probe)``
  with respect to each layer: with a batch-mean loss, a sample's own gradient
  is ``N · true_grad``;
- the *shadow pass* that computes them changes nothing: no parameter, no
  ``.grad``, no buffer (every buffer is put back bit for bit), no optimiser
  state, and not torch's random generators (dropout in it draws from a fork).
  ``record_bn="batch"`` runs the model in training mode (batch norm with the
  probe set's own statistics, dropout on), ``"eval"`` in eval mode; either
  way each module's own mode is restored;
- every parameter and buffer is recorded at each checkpoint under
  ``/params/model.<state_dict key>``.

The file is written on a background thread (``Background``) where that
thread has a core to itself (a CUDA model, or torch's threads leaving a core
free; otherwise in the caller's thread, which measured faster):
``checkpoint`` runs the shadow pass and copies the state (tensors the next
update would change) in the caller's thread and hands them over; the copy to
the host and the write follow while training goes on, in
order, at most two checkpoints in flight. ``wait()`` and ``close()`` wait for them. A failed
write is raised in the caller's thread at the next hand-over, ``wait()`` or
``close()`` (an ``OSError`` as a ``UserError`` naming the file), and the run
is closed as "failed" with it.

Crash safety is ``RunWriter``'s: flushed after every checkpoint and
evaluation, status "running" until ``close()``; an existing file
(``overwrite=True``) is replaced only at the second checkpoint (or at
``close()``). A Ctrl-C during a checkpoint, evaluation or ``close()`` takes
effect when it ends (file writes run on the writer thread, which signals
never interrupt); leaving a with-block on an exception closes the run as
"failed" with the exception named, and the last step the recorder was given.

``train`` records through the same class (``Recorder.attach``), with the
rule's own shadow pass, which adds each rule's ``signal``.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
from typing import Callable

import numpy as np
import torch
from torch import nn

from repanalysis.config import RECORD_BN
from repanalysis.errors import UserError
from repanalysis.rules.base import batch_statistics, evaluating
from repanalysis.runfile.background import Background, thread_pays
from repanalysis.runfile.dtypes import RECORD_DTYPES
from repanalysis.runfile.hdf5 import RunHeader, RunWriter
from repanalysis.runtime.interrupts import whole
from repanalysis.runtime.outputs import check_file, write_failure

Shadow = Callable[[], dict[str, dict[str, torch.Tensor]]]
State = Callable[[], dict[str, torch.Tensor | np.ndarray]]


def _number(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


def _failed(err: BaseException, path) -> str:
    why = write_failure(path, err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
    return f"writing the run file failed ({why})"


def _numpy(arrays: dict) -> dict:
    """Nested dicts of tensors (or numpy values) as numpy arrays: the device-to-host copy."""
    return {k: _numpy(v) if isinstance(v, dict) else v.cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in arrays.items()}


def _snapshot(arrays: dict) -> dict:
    """A copy of named tensors (and numpy values) that later updates of the originals leave alone."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else np.array(v, copy=True)
            for k, v in arrays.items()}


def _checkpoint_step(step, previous: int | None) -> int:
    """``step`` as an int if it can follow the checkpoint at ``previous``; else a ``UserError``."""
    try:
        whole_step = operator.index(step)
    except TypeError:
        whole_step = None
    if whole_step is None or isinstance(step, bool):
        raise UserError(f"checkpoint step {step!r} is not a whole number; give the training step as an int")
    if whole_step < 0 or (previous is not None and whole_step <= previous):
        after = "" if previous is None else f" and after the previous checkpoint's step {previous}"
        raise UserError(f"checkpoint step {whole_step} must be at least 0{after}: steps are increasing")
    return whole_step


def _check_batch_mean(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse a loss that sums over its inputs (``reduction="sum"``) instead of averaging: the recorded
    gradients assume a mean. Tried, not guessed: on the probe set given twice a mean stays the same and a
    sum doubles (in eval mode, where a pass over a batch is the pass over each input)."""
    with torch.no_grad(), evaluating(model), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        once = float(loss(model(x), y))
        twice = float(loss(model(torch.cat([x, x])), torch.cat([y, y])))
    if once != 0 and math.isfinite(once) and math.isclose(twice, 2 * once, rel_tol=1e-3):
        raise UserError("the loss sums over the probe set (reduction='sum', say); the recorded gradients assume "
                        "its mean over the inputs: give a loss with reduction='mean'")


def model_tensors(model: nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (its ``state_dict``), detached, named ``prefix + key``."""
    return {f"{prefix}{k}": v.detach() for k, v in model.state_dict().items()}


def shadow_pass(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, loss,
                record_bn: str = "batch") -> dict[str, dict[str, torch.Tensor]]:
    """Per layer ``activations`` and ``true_grad`` of ``loss(model(x), y)``; changes nothing (module docstring).

    A hooked output that does not require a gradient (it depends on no
    parameter) is made a leaf that does; every hooked output is passed on as a
    copy, so an in-place operation after it changes neither the recorded value
    nor its gradient.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def keep(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise UserError(f"layer {name!r} ({type(module).__name__}) outputs a {type(output).__name__}, "
                                "not a tensor; record a module that outputs one tensor")
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            captured[name] = output
            return output.clone()
        return keep

    devices = [x.device] if x.device.type == "cuda" else []
    mode = batch_statistics if record_bn == "batch" else evaluating
    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with torch.random.fork_rng(devices=devices), mode(model), torch.enable_grad():
            value = loss(model(x), y)
            missing = [name for name in layers if name not in captured]
            if missing:
                raise UserError(f"layer(s) {', '.join(missing)} did not run in the model's forward pass")
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise UserError("the loss must return one number (a 0-d tensor): the mean over the probe set")
            grads = torch.autograd.grad(value, [captured[name] for name in layers], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"activations": captured[name].detach(),
                   "true_grad": torch.zeros_like(captured[name]) if g is None else g.detach()}
            for name, g in zip(layers, grads)}


def _layer_modules(model: nn.Module, layers) -> dict[str, nn.Module]:
    """``layers`` as ``{name: module}``; a value may be a module of ``model`` or its qualified name."""
    if not isinstance(layers, dict) or not layers:
        raise UserError("layers must be a non-empty dict {name: module of the model (or its qualified name)}")
    owned = {id(m) for m in model.modules()}
    out = {}
    for name, module in layers.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise UserError(f"layer name {name!r} must be a non-empty string without '/'")
        if isinstance(module, str):
            try:
                module = model.get_submodule(module)
            except AttributeError:
                raise UserError(f"layer {name!r}: the model has no module {module!r}") from None
        if not isinstance(module, nn.Module) or id(module) not in owned:
            raise UserError(f"layer {name!r} is not a module of the model")
        out[name] = module
    return out


class Recorder:
    """Record ``model``'s ``layers`` on a probe set to the run file ``path`` (see the module docstring).

    ``probe``: ``(x, y)``; integer labels ``[N]`` make a classification run
    (``/probe/labels``), anything else a regression run (``/probe/targets``).
    ``loss(output, y)``: the probe-mean loss. ``rule``: the name analysis
    shows (``analyze`` pairs each run with the ``backprop`` run of its
    ``seed``). ``probe_index``: the probe inputs' indices in your test split
    (default ``0..N-1``): runs are comparable only with equal indices and
    ``dataset``. ``config``: anything JSON-serialisable to keep with the run.
    ``record_dtype``: how the arrays and parameters are stored (``runfile.dtypes.RECORD_DTYPES``).
    """

    def __init__(self, path, model: nn.Module, layers, probe, loss, *, rule: str = "external",
                 dataset: str = "external", seed: int | None = None, probe_index=None,
                 record_bn: str = "batch", config: dict | None = None, overwrite: bool = False,
                 record_dtype: str = "float32"):
        check_file(path, overwrite, option="path")
        if record_bn not in RECORD_BN:
            raise UserError(f"record_bn must be one of {', '.join(RECORD_BN)}, got {record_bn!r}")
        if record_dtype not in RECORD_DTYPES:
            raise UserError(f"record_dtype must be one of {', '.join(RECORD_DTYPES)}, got {record_dtype!r}")
        modules = _layer_modules(model, layers)
        try:
            x, y = probe
        except (TypeError, ValueError):
            raise UserError("probe must be a pair (x, y) of tensors") from None
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x, y = torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)
        if len(x) != len(y) or len(x) < 2:
            raise UserError(f"the probe needs at least 2 inputs, with one y each; got {len(x)} and {len(y)}")
        classification = y.ndim == 1 and not torch.is_floating_point(y)
        index = np.arange(len(x)) if probe_index is None else np.asarray(probe_index, dtype=np.int64)
        if index.shape != (len(x),):
            raise UserError(f"probe_index must hold one index per probe input ({len(x)}), got shape {index.shape}")

        def shadow():
            return shadow_pass(model, modules, x, y, loss, record_bn)

        first = shadow()  # every check before the file is touched: the layers run, the loss is one number
        _check_batch_mean(model, loss, x, y)
        with torch.no_grad(), evaluating(model), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            n_outputs = math.prod(model(x[:2]).shape[1:])
        about = {"external": True, "rule": rule, "model": type(model).__name__, "layers": list(modules),
                 "modules": {name: type(m).__name__ for name, m in modules.items()},
                 "probe_size": len(x), "record_bn": record_bn, "record_dtype": record_dtype,
                 "loss": getattr(loss, "__name__", type(loss).__name__),
                 "user": config or {}}
        try:
            config_json = json.dumps(about, sort_keys=True)
        except TypeError as err:
            raise UserError(f"config must be JSON-serialisable ({err})") from None
        header = RunHeader(
            rule=rule, model=type(model).__name__, dataset=dataset, seed=-1 if seed is None else int(seed),
            config_json=config_json, task="classification" if classification else "regression",
            n_features=math.prod(x.shape[1:]), n_outputs=n_outputs, probe_index=index,
            probe_labels=y.cpu().numpy() if classification else None,
            probe_targets=None if classification else y.reshape(len(y), -1).cpu().numpy(),
            layers=[(name, math.prod(first[name]["activations"].shape[1:]), type(m).__name__)
                    for name, m in modules.items()],
            record_bn=record_bn, record_dtype=record_dtype,
        )
        writer = RunWriter(path, header, overwrite=overwrite)
        self._start(writer, shadow, lambda: model_tensors(model), device=device)

    @classmethod
    def attach(cls, writer: RunWriter, shadow: Shadow, state: State, resume: State | None = None,
               device: torch.device = torch.device("cpu")) -> "Recorder":
        """A recorder on an open ``writer``: ``shadow()`` gives the layer arrays, ``state()`` the
        parameters and buffers, ``resume()`` the state that continues training exactly, ``device`` where
        training runs (``train`` uses this)."""
        made = cls.__new__(cls)
        made._start(writer, shadow, state, resume, device)
        return made

    def _start(self, writer: RunWriter, shadow: Shadow, state: State, resume: State | None = None,
               device: torch.device = torch.device("cpu")) -> None:
        self._writer, self._shadow, self._state, self._resume = writer, shadow, state, resume
        self._background = Background(f"repanalysis writer of {writer.path.name}", threaded=thread_pays(device))
        self._rows: list[dict[str, float]] = []  # logged rows not yet handed to the writer
        self._written = 0  # checkpoints written by this recorder
        self.step: int | None = None  # the last step it was given
        self._last_checkpoint: int | None = None
        self.closed = False

    @property
    def path(self):
        return self._writer.path

    @property
    def replacing(self) -> bool:
        """Whether an existing file at ``path`` is still waiting to be replaced (once what is queued is written)."""
        self.wait()
        return self._writer.replacing

    def wait(self) -> None:
        """Wait until everything handed over so far is in the file (flushed), e.g. before reading it live."""
        with whole(), self._failures():
            self._background.drain()

    @contextlib.contextmanager
    def _failures(self):
        """A background write's ``OSError`` (a full disk, say) as a ``UserError`` that names the file."""
        try:
            yield
        except OSError as err:
            raise UserError(f"{self.path}: {_failed(err, self.path)}") from err

    def _submit(self, write: Callable[[], None]) -> None:
        """Hand the logged rows and then ``write`` to the background writer, in this order."""
        rows, self._rows = self._rows, []

        def job():
            for row in rows:
                self._writer.log(row)
            write()

        with self._failures():
            self._background.submit(job)

    def checkpoint(self, step: int) -> None:
        """Record every layer's activations and true gradients on the probe set, and every parameter.

        ``step``: a whole number, at least 0 and larger than the previous checkpoint's. The shadow pass
        runs here. With the writer thread, so does a copy of the state, and the copy to the host and the
        file write run in the background while training goes on; without it, the write runs here (and
        needs no copy).
        """
        step = _checkpoint_step(step, self._last_checkpoint)
        with whole():
            self.step = self._last_checkpoint = step
            layers = self._shadow()  # fresh tensors, which no later update touches
            keep = _snapshot if self._background.threaded else dict  # a write at once needs no copy
            state = keep(self._state())
            resume = None if self._resume is None else keep(self._resume())
            commit = self._written > 0
            self._written += 1

            def write():
                self._writer.checkpoint(step, _numpy(layers), _numpy(state), None if resume is None else _numpy(resume))
                if commit:
                    self._writer.commit()

            self._submit(write)

    def log(self, step: int, **metrics) -> None:
        """Record one step's metrics under ``/metrics`` (numbers or 0-d tensors; written at the next flush)."""
        self.step = step
        self._rows.append({"step": float(step), **{k: _number(v) for k, v in metrics.items()}})

    def evaluation(self, step: int, **metrics) -> None:
        """Record one evaluation under ``/eval`` (e.g. ``test_loss``, ``test_acc``); then flush."""
        with whole():
            self.step = step
            row = {"step": step, **{k: _number(v) for k, v in metrics.items()}}
            self._submit(lambda: self._writer.evaluation(row))

    def close(self, status: str = "complete", error: str | None = None) -> None:
        """Write what is queued and buffered and close with ``status`` ("complete", or "failed" with ``error``).

        After a failed background write the run is closed as "failed", with
        that failure as its error, which is raised here unless it was already.
        """
        if self.closed:
            return
        with whole():
            self.closed = True
            try:
                with self._failures():
                    self._background.stop()
            except BaseException:
                if self._background.error is not None:
                    self._close_broken(_failed(self._background.error, self.path))
                raise
            if self._background.error is not None:  # raised already, where it was handed over
                self._close_broken(_failed(self._background.error, self.path))
                return
            for row in self._rows:
                self._writer.log(row)
            self._writer.close(status, **({} if error is None else {"error": error}))

    def _close_broken(self, error: str) -> None:
        """Close after a failed write: as "failed" where the file still takes it; never raise a second error."""
        try:
            self._writer.close("failed", error=error)
        except Exception:  # noqa: BLE001 (close abandons the file on its way out)
            pass

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, err, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.close("failed", error=f"stopped at step {self.step}: {kind.__name__}")
