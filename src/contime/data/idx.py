"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a header followed by the array data in C (row-major) order, every number big-endian:

    bytes 0-1   0x00 0x00
    byte  2     dtype code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions D
    4 * D bytes the size of each dimension, each a big-endian uint32
    the data    prod(sizes) items of the dtype, big-endian

The reader accepts the file raw or gzipped; it tells them apart by the gzip magic bytes ``1f 8b``, never by
the file name. Arrays come back in native byte order, as numpy arrays or torch tensors.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np
import torch

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _describe(source) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "IDX data"


def parse_idx(data: bytes, *, as_tensor: bool = False, name: str = "IDX data") -> np.ndarray | torch.Tensor:
    """Decode the bytes of an IDX file (raw or gzipped) into an array.

    Args:
        data: the file's bytes; gzipped data is recognised by its first two bytes ``1f 8b``.
        as_tensor: return a ``torch.Tensor`` instead of a numpy array.
        name: how to call the data in error messages (e.g. the file name).

    Returns:
        an array of shape ``(d_1, ..., d_D)`` with the sizes from the header, in native byte order and the
        dtype of the header's code (uint8 for MNIST images and labels); a fresh, writable copy.

    Raises:
        ValueError: a corrupt or truncated gzip stream, a bad magic number (first two bytes not zero, or an
            unknown dtype code), a truncated header, or data whose size does not match the header's sizes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{name}: corrupt or truncated gzip stream ({error})") from error
    if len(data) < 4:
        raise ValueError(f"{name}: truncated header, {len(data)} bytes, need at least 4 for the magic number")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{name}: bad magic number 0x{data[:4].hex()}: expected 0x0000 then a dtype code in "
                         f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} then the number of dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{name}: truncated header, {len(data)} bytes, need {header_len} for {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise ValueError(f"{name}: truncated data, the header's sizes {shape} need {expected} bytes of "
                         f"{dtype.newbyteorder('=').name}, the file has {actual}")
    if actual > expected:
        raise ValueError(f"{name}: dims/size mismatch, the header's sizes {shape} need {expected} bytes of "
                         f"{dtype.newbyteorder('=').name}, the file has {actual} ({actual - expected} extra)")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    array = array.astype(dtype.newbyteorder("="), copy=True)  # native order, writable
    return torch.from_numpy(array) if as_tensor else array


def read_idx(path: str | os.PathLike, *, as_tensor: bool = False) -> np.ndarray | torch.Tensor:
    """Read an IDX file, raw or gzipped (detected from its content, not its name).

    Args:
        path: the file.
        as_tensor: return a ``torch.Tensor`` instead of a numpy array.

    Returns:
        the array, shaped as the header says, native byte order (see ``parse_idx``).

    Raises:
        ValueError: a corrupt file, as in ``parse_idx``; the message names the file.
        FileNotFoundError: no such file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    with open(path, "rb") as f:
        data = f.read()
    return parse_idx(data, as_tensor=as_tensor, name=_describe(path))


def write_idx(path: str | os.PathLike, array, *, compress: bool | None = None) -> None:
    """Write an array as an IDX file.

    Args:
        path: the file to write (replaced if present).
        array: a numpy array or torch tensor of shape ``(d_1, ..., d_D)``, D >= 1, every size < 2**32, with
            dtype uint8, int8, int16, int32, float32 or float64.
        compress: gzip the file; ``None`` (default) gzips when the name ends in ``.gz``. The gzip header
            carries no time stamp, so equal arrays give equal files.

    Raises:
        ValueError: an unsupported dtype, no dimensions, or a size too large for the header.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"array must be a numpy array or torch tensor, got {type(array).__name__}")
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise ValueError(f"array has dtype {array.dtype}, IDX supports uint8, int8, int16, int32, float32, float64")
    if array.ndim < 1 or array.ndim > 255:
        raise ValueError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"array sizes must be < 2**32 to fit the IDX header, got {array.shape}")
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    code = _IDX_CODES[native]
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)
