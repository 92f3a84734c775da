"""``TrainConfig``: every setting of one training run, stored as JSON in the run file."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass

from repanalysis.errors import UserError
from repanalysis.nn.feedforward import ACTIVATIONS, INITS, MODELS, POOLING
from repanalysis.runfile.dtypes import RECORD_DTYPES

RULES = ("backprop", "sg", "dni", "cdni", "fa", "dfa", "kickback", "noisy")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
RECORD_BN = ("batch", "eval")
SG_CONDITIONS = ("none", "label", "error")
SG_OUTPUTS = ("linear", "tanh")
SG_MAPS = ("flat", "conv")
#: Seeds are stored as 64-bit integers (run-file attributes, torch's generators).
MAX_SEED = 2**63 - 1
#: The option groups of ``repanalysis train`` a field may name in its metadata (``group``); others are ungrouped.
SYNTHETIC, FEEDBACK = "synthetic gradients (sg, dni, cdni) and noisy", "fixed feedback (fa, dfa)"


def _field(default, help: str, **cli):
    """A field whose metadata holds its ``repanalysis train`` option: its ``help`` and any of ``choices``,
    ``metavar``, ``group`` and ``action`` (``cli.add_config_options`` makes the options from them)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` means "the rule's or the run's default" (see ``resolved``).

    Interfaces are numbered from 1 (``h1`` is the first block's output), as on the
    command line.
    """

    rule: str = _field("backprop", f"one of {', '.join(RULES)} (default %(default)s)")
    dataset: str = _field("digits", "digits (default), mnist, or an artificial problem")
    data_seed: int = _field(0, "seed of the artificial data sets")
    model: str = _field("mlp", f"one of {', '.join(MODELS)}, or lstm (a recurrent network: see the options for "
                        "--model lstm below) (default %(default)s)")
    depth: int = _field(4, "hidden (or convolutional) blocks (default %(default)s)")
    width: int = _field(64, "units per hidden block, mlp; hidden units, lstm (default %(default)s; 64 for lstm)")
    channels: int = _field(32, "kernels per convolution, cnn")
    kernel_size: int = _field(3, "side of the square kernels (odd), cnn")
    pool: str = _field("max", "2x2 max pooling after each block, or none; cnn", choices=POOLING)
    activation: str = _field("relu", f"one of {', '.join(ACTIVATIONS)}")
    # on by default, as in both DNI papers; without it dni does not learn on digits
    batch_norm: bool = _field(True, "batch norm before each activation (default on)")
    init: str = _field("default", "the hidden blocks' weights: default (PyTorch's) or orthogonal", choices=INITS)
    bn_gamma_init: float = _field(1.0, "batch norm's initial scale (default %(default)s)")
    bn_beta_init: float = _field(0.0, "batch norm's initial shift (default %(default)s); 2 starts ReLU in its "
                                 "linear part")
    steps: int = _field(1000, "training steps (updates)")
    batch_size: int = _field(64, "training inputs per step")
    optimizer: str = _field("adam", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _field(1e-3, "learning rate of the network")
    momentum: float = _field(0.9, "for sgd (default %(default)s)")
    lr_schedule: str = _field("constant", "the blocks' learning rate over the run: constant, or cosine decay to 0 "
                              "at the last step", choices=LR_SCHEDULES)
    warmup_steps: int = _field(0, "linear learning-rate warm-up over the first N steps (default %(default)s)")
    record_every: int | None = _field(None, "steps between checkpoints (default steps/10)")
    eval_every: int | None = _field(None, "steps between test evaluations (default steps/10)")
    probe_size: int = _field(200, "probe inputs from the test split")
    record_bn: str = _field("batch", "batch norm in the recording's shadow pass: batch (the probe set's own "
                            "statistics, as in training; default) or eval (running statistics)", choices=RECORD_BN)
    record_dtype: str = _field("float32", "how activations, true gradients, signals and parameters are stored: "
                               "float32 (exact), or float16 / bfloat16 / int16 (fixed point) in under half the "
                               "bytes (docs/guide/runfile.md gives their effect on each measure)", choices=RECORD_DTYPES)
    record_layers: list[int] | None = _field(None, "interfaces to record, e.g. 1,25,50 or h1,h50 (default: all)")
    seed: int = _field(0, "seed of the initialisation and the batches")
    validation: int = _field(0, "training inputs held out as a validation split, evaluated beside the test split "
                             "(val_loss, val_acc; default %(default)s: none)")
    hold_steps: int = _field(0, "the blocks up to --hold-at hold still for the first N steps, under any rule "
                             "(default 0)")
    hold_at: int | None = _field(None, "the interface up to which --hold-steps holds blocks (default: the top "
                                 "module's for sg, dni, cdni and the top cut for noisy, dfa; else the middle)")
    # synthetic gradients (sg, dni, cdni), and where noisy corrupts the true gradient
    sg_at: list[int] | None = _field(None, "interfaces with a module for sg (where noisy corrupts), e.g. 2 or 2,4 "
                                     "(default: the middle)", group=SYNTHETIC)
    sg_condition: str | None = _field(None, "module input beside h (default: label; none for dni)",
                                      choices=SG_CONDITIONS, group=SYNTHETIC)
    sg_hidden: int | None = _field(None, "hidden layers in each module: 0 (linear), 1 or 2 (default 0; 1 for cnn)",
                                   group=SYNTHETIC)
    sg_width: int = _field(256, "units per module hidden layer", group=SYNTHETIC)
    sg_batch_norm: bool | None = _field(None, "batch norm in the modules' hidden layers (default: off; on for cnn)",
                                        group=SYNTHETIC)
    sg_output: str = _field("linear", "tanh bounds the prediction (log losses)", choices=SG_OUTPUTS,
                            group=SYNTHETIC)
    sg_map: str = _field("flat", "modules on feature maps: linear layers on the flattened map, or convolutions",
                         choices=SG_MAPS, group=SYNTHETIC)
    sg_lambda: float | None = _field(None, "target mix: 1 true gradient, 0 bootstrapped (default 1 for sg, 0 for "
                                     "dni/cdni)", group=SYNTHETIC)
    sg_optimizer: str | None = _field(None, "the modules' optimiser (default --optimizer)", choices=OPTIMIZERS,
                                      group=SYNTHETIC)
    sg_lr: float | None = _field(None, "the modules' learning rate (default --lr)", group=SYNTHETIC)
    sg_loss_weight: float = _field(1.0, "weight of the modules' regression loss", group=SYNTHETIC)
    sg_warmup: int = _field(0, "steps at the start in which the blocks below the modules hold still while they fit",
                            group=SYNTHETIC)
    update_prob: float = _field(1.0, "each block updates with this probability per step", group=SYNTHETIC)
    signal_cosine: float = _field(1.0, "noisy: the true gradient at the --sg-at interfaces turned to this cosine "
                                  "with itself, norm kept (default 1: backprop)", group=SYNTHETIC)
    feedback_scale: float = _field(1.0, "scale of the random feedback matrices", group=FEEDBACK)
    # Named "stages", not "workers", so that a spec's setting is not mistaken for reproduce's Dask workers.
    stages: int = _field(1, "pipeline stages of this one network, each in its own process, cut at the modules: "
                         "update-unlocked training (sg, dni, cdni); the config field 'stages' in run files and specs",
                         metavar="K", group=SYNTHETIC)
    sync: bool = _field(False, "with --stages: stages in lock-step, equal to the in-process rule (the check of the "
                        "machinery)", action="store_true", group=SYNTHETIC)

    def resolved(self) -> "TrainConfig":
        """A copy with every default filled in and every setting checked."""
        check_types(dataclasses.asdict(self))
        c = dataclasses.replace(self)
        _check_choice("rule", c.rule, RULES)
        _check_choice("optimizer", c.optimizer, OPTIMIZERS)
        for name in ("steps", "batch_size", "probe_size"):
            if getattr(c, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        _check_choice("lr-schedule", c.lr_schedule, LR_SCHEDULES)
        _check_choice("record-bn", c.record_bn, RECORD_BN)
        _check_choice("record-dtype", c.record_dtype, RECORD_DTYPES)
        if c.record_layers is not None:
            twice = sorted({k for k in c.record_layers if c.record_layers.count(k) > 1})
            if twice:
                names = ", ".join(f"h{k}" for k in twice)
                raise UserError(f"--record-layers names interface(s) {names} more than once")
            if not c.record_layers or min(c.record_layers) < 1:
                raise UserError(f"--record-layers takes interface numbers from 1, got {c.record_layers}")
        _check_choice("init", c.init, INITS)
        for name in ("bn_gamma_init", "bn_beta_init"):
            if not math.isfinite(getattr(c, name)):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(c, name)}")
        for name in ("warmup_steps", "sg_warmup", "validation", "hold_steps"):
            if getattr(c, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(c, name)}")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(c, name) <= MAX_SEED:
                raise UserError(f"--{name.replace('_', '-')} must be from 0 to 2**63 - 1, got {getattr(c, name)}")
        for name in ("lr", "sg_lr", "sg_loss_weight", "feedback_scale"):
            value = getattr(c, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        if not 0 <= c.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {c.momentum}")
        if c.sg_width < 1:
            raise UserError(f"--sg-width must be at least 1, got {c.sg_width}")
        if c.record_every is None:
            c.record_every = max(1, c.steps // 10)
        if c.eval_every is None:
            c.eval_every = max(1, c.steps // 10)
        if c.record_every < 1 or c.eval_every < 1:
            raise UserError("--record-every and --eval-every must be at least 1")
        if c.hold_at is not None and c.hold_at < 1:
            raise UserError(f"--hold-at names an interface, h1 or above; got {c.hold_at}")
        if c.sg_at is not None:
            if c.rule not in ("sg", "noisy"):
                raise UserError(f"--sg-at is for --rule sg or noisy only; {c.rule} has "
                                + ("a module after every block" if c.rule in ("dni", "cdni") else "no modules"))
            twice = sorted({k for k in c.sg_at if c.sg_at.count(k) > 1})
            if twice:
                raise UserError(f"--sg-at names interface(s) {', '.join(f'h{k}' for k in twice)} more than once")
        if c.sg_condition is None:
            c.sg_condition = "none" if c.rule == "dni" else "label"
        _check_choice("sg-condition", c.sg_condition, SG_CONDITIONS)
        _check_choice("sg-output", c.sg_output, SG_OUTPUTS)
        _check_choice("sg-map", c.sg_map, SG_MAPS)
        maps = c.model == "cnn"  # on feature maps: one hidden layer with batch norm (README, "Measured")
        if c.sg_hidden is None:
            c.sg_hidden = 1 if maps else 0
        if c.sg_batch_norm is None:
            c.sg_batch_norm = maps
        if c.sg_hidden not in (0, 1, 2):
            raise UserError(f"--sg-hidden must be 0, 1 or 2, got {c.sg_hidden}")
        if c.sg_lambda is None:
            c.sg_lambda = 1.0 if c.rule == "sg" else 0.0
        if not 0.0 <= c.sg_lambda <= 1.0:
            raise UserError(f"--sg-lambda must be in [0, 1], got {c.sg_lambda}")
        c.sg_optimizer = c.sg_optimizer or c.optimizer
        _check_choice("sg-optimizer", c.sg_optimizer, OPTIMIZERS)
        if c.sg_lr is None:
            c.sg_lr = c.lr
        if not -1.0 <= c.signal_cosine <= 1.0:
            raise UserError(f"--signal-cosine must be in [-1, 1], got {c.signal_cosine}")
        if c.signal_cosine != 1.0 and c.rule != "noisy":
            raise UserError(f"--signal-cosine is for --rule noisy only; {c.rule} does not corrupt the true gradient")
        if not 0.0 < c.update_prob <= 1.0:
            raise UserError(f"--update-prob must be in (0, 1], got {c.update_prob}")
        if c.stages < 1:
            raise UserError(f"--stages must be at least 1, got {c.stages}")
        if c.sync and c.stages == 1:
            raise UserError("--sync is for --stages K > 1 (stages in separate processes in lock-step)")
        if c.stages > 1 and c.rule not in ("sg", "dni", "cdni"):
            raise UserError(f"--stages splits the network at its synthetic-gradient modules; "
                            f"{c.rule} has none (use sg, dni or cdni)")
        return c

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        stored = json.loads(text)
        if "workers" in stored:  # runs written before the field was renamed
            stored.setdefault("stages", stored.pop("workers"))
        if stored.get("model") == "cnn":  # cnn runs written before flat modules existed had conv modules
            stored.setdefault("sg_map", "conv")
        return cls(**{k: v for k, v in stored.items() if k in known})


@functools.cache
def _field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _type_name(kind) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_type_name(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(typing.get_args(kind)[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "left out"}[kind]


def _matches(value, kind) -> bool:
    if isinstance(kind, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(kind)[0]) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_types(fields: dict) -> None:
    """Refuse a value of the wrong type for a ``TrainConfig`` field (from a spec, say) with one line naming the
    field and the type it takes (a number may be given for a float field)."""
    kinds = _field_types()
    for name, value in fields.items():
        if name in kinds and not _matches(value, kinds[name]):
            raise UserError(f"{name} must be {_type_name(kinds[name])}, got {value!r}")


def _check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
