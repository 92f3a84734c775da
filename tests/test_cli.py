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

    monkeypatch.setattr("repanalysis.train.train", train)
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
