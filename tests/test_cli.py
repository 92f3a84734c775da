"""The command line's options: each has help, each name one meaning; and the error type it prints."""

import argparse

import pytest
import torch
from threadpoolctl import threadpool_info

from repanalysis.cli import build_parser, main
from repanalysis.errors import UserError
from repanalysis.experiments import spec


def _parsers(parser: argparse.ArgumentParser, name: str = "repanalysis"):
    """``(name, parser)`` of the command and of every subcommand."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, f"{name} {sub}")


def test_every_option_and_argument_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, parser in _parsers(build_parser())
               for a in parser._actions if not (a.help or "").strip()]
    assert not missing


def test_preset_help_lists_every_preset_in_the_presets_folder(tmp_path, monkeypatch):
    for name in ("digits", "mine"):
        (tmp_path / f"{name}.toml").write_text("")
    monkeypatch.setattr(spec, "PRESETS", tmp_path)
    parsers = dict(_parsers(build_parser()))
    for command in ("reproduce", "sweep"):
        option = next(a for a in parsers[f"repanalysis {command}"]._actions if "--preset" in a.option_strings)
        assert "digits, mine" in option.help


def test_train_refuses_workers_with_one_line_naming_stages(tmp_path, capsys):
    out = tmp_path / "run.h5"
    for args in (["--workers", "2"], ["--workers"]):
        assert main(["train", "--rule", "dni", *args, "--steps", "2", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == ("repanalysis: error: repanalysis train --workers was renamed --stages (pipeline stages of one "
                       "network; --workers is the Dask worker processes of reproduce, sweep, analyze and probe)\n")
    assert not out.exists()
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--stages K" in help_text and "--workers" not in help_text


def test_analyze_refuses_a_former_measure_name_with_one_line_naming_the_new(tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert main(["analyze", "run.h5", "--measures", "rsa_to_last_correlation", "stable_rank", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("repanalysis: error: measure rsa_to_last_correlation was renamed "
                                       "rsa_to_last_layer_correlation\n")
    assert not out.exists()


def test_train_runs_on_one_thread_and_puts_the_count_back(tmp_path, monkeypatch):
    """As every task of reproduce and sweep: the same run file whichever made it (and faster for small nets)."""
    seen = []

    def train(config, out, **kwargs):
        seen.append((torch.get_num_threads(), {pool["num_threads"] for pool in threadpool_info()}))
        raise UserError("stopped")

    monkeypatch.setattr("repanalysis.training.train.train", train)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["train", "--steps", "2", "--out", str(tmp_path / "run.h5"), "--quiet"]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [(1, {1})]


def test_a_user_error_is_a_value_error():
    """Code written for scikit-learn (``except ValueError``) catches it."""
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        spec.preset("nope")
    assert issubclass(UserError, ValueError)


#: ``repanalysis train``'s options, as written before they were made from ``TrainConfig``'s field metadata
#: (and the recurrent --aux since).
TRAIN_OPTIONS = {
    "-h", "--help", "--rule", "--dataset", "--model", "--depth", "--width", "--channels", "--kernel-size", "--pool",
    "--activation", "--batch-norm", "--no-batch-norm", "--init", "--bn-gamma-init", "--bn-beta-init", "--steps",
    "--batch-size", "--optimizer", "--lr", "--momentum", "--lr-schedule", "--warmup-steps", "--record-bn",
    "--record-every", "--record-dtype", "--record-layers", "--eval-every", "--probe-size", "--validation",
    "--hold-steps", "--hold-at", "--seed", "--data-seed", "--data-dir", "--device", "--sg-at", "--sg-condition",
    "--sg-hidden", "--sg-width", "--sg-batch-norm", "--no-sg-batch-norm", "--sg-output", "--sg-map", "--sg-lambda",
    "--sg-optimizer", "--sg-lr", "--sg-loss-weight", "--sg-warmup", "--update-prob", "--signal-cosine", "--stages",
    "--workers", "--sync", "--task", "--bptt", "--copy-start", "--copy-max", "--copy-threshold", "--repeat-max",
    "--probe-length", "--seq-length", "--text", "--aux", "--feedback-scale", "--out", "--overwrite", "--resume",
    "--quiet"}


def _train_parser() -> argparse.ArgumentParser:
    return dict(_parsers(build_parser()))["repanalysis train"]


def test_train_has_the_same_options_each_a_config_field_with_its_default_and_help():
    import dataclasses

    from repanalysis.config import TrainConfig

    actions = {option: a for a in _train_parser()._actions for option in a.option_strings}
    assert set(actions) == TRAIN_OPTIONS
    for f in dataclasses.fields(TrainConfig):
        action = actions[f"--{f.name.replace('_', '-')}"]
        assert (action.dest, action.default, action.help) == (f.name, f.default, f.metadata["help"])
    args = _train_parser().parse_args(["--record-layers", "h1,3", "--no-batch-norm", "--sync", "--lr", "0.5",
                                       "--pool", "none"])
    assert (args.record_layers, args.batch_norm, args.sync, args.lr, args.pool) == ([1, 3], False, True, 0.5, "none")
    assert args.sg_batch_norm is None and args.stages == 1 and args.rule == "backprop"
    with pytest.raises(UserError, match="--pool: invalid choice"):
        _train_parser().parse_args(["--pool", "avg"])


@pytest.mark.parametrize("command", ["reproduce", "sweep"])
def test_seeds_is_a_list_and_a_lone_number_is_refused_naming_seed_count(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([command, "--quick", "--seeds", "2", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"repanalysis: error: argument --seeds: a lone number is ambiguous: give --seed-count 2 for the spec's first "
        f"2 seeds, or --seeds 2, for seed 2 alone (see repanalysis {command} --help)\n")
    assert main([command, "--quick", "--seeds", "1,2", "--seed-count", "2", "--out", str(out), "--quiet"]) == 2
    assert "not allowed with argument --seeds" in capsys.readouterr().err
    assert not out.exists()
    parse = dict(_parsers(build_parser()))[f"repanalysis {command}"].parse_args
    assert parse(["--seeds", "4,", "--out", "o"]).seeds == [4] and parse(["--seeds", "0,3", "--out", "o"]).seeds == [0, 3]
    assert parse(["--seed-count", "3", "--out", "o"]).seed_count == 3


def test_the_report_command_line_gives_back_the_same_overrides():
    from pathlib import Path

    from repanalysis.experiments import Overrides
    from repanalysis.experiments.reproduce import _command

    for overrides in (Overrides(seeds=[5]), Overrides(seeds=[0, 2], steps=3), Overrides(seed_count=2)):
        line = _command("--preset digits", True, overrides, None, Path("out"))
        args = build_parser().parse_args(line.split()[1:] + ["--quiet"])
        assert (args.seeds, args.seed_count, args.steps) == (overrides.seeds, overrides.seed_count, overrides.steps)


def test_probe_refuses_seed_with_one_line_naming_fold_seed(tmp_path, capsys):
    out = tmp_path / "probes.csv"
    assert main(["probe", "run.h5", "--seed", "3", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("repanalysis: error: repanalysis probe --seed was renamed --fold-seed (the "
                                       "seed of the folds; --seed is a run's training seed in train)\n")
    assert not out.exists()


@pytest.mark.parametrize("command", ["analyze", "probe", "figures"])
def test_analyze_probe_and_figures_share_one_checkpoints_option(command):
    action = next(a for a in dict(_parsers(build_parser()))[f"repanalysis {command}"]._actions
                  if "--checkpoints" in a.option_strings)
    assert action.default == "all" and action.type("10,0") == (0, 10) and action.type("last") == "last"
