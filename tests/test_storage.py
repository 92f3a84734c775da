"""Recording dtypes (``train --record-dtype``) and recorded layers (``--record-layers``)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from helpers import small_config, train_interrupted

from repanalysis.analysis.runs import analyze
from repanalysis.cli import main
from repanalysis.datasets import load
from repanalysis.errors import UserError
from repanalysis.runfile import dtypes
from repanalysis.runfile.hdf5 import OFFSET, SCALE, RunFile, RunWriter
from repanalysis.training.parts import rebuild
from repanalysis.training.train import resume, train


def _roundtrip(values, dtype, shift=0):
    return dtypes.decode(dtypes.encode(values, dtype, shift), dtype, shift)


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials():
    ulp = 2.0 ** -7  # bfloat16's spacing in [1, 2)
    values = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2.0 ** -20, -(1 + ulp / 4), 3.0e38, 1e-40,
                       np.inf, -np.inf, np.nan], dtype=np.float32)
    out = _roundtrip(values, "bfloat16")
    # ties go to the even mantissa (1 and 1 + 2 ulp), anything past the tie goes up, below it down;
    # float32's range is kept (3e38, a subnormal 1e-40 to within its own spacing), and so are inf and nan
    assert out[:4].tolist() == [1.0, 1 + 2 * ulp, 1 + ulp, -1.0]
    assert out[4] == np.float32(3.0e38) or abs(out[4] / 3.0e38 - 1) < 2.0 ** -8
    assert abs(out[5] - 1e-40) < 2.0 ** -133
    assert out[6] == np.inf and out[7] == -np.inf and np.isnan(out[8])


@pytest.mark.parametrize("dtype, bound", [("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)])
def test_round_trip_error_is_within_half_a_unit_in_the_last_place(dtype, bound):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(20000) * 3e-5).astype(np.float32)  # a gradient's scale: 1/N per value
    shift = dtypes.shift_for(values) if dtype == "float16" else 0
    out = _roundtrip(values, dtype, shift)
    big = np.abs(values) > np.abs(values).max() * 2.0 ** -14  # float16's normal range below its first row's peak
    assert np.all(np.abs(out - values)[big] <= bound * np.abs(values[big]))
    assert out.dtype == np.float32
    # a value that is already a 16-bit number comes back exactly
    assert np.array_equal(_roundtrip(out, dtype, shift), out)


def test_float16_needs_its_shift_for_gradients():
    """IEEE half's own bias would put 1/N-sized values among its subnormals: the shift keeps them whole."""
    values = np.float32(1e-6) * np.arange(1, 200, dtype=np.float32)
    shifted = _roundtrip(values, "float16", dtypes.shift_for(values))
    plain = _roundtrip(values, "float16", 0)
    assert np.max(np.abs(shifted - values) / values) <= 2.0 ** -11
    assert np.max(np.abs(plain - values) / values) > 0.01


def test_a_float16_value_beyond_the_range_taken_from_the_first_row_is_refused():
    first = np.ones(4, np.float32)
    shift = dtypes.shift_for(first)
    dtypes.encode(first * 2.0 ** (dtypes.HEADROOM - 1), "float16", shift)
    with pytest.raises(OverflowError, match="beyond the float16 range"):
        dtypes.encode(first * 2.0 ** (dtypes.HEADROOM + 2), "float16", shift)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_hdf5_reads_the_described_type_as_our_decoder_does(tmp_path, dtype):
    """The file type describes the bits fully: HDF5's own conversion (plain h5py) gives our decoded values."""
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((3, 50, 7)) * 2e-4).astype(np.float32)
    shift = dtypes.shift_for(values[0]) if dtype == "float16" else 0
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = dtypes.create(f, "x", values.shape, values.shape, (1, 50, 7), dtype, shift)
        dtypes.write_bits(ds, dtypes.encode(values, dtype, shift))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        ds = f["x"]
        assert dtypes.codec(ds) == (dtype, shift)
        ours = dtypes.read(ds, 1)
        assert ds.dtype == np.float32 and np.array_equal(ds[1], ours)
        assert np.array_equal(dtypes.read(ds, (slice(None), slice(3, 9))), ds[:, 3:9])
        assert np.array_equal(dtypes.Stored(ds)[..., 2], ds[..., 2])
        assert np.array_equal(dtypes.read(ds, ([0, 2],)), ds[[0, 2]])  # fancy indexing: HDF5 converts


