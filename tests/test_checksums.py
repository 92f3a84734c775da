"""Fletcher-32 checksums on every array of a run file: a bit changed on disk is one line on read, never a number."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import contents, small_config
from torch import nn

from repanalysis import Recorder
from repanalysis.cli import main
from repanalysis.errors import UserError
from repanalysis.runfile import recorder
from repanalysis.runfile.hdf5 import RunFile, RunWriter
from repanalysis.training.train import resume, train

READS = {  # a dataset, and a read of it through RunFile
    "layers/h2/activations": lambda run: run.activations("h2", 0),
    "layers/h2/true_grad": lambda run: run.true_grad("h2", 0),
    "params/model.head.weight": lambda run: run.param("model.head.weight", 0),
    "metrics/train_loss": lambda run: run.metrics,
    "eval/test_acc": lambda run: run.evals,
    "probe/labels": lambda run: run.probe_labels,
}


def _datasets(path) -> dict[str, h5py.Dataset]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: out.__setitem__(name, (o.shape, o.fletcher32, o.chunks))
                     if isinstance(o, h5py.Dataset) else None)
    return out


def _flip_byte(path, name: str) -> None:
    """Change one bit in the middle of the first chunk of the dataset ``name`` (chunk data, not its checksum)."""
    with h5py.File(path, "r") as f:
        chunk = f[name].id.get_chunk_info(0)
    where = chunk.byte_offset + (chunk.size - 4) // 2
    with open(path, "r+b") as raw:
        raw.seek(where)
        byte = raw.read(1)[0]
        raw.seek(where)
        raw.write(bytes([byte ^ 0x10]))


def _without_checksums(path) -> None:
    """Rewrite every dataset of ``path`` as a file written before checksums had it: no filter, same chunks."""
    with h5py.File(path, "a") as f:
        names = []
        f.visititems(lambda name, o: names.append(name) if isinstance(o, h5py.Dataset) else None)
        for name in names:
            old = f[name]
            values, attrs, layout = old[()], dict(old.attrs), dict(chunks=old.chunks, maxshape=old.maxshape)
            del f[name]
            made = f.create_dataset(name, data=values, **(layout if old.chunks else {}))
            made.attrs.update(attrs)


@pytest.mark.parametrize("record_dtype", ["float32", "bfloat16", "int16"])
def test_every_array_train_writes_has_a_checksum_but_the_scalars(tmp_path, digits, record_dtype):
    train(small_config(rule="sg", record_dtype=record_dtype), tmp_path / "run.h5", quiet=True, data=digits)
    stored = _datasets(tmp_path / "run.h5")
    scalars = {name for name, (shape, _, _) in stored.items() if shape == ()}  # HDF5 cannot chunk them
    assert {"resume/0/step", "resume/1/batches.position"} <= scalars
    assert all(name.startswith("resume/") for name in scalars), scalars  # step marks and counters
    assert len(stored) > 40 and "layers/h1/signal" in stored and "probe/index" in stored
    assert all(checked and chunks for name, (_, checked, chunks) in stored.items() if name not in scalars)


def test_a_recorder_file_written_on_the_background_thread_has_checksums(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(recorder, "thread_pays", lambda device: True)  # the writer thread, whatever the cores
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with Recorder(tmp_path / "mine.h5", net, {"hidden": net[1]}, (digits.x_test[:30], digits.y_test[:30]),
                  F.cross_entropy) as rec:
        rec.checkpoint(0)
        rec.log(1, train_loss=1.0)
        rec.checkpoint(1)
    stored = _datasets(tmp_path / "mine.h5")
    assert "layers/hidden/activations" in stored and all(checked for _, checked, _ in stored.values())


def test_float32_arrays_read_back_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((7, 5)).astype(np.float32) for _ in range(3)]
    rows[1][2, 3] = np.float32(np.nan)
    rows[2][0] = [np.inf, -np.inf, -0.0, 1e-45, np.finfo(np.float32).max]
    writer = RunWriter(tmp_path / "w.h5", rule="external", model="m", dataset="d", seed=0, config_json="{}",
                       task="classification", n_features=5, n_outputs=2, probe_index=np.arange(7),
                       layers=[("h", 5, "linear")])
    for step, values in enumerate(rows):
        writer.checkpoint(step, {"h": {"activations": values, "true_grad": -values}}, {"w": values[:2]})
    writer.close()
    with RunFile(tmp_path / "w.h5") as run:
        for c, values in enumerate(rows):
            assert run.activations("h", c).tobytes() == values.tobytes()
            assert run.true_grad("h", c).tobytes() == (-values).tobytes()
            assert run.param("w", c).tobytes() == values[:2].tobytes()


@pytest.mark.parametrize("name, record_dtype", [(name, "float32") for name in READS] + [
    ("layers/h2/true_grad", "float16"), ("params/model.head.weight", "bfloat16"),  # 16 bits: read as raw bits
    ("layers/h2/activations", "int16")])
def test_a_flipped_bit_is_refused_with_one_line_naming_file_and_dataset(tmp_path, digits, name, record_dtype):
    path = tmp_path / "run.h5"
    train(small_config(record_dtype=record_dtype), path, quiet=True, data=digits)
    with RunFile(path) as run:
        READS[name](run)  # read before the flip
    _flip_byte(path, name)
    with RunFile(path) as run:
        with pytest.raises(UserError, match=rf"^{path}: /{name} fails its checksum: its stored bytes changed after "
                                            r"they were written \(a damaged disk or copy\)$"):
            READS[name](run)
        if name.startswith("layers/"):  # the other checkpoints, in chunks of their own, still read
            assert run.stored("h2", name.rsplit("/", 1)[1], 1).shape == (50, 16)


def test_a_flipped_step_refuses_the_file_and_a_command_writes_nothing(tmp_path, digits, capsys):
    path = tmp_path / "run.h5"
    train(small_config(), path, quiet=True, data=digits)
    _flip_byte(path, "checkpoints/step")
    with pytest.raises(UserError, match=rf"^{path}: /checkpoints/step fails its checksum"):
        RunFile(path)
    assert main(["analyze", str(path), "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/checkpoints/step fails its checksum" in err
    assert not (tmp_path / "a.csv").exists()


def test_resuming_a_run_with_a_flipped_bit_is_refused_and_leaves_it_as_it_was(tmp_path, digits):
    path = tmp_path / "run.h5"
    train(small_config(), path, quiet=True, data=digits)
    with h5py.File(path, "a") as f:
        f.attrs["status"] = "running"
    _flip_byte(path, "params/model.head.weight")
    before = path.read_bytes()
    with pytest.raises(UserError, match="/params/model.head.weight fails its checksum"):
        resume(path, quiet=True, data=digits)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_file_from_before_checksums_gets_them_when_resumed(tmp_path, digits, monkeypatch):
    config = small_config(rule="sg", steps=20, record_every=5)
    train(config, tmp_path / "reference.h5", quiet=True, data=digits)
    path = tmp_path / "run.h5"
    train(config, path, quiet=True, data=digits)
    with h5py.File(path, "a") as f:
        f.attrs["status"] = "running"  # as if killed after its last checkpoint
    _without_checksums(path)
    assert not any(checked for _, checked, _ in _datasets(path).values())
    resume(path, quiet=True, data=digits)
    assert all(checked for shape, checked, _ in _datasets(path).values() if shape != ())
    (ours, _), (theirs, _) = contents(path), contents(tmp_path / "reference.h5")
    assert ours == theirs
