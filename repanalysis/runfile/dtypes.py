"""How a run file stores recorded arrays: float32, a 16-bit float or 16-bit fixed point (``RECORD_DTYPES``).

- ``float32``: as computed, exactly.
- ``bfloat16``: float32's sign, 8-bit exponent and top 7 mantissa bits (the
  upper half of a float32), rounded to nearest, ties to even: float32's range,
  a relative rounding error of at most 2^-9.
- ``float16``: IEEE half's layout (sign, 5-bit exponent, 10-bit mantissa;
  relative rounding error at most 2^-11) with the exponent bias of each
  dataset chosen when its first row is written, so that its range sits where
  the values are: a stored half ``h`` means ``h · 2^-shift``, ``shift`` such
  that the first row's largest magnitude times ``2^shift`` lies in
  ``[2^(15-HEADROOM), 2^(16-HEADROOM))``. Values up to about ``2^HEADROOM``
  times that magnitude fit; a larger one refuses the write (an
  ``OverflowError`` naming the dataset), never a silent infinity. Below
  ``2^-14`` (scaled) values lose precision gradually (half's subnormals).
  Gradients are ``∂(probe-mean loss)/∂h``, of order ``1/N`` per value: IEEE
  half's own bias would put them among its subnormals.
- ``int16``: fixed point, for the layer arrays (``fixed_point``): each value
  a signed 16-bit integer ``q`` times a float32 per-unit *scale* (the unit's
  largest centred magnitude over the probe inputs over 32767, one row per
  checkpoint): the same absolute step ``scale`` for every value of a unit, an
  error of at most ``scale / 2`` (and float32's rounding). ``-32768`` marks a value that is not finite
  (read back as NaN, an infinity too). Its parameters are stored in float16.

The 16-bit float types are HDF5 float types described in the file (``H5Tset_fields``,
``H5Tset_ebias``), so any HDF5 reader gets the stored numbers right: h5py reads them as
float32 (HDF5 converts each value, slowly); ``read`` here reads the raw bits and
decodes them with numpy, exactly, about 15 times faster. Every 16-bit value is a
float32 exactly (``int16``: before its scale), so reading it as float32 (or float64) loses nothing more.
NaN and ±Inf are stored as such in the float types.

Every dataset but a scalar (which HDF5 cannot chunk) carries HDF5's
Fletcher-32 checksum per chunk (``checksummed``; the 16-bit ones too, from
``create``): a bit changed on disk after the write makes HDF5 refuse the read,
which ``read`` and ``bits`` report as a ``UserError`` naming the file and the
dataset. The 16-bit datasets are also byte-shuffled and gzip-compressed
(lossless, any HDF5 reader's; ``create``).

A run file's 16-bit layer arrays are stored centred (``centre``): per value
of a sample, the mean over the probe inputs (a float32 *offset*, one row per
checkpoint, ``1/N`` of the stored values) is taken off before rounding, and
``Stored`` adds it back, after multiplying by the ``int16`` scale (a plain
HDF5 reader does both itself). Rounding is
relative to each stored value, so a unit that sits near 2 (a ReLU after batch
norm with beta 2) would otherwise keep its spread around 2, what CCA and PWCCA
whiten, only to 2^-11 · 2 (float16), not 2^-11 · the spread.
"""

from __future__ import annotations

import contextlib

import h5py
import numpy as np

from repanalysis.errors import UserError

RECORD_DTYPES = ("float32", "float16", "bfloat16", "int16")
#: The type the floating-point parameters of a run of each 16-bit record dtype are stored in.
PARAM_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "int16": "float16"}
#: gzip level of the 16-bit datasets: 1, the fastest; higher ones save under 1 % more of a layer array.
DEFLATE_LEVEL = 1
#: Binades of room above a float16 dataset's first row's largest magnitude.
HEADROOM = 8
_HALF_FIELDS = (15, 10, 5, 0, 10)  # sign position, exponent position and size, mantissa position and size
_BFLOAT_FIELDS = (15, 7, 8, 0, 7)
_HALF_ROUNDS_TO_INF = 65520.0  # the smallest magnitude that rounds to float16's infinity
_FIXED_TOP = 32767  # int16's largest value, the unit's largest centred magnitude
_FIXED_NOT_FINITE = -32768  # int16's smallest value: a value that is not finite


