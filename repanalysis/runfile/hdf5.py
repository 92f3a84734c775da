"""The run file: one HDF5 file per run, the contract between training and analysis.

The schema (``FORMAT_VERSION`` 3: root attributes, ``/probe``, ``/checkpoints``, ``/layers/<name>/{activations,
true_grad,signal,update}``, ``/params``, ``/metrics``, ``/eval``, ``/resume/{0,1}``) is the documentation's run-file
page, ``docs/guide/runfile.md``; ``tests/test_docs.py`` checks it against what this writer writes.

The layer arrays and the floating-point parameters are stored in the run's
``record_dtype`` (``runfile.dtypes``: float32, a 16-bit float type described in
the file, or int16 fixed point; ``RunFile`` reads each as float32); a 16-bit run stores each layer
array less its per-feature mean over the probe inputs (``runfile.dtypes.centre``),
kept in float32 beside it (``<kind>`` + ``OFFSET``), an int16 one in units of
a per-feature scale (``runfile.dtypes.fixed_point``, ``<kind>`` + ``SCALE``), and its resume slots also
keep every parameter exactly (``EXACT`` + name). ``--record-layers``
records some interfaces only: ``position`` stays the interface's place among
all of them, and the root attribute ``interfaces`` lists them all.

Every array but a scalar carries HDF5's Fletcher-32 checksum per chunk
(``runfile.dtypes.checksummed``): a bit changed on disk is a ``UserError`` naming the
file and the dataset when it is read, never a wrong number.

Arrays grow along their first axis; each is chunked one checkpoint (one row
block) at a time, uncompressed: LZF shrank a 6x256 MNIST run's ReLU
activations to 0.64 of their size (its gradients, signals and parameters not
at all) but cost 10 ms a checkpoint, nearly a training step (files written
before were compressed, and read and resume the same). The writer flushes
after every checkpoint and evaluation and touches the file between them only
then, so a run killed at any moment leaves every earlier checkpoint readable
with ``status`` still "running". The writer takes no HDF5 file lock, so a run
can be read live, with plain h5py too, at any time between two flushes; a
second writer of the same path is refused by ``outputs.file_lock`` (a lock
file ``.<name>.lock`` beside it, naming the first writer).

Feature maps are read as rows ``[N, D]`` by one of ``MAPS`` (``as_rows``):
``flatten`` (every value, ``D = C·H·W``, row-major: channel, row, column) or
``channels`` (each channel's mean over its positions, ``D = C``). The
readers apply it to activations; gradients and signals are always read
flattened, since the error at every position is what a rule delivers.

The resume state of checkpoint ``k`` goes to slot ``k % 2``, so the other slot
keeps the previous checkpoint's state while it is written: the slot is marked
-1 and flushed, filled and flushed, then marked with its step and flushed. A
run killed at any moment thus has at least one whole slot (from its second
checkpoint on), and ``RunWriter.reopen`` continues from the newest one.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from repanalysis import __version__
from repanalysis.errors import UserError
from repanalysis.runfile import dtypes
from repanalysis.runtime.outputs import check_file, file_lock, temporary_beside

MAPS = ("flatten", "channels")
FORMAT = "repanalysis-run"
#: The version written; 2 added the offsets of 16-bit layer arrays (``OFFSET``), 3 the int16 record dtype and its
#: scales (``SCALE``). Files of earlier versions read as before.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
ARRAY_KINDS = ("activations", "true_grad", "signal")
#: Bytes a write leaves free on the disk, so that a run refused for space can still be closed as "failed".
SPARE = 2**20
#: Prefix, in a resume slot, of the exact parameters that a run with a 16-bit ``record_dtype`` keeps there.
EXACT = "params."
#: Suffix of the float32 ``[T, ...]`` dataset beside a 16-bit layer array holding the offsets it is stored less.
OFFSET = "_offset"
#: Suffix of the float32 ``[T, ...]`` dataset beside an int16 layer array holding its scales (``runfile.dtypes.fixed_point``).
SCALE = "_scale"


def as_rows(values: np.ndarray, maps: str = "flatten") -> np.ndarray:
    """``[N, ...]`` as ``[N, D]``: vectors as they are; feature maps ``[N, C, H, W]`` by ``maps`` (module docstring)."""
    if maps not in MAPS:
        raise UserError(f"unknown maps convention {maps!r}; choose one of {', '.join(MAPS)}")
    if values.ndim <= 2:
        return values
    if maps == "channels":
        return values.reshape(values.shape[0], values.shape[1], -1).mean(2, dtype=np.float64)
    return values.reshape(values.shape[0], -1)


def _versions() -> str:
    import torch

    return json.dumps(
        {"repanalysis": __version__, "torch": torch.__version__, "h5py": h5py.__version__, "python": platform.python_version()}
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class RunHeader:
    """What a run file says of its run before the first checkpoint: the root attributes and ``/probe``;
    ``layers``: ``(name, width, kind)`` per recorded interface, bottom to top; ``interfaces``: every interface
    of the network, where only some are recorded (kept as the ``interfaces`` attribute); ``record_dtype``: how
    the ``ARRAY_KINDS`` and the parameters are stored (``runfile.dtypes``; see ``RunWriter.checkpoint``)."""

    rule: str
    model: str
    dataset: str
    seed: int
    config_json: str
    task: str
    n_features: int
    n_outputs: int
    probe_index: np.ndarray
    layers: list[tuple[str, int, str]]
    probe_labels: np.ndarray | None = None
    probe_targets: np.ndarray | None = None
    record_bn: str = "batch"
    record_dtype: str = "float32"
    interfaces: list[str] | None = None


class RunWriter:
    """Writes one run file: provenance, probe set, checkpoints, metrics, evaluations."""

    def __init__(self, path, header: RunHeader | None = None, *, overwrite: bool = False, **fields):
        """A new run file at ``path`` saying ``header`` (or ``RunHeader(**fields)``).

        A new ``path`` is written in place. An existing one (``overwrite``) is
        kept until ``commit()``: the run is written to a temporary file beside
        it (``.<name>.<random>.tmp``), renamed over ``path`` by ``commit()``;
        closing without a commit deletes the temporary file and leaves ``path``
        as it was.
        """
        header = RunHeader(**fields) if header is None else header
        path = check_file(path, overwrite)
        self._attach(path, file_lock(path).acquire(), header.record_dtype)  # a second writer is refused
        try:
            self._pending = temporary_beside(path) if path.exists() else None
            # No HDF5 lock: readers (plain ``h5py.File(path, "r")`` included) may open the run while it is
            # written; they see the state of the last flush, since the file is not touched between flushes.
            self.file = _writable(self._pending or path, "w")
            self._start(header)
        except BaseException:
            self.abandon()
            raise

    def _attach(self, path: Path, lock, record_dtype: str) -> None:
        """The writer's state on ``path`` (``lock`` held) before its file is opened, new or reopened."""
        self.path, self._lock, self.record_dtype, self._pending = path, lock, record_dtype, None
        self._resume_sets: dict[tuple[int, str], h5py.Dataset] = {}
        self._rows: dict[tuple[str, str], h5py.h5d.DatasetID] = {}  # growing datasets' handles
        self._codecs: dict[tuple[str, str], tuple[tuple[str, int], bool]] = {}  # 16-bit ((dtype, shift), centred)

    def _start(self, h: RunHeader) -> None:
        f = self.file
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "status": "running", "rule": h.rule,
            "model": h.model, "dataset": h.dataset, "seed": h.seed, "config": h.config_json, "versions": _versions(),
            "task": h.task, "n_features": h.n_features, "n_outputs": h.n_outputs, "record_bn": h.record_bn,
            "created": _now(),
        })
        layers, interfaces = h.layers, h.interfaces
        if interfaces is not None and list(interfaces) != [name for name, _, _ in layers]:
            f.attrs["interfaces"] = json.dumps(list(interfaces))
        for name, values, dtype in (("index", h.probe_index, np.int64), ("labels", h.probe_labels, np.int64),
                                    ("targets", h.probe_targets, np.float32)):
            if values is not None:
                self.add(f"probe/{name}", np.asarray(values, dtype=dtype))
        f.create_group("checkpoints")
        every = [name for name, _, _ in layers] if interfaces is None else list(interfaces)
        for name, width, kind in layers:
            g = f.create_group(f"layers/{name}")
            g.attrs.update({"position": every.index(name), "width": width, "kind": kind})
        for group in ("params", "metrics", "eval"):
            f.create_group(group)
        self._follow_metrics()
        f.flush()

    @classmethod
    def reopen(cls, path, load=None) -> tuple["RunWriter", int, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Open an interrupted run to continue it from its newest whole resume slot.

        Everything recorded after that checkpoint's step ``S`` is cut off: later
        checkpoints, metrics of steps after ``S``, evaluations at ``S`` and after
        (the caller evaluates again at ``S`` where one is due). The part kept is
        copied into a fresh file that then replaces the old one, so a tail left
        damaged by a kill in the middle of a write (HDF5 files are not crash
        consistent) is never written to again. Sets ``status`` back to
        "running", drops ``error`` and notes the resumption in the ``resumed``
        attribute (JSON list of ``[step, UTC time]``). Returns the
        writer, ``S``, every parameter and buffer at ``S`` and the resume state.
        ``load(S, params, state)``, given, is called with them before anything
        is written: where it raises (their names or shapes do not fit the run's
        network, say), the file stays as it was. Call it on a file ``RunFile``
        has accepted.
        """
        path = Path(path)
        lock = file_lock(path).acquire()
        try:
            with h5py.File(path, "r", locking=False) as old:
                step, state, rows = _resume_point(old, path)
                record_dtype = json.loads(old.attrs["config"]).get("record_dtype", "float32")
                params = {name: dtypes.read(ds, rows["params"] - 1) for name, ds in _walk(old["params"]).items()}
                params.update({name[len(EXACT):]: value for name, value in state.items() if name.startswith(EXACT)})
                state = {name: value for name, value in state.items() if not name.startswith(EXACT)}
                if load is not None:
                    load(step, params, state)
                fresh = _copy_kept(old, path, rows, step)
        except UserError:  # a ValueError, said already
            lock.release()
            raise
        except (KeyError, ValueError, OSError, RuntimeError) as err:
            lock.release()
            raise UserError(f"{path}: cannot be resumed: damaged run file ({str(err).splitlines()[0]})") from None
        except BaseException:
            lock.release()
            raise
        fresh.replace(path)
        writer = cls.__new__(cls)
        writer._attach(path, lock, record_dtype)
        try:
            writer.file = _writable(path, "a")
        except OSError as err:
            raise UserError(f"{path}: cannot be opened for writing ({str(err).splitlines()[0]})") from None
        writer._follow_metrics()
        return writer, step, params, state

    def checkpoint(self, step: int, layers: dict[str, dict[str, np.ndarray]], params: dict[str, np.ndarray],
                   resume: dict[str, np.ndarray] | None = None) -> None:
        """Append one checkpoint: per layer its arrays (``ARRAY_KINDS``), every parameter; then flush.

        ``resume``: the state that continues training from here, written to its slot. With a 16-bit
        ``record_dtype`` the ``ARRAY_KINDS`` and the floating-point parameters are stored in it (a
        layer's gradients share the bias taken from the larger of their first rows), and the slot
        also keeps every parameter exactly (``EXACT`` + name), since the ``/params`` row does not.
        """
        self._make_room(sum(np.asarray(v).nbytes for group in (*layers.values(), params, resume or {})
                            for v in group.values()))
        f = self.file
        for name, arrays in layers.items():
            gradients = [v for kind, v in arrays.items() if kind in ("true_grad", "signal")]
            for kind, value in arrays.items():
                if kind in ARRAY_KINDS and self.record_dtype != "float32":
                    first = gradients if kind in ("true_grad", "signal") else [value]
                    self._append_compact(f"layers/{name}", kind, value, first, centre=True)
                else:
                    self._append(f"layers/{name}", kind, value.astype(np.float32, copy=False)[np.newaxis])
        for name, value in params.items():
            value = np.asarray(value)
            if self.record_dtype != "float32" and value.dtype.kind == "f":
                self._append_compact("params", name, value, [value])
            else:
                self._append("params", name, value[np.newaxis])
        self._append("checkpoints", "step", np.array([step], dtype=np.int64))
        if resume is not None and self.record_dtype != "float32":
            resume = {**resume, **{EXACT + name: value for name, value in params.items()}}
        if resume is None:
            self._flush_metrics()
            return
        k = (len(f["checkpoints/step"]) - 1) % 2
        slot = f.require_group(f"resume/{k}")
        mark = slot.require_dataset("step", shape=(), dtype=np.int64)
        mark[()] = -1
        self._flush_metrics()
        for name, value in resume.items():
            value = np.asarray(value, order="C")
            ds = self._resume_sets.get((k, name))
            if ds is None:
                ds = slot[name] if name in slot else slot.create_dataset(name, value.shape, value.dtype,
                                                                         **dtypes.checksummed(value.shape))
                self._resume_sets[k, name] = ds
            # h5py's ``ds[...] = value`` costs ~0.3 ms a call, and there are three per parameter
            ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, value)
        f.flush()
        mark[()] = step
        f.flush()

    def _append_compact(self, group: str, name: str, value: np.ndarray, first: list[np.ndarray],
                        centre: bool = False) -> None:
        """Append ``value`` as one row of ``group/name`` stored in ``record_dtype``; a new dataset takes its
        float16 bias from the largest magnitude among ``first`` (``runfile.dtypes.shift_for``). ``centre``: a layer
        array, stored less its offsets (``runfile.dtypes.centre``), appended to ``group/name`` + ``OFFSET``, unless a
        resumed run's dataset has none (written before offsets were), and in int16 in units of its scales,
        appended to ``group/name`` + ``SCALE``; anything else in ``runfile.dtypes.PARAM_DTYPES``."""
        key = (group, name)
        how = self._codecs.get(key)
        if how is None:
            existing = self.file[group].get(name)  # a resumed run's dataset keeps its type and layout
            dtype = self.record_dtype if centre else dtypes.PARAM_DTYPES[self.record_dtype]
            if existing is not None:
                how = dtypes.codec(existing), centre and name + OFFSET in self.file[group]
            elif dtype == "float16":
                how = ("float16", dtypes.shift_for(np.concatenate([np.ravel(v) for v in first]))), centre
            else:
                how = (dtype, 0), centre
            self._codecs[key] = how
        codec, centred = how
        if centred:
            offset, value = dtypes.centre(value)
            self._append(group, name + OFFSET, offset[np.newaxis])
        if codec[0] == "int16":
            scale, value = dtypes.fixed_point(value)
            self._append(group, name + SCALE, scale[np.newaxis])
        raw = dtypes.encode(value, *codec, where=f"{self.path}: /{group}/{name}")
        self._append(group, name, raw[np.newaxis], codec)

    def _append(self, group: str, name: str, rows: np.ndarray, compact: tuple[str, int] | None = None) -> None:
        """Append ``rows`` (one row per entry of the first axis) to the growing dataset ``group/name``,
        created on first use, chunked a row at a time (rows of scalars: 1024 at a time).

        Through h5py's low-level calls on a kept handle: its ``resize`` and
        ``ds[-1] = value`` cost ~0.3 ms a call, and a checkpoint appends one row
        per parameter. ``compact``: ``rows`` are the bits of that 16-bit ``(dtype, shift)``.
        """
        rows = np.asarray(rows, order="C")
        shape = rows.shape[1:]
        ds = self._rows.get((group, name))
        if ds is None:
            g = self.file[group]
            if name not in g:
                layout = dict(shape=(0,) + shape, maxshape=(None,) + shape, chunks=(1,) + shape if shape else (1024,))
                if compact is None:
                    g.create_dataset(name, dtype=rows.dtype, **layout, **dtypes.checksummed(layout["shape"]))
                else:
                    dtypes.create(g, name, dtype=compact[0], shift=compact[1], **layout)
            ds = self._rows[group, name] = g[name].id
        n = ds.shape[0]
        ds.set_extent((n + len(rows),) + shape)
        space = ds.get_space()
        space.select_hyperslab((n,) + (0,) * len(shape), rows.shape)
        if compact is None:
            ds.write(h5py.h5s.create_simple(rows.shape), space, rows)
        else:
            ds.write(h5py.h5s.create_simple(rows.shape), space, rows, mtype=ds.get_type())

    def _follow_metrics(self) -> None:
        """Start the metric buffers after the rows already in the file (none in a new one)."""
        stored = _walk(self.file["metrics"])
        self._metrics: dict[str, list[float]] = {name: [] for name in stored}
        self._padding: dict[str, int] = {}  # rows in the file before a metric's first value
        self._logged = self._flushed = max((len(ds) for ds in stored.values()), default=0)

    def add(self, name: str, values: np.ndarray) -> None:
        """Write the fixed array ``values`` as the dataset ``name`` (a path in the file), with its checksum."""
        self.file.create_dataset(name, data=values, **dtypes.checksummed(np.shape(values)))

    def append_row(self, group: str, name: str, value: np.ndarray) -> None:
        """Append ``value`` as one row of ``group/name`` (float32), for arrays outside the layer contract (a
        recurrent run's ``/boundary``); written at the next flush, as a checkpoint is."""
        self.file.require_group(group)
        self._append(group, name, np.asarray(value, dtype=np.float32)[np.newaxis])

    def log(self, row: dict[str, float]) -> None:
        """Record one logged step's metrics (kept in memory until the next flush) as one row of every
        ``/metrics`` array: a metric missing from the row is NaN in it, and a metric first seen in it is NaN
        in the rows before, so every array stays aligned with ``step``."""
        for name in row.keys() - self._metrics.keys():
            self._metrics[name] = [math.nan] * (self._logged - self._flushed)
            self._padding[name] = self._flushed  # rows already in the file that it is missing from
        for name, values in self._metrics.items():
            values.append(row.get(name, math.nan))
        self._logged += 1

    def evaluation(self, row: dict[str, float]) -> None:
        """Append one evaluation (``step``, ``test_loss``, ``test_acc``); then flush."""
        for name, value in row.items():
            self._append("eval", name, np.array([value], dtype=np.float64))
        self._flush_metrics()

    def _make_room(self, nbytes: int) -> None:
        """Refuse a write of about ``nbytes`` (an ``OSError`` ENOSPC) unless the disk has room for it and
        ``SPARE`` more, before anything of it is written: HDF5 cannot take back a write the disk
        refused half-way, and a file closed after one may no longer open."""
        free = shutil.disk_usage(Path(self.file.filename).parent).free  # the folder: the file may have been renamed
        if free < nbytes + SPARE:
            raise OSError(errno.ENOSPC, f"no room for the next write ({nbytes / 2**20:,.1f} MiB, with "
                          f"{SPARE // 2**20} MiB to spare)", str(self.path))

    def _flush_metrics(self) -> None:
        self._make_room(8 * sum(map(len, self._metrics.values())))
        for name, values in self._metrics.items():
            missing = self._padding.pop(name, 0)
            if values or missing:
                self._append("metrics", name, np.asarray([math.nan] * missing + values, dtype=np.float64))
        self._metrics = {name: [] for name in self._metrics}
        self._flushed = self._logged
        self.file.flush()

    def commit(self) -> None:
        """Put the run at its final path (replacing the old file there, if any); idempotent."""
        if self._pending is not None:
            self._pending.replace(self.path)
            self._pending = None

    def close(self, status: str = "complete", **attrs) -> None:
        """Write what is buffered, set ``status`` (and e.g. ``error``), and close.

        A complete run is committed; an uncommitted failed one is deleted.
        """
        try:
            self.file.attrs["status"] = status
            self.file.attrs.update(attrs)
            self._flush_metrics()
            self.file.close()
            if status == "complete":
                self.commit()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close the file as it is (if open), delete an uncommitted temporary file, and let go of the lock;
        never raises. ``close`` ends with it."""
        file = getattr(self, "file", None)
        if file is not None:
            try:
                file.close()
            except Exception:  # noqa: BLE001 (a file already broken: what it holds stays as it is)
                pass
        if getattr(self, "_pending", None) is not None:
            self._pending.unlink(missing_ok=True)
            self._pending = None
        self._lock.release()

    @property
    def replacing(self) -> bool:
        """Whether an existing file at ``path`` is still waiting to be replaced."""
        return self._pending is not None


def _writable(path, mode: str) -> h5py.File:
    """The run file opened for the writer: no lock (see ``RunWriter``) and no chunk cache, so that each
    appended row (a whole chunk) goes to the file as it is written instead of being copied into a cache
    that the next flush writes out (a 6x256 MNIST checkpoint: 7.8 ms against 8.9 ms, measured)."""
    return h5py.File(path, mode, locking=False, rdcc_nbytes=0)


def _walk(group: h5py.Group, prefix: str = "") -> dict[str, h5py.Dataset]:
    out = {}
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            out[prefix + key] = item
        else:
            out.update(_walk(item, f"{prefix}{key}/"))
    return out


def _newest_slot(f: h5py.File) -> tuple[int, dict[str, np.ndarray]] | None:
    """The step and arrays of the newest whole resume slot (see the module docstring); None if there is none."""
    slots = [g for g in f.get("resume", {}).values() if "step" in g and g["step"][()] >= 0]
    if not slots:
        return None
    slot = max(slots, key=lambda g: g["step"][()])
    return int(slot["step"][()]), {name: dtypes.read(ds) for name, ds in slot.items() if name != "step"}


def _resume_point(old: h5py.File, path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, int]]:
    """The step ``S`` of the newest whole resume slot, its state, and how many rows of each top-level group
    to keep: checkpoints up to ``S``, metrics of steps up to ``S``, evaluations before ``S``."""
    newest = _newest_slot(old)
    if newest is None:
        raise UserError(f"{path}: no checkpoint with a resume state (none was reached, or an older "
                        "repanalysis wrote it); train it again with --overwrite")
    step, state = newest
    kept = np.flatnonzero(dtypes.read(old["checkpoints/step"]) == step)
    if not len(kept):
        raise ValueError(f"no checkpoint at step {step}")
    rows = dict.fromkeys(["checkpoints", "layers", "params"], int(kept[0]) + 1)
    rows["metrics"] = int(np.sum(dtypes.read(old["metrics/step"]) <= step)) if "step" in old["metrics"] else 0
    rows["eval"] = int(np.sum(dtypes.read(old["eval/step"]) < step)) if "step" in old["eval"] else 0
    return step, state, rows


def _copy_kept(old: h5py.File, path: Path, rows: dict[str, int], step: int) -> Path:
    """A new file beside ``path`` holding what ``rows`` keeps of ``old``, marked running and resumed at
    ``step``; a copy that cannot be written is a ``UserError`` and leaves no file behind."""
    try:
        fresh = temporary_beside(path)
    except OSError as err:
        raise UserError(f"{path}: cannot be resumed: no new file can be written beside it ({err})") from None
    try:
        with h5py.File(fresh, "w", locking=False) as new:
            _copy_cut(old, new, rows)
            resumed = json.loads(old.attrs.get("resumed", "[]")) + [[step, _now()]]
            new.attrs.update(status="running", resumed=json.dumps(resumed))
            new.attrs.pop("error", None)
    except BaseException as err:
        fresh.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # a full disk, or a part that cannot be read
            raise UserError(f"{path}: cannot be resumed: copying the part kept into a new file beside it "
                            f"failed ({str(err).splitlines()[0]})") from None
        raise
    return fresh


def _copy_cut(old: h5py.File, new: h5py.File, rows: dict[str, int]) -> None:
    """Copy every group, dataset and attribute of ``old`` into the empty ``new``, each dataset under a
    top-level group named in ``rows`` cut to its first ``rows[group]`` rows (refused if it has fewer); each
    dataset keeps its chunks, compression and maximum shape, so appends continue as in the original, and gets
    the checksum (a file written before checksums gains them)."""
    new.attrs.update(old.attrs)

    def copy(name: str, item) -> None:
        if isinstance(item, h5py.Group):
            new.require_group(name).attrs.update(item.attrs)
            return
        cut = rows.get(name.split("/")[0])
        if cut is not None and item.shape[0] < cut:
            raise ValueError(f"{name} has {item.shape[0]} rows, expected at least {cut}")
        shape = item.shape if cut is None else (cut,) + item.shape[1:]
        key = () if cut is None else slice(0, cut)
        how = dtypes.codec(item)
        if how is not None:  # a 16-bit type: made alike, its bits copied as they are
            made = dtypes.create(new, name, shape, item.maxshape or shape, item.chunks, *how)
            if made.size:
                dtypes.write_bits(made, dtypes.bits(item, key))
        else:
            layout = {} if item.chunks is None else dict(chunks=item.chunks, maxshape=item.maxshape,
                                                         compression=item.compression)
            made = new.create_dataset(name, shape=shape, dtype=item.dtype, **layout, **dtypes.checksummed(shape))
            if made.size:
                made[()] = dtypes.read(item, key)
        made.attrs.update(item.attrs)

    old.visititems(copy)


class RunFile:
    """Read-only view of a run file. Arrays are read lazily, one checkpoint at a time.

    Use as a context manager, or call ``close()``. Checkpoints are addressed by
    their index into ``steps`` (negative indices count from the end).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise UserError(f"{self.path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from None
        attrs = self.file.attrs
        if attrs.get("format") != FORMAT:
            self.file.close()
            raise UserError(f"{self.path}: not a repanalysis run file (no format={FORMAT!r} attribute)")
        version = int(attrs.get("format_version", -1))
        if version not in READABLE_VERSIONS:
            self.file.close()
            raise UserError(
                f"{self.path}: run-file format version {version}; this repanalysis reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        try:
            self._layers = sorted(self.file["layers"], key=lambda n: int(self.file["layers"][n].attrs["position"]))
            self.steps = (dtypes.read(self.file["checkpoints/step"]) if "step" in self.file["checkpoints"]
                          else np.zeros(0, np.int64))
        except UserError:  # a checksum that fails
            self.file.close()
            raise
        except (KeyError, OSError, RuntimeError) as err:  # HDF5's own errors reach h5py as RuntimeError
            self.file.close()
            raise UserError(f"{self.path}: damaged or truncated run file, or read in the middle of a write "
                            f"(a running run's file can be read again a moment later) ({err})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.file.close()

    # provenance
    @property
    def attrs(self) -> dict:
        return dict(self.file.attrs)

    def __getattr__(self, name):
        if name in ("status", "rule", "model", "dataset", "created", "error", "task", "record_bn"):
            value = self.file.attrs.get(name)
            return value.decode() if isinstance(value, bytes) else value
        raise AttributeError(name)

    @property
    def seed(self) -> int:
        return int(self.file.attrs["seed"])

    @property
    def config(self) -> dict:
        return json.loads(self.file.attrs["config"])

    @property
    def versions(self) -> dict:
        return json.loads(self.file.attrs["versions"])

    # probe set
    @property
    def probe_index(self) -> np.ndarray:
        return dtypes.read(self.file["probe/index"])

    @property
    def probe_labels(self) -> np.ndarray | None:
        return dtypes.read(self.file["probe/labels"]) if "labels" in self.file["probe"] else None

    @property
    def probe_targets(self) -> np.ndarray | None:
        return dtypes.read(self.file["probe/targets"]) if "targets" in self.file["probe"] else None

    # layers
    @property
    def layers(self) -> list[str]:
        """Recorded interface names, bottom to top."""
        return list(self._layers)

    @property
    def interfaces(self) -> list[str]:
        """Every interface of the network, bottom to top, recorded or not (``train --record-layers``)."""
        stored = self.file.attrs.get("interfaces")
        return json.loads(stored) if stored is not None else self.layers

    def layer_info(self, name: str) -> dict:
        """Name, position, width (values per sample), kind, and ``shape`` per sample (``(C, H, W)`` for a map)."""
        g = self._layer(name)
        shape = tuple(g["activations"].shape[2:]) if "activations" in g else (int(g.attrs["width"]),)
        return {"name": name, "position": int(g.attrs["position"]), "width": int(g.attrs["width"]),
                "kind": str(g.attrs["kind"]), "shape": shape}

    def _layer(self, name: str) -> h5py.Group:
        if name not in self._layers:
            raise UserError(f"{self.path}: no layer {name!r}; it has {', '.join(self._layers)}")
        return self.file["layers"][name]

    def has(self, layer: str, kind: str) -> bool:
        return kind in self._layer(layer)

    def array(self, layer: str, kind: str) -> dtypes.Stored:
        """The whole ``[T, N, D]`` (or ``[T, N, C, H, W]``) dataset of one layer, sliced lazily through a
        ``runfile.dtypes.Stored`` view: float32 (a 16-bit type decoded), its checksum verified, its
        int16 scales and offsets applied where it was stored centred."""
        g = self._layer(layer)
        if kind not in g:
            raise UserError(f"{self.path}: layer {layer} has no {kind!r} (it has {', '.join(g)})")
        return dtypes.Stored(g[kind], g.get(kind + OFFSET), g.get(kind + SCALE))

    def stored(self, layer: str, kind: str, checkpoint: int = -1) -> np.ndarray:
        """One checkpoint of one layer's array as recorded: ``[N, D]`` or ``[N, C, H, W]``."""
        ds = self.array(layer, kind)
        n = min(ds.shape[0], len(self.steps))
        if not -n <= checkpoint < n:
            raise UserError(f"{self.path}: checkpoint {checkpoint} out of range; the run has {n}")
        return ds[checkpoint % n]

    def activations(self, layer: str, checkpoint: int = -1, maps: str = "flatten") -> np.ndarray:
        """``[N, D]``: feature maps read by ``maps`` (see the module docstring)."""
        return as_rows(self.stored(layer, "activations", checkpoint), maps)

    def true_grad(self, layer: str, checkpoint: int = -1) -> np.ndarray:
        """``[N, D]``, feature maps flattened."""
        return as_rows(self.stored(layer, "true_grad", checkpoint))

    def signal(self, layer: str, checkpoint: int = -1) -> np.ndarray | None:
        """The rule's error signal ``[N, D]`` (feature maps flattened), or None where the rule used the true gradient."""
        return as_rows(self.stored(layer, "signal", checkpoint)) if self.has(layer, "signal") else None

    def update(self, layer: str) -> np.ndarray | None:
        """``[T, 2]``: per checkpoint, the cosine and norm ratio of the parameter gradient of the block below
        ``layer`` under the rule against the true one; None where the rule used the true gradient."""
        return self.array(layer, "update")[: len(self.steps)] if self.has(layer, "update") else None

    def checkpoint_index(self, step: int) -> int:
        hits = np.flatnonzero(self.steps == step)
        if not len(hits):
            raise UserError(f"{self.path}: no checkpoint at step {step}; steps are {self.steps.tolist()}")
        return int(hits[0])

    # parameters, metrics, evaluations
    @property
    def param_names(self) -> list[str]:
        return sorted(self.file["params"])

    def param(self, name: str, checkpoint: int = -1) -> np.ndarray:
        if name not in self.file["params"]:
            raise UserError(f"{self.path}: no parameter {name!r}")
        return dtypes.read(self.file["params"][name], checkpoint)

    def params(self, checkpoint: int = -1) -> dict[str, np.ndarray]:
        return {name: self.param(name, checkpoint) for name in self.param_names}

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return {name: dtypes.read(ds) for name, ds in _walk(self.file["metrics"]).items()}

    @property
    def evals(self) -> dict[str, np.ndarray]:
        return {name: dtypes.read(ds) for name, ds in _walk(self.file["eval"]).items()}
