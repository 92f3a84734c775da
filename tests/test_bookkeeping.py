"""The record of a run that both training loops keep (``repanalysis.training.bookkeeping``): its schedule and its end."""

from __future__ import annotations

import pytest
import torch
from helpers import built, small_config

from repanalysis.errors import UserError
from repanalysis.runfile.hdf5 import RunFile, RunWriter
from repanalysis.runtime.progress import Progress
from repanalysis.training.bookkeeping import Bookkeeper, RunFailed, run_header


def _book(config, data, rule, writer=None) -> Bookkeeper:
    index = data.probe_index(config.probe_size)
    return Bookkeeper(config, rule, data, index, writer, dict, torch.device("cpu"),
                      Progress(config.steps, "test", quiet=True))


def test_checkpoints_and_evaluations_are_due_at_the_start_every_so_often_and_at_the_last_step(digits):
    config = small_config(steps=10, record_every=4, eval_every=5).resolved()
    rule, data = built(config, digits)
    book = _book(config, data, rule)
    assert [s for s in range(11) if book.checkpoint_due(s)] == [0, 4, 8, 10]
    assert [s for s in range(11) if book.evaluation_due(s)] == [0, 5, 10]
    assert [s for s in range(11) if book.due(s)] == [0, 4, 5, 8, 10]


def test_a_run_ends_failed_with_its_one_line_or_the_step_it_stopped_at(tmp_path, digits):
    config = small_config(steps=10, record_every=4, eval_every=5).resolved()
    rule, data = built(config, digits)
    index = data.probe_index(config.probe_size)
    for name, raised, expected in (("said.h5", RunFailed("stage 2 of 2 failed"), UserError),
                                   ("other.h5", KeyError("x"), KeyError)):
        book = _book(config, data, rule, RunWriter(tmp_path / name, run_header(config, rule, data, index)))
        with pytest.raises(expected) as caught, book.running(lambda: 7):
            book.begin(0)
            raise raised
        with RunFile(tmp_path / name) as run:
            assert run.status == "failed"
            assert run.error == ("stage 2 of 2 failed" if expected is UserError else "stopped at step 7: KeyError")
            assert list(run.file["checkpoints/step"][:]) == [0]
        if expected is UserError:
            assert str(caught.value) == "stage 2 of 2 failed"


def test_a_run_file_header_given_whole_or_field_by_field_writes_the_same_file(tmp_path, digits):
    config = small_config().resolved()
    rule, data = built(config, digits)
    header = run_header(config, rule, data, data.probe_index(config.probe_size))
    RunWriter(tmp_path / "whole.h5", header).close()
    RunWriter(tmp_path / "fields.h5", **vars(header)).close()
    with RunFile(tmp_path / "whole.h5") as whole, RunFile(tmp_path / "fields.h5") as fields:
        assert {k: v for k, v in whole.attrs.items() if k != "created"} == \
            {k: v for k, v in fields.attrs.items() if k != "created"}
        assert list(whole.probe_index) == list(fields.probe_index) and whole.layers == fields.layers