def checksummed(shape: tuple) -> dict:
    """``create_dataset`` options of a dataset of ``shape``: the Fletcher-32 checksum (HDF5 then chunks it),
    except for a scalar, which HDF5 can neither chunk nor filter."""
    return {"fletcher32": True} if len(shape) else {}


@contextlib.contextmanager
def _verified(ds: h5py.Dataset):
    """Reads of ``ds`` inside; one refused by its checksum is a ``UserError`` naming the file and the dataset."""
    try:
        yield
    except OSError:
        if not ds.fletcher32:
            raise
        why = ("or it was read in the middle of a write: a running run's file can be read again a moment later"
               if ds.file.attrs.get("status") == "running" else "a damaged disk or copy")
        raise UserError(f"{ds.file.filename}: {ds.name} fails its checksum: its stored bytes changed after they "
                        f"were written ({why})") from None


def file_type(dtype: str, shift: int = 0) -> h5py.h5t.TypeID:
    """The HDF5 type of a 16-bit ``dtype`` (``shift``: float16's, see the module docstring)."""
    if dtype == "int16":
        return h5py.h5t.STD_I16LE.copy()
    if dtype == "float16":
        t = h5py.h5t.IEEE_F16LE.copy()
        t.set_ebias(15 + shift)
        return t
    if dtype == "bfloat16":
        t = h5py.h5t.IEEE_F32LE.copy()
        t.set_fields(*_BFLOAT_FIELDS)
        t.set_offset(0)
        t.set_precision(16)
        t.set_size(2)
        t.set_ebias(127)
        return t
    raise ValueError(f"{dtype!r} is not a 16-bit record dtype")


def codec(ds: h5py.Dataset) -> tuple[str, int] | None:
    """``(dtype, shift)`` of a dataset stored in one of the 16-bit types; None for any other type."""
    t = ds.id.get_type()
    if isinstance(t, h5py.h5t.TypeIntegerID) and t.get_size() == 2 and t.get_sign() == h5py.h5t.SGN_2:
        return "int16", 0
    if not isinstance(t, h5py.h5t.TypeFloatID) or t.get_size() != 2:
        return None
    fields = t.get_fields()
    if fields == _HALF_FIELDS:
        return "float16", t.get_ebias() - 15
    if fields == _BFLOAT_FIELDS and t.get_ebias() == 127:
        return "bfloat16", 0
    return None


def shift_for(values: np.ndarray) -> int:
    """float16's ``shift`` for a dataset whose first row is ``values`` (0 where they are all zero or not finite)."""
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    peak = float(finite.max()) if finite.size else 0.0
    if peak == 0.0:
        return 0
    return 16 - HEADROOM - int(np.frexp(peak)[1])


