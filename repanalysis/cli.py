"""The ``repanalysis`` command: train, inspect, analyze, probe, figures, reproduce, sweep.

A ``UserError`` (a mistake the user can fix) is printed as one line on stderr
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
import warnings
from pathlib import Path

from repanalysis import __version__
from repanalysis.config import FEEDBACK, SYNTHETIC, TrainConfig
from repanalysis.errors import UserError, refuse_renamed
from repanalysis.runfile.hdf5 import MAPS
from repanalysis.runtime.outputs import check_file, check_inputs, check_state_folder


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one and does not say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        return f"{text} (default %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_Help, **kwargs)

    def error(self, message):  # argparse's own usage errors: one line, exit 2
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        """Also set ``given``: the destinations of the options on the command line, a subcommand's included."""
        self._given = []
        namespace, rest = super().parse_known_args(args, namespace)
        namespace.given = getattr(namespace, "given", []) + self._given
        return namespace, rest

    def _get_values(self, action, arg_strings):  # argparse calls this for every argument it takes
        if action.option_strings:
            self._given.append(action.dest)
        return super()._get_values(action, arg_strings)


class _Renamed(argparse.Action):
    """An option that was renamed: given, it is refused with one line naming its new name."""

    def __init__(self, option_strings, dest, *, renamed: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.renamed = renamed

    def __call__(self, parser, namespace, values, option_string=None):
        refuse_renamed([option_string], {option_string: self.renamed}, parser.prog)


def _interfaces(text: str) -> list[int]:
    try:
        return [int(part.strip().lstrip("h")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected interface numbers like 2 or 2,4 (or h2,h4), got {text!r}") from None


def _numbers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 5,50, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers like 5,50, got {text!r}")
    return values


def _seed_list(text: str) -> list[int]:
    """``--seeds``: a list of seeds like the grid options' lists; a lone number, which could be read as a count,
    is refused with the two spellings that say which."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1 and parts[0].isdigit():
        raise argparse.ArgumentTypeError(f"a lone number is ambiguous: give --seed-count {parts[0]} for the spec's "
                                         f"first {parts[0]} seeds, or --seeds {parts[0]}, for seed {parts[0]} alone")
    if not all(part.isdigit() for part in parts if part) or not any(parts):
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2 (one seed: 7,), got {text!r}")
    return [int(part) for part in parts if part]


def _checkpoint_choice(text: str):
    """``--checkpoints`` of analyze, probe and figures (``repanalysis.runfile.checkpoints``)."""
    from repanalysis.runfile.checkpoints import parse_checkpoints

    try:
        return parse_checkpoints(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_checkpoints(p) -> None:
    from repanalysis.runfile.checkpoints import HELP

    p.add_argument("--checkpoints", type=_checkpoint_choice, default="all", help=f"{HELP} (default all)")


def _names(text: str) -> list[str]:
    from repanalysis.nn.feedforward import ACTIVATIONS

    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in ACTIVATIONS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"expected activations among {', '.join(ACTIVATIONS)}, got {text!r}")
    return values


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model with one rule and record it to a run file",
                       description="Train one model with one rule and record it to a run file, on one thread "
                       "(torch and BLAS), as each task of reproduce and sweep.")
    groups = {None: p, SYNTHETIC: p.add_argument_group(SYNTHETIC)}
    recurrent = p.add_argument_group("recurrent networks (--model lstm, with --rule backprop or dni; also --width, "
                                     "--steps, --batch-size, --optimizer, --lr, --momentum, --sg-lr, --seed, "
                                     "--record-every, --eval-every, --probe-size, --data-dir)")
    groups[FEEDBACK] = p.add_argument_group(FEEDBACK)
    add_config_options(groups)
    _add_recurrent(recurrent)
    p.add_argument("--data-dir", help="folder with the MNIST files (default $REPANALYSIS_DATA, else a download)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu or cuda")
    groups[SYNTHETIC].add_argument("--workers", action=_Renamed, renamed="--stages (pipeline stages of one network; "
                                   "--workers is the Dask worker processes of reproduce, sweep, analyze and probe)")
    p.add_argument("--out", help="the run file to write (.h5); required unless --resume")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--resume", metavar="RUN.h5", help="continue this interrupted run in place, exactly, with the "
                   "settings stored in it (only --data-dir, --device and --quiet may be given with it)")
    _add_quiet(p)


def add_config_options(groups: dict) -> None:
    """One option per ``TrainConfig`` field, from its metadata (``config._field``), into ``groups[its group]``:
    ``--name-with-dashes``, its default the field's, its type the field's (a list of ints: interfaces, ``_interfaces``;
    a bool: ``--name``/``--no-name`` unless its metadata gives another ``action``)."""
    kinds = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        group = groups[meta.pop("group", None)]
        kind = next((k for k in typing.get_args(kinds[f.name]) if k is not type(None)), kinds[f.name])
        if kind is bool:
            meta.setdefault("action", argparse.BooleanOptionalAction)
        elif typing.get_origin(kind) is list:
            meta["type"] = _interfaces
        elif kind is not str:
            meta["type"] = kind
        group.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **meta)


def _add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _add_recurrent(g) -> None:
    """The options of recurrent runs only, into the argument group ``g``."""
    from repanalysis.training.recurrent import TASKS, RecurrentConfig

    r = RecurrentConfig()
    g.add_argument("--task", choices=TASKS, help=f"copy or repeatcopy (generated, with a curriculum scored every "
                   f"--eval-every steps, default steps/50) or charlm (character-level language modelling on --text) "
                   f"(default {r.task})")
    g.add_argument("--bptt", type=int, metavar="T", help="the truncation window of backprop through time, in steps "
                   "(default: the whole sequence, full BPTT); dni puts its module at the window boundaries")
    g.add_argument("--aux", action="store_true", help="dni: the auxiliary task of Jaderberg et al. (2016): the "
                   "core also predicts the synthetic gradient at the next boundary")
    g.add_argument("--copy-start", type=int, help=f"copy, repeatcopy: the curriculum's first length "
                   f"(default {r.copy_start})")
    g.add_argument("--copy-max", type=int, help=f"copy, repeatcopy: the curriculum's longest length "
                   f"(default {r.copy_max})")
    g.add_argument("--copy-threshold", type=float, help="copy, repeatcopy: bits per output symbol below which a "
                   f"length is solved (default {r.copy_threshold})")
    g.add_argument("--repeat-max", type=int, help="repeatcopy: each sequence's repeat count is drawn from 1 to this "
                   f"(default {r.repeat_max})")
    g.add_argument("--probe-length", type=int, help=f"copy: symbols in each recorded probe sequence "
                   f"(default {r.probe_length})")
    g.add_argument("--seq-length", type=int, help=f"charlm: characters per sequence (default {r.seq_length})")
    g.add_argument("--text", help="charlm: the text file (default: --data-dir's tinyshakespeare/input.txt)")


#: The ``train`` options a recurrent run takes, and the ``RecurrentConfig`` field each sets.
_RECURRENT = {"width": "hidden", "rule": "rule", "steps": "steps", "batch_size": "batch_size",
              "optimizer": "optimizer", "lr": "lr", "momentum": "momentum", "sg_lr": "sg_lr", "seed": "seed",
              "record_every": "record_every", "eval_every": "eval_every", "probe_size": "probe_size",
              "task": "task", "bptt": "bptt", "copy_start": "copy_start", "copy_max": "copy_max",
              "copy_threshold": "copy_threshold", "repeat_max": "repeat_max", "probe_length": "probe_length",
              "seq_length": "seq_length", "text": "text", "aux": "aux"}
#: Options of ``train`` for recurrent runs only.
_RECURRENT_ONLY = ("task", "bptt", "copy_start", "copy_max", "copy_threshold", "repeat_max", "probe_length",
                   "seq_length", "text", "aux")


def _cmd_train_recurrent(args) -> None:
    """``train --model lstm``: the options given that a recurrent run takes, the others refused."""
    from repanalysis.training.recurrent import RecurrentConfig, train_recurrent

    given = list(dict.fromkeys(args.given))
    if args.model != "lstm":
        option = next(name for name in given if name in _RECURRENT_ONLY)
        raise UserError(f"--{option.replace('_', '-')} is for a recurrent model (--model lstm); {args.model} has "
                        "no recurrent interface")
    foreign = [f"--{name.replace('_', '-')}" for name in given
               if name not in _RECURRENT and name not in ("model", "data_dir", "out", "overwrite", "quiet")]
    if foreign:
        raise UserError(f"{', '.join(foreign)} cannot be given with --model lstm")
    if args.out is None:
        raise UserError("the following arguments are required: --out (see repanalysis train --help)")
    config = RecurrentConfig(**{_RECURRENT[name]: getattr(args, name) for name in given if name in _RECURRENT})
    result = train_recurrent(config, args.out, data_dir=args.data_dir, overwrite=args.overwrite, quiet=args.quiet)
    print(f"wrote {args.out}: {result.steps_done} steps, {result.summary()}")


_WITH_RESUME = {"resume", "data_dir", "device", "quiet"}


def _config_from(args) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _cmd_train(args) -> None:
    """On one thread (torch and BLAS), as every task of ``reproduce`` and ``sweep``: the same run file whichever
    made it, and these small networks train fastest so (the training guide gives the times)."""
    from repanalysis.runtime.executor import one_thread

    with one_thread():
        _train(args)


def _train(args) -> None:
    from repanalysis.training.train import resume, train

    if args.model == "lstm" or any(name in _RECURRENT_ONLY for name in args.given):
        return _cmd_train_recurrent(args)
    if args.resume:
        others = [f"--{name.replace('_', '-')}" for name in dict.fromkeys(args.given) if name not in _WITH_RESUME]
        if others:
            raise UserError(f"--resume takes every setting from the run file; {', '.join(others)} cannot be given "
                            "with it (only --data-dir, --device and --quiet)")
        result = resume(args.resume, data_dir=args.data_dir, device=args.device, quiet=args.quiet)
        if result is None:
            print(f"{args.resume} is complete; nothing to resume")
            return
        e = result.last_eval
        print(f"resumed {args.resume}: {result.steps_done} steps, test loss {e['test_loss']:.4f}, "
              f"test accuracy {e['test_acc']:.4f}")
        return
    if args.out is None:
        raise UserError("the following arguments are required: --out (or --resume RUN.h5) "
                        "(see repanalysis train --help)")
    result = train(_config_from(args), args.out, data_dir=args.data_dir, device=args.device,
                   overwrite=args.overwrite, quiet=args.quiet)
    e = result.last_eval
    print(f"wrote {args.out}: {result.steps_done} steps, test loss {e['test_loss']:.4f}, test accuracy {e['test_acc']:.4f}")


def _cmd_inspect(args) -> None:
    from repanalysis.runfile.summary import summary

    for path in args.runs:
        print(summary(path))


def _executor(args):
    from repanalysis.runtime.executor import Executor

    return Executor(args.workers, args.scheduler)


def _cmd_analyze(args) -> None:
    from repanalysis.analysis.runs import analyze, check_measures
    from repanalysis.analysis.tables import write_table

    check_measures(args.measures)
    check_inputs(args.runs, args.out)
    check_inputs([args.reference] if args.reference else [], args.out)  # the reference may be among the runs
    check_file(args.out, args.overwrite)
    with _executor(args) as executor:
        table = analyze(args.runs, reference=args.reference, measures=args.measures, maps=args.maps,
                        checkpoints=args.checkpoints, quiet=args.quiet, executor=executor)
    write_table(table, args.out)
    print(f"wrote {args.out}: {len(table)} rows")


def _cmd_probe(args) -> None:
    from repanalysis.analysis.tables import write_table
    from repanalysis.probes import probe_runs

    check_inputs(args.runs, args.out)
    check_file(args.out, args.overwrite)
    with _executor(args) as executor:
        table = probe_runs(args.runs, folds=args.folds, seed=args.fold_seed, k=args.k, checkpoints=args.checkpoints,
                           maps=args.maps, quiet=args.quiet, executor=executor)
    write_table(table, args.out)
    print(f"wrote {args.out}: {len(table)} rows")


def _cmd_figures(args) -> None:
    from repanalysis.figures import draw_figures

    check_inputs(args.inputs, args.out)
    made = draw_figures(args.inputs, args.out, quiet=args.quiet, overwrite=args.overwrite,
                        checkpoints=args.checkpoints)
    print(f"wrote {len(made)} files to {args.out}")


def _spec_and_overrides(args):
    """The spec and overrides of ``reproduce``/``sweep``, checked before the output folder is touched."""
    from repanalysis.experiments.selection import FIRST
    from repanalysis.experiments.spec import Overrides, load_spec, preset

    if args.spec and args.preset:
        raise UserError("give --preset or --spec, not both")
    spec = load_spec(args.spec) if args.spec else preset(args.preset or "digits")
    overrides = Overrides(depths=args.depths, activations=args.activations, widths=args.widths, seeds=args.seeds,
                          seed_count=args.seed_count, steps=args.steps, dataset=args.dataset)
    spec.check(args.quick, overrides)  # refuse a bad spec or override before the output folder is touched
    check_state_folder(args.out, args.overwrite)
    if not args.quiet:
        runs, tried = spec.runs(args.quick, overrides, choice=FIRST), spec.candidate_runs(args.quick, overrides)
        print(f"{spec.name}: {len(runs) + len(tried)} runs in {len(spec.experiments)} experiment(s)"
              + (f", {len(tried)} of them a selection's candidates" if tried else ""))
    return spec, overrides


def _cmd_reproduce(args) -> int:
    from repanalysis.experiments.reproduce import reproduce

    failed: dict[str, str] = {}
    with _executor(args) as executor:  # refused (workers, scheduler) before the output folder is made
        spec, overrides = _spec_and_overrides(args)
        report = reproduce(args.out, spec=spec, quick=args.quick, overrides=overrides, data_dir=args.data_dir,
                           executor=executor, quiet=args.quiet, overwrite=args.overwrite, failed=failed)
    _name_failures(failed)
    print(f"wrote {report}" + (f" ({len(failed)} run(s) failed; the report judges the others)" if failed else ""))
    return 1 if failed else 0


def _name_failures(failed: dict[str, str]) -> None:
    """One line on stderr per failed run of ``reproduce`` or ``sweep``."""
    for name, error in failed.items():
        print(f"repanalysis: {name} failed: {error}", file=sys.stderr)


def _add_maps(p) -> None:
    p.add_argument("--maps", choices=MAPS, default="flatten",
                   help="feature maps' activations read as every value (flatten, the default) or as each channel's "
                   "mean over its positions (channels); gradients are always flattened")


def _cmd_sweep(args) -> int:
    from repanalysis.experiments.sweep import failures, sweep

    with _executor(args) as executor:  # refused (workers, scheduler) before the output folder is made
        spec, overrides = _spec_and_overrides(args)
        done = sweep(args.out, spec=spec, quick=args.quick, overrides=overrides, data_dir=args.data_dir,
                     executor=executor, quiet=args.quiet, overwrite=args.overwrite)
    counts = {what: sum(1 for w, _ in done.values() if w == what) for what in ("trained", "resumed", "kept")}
    failed = failures(done)
    _name_failures(failed)
    print(f"{len(done) - len(failed)} of {len(done)} runs complete in {Path(args.out) / 'runs'} "
          f"({', '.join(f'{n} {what}' for what, n in counts.items())}; {len(failed)} failed)")
    return 1 if failed else 0


def _add_spec_options(p) -> None:
    """The options of ``reproduce`` and ``sweep``: which spec, its overrides, where, on how many workers."""
    from repanalysis.experiments.spec import preset_names
    from repanalysis.runtime.executor import add_options

    p.add_argument("--preset", help=f"a shipped spec: {', '.join(preset_names())} (default digits, minutes on 2 "
                   "cores; each is described at the top of its file in repanalysis/experiments/presets/)")
    p.add_argument("--spec", metavar="FILE", help="your own spec file (TOML; copy a preset from "
                   "repanalysis/experiments/presets/ to start)")
    p.add_argument("--quick", action="store_true", help="the spec's much smaller version (for CI)")
    p.add_argument("--depths", type=_numbers, help="override the depths of the spec's grids, e.g. 5,50")
    p.add_argument("--activations", type=_names, help="override the activations of the spec's grids, e.g. relu,tanh")
    p.add_argument("--widths", type=_numbers, help="override the widths of the spec's grids, e.g. 128,256")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seed_list, help="replace the spec's seeds, e.g. 0,1,2 (one seed: 7,; "
                       "default: the spec's, 1-5 for the paper preset)")
    seeds.add_argument("--seed-count", type=int, metavar="N", help="the spec's first N seeds, more continuing "
                       "after its last (default: all of the spec's)")
    p.add_argument("--steps", type=int, help="training steps of every run (default: the spec's)")
    p.add_argument("--dataset", help="replace the spec's default data set (e.g. mnist for the digits preset)")
    p.add_argument("--data-dir", help="folder with the MNIST files (the recurrent preset: the folder holding "
                   "tinyshakespeare/)")
    p.add_argument("--out", required=True, help="the output folder (its runs/ folder is the sweep's state)")
    p.add_argument("--overwrite", action="store_true", help="write into (and replace files in) a folder that is "
                   "not empty and that reproduce or sweep did not make")
    add_options(p, per_core=True)
    _add_quiet(p)


def build_parser() -> argparse.ArgumentParser:
    from repanalysis.analysis.runs import MEASURES
    from repanalysis.runtime.executor import add_options

    parser = _Parser(prog="repanalysis", description="Train networks with backprop, synthetic gradients and "
                     "related rules; record their insides to HDF5; analyse, probe and draw the differences.")
    parser.add_argument("--version", action="version", version=f"repanalysis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="one of these (repanalysis COMMAND --help lists its options):")
    _add_train(sub)
    p = sub.add_parser("inspect", help="summarise run files: status, layers, checkpoints, last metrics")
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="the run files to summarise")
    p = sub.add_parser("analyze", help="similarity, spectra and gradient error of run files, as a tidy table")
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="the run files to measure and compare")
    p.add_argument("--out", required=True, help="the table to write (.csv)")
    p.add_argument("--reference", help="compare every run with this one (default: the backprop run of the same seed)")
    p.add_argument("--measures", nargs="+", metavar="NAME",
                   help=f"only these measures (default: all that apply): {', '.join(MEASURES)}")
    _add_checkpoints(p)
    _add_maps(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_options(p)
    _add_quiet(p)
    p = sub.add_parser("probe", help="linear and k-NN probes on recorded activations, as a tidy table")
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="the run files whose recorded activations to probe")
    p.add_argument("--out", required=True, help="the table to write (.csv)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds (default %(default)s)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the folds (default %(default)s)")
    p.add_argument("--seed", action=_Renamed, renamed="--fold-seed (the seed of the folds; --seed is a run's "
                   "training seed in train)")
    p.add_argument("--k", type=int, default=5, help="neighbours of the k-NN probe (default %(default)s)")
    _add_checkpoints(p)
    _add_maps(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_options(p)
    _add_quiet(p)
    p = sub.add_parser("figures", help="draw the comparison figures from tables and run files")
    p.add_argument("inputs", nargs="+", metavar="TABLE.csv|RUN.h5", help="tables written by analyze, probe or "
                   "reproduce, and run files (learning curves, RDMs, spectra)")
    p.add_argument("--out", required=True, help="the folder for the figures")
    p.add_argument("--overwrite", action="store_true", help="replace figure files that exist in --out")
    _add_checkpoints(p)
    _add_quiet(p)
    p = sub.add_parser("reproduce", help="run an experiment spec: train, analyse, probe, draw, write report.md")
    _add_spec_options(p)
    p = sub.add_parser("sweep", help="train an experiment spec's runs (as reproduce does) without the tables "
                       "and report; rerun it to finish what was interrupted")
    _add_spec_options(p)
    return parser


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints each kind of warning once, as one line, without source paths.

    A kind is the warning's class and first line with its numbers blanked out.
    """
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = (str(message).strip().splitlines() or [""])[0]
        if category.__name__ != "RepanalysisWarning":
            text = f"{category.__name__}: {text}"
        kind = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
        if kind not in shown:
            shown.add(kind)
            print(f"repanalysis: warning: {text}", file=sys.stderr)

    return show


def main(argv=None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings()
        return _main(argv)


def _main(argv) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        commands = {"train": _cmd_train, "inspect": _cmd_inspect, "analyze": _cmd_analyze, "probe": _cmd_probe,
                    "figures": _cmd_figures, "reproduce": _cmd_reproduce, "sweep": _cmd_sweep}
        status = commands[args.command](args)
    except UserError as err:
        print(f"repanalysis: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repanalysis: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
