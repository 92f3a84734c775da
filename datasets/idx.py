"""The IDX file format (LeCun's MNIST files), raw or gzipped.

An IDX file is: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions,
one big-endian uint32 per dimension, then the values, big-endian, in C order.
"""

import gzip
import zlib
from os import PathLike

import numpy as np

from repanalysis.errors import UserError

_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | PathLike) -> bytes:
    """The IDX bytes of a file, decompressed if it is gzipped (told by its first bytes, not its name)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as err:
        raise UserError(f"{path} is a truncated or corrupt gzip file ({err})") from None


def parse(data: bytes, source: str) -> np.ndarray:
    """The array held by IDX bytes, in native byte order; ``source`` names them in errors."""
    if len(data) < 4:
        raise UserError(f"{source} is truncated: {len(data)} bytes, too short for an IDX header")
    if data[:2] != b"\0\0" or data[2] not in _TYPES:
        raise UserError(f"{source} is not an IDX file (starts with 0x{data[:4].hex()})")
    dtype = np.dtype(_TYPES[data[2]])
    start = 4 + 4 * data[3]
    if len(data) < start:
        raise UserError(f"{source} is truncated: its header is cut off after {len(data)} bytes")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=data[3], offset=4))
    expected = start + dtype.itemsize * int(np.prod(shape))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "too long"
        raise UserError(
            f"{source} is {problem}: its header promises {expected} bytes (shape {shape}), it has {len(data)}"
        )
    values = np.frombuffer(data, dtype, offset=start).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read(path: str | PathLike) -> np.ndarray:
    """The array in an IDX file, raw or gzipped."""
    return parse(read_bytes(path), str(path))
