"""``TrainConfig``: every setting of one training run, stored as JSON in the run file."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass

from .errors import UserError
from .models import INITS
from .storage import RECORD_DTYPES

RULES = ("backprop", "sg", "dni", "cdni", "fa", "dfa", "kickback", "noisy")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
RECORD_BN = ("batch", "eval")
SG_CONDITIONS = ("none", "label", "error")
SG_OUTPUTS = ("linear", "tanh")
SG_MAPS = ("flat", "conv")
#: Seeds are stored as 64-bit integers (run-file attributes, torch's generators).
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` means "the rule's or the run's default" (see ``resolved``).

    Interfaces are numbered from 1 (``h1`` is the first block's output), as on the
    command line.
    """

    rule: str = "backprop"
    dataset: str = "digits"
    data_seed: int = 0
    model: str = "mlp"
    depth: int = 4
    width: int = 64
    channels: int = 32  # cnn: kernels per convolution
    kernel_size: int = 3  # cnn
    pool: str = "max"  # cnn: 2x2 max pooling after each block, or none
    activation: str = "relu"
    batch_norm: bool = True  # as in both DNI papers; without it dni does not learn on digits
    init: str = "default"  # or "orthogonal" (models.build_network)
    bn_gamma_init: float = 1.0
    bn_beta_init: float = 0.0
    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    record_every: int | None = None
    eval_every: int | None = None
    probe_size: int = 200
    record_bn: str = "batch"
    record_dtype: str = "float32"  # how activations, gradients, signals and parameters are stored (storage.py)
    record_layers: list[int] | None = None  # interfaces recorded (numbered from 1); None: all
    seed: int = 0
    validation: int = 0  # training inputs held out as a validation split (val_loss, val_acc at each evaluation)
    # the blocks up to interface hold_at hold still for the first hold_steps steps (any rule)
    hold_steps: int = 0
    hold_at: int | None = None  # default: the top module's interface (sg, dni, cdni), else the middle one
    # synthetic gradients (sg, dni, cdni), and where noisy corrupts the true gradient
    sg_at: list[int] | None = None
    sg_condition: str | None = None
    sg_hidden: int | None = None  # 0 (linear modules); 1 for cnn
    sg_width: int = 256
    sg_batch_norm: bool | None = None  # False; True for cnn
    sg_output: str = "linear"
    sg_map: str = "flat"  # how a module reads a feature map (rules.synthetic.make_module)
    sg_lambda: float | None = None
    sg_optimizer: str | None = None
    sg_lr: float | None = None
    sg_loss_weight: float = 1.0
    sg_warmup: int = 0
    update_prob: float = 1.0
    # noisy: the true gradient at the --sg-at interfaces, turned to this cosine with itself (rules.noisy)
    signal_cosine: float = 1.0
    # fixed feedback (fa, dfa)
    feedback_scale: float = 1.0
    # pipeline stages, each in its own process (repanalysis.pipeline; ``train --stages K``): sg, dni, cdni.
    # Named "stages", not "workers", so that a spec's setting is not mistaken for reproduce's Dask workers.
    stages: int = 1
    sync: bool = False

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