def test_int16_is_fixed_point_with_a_per_unit_scale():
    """Known answer: a unit's largest centred magnitude goes to 32767, the rest to the nearest multiple of its
    scale (ties to even); a value that is not finite is stored as -32768 and read as NaN; an all-zero unit
    gets the scale 1."""
    top = 32767 / 16384  # its scale is 2^-14 exactly
    step = 2.0 ** -14
    centred = np.array([[-top, 0.0, 1.0], [1.0, 0.0, np.inf], [0.5 + step / 2, 0.0, np.nan], [1.5 * step, 0.0, -0.25]],
                       dtype=np.float32)
    scale, scaled = dtypes.fixed_point(centred)
    assert scale.dtype == np.float32 and scale.tolist() == [step, 1.0, np.float32(1 / 32767)]
    bits = dtypes.encode(scaled, "int16")
    assert bits.view(np.int16).tolist() == [[-32767, 0, 32767], [16384, 0, -32768], [8192, 0, -32768],
                                            [2, 0, -8192]]  # 8192.5 and 1.5: ties to even
    out = dtypes.decode(bits, "int16") * scale
    assert out.dtype == np.float32 and np.isnan(out[1:3, 2]).all() and not np.isnan(out[:, :2]).any()
    assert out[:, 0].tolist() == [-top, 1.0, 0.5, 2 * step] and out[:, 1].tolist() == [0.0] * 4
    rng = np.random.default_rng(3)
    values = (rng.standard_normal((5000, 4)) * [1e-6, 1.0, 3e4, 0.02]).astype(np.float32)
    scale, scaled = dtypes.fixed_point(values)
    err = np.abs(dtypes.decode(dtypes.encode(scaled, "int16"), "int16") * scale - values)
    # half a step, and float32's rounding of the division and the product (2^-24 of up to 32767 steps each)
    assert np.all(err <= scale * (0.5 + 2.0 ** -8)) and np.all(err.max(0) > scale / 4)
    # a unit among float32's subnormals: its inexact scale never wraps a value round to the other sign
    tiny = np.array([[1e-40], [-1e-40], [3e-41]], dtype=np.float32)
    scale, scaled = dtypes.fixed_point(tiny)
    out = dtypes.decode(dtypes.encode(scaled, "int16"), "int16") * scale
    assert np.all(np.sign(out) == np.sign(tiny)) and np.all(np.abs(out - tiny) <= 1e-41)


def _write_layer(path, dtype, checkpoints):
    """A run file of one layer ``h1`` holding ``checkpoints`` (a list of ``{kind: [N, ...]}``), in ``dtype``."""
    first = checkpoints[0]["activations"]
    writer = RunWriter(path, rule="synthetic", model="none", dataset="synthetic", seed=0, config_json="{}",
                       task="regression", n_features=1, n_outputs=1, probe_index=np.arange(len(first)),
                       layers=[("h1", int(np.prod(first.shape[1:])), "test")], record_dtype=dtype)
    for step, arrays in enumerate(checkpoints):
        writer.checkpoint(step, {"h1": arrays}, {})
    writer.close()


