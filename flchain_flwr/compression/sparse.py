"""A compact, versioned sparse encoding for one tensor, and its strict decoder.

A sparse tensor travels as a Flower :class:`~flwr.app.Array` whose ``dtype`` and
``shape`` are those of the dense tensor it stands for, whose ``stype`` is
:data:`SPARSE_STYPE`, and whose ``data`` is (little-endian)::

    magic "FLSP" | version u8 | index width u8 (1, 2, 4) | value code u8 | 0 u8
    | numel u64 | nnz u64 | indices (nnz x index width) | values (nnz x value size)

Indices are flat, strictly increasing, and as narrow as the tensor allows
(uint8 up to 256 elements, uint16 up to 65,536, uint32 beyond). Values are
float32 or float16. Plain Flower strategies cannot misread it: ``Array.numpy()``
refuses the unknown ``stype``.

:func:`decode` trusts nothing: every way a broken or malicious client could get
the bytes wrong raises :class:`SparseFormatError` with a reason.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np
from flwr.app import Array

SPARSE_STYPE: Final = "flchain.sparse"
FORMAT_VERSION: Final = 1
MAGIC: Final = b"FLSP"
_HEADER = struct.Struct("<4sBBBBQQ")
HEADER_SIZE: Final = _HEADER.size
VALUE_DTYPES: Final[dict[int, np.dtype[Any]]] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_VALUE_CODES: Final[dict[np.dtype[Any], int]] = {
    np.dtype("float32"): 1,
    np.dtype("float16"): 2,
}
_INDEX_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}


class SparseFormatError(ValueError):
    """A sparse payload is malformed; the message says how."""


def index_width(numel: int) -> int:
    """Bytes per index for a tensor of ``numel`` elements."""
    if numel <= 1 << 8:
        return 1
    if numel <= 1 << 16:
        return 2
    if numel <= 1 << 32:
        return 4
    raise ValueError(f"tensor of {numel} elements is too large for the sparse format")


def encode(
    indices: np.ndarray,
    values: np.ndarray,
    *,
    shape: tuple[int, ...],
    dtype: str = "float32",
    value_dtype: str = "float32",
) -> Array:
    """Encode ``values`` at flat ``indices`` of a dense tensor of ``shape``.

    ``indices`` must be strictly increasing; ``values`` are cast to ``value_dtype``
    (float32 or float16). ``dtype`` is the dense tensor's dtype.
    """
    numel = math.prod(shape)
    idx = np.asarray(indices)
    if idx.ndim != 1 or len(idx) != len(values):
        raise ValueError("indices and values must be 1-D and of equal length")
    if len(idx) and (idx[0] < 0 or idx[-1] >= numel or np.any(np.diff(idx) <= 0)):
        raise ValueError("indices must be strictly increasing and within the tensor")
    vdtype = np.dtype(value_dtype)
    if vdtype not in _VALUE_CODES:
        raise ValueError(f"value_dtype must be float32 or float16, got {value_dtype}")
    width = index_width(numel)
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, width, _VALUE_CODES[vdtype], 0, numel, len(idx)
    )
    data = (
        header
        + idx.astype(_INDEX_DTYPES[width], copy=False).tobytes()
        + np.asarray(values)
        .astype(VALUE_DTYPES[_VALUE_CODES[vdtype]], copy=False)
        .tobytes()
    )
    return Array(
        dtype=dtype, shape=tuple(int(d) for d in shape), stype=SPARSE_STYPE, data=data
    )


def is_sparse(array: Array) -> bool:
    """Whether an Array carries this module's sparse encoding."""
    return array.stype == SPARSE_STYPE


# pylint: disable=too-many-locals
def decode(array: Array, *, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode a sparse Array into a dense tensor of the expected ``shape``/``dtype``.

    Raises
    ------
    SparseFormatError
        On an unknown format version or value code, a declared size that does not
        match the bytes, more entries than the tensor holds, indices out of range,
        unsorted or duplicate, non-finite values, or a dtype or shape that differs
        from the expected one.
    """
    if array.stype != SPARSE_STYPE:
        raise SparseFormatError(f"not a sparse array (stype {array.stype!r})")
    if not _known_dtype(array.dtype) or np.dtype(array.dtype) != dtype:
        raise SparseFormatError(f"dtype {array.dtype!r} does not match {dtype}")
    if np.dtype(dtype).kind != "f":
        raise SparseFormatError(
            f"the sparse encoding is for float tensors, not {dtype}"
        )
    if tuple(array.shape) != tuple(shape):
        raise SparseFormatError(
            f"shape {tuple(array.shape)} does not match {tuple(shape)}"
        )
    data = array.data
    if not isinstance(data, bytes) or len(data) < HEADER_SIZE:
        raise SparseFormatError("payload is shorter than the sparse header")
    magic, version, width, value_code, reserved, numel, nnz = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SparseFormatError("payload does not start with the sparse magic")
    if version != FORMAT_VERSION:
        raise SparseFormatError(f"unknown sparse format version {version}")
    if value_code not in VALUE_DTYPES:
        raise SparseFormatError(f"unknown value type code {value_code}")
    if width not in _INDEX_DTYPES:
        raise SparseFormatError(f"unknown index width {width}")
    if reserved != 0:
        raise SparseFormatError("reserved header byte is not zero")
    expected_numel = math.prod(shape)
    if numel != expected_numel:
        raise SparseFormatError(
            f"declares {numel} elements, the tensor has {expected_numel}"
        )
    if numel > 1 << 32:
        raise SparseFormatError(f"a tensor of {numel} elements is too large to decode")
    if width != index_width(numel):
        raise SparseFormatError(
            f"index width {width} is not the one for {numel} elements"
        )
    if nnz > numel:
        raise SparseFormatError(f"declares {nnz} entries for a tensor of {numel}")
    value_dtype = VALUE_DTYPES[value_code]
    expected_size = HEADER_SIZE + nnz * (width + value_dtype.itemsize)
    if len(data) != expected_size:
        raise SparseFormatError(
            f"declares {nnz} entries ({expected_size} bytes), "
            f"payload has {len(data)} bytes"
        )
    idx = np.frombuffer(data, dtype=_INDEX_DTYPES[width], count=nnz, offset=HEADER_SIZE)
    values = np.frombuffer(
        data, dtype=value_dtype, count=nnz, offset=HEADER_SIZE + nnz * width
    )
    if nnz:
        steps = np.diff(idx.astype(np.int64))
        if np.any(steps == 0):
            raise SparseFormatError("duplicate indices")
        if np.any(steps < 0):
            raise SparseFormatError("indices are not sorted")
        if int(idx[-1]) >= numel:
            raise SparseFormatError(
                f"index {int(idx[-1])} out of range for {numel} elements"
            )
        if not np.isfinite(values).all():
            raise SparseFormatError("values hold NaN or Inf")
    dense = np.zeros(expected_numel, dtype=dtype)
    with np.errstate(over="ignore"):
        dense[idx] = values.astype(dtype)
    if nnz and not np.isfinite(dense[idx]).all():
        raise SparseFormatError(f"values overflow {dtype}")
    return dense.reshape(shape)


def _known_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except (TypeError, ValueError):
        return False
    return True