def encode(values: np.ndarray, dtype: str, shift: int = 0, where: str = "") -> np.ndarray:
    """The stored bits (uint16) of float ``values`` in ``dtype`` (``int16``: values in units of their scale,
    see ``fixed_point``); see the module docstring."""
    x = np.asarray(values, dtype=np.float32)
    if dtype == "int16":
        finite = np.isfinite(x)
        # clipped: a scale among float32's subnormals is inexact, and int16 would wrap a value past its range
        q = np.where(finite, np.clip(np.rint(np.where(finite, x, 0)), -_FIXED_TOP, _FIXED_TOP), _FIXED_NOT_FINITE)
        return q.astype(np.int16).view(np.uint16)
    if dtype == "float16":
        scale = np.float32(2.0 ** shift)  # a power of two: exact, as long as the result is a float16 at all
        with np.errstate(over="ignore", invalid="ignore"):
            if x.size and not np.max(np.abs(x)) * scale < _HALF_ROUNDS_TO_INF:
                beyond = np.isfinite(x) & (np.abs(x) * scale >= _HALF_ROUNDS_TO_INF)
                if beyond.any():
                    raise OverflowError(
                        f"{where}: a value {float(np.abs(x[beyond]).max()):.4g} is beyond the float16 range this "
                        f"dataset took from its first row (up to {65504.0 / scale:.4g}); record with "
                        "--record-dtype bfloat16 or float32")
            return (x * scale).astype(np.float16).view(np.uint16)
    bits = x.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    rounded = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # rounding could carry a NaN's payload into the exponent; keep it a quiet NaN
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def decode(bits: np.ndarray, dtype: str, shift: int = 0) -> np.ndarray:
    """float32 values of stored bits (uint16), exactly (``int16``: in units of the scale; not finite: NaN)."""
    if dtype == "int16":
        values = bits.view(np.int16).astype(np.float32)
        values[bits.view(np.int16) == _FIXED_NOT_FINITE] = np.nan
        return values
    if dtype == "float16":
        values = bits.view(np.float16).astype(np.float32)
        if shift:
            values *= np.float32(2.0 ** -shift)
        return values
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def centre(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, centred)`` of float ``values`` ``[N, ...]``: the float32 mean over the first axis (0 where it
    is not finite, so that a NaN or infinity stays where it is) and ``values`` less it, in float32."""
    x = np.asarray(values, dtype=np.float32)
    offset = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    offset[~np.isfinite(offset)] = 0
    return offset, x - offset


def fixed_point(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, scaled)`` of float ``centred`` ``[N, ...]`` for ``int16``: the float32 per-unit scale (the
    largest finite magnitude over the first axis over 32767; 1 where that is 0) and ``centred / scale``, whose
    finite values lie in ``[-32767, 32767]``."""
    x = np.asarray(centred, dtype=np.float32)
    peak = np.where(np.isfinite(x), np.abs(x), 0).max(axis=0, initial=0)
    scale = (peak / np.float32(_FIXED_TOP)).astype(np.float32)
    scale[scale == 0] = 1
    return scale, x / scale


def _per_axis(key, ndim: int) -> tuple | None:
    """An index as one entry per axis (an Ellipsis expanded, missing axes whole); None with two Ellipses."""
    key = key if isinstance(key, tuple) else (key,)
    dots = [i for i, k in enumerate(key) if k is Ellipsis]
    if len(dots) > 1:
        return None
    if dots:
        i = dots[0]
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    return key + (slice(None),) * (ndim - len(key))


def _hyperslab(key, shape: tuple[int, ...]):
    """``(start, count, squeezed axes)`` of a basic index (integers, unit-step slices, one Ellipsis); None otherwise."""
    key = _per_axis(key, len(shape))
    if key is None or len(key) > len(shape):
        return None
    start, count, squeeze = [], [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, (int, np.integer)):
            if not -n <= k < n:
                return None
            start.append(int(k) % n)
            count.append(1)
            squeeze.append(axis)
        elif isinstance(k, slice):
            a, b, step = k.indices(n)
            if step != 1:
                return None
            start.append(a)
            count.append(max(0, b - a))
        else:
            return None
    return tuple(start), tuple(count), tuple(squeeze)


def bits(ds: h5py.Dataset, key=()) -> np.ndarray | None:
    """The raw stored bits (uint16) of ``ds[key]``, a basic index of a 16-bit dataset; None for other indices."""
    slab = _hyperslab(key, ds.shape)
    if slab is None:
        return None
    start, count, squeeze = slab
    out = np.empty(count, dtype=np.uint16)
    if out.size:
        space = ds.id.get_space()
        space.select_hyperslab(start, count)
        with _verified(ds):
            ds.id.read(h5py.h5s.create_simple(count), space, out, mtype=ds.id.get_type())
    return out.reshape([c for axis, c in enumerate(count) if axis not in squeeze])