@pytest.mark.parametrize("dtype, bound", [("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)])
def test_a_layer_array_with_a_large_mean_is_stored_less_its_mean(tmp_path, dtype, bound):
    """Units near 2 with a spread of 0.01 (a ReLU after batch norm with beta 2): rounded whole, each value
    loses ~2^-11 · 2; stored less its per-unit mean over the probe inputs (kept in float32), only ~2^-11 · its
    spread. The file reads back with the offsets added, through every index, and with plain h5py by hand."""
    rng = np.random.default_rng(2)
    acts = [(2 + (k + 1) * 0.01 * rng.standard_normal((1000, 8))).astype(np.float32) for k in range(2)]
    grads = [(3e-5 + 1e-5 * rng.standard_normal((1000, 8))).astype(np.float32) for _ in range(2)]
    acts[1][7, 3] = np.nan  # stays NaN, its unit stored whole
    _write_layer(tmp_path / "x.h5", dtype, [{"activations": a, "true_grad": g} for a, g in zip(acts, grads)])
    with RunFile(tmp_path / "x.h5") as run:
        for kind, values in (("activations", acts), ("true_grad", grads)):
            how = dtypes.codec(run.file[f"layers/h1/{kind}"])
            stored = run.array("h1", kind)
            for c, x in enumerate(values):
                offset, centred = dtypes.centre(x)
                assert np.array_equal(run.file[f"layers/h1/{kind}{OFFSET}"][c], offset)
                out = run.stored("h1", kind, c)
                assert np.array_equal(np.isnan(out), np.isnan(x))
                ok = ~np.isnan(x).any(0)  # the units stored less their mean
                err = np.abs(out - x)[:, ok]
                assert np.all(err <= bound * np.abs(centred[:, ok]) + 2.0 ** -23 * np.abs(x[:, ok]))
                whole = _roundtrip(x, *how) if kind == "activations" else None
                if whole is not None:  # rounded whole: 20 times the error at least
                    assert err.max() * 20 < np.abs(whole - x)[:, ok].max()
                # plain h5py: the stored values plus the offsets
                plain = run.file[f"layers/h1/{kind}"][c] + run.file[f"layers/h1/{kind}{OFFSET}"][c]
                assert np.array_equal(out, plain, equal_nan=True)
            whole = stored[:]
            for key in [(1, slice(10, 20)), (slice(None), 5), (Ellipsis, 3), (1, 4, 2), (-1, slice(0, 9, 2)),
                        ([0, 1], 3), (0, [2, 5, 9])]:
                np.testing.assert_array_equal(stored[key], whole[key], err_msg=str(key))


def test_an_int16_layer_array_is_stored_centred_in_units_of_its_scale(tmp_path):
    """Per unit, less its mean and in units of its largest centred magnitude over 32767: every value within
    half that step (and float32's rounding of the sum), 4 times closer than float16 centred here; read back
    through every index, and with plain h5py as ``q · scale + offset``."""
    rng = np.random.default_rng(2)
    acts = [(2 + (k + 1) * 0.01 * rng.standard_normal((1000, 8))).astype(np.float32) for k in range(2)]
    grads = [(3e-5 + 1e-5 * rng.standard_normal((1000, 8))).astype(np.float32) for _ in range(2)]
    acts[1][7, 3] = np.nan  # stays NaN; its unit (mean 0) in units of its largest magnitude
    _write_layer(tmp_path / "x.h5", "int16", [{"activations": a, "true_grad": g} for a, g in zip(acts, grads)])
    _write_layer(tmp_path / "half.h5", "float16", [{"activations": a, "true_grad": g} for a, g in zip(acts, grads)])
    with RunFile(tmp_path / "x.h5") as run, RunFile(tmp_path / "half.h5") as half:
        for kind, values in (("activations", acts), ("true_grad", grads)):
            g = run.file["layers/h1"]
            assert dtypes.codec(g[kind]) == ("int16", 0) and g[kind].dtype == np.int16
            stored = run.array("h1", kind)
            for c, x in enumerate(values):
                offset, centred = dtypes.centre(x)
                scale = np.where(np.isnan(x).any(0), np.nanmax(np.abs(x), 0), np.abs(centred).max(0)) / 32767
                assert np.array_equal(g[kind + OFFSET][c], offset)
                np.testing.assert_allclose(g[kind + SCALE][c], scale, rtol=2.0 ** -22)
                out = run.stored("h1", kind, c)
                assert out.dtype == np.float32 and np.array_equal(np.isnan(out), np.isnan(x))
                err = np.abs(out - x)
                assert np.nanmax(err - (scale * (0.5 + 2.0 ** -8) + 2.0 ** -23 * np.abs(x))) <= 0
                ok = ~np.isnan(x).any(0)
                assert np.nanmax(err[:, ok]) * 4 < np.max(np.abs(half.stored("h1", kind, c) - x)[:, ok])
                q = g[kind][c].astype(np.float32)
                plain = np.where(q == -32768, np.nan, q) * g[kind + SCALE][c] + g[kind + OFFSET][c]
                assert np.array_equal(out, plain, equal_nan=True)
            whole = stored[:]
            for key in [(1, slice(10, 20)), (slice(None), 5), (Ellipsis, 3), (1, 4, 2), (-1, slice(0, 9, 2)),
                        ([0, 1], 3), (0, [2, 5, 9])]:
                np.testing.assert_array_equal(stored[key], whole[key], err_msg=str(key))


@pytest.fixture(scope="module")
def three_dtypes(tmp_path_factory, digits):
    """The same sg run recorded in each dtype (recording changes no parameter, so the runs are one run)."""
    folder = tmp_path_factory.mktemp("dtypes")
    paths = {}
    for dtype in dtypes.RECORD_DTYPES:
        paths[dtype] = folder / f"{dtype}.h5"
        train(small_config(rule="sg", record_dtype=dtype), paths[dtype], quiet=True, data=digits)
    return paths


def test_a_16_bit_run_stores_the_float32_run_rounded(three_dtypes):
    """Each 16-bit run holds exactly the float32 run's arrays and parameters encoded in its dtype (int16:
    in units of its scales; its parameters in float16)."""
    with RunFile(three_dtypes["float32"]) as exact:
        for dtype in ("float16", "bfloat16", "int16"):
            with RunFile(three_dtypes[dtype]) as small:
                f = small.file
                for layer in exact.layers:
                    shift = {}
                    for kind in ("activations", "true_grad", "signal"):
                        if not exact.has(layer, kind):
                            continue
                        how = dtypes.codec(f[f"layers/{layer}/{kind}"])
                        assert how[0] == dtype
                        shift[kind] = how[1]
                        for c in range(len(exact.steps)):  # stored less its offsets, which are kept
                            offset, centred = dtypes.centre(exact.stored(layer, kind, c))
                            assert np.array_equal(f[f"layers/{layer}/{kind}{OFFSET}"][c], offset)
                            scale = np.float32(1)
                            if dtype == "int16":  # and in units of its scales, also kept
                                scale, centred = dtypes.fixed_point(centred)
                                assert np.array_equal(f[f"layers/{layer}/{kind}{SCALE}"][c], scale)
                            else:
                                assert not small.has(layer, kind + SCALE)
                            want = dtypes.decode(dtypes.encode(centred, *how), *how) * scale + offset
                            assert np.array_equal(small.stored(layer, kind, c), want), (dtype, layer, kind)
                    if "signal" in shift:  # a layer's gradients share one scale
                        assert shift["signal"] == shift["true_grad"]
                for name in exact.param_names:
                    p = f[f"params/{name}"]
                    if exact.param(name).dtype.kind != "f":
                        assert p.dtype == exact.file[f"params/{name}"].dtype
                        assert np.array_equal(small.param(name), exact.param(name))
                        continue
                    how = dtypes.codec(p)
                    assert how[0] == dtypes.PARAM_DTYPES[dtype]
                    for c in range(len(exact.steps)):
                        want = dtypes.decode(dtypes.encode(exact.param(name, c), *how), *how)
                        assert np.array_equal(small.param(name, c), want), (dtype, name, c)
                assert np.array_equal(small.metrics["train_loss"], exact.metrics["train_loss"])
                # the resume slot of the last checkpoint keeps every parameter exactly
                slot = max(f["resume"].values(), key=lambda g: g["step"][()])
                for name in exact.param_names:
                    assert np.array_equal(slot[f"params.{name}"][()], exact.param(name, -1)), name


def test_float32_stays_the_exact_path(three_dtypes):
    """float32 files store IEEE single precision, no exact copies in the slots, and the values a fresh
    shadow pass of the network rebuilt from /params gives bit for bit."""
    with RunFile(three_dtypes["float32"]) as run:
        f = run.file

        def stored_types(name, item):
            if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" and not name.startswith(("metrics", "eval")):
                assert item.id.get_type().equal(h5py.h5t.IEEE_F32LE) or name.startswith("resume"), name
                assert dtypes.codec(item) is None
            assert not name.endswith((OFFSET, SCALE)), name
        f.visititems(stored_types)
        assert not any(name.startswith("params.") for slot in f["resume"].values() for name in slot)
        data = load("digits")
        for c in range(len(run.steps)):
            rule = rebuild(run, c)
            x, y = data.x_test[run.probe_index], data.y_test[run.probe_index]
            for layer, arrays in rule.probe(x, y).items():
                for kind, value in arrays.items():
                    want = value.numpy().astype(np.float32)  # update: [cosine, norm ratio] in float64, stored as float32
                    assert np.array_equal(run.stored(layer, kind, c), want, equal_nan=True), (layer, kind, c)


@pytest.mark.parametrize("dtype", ["float16", "int16"])
def test_a_16_bit_run_interrupted_and_resumed_equals_the_uninterrupted_one(tmp_path, digits, monkeypatch, dtype):
    """Resuming takes the exact parameters from the slot (the /params rows are rounded): the finished file,
    stored types included, equals the uninterrupted run's."""
    from test_resume import assert_same_file

    config = small_config(rule="sg", steps=20, record_every=4, record_dtype=dtype, update_prob=0.7)
    train(config, tmp_path / "reference.h5", quiet=True, data=digits)
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, digits, 11)
    resume(path, quiet=True, data=digits)
    assert_same_file(path, tmp_path / "reference.h5")
    with h5py.File(path, "r") as a, h5py.File(tmp_path / "reference.h5", "r") as b:
        kinds = {}
        a.visititems(lambda name, o: kinds.__setitem__(name, dtypes.codec(o)) if isinstance(o, h5py.Dataset) else None)
        for name, how in kinds.items():
            assert how == dtypes.codec(b[name]), name
        assert kinds["layers/h1/activations"][0] == dtype


def _as_before_offsets(path) -> None:
    """Rewrite a 16-bit run file as repanalysis 2026-12-07 wrote it: each layer array rounded whole (the
    values it reads now, encoded in its own type), no offsets beside it."""
    with h5py.File(path, "r+") as f:
        for layer in f["layers"].values():
            for kind in [k for k in layer if k + OFFSET in layer]:
                ds, how = layer[kind], dtypes.codec(layer[kind])
                values = dtypes.Stored(ds, layer[kind + OFFSET])[()]
                shape, maxshape, chunks = ds.shape, ds.maxshape, ds.chunks
                del layer[kind], layer[kind + OFFSET]
                dtypes.write_bits(dtypes.create(layer, kind, shape, maxshape, chunks, *how),
                                   dtypes.encode(values, *how))


def test_a_16_bit_file_without_offsets_reads_and_resumes_as_before(tmp_path, digits, monkeypatch, three_dtypes):
    """Files of the released format (16-bit layer arrays rounded whole) read as they did, and a resumed one
    goes on in its own layout: no offsets, later checkpoints rounded whole."""
    old = tmp_path / "old.h5"
    old.write_bytes(three_dtypes["float16"].read_bytes())
    with RunFile(three_dtypes["float16"]) as run:
        before = {(layer, kind): run.array(layer, kind)[:] for layer in run.layers for kind in ("activations",
                  "true_grad", "signal") if run.has(layer, kind)}
    _as_before_offsets(old)
    with RunFile(old) as run:
        for (layer, kind), values in before.items():
            assert not run.has(layer, kind + OFFSET)
            how = dtypes.codec(run.file[f"layers/{layer}/{kind}"])
            assert np.array_equal(run.array(layer, kind)[:], _roundtrip(values, *how), equal_nan=True)

    config = small_config(rule="sg", steps=20, record_every=4, record_dtype="float16")
    train(small_config(rule="sg", steps=20, record_every=4), tmp_path / "exact.h5", quiet=True, data=digits)
    path = tmp_path / "run.h5"
    train_interrupted(monkeypatch, config, path, digits, 11)
    _as_before_offsets(path)
    resume(path, quiet=True, data=digits)
    with RunFile(path) as run, RunFile(tmp_path / "exact.h5") as exact:
        assert run.status == "complete" and list(run.steps) == list(exact.steps) == [0, 4, 8, 12, 16, 20]
        for layer in run.layers:
            for kind in ("activations", "true_grad", "signal"):
                if run.has(layer, kind):
                    assert not run.has(layer, kind + OFFSET)
                    how = dtypes.codec(run.file[f"layers/{layer}/{kind}"])
                    for c in (3, 4, 5):  # written after the resumption (at step 8)
                        want = _roundtrip(exact.stored(layer, kind, c), *how)
                        assert np.array_equal(run.stored(layer, kind, c), want), (layer, kind, c)


def _as_version_2(path) -> None:
    """Rewrite a 16-bit run file as format version 2 wrote it: every 16-bit dataset uncompressed (checksummed,
    same chunks), its stored bits as they are."""
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda name, o: names.append(name) if isinstance(o, h5py.Dataset) and dtypes.codec(o) else None)
        for name in names:
            old = f[name]
            raw, layout, kind = dtypes.bits(old), (old.shape, old.maxshape, old.chunks), old.id.get_type()
            del f[name]
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_chunk(layout[2])
            plist.set_fletcher32()
            space = h5py.h5s.create_simple(layout[0], tuple(h5py.h5s.UNLIMITED if m is None else m
                                                            for m in layout[1]))
            h5py.h5d.create(f.id, name.encode(), kind, space, dcpl=plist)
            dtypes.write_bits(f[name], raw)
            assert f[name].compression is None and f[name].fletcher32
        f.attrs["format_version"] = 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_format_version_2_file_reads_as_before(tmp_path, three_dtypes, dtype):
    """16-bit datasets written uncompressed (format version 2) read the same values as the compressed ones."""
    old = tmp_path / "old.h5"
    old.write_bytes(three_dtypes[dtype].read_bytes())
    _as_version_2(old)
    with RunFile(three_dtypes[dtype]) as new, RunFile(old) as run:
        assert new.file.attrs["format_version"] == 3 and new.file["layers/h1/activations"].compression == "gzip"
        for layer in run.layers:
            for kind in ("activations", "true_grad", "signal"):
                if run.has(layer, kind):
                    assert np.array_equal(run.array(layer, kind)[:], new.array(layer, kind)[:], equal_nan=True)
        for name in run.param_names:
            assert np.array_equal(run.param(name), new.param(name))


def test_recorded_layers_are_a_choice_and_the_analysis_handles_runs_without_some(tmp_path, digits):
    full = tmp_path / "full.h5"
    some = tmp_path / "some.h5"
    train(small_config(depth=4), full, quiet=True, data=digits)
    train(small_config(depth=4, rule="sg", record_layers=[3, 1]), some, quiet=True, data=digits)
    with RunFile(some) as run, RunFile(full) as reference:
        assert run.layers == ["h1", "h3"] and run.interfaces == ["h1", "h2", "h3", "h4"]
        assert reference.interfaces == reference.layers == ["h1", "h2", "h3", "h4"]
        assert [run.layer_info(n)["position"] for n in run.layers] == [0, 2]
    table = analyze([full, some], quiet=True)
    ours = table[table.run_a == str(some)]
    assert set(ours.layer_a.dropna()) == {"h1", "h3"}
    assert set(ours[ours.measure == "linear_cka"].layer_b.dropna()) <= {"h1", "h3"}
    # no last layer recorded: no RSA to it (the full run has its own)
    assert ours[ours.measure.str.startswith("rsa_to_last_layer")].empty
    assert not table[(table.run_a == str(full)) & table.measure.str.startswith("rsa_to_last_layer")].empty
    # sg's module sits at h2, which was not recorded: no synthetic-loss rows, no error
    assert ours[ours.measure.str.startswith("synthetic_loss")].empty
    cross = ours[ours.measure == "procrustes"]
    assert set(cross.layer_a) == {"h1", "h3"} and (cross.run_b == str(full)).all()


def test_record_options_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert main(["train", "--steps", "4", "--record-dtype", "bfloat16", "--record-layers", "h1,h4", "--quiet",
                 "--out", str(out)]) == 0
    with RunFile(out) as run:
        assert run.config["record_dtype"] == "bfloat16" and run.config["record_layers"] == [1, 4]
        assert run.layers == ["h1", "h4"]
        assert dtypes.codec(run.file["layers/h4/true_grad"]) == ("bfloat16", 0)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "stored as   bfloat16; 2 of 4 interfaces recorded" in capsys.readouterr().out
    for argv, message in [
        (["--record-dtype", "float8"], "argument --record-dtype: invalid choice: 'float8'"),
        (["--record-layers", "2,2"], "--record-layers names interface(s) h2 more than once"),
        (["--record-layers", "0"], "--record-layers takes interface numbers from 1"),
        (["--record-layers", "9"], "--record-layers names interfaces [9]; this network has h1..h4"),
    ]:
        assert main(["train", "--steps", "2", "--quiet", "--out", str(tmp_path / "bad.h5"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / "bad.h5").exists()


def test_record_dtype_is_a_spec_setting():
    from repanalysis.experiments import parse

    text = ('name = "s"\ndataset = "digits"\nseeds = 1\n[experiments.e]\n'
            'settings = { steps = 2, record_dtype = "float16", record_layers = [1] }\ngrid = { rule = ["backprop"] }\n')
    runs = parse(text).runs()
    assert [r.config.record_dtype for r in runs] == ["float16"] and runs[0].config.record_layers == [1]
    assert json.loads(runs[0].config.to_json())["record_dtype"] == "float16"
    with pytest.raises(UserError, match="unknown record-dtype 'int8'"):
        parse(text.replace('"float16"', '"int8"')).runs()