def read(ds: h5py.Dataset, key=()) -> np.ndarray:
    """``ds[key]``, a 16-bit dataset decoded to float32 from its raw bits (any other read as h5py reads it);
    data that fail their checksum are a ``UserError`` (module docstring)."""
    how = codec(ds)
    raw = None if how is None else bits(ds, key)
    if raw is not None:
        return decode(raw, *how)
    with _verified(ds):
        values = ds[key]  # fancy indexing of a 16-bit float dataset: HDF5 converts (correct, slower)
    return decode(values.view(np.uint16), *how) if how is not None and how[0] == "int16" else values


def create(group: h5py.Group, name: str, shape: tuple, maxshape: tuple, chunks: tuple | None, dtype: str,
           shift: int = 0) -> h5py.Dataset:
    """A new dataset ``group/name`` stored in the 16-bit ``dtype`` (h5py's ``create_dataset`` takes numpy
    types only); where it is chunked, byte-shuffled and gzip-compressed (``DEFLATE_LEVEL``), then checksummed."""
    space = h5py.h5s.create_simple(shape, tuple(h5py.h5s.UNLIMITED if m is None else m for m in maxshape))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks is not None:
        plist.set_chunk(chunks)
        plist.set_shuffle()
        plist.set_deflate(DEFLATE_LEVEL)
        if checksummed(shape):
            plist.set_fletcher32()
    h5py.h5d.create(group.id, name.encode(), file_type(dtype, shift), space, dcpl=plist)
    return group[name]


def write_bits(ds: h5py.Dataset, raw: np.ndarray, start: tuple | None = None) -> None:
    """Write stored bits (uint16, from ``encode``) into a 16-bit dataset: the whole of it, or the block at ``start``."""
    raw = np.ascontiguousarray(raw)
    space = ds.id.get_space()
    if start is not None:
        space.select_hyperslab(start, raw.shape)
    ds.id.write(h5py.h5s.create_simple(raw.shape) if raw.ndim else h5py.h5s.create(h5py.h5s.SCALAR),
                space, raw, mtype=ds.id.get_type())


class Stored:
    """A dataset as an array-like that reads through ``read`` (16-bit types as float32, checksums verified):
    ``shape``, ``ndim``, ``dtype``, ``ds[key]``.

    ``offset``: the ``[T, ...]`` dataset of the offsets that ``ds`` ``[T, N, ...]`` was stored less
    (``centre``, one row per leading index), added back to every value read; ``scale``: the ``[T, ...]``
    dataset of an ``int16`` array's scales (``fixed_point``), every value read multiplied by it first."""

    def __init__(self, ds: h5py.Dataset, offset: h5py.Dataset | None = None, scale: h5py.Dataset | None = None):
        self.dataset, self.offset, self.scale = ds, offset, scale
        self.shape, self.ndim = ds.shape, ds.ndim
        self.dtype = np.dtype(np.float32) if codec(ds) else ds.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        values = read(self.dataset, key)
        if self.scale is not None:
            values = values * self._per_unit(self.scale, key)
        if self.offset is not None:
            values = values + self._per_unit(self.offset, key)
        return values

    def _per_unit(self, ds: h5py.Dataset, key) -> np.ndarray:
        """The rows of a ``[T, ...]`` per-unit dataset that go with ``self[key]``: the index less its axis 1
        (the probe inputs), that axis put back."""
        per_axis = _per_axis(key, self.ndim)  # one Ellipsis at most: ``read`` refused more
        rows = read(ds, per_axis[:1] + per_axis[2:])
        if not isinstance(per_axis[1], (int, np.integer)):
            rows = np.expand_dims(rows, 0 if isinstance(per_axis[0], (int, np.integer)) else 1)
        return rows
