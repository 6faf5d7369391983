"""A compact, versioned sparse encoding for one tensor: its format and encoder.

A sparse tensor travels as a Flower :class:`~flwr.app.Array` whose ``dtype`` and
``shape`` are those of the dense tensor it stands for, whose ``stype`` is
:data:`SPARSE_STYPE`, and whose ``data`` is (little-endian)::

    magic "FLSP" | version u8 | index field u8 | value code u8 | param u8
    | numel u64 | nnz u64 | indices | values (nnz x value size)

Indices are flat and strictly increasing; values are float32 or float16, or
(value codes 3 to 5) ``int8``, ``int4`` or ``sign`` codes after one float32
scale, as described in :mod:`.quantize`.

- Version 2 (written by default): the index field is 1 (Elias-Fano) and ``param``
  is the number ``L = floor(log2(numel / nnz))`` of low bits. Each index is split
  into ``L`` low bits, packed one after the other (``ceil(nnz L / 8)`` bytes), and
  its high part ``h = index >> L``, written in unary as a set bit at position
  ``h + i`` of a bit vector of ``nnz + ((numel - 1) >> L) + 1`` bits. Bits are
  packed least significant first, padding bits are zero. That is at most
  ``2 + log2(numel / nnz)`` bits per index: about 10 bits at 0.3 % density,
  where version 1 spends 32.
- Version 1: the index field is the fixed index width (1, 2 or 4 bytes, as
  narrow as the tensor allows), ``param`` is 0, and the indices follow as plain
  unsigned integers.

Both versions decode; :func:`encode` writes either. Plain Flower strategies
cannot misread a payload: ``Array.numpy()`` refuses the unknown ``stype``.

Its strict decoder is :mod:`.sparse_decode`: every way a broken or malicious
client could get the bytes wrong raises :class:`SparseFormatError` with a
reason, and every tensor has exactly one valid encoding per version.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np
from flwr.app import Array

from .quantize import QUANTIZED, pack, packed_size, unpack

SPARSE_STYPE: Final = "flchain.sparse"
FORMAT_VERSION: Final = 2
"""The version :func:`encode` writes by default."""
SUPPORTED_VERSIONS: Final = (1, 2)
ELIAS_FANO: Final = 1
"""Version 2's index field: the Elias-Fano index coding."""
MAGIC: Final = b"FLSP"
MAX_NUMEL: Final = 1 << 32
HEADER: Final = struct.Struct("<4sBBBBQQ")
HEADER_SIZE: Final = HEADER.size
VALUE_DTYPES: Final[dict[int, np.dtype[Any]]] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
QUANTIZED_CODES: Final[dict[int, str]] = {3: "int8", 4: "int4", 5: "sign"}
"""Value codes of the scaled integer values (:mod:`.quantize`)."""
_CODE_OF: Final = {"float32": 1, "float16": 2, "int8": 3, "int4": 4, "sign": 5}
VALUE_TYPES: Final = tuple(_CODE_OF)
"""Every value type a sparse tensor can carry."""
INDEX_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}
"""Version 1's index dtype for each index width."""


class SparseFormatError(ValueError):
    """A sparse payload is malformed; the message says how."""


def index_width(numel: int) -> int:
    """Bytes per index of version 1 for a tensor of ``numel`` elements."""
    if numel <= 1 << 8:
        return 1
    if numel <= 1 << 16:
        return 2
    if numel <= MAX_NUMEL:
        return 4
    raise ValueError(f"tensor of {numel} elements is too large for the sparse format")


def low_bits(numel: int, nnz: int) -> int:
    """Elias-Fano's low bits per index: ``floor(log2(numel / nnz))``, 0 if empty."""
    if nnz <= 0 or nnz > numel:
        return 0
    return (numel // nnz).bit_length() - 1


def section_sizes(numel: int, nnz: int, bits: int) -> tuple[int, int, int]:
    """Version 2's low-bit section bytes, high-bit vector bits, and its bytes."""
    if nnz == 0:
        return 0, 0, 0
    high_bits = nnz + ((numel - 1) >> bits) + 1
    return (nnz * bits + 7) // 8, high_bits, (high_bits + 7) // 8


def payload_size(numel: int, nnz: int, value_dtype: str, version: int = 2) -> int:
    """Bytes of an encoded tensor, header included, without encoding it."""
    if value_dtype in QUANTIZED:
        values = packed_size(value_dtype, nnz)
    else:
        values = nnz * np.dtype(value_dtype).itemsize
    if version == 1:
        return HEADER_SIZE + nnz * index_width(numel) + values
    low, _, high = section_sizes(numel, nnz, low_bits(numel, nnz))
    return HEADER_SIZE + low + high + values


def _elias_fano(idx: np.ndarray, numel: int) -> tuple[int, bytes]:
    """Low-bit section and high-bit vector of sorted, distinct ``idx``."""
    nnz = len(idx)
    bits = low_bits(numel, nnz)
    _, high_bits, _ = section_sizes(numel, nnz, bits)
    if nnz == 0:
        return bits, b""
    low = b""
    if bits:
        planes = (idx[:, None] >> np.arange(bits, dtype=np.int64)) & 1
        packed = np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")
        low = packed.tobytes()
    vector = np.zeros(high_bits, dtype=np.uint8)
    vector[(idx >> bits) + np.arange(nnz, dtype=np.int64)] = 1
    return bits, low + np.packbits(vector, bitorder="little").tobytes()


def encode(
    indices: np.ndarray,
    values: np.ndarray,
    *,
    shape: tuple[int, ...],
    dtype: str = "float32",
    value_dtype: str = "float32",
    version: int = FORMAT_VERSION,
    scale: float | None = None,
) -> Array:
    """Encode ``values`` at flat ``indices`` of a dense tensor of ``shape``.

    ``indices`` must be strictly increasing; ``values`` are cast to ``value_dtype``
    (float32 or float16), or, for ``int8``, ``int4`` and ``sign``, are the codes
    of :func:`~.quantize.quantize` and ``scale`` its scale. ``dtype`` is the
    dense tensor's dtype; ``version`` the format version to write (2:
    Elias-Fano indices, 1: fixed-width indices).
    """
    numel = math.prod(shape)
    idx = np.asarray(indices).astype(np.int64, copy=False)
    if idx.ndim != 1 or len(idx) != len(values):
        raise ValueError("indices and values must be 1-D and of equal length")
    if len(idx) and (idx[0] < 0 or idx[-1] >= numel or np.any(np.diff(idx) <= 0)):
        raise ValueError("indices must be strictly increasing and within the tensor")
    if value_dtype not in _CODE_OF:
        raise ValueError(f"value_dtype must be one of {VALUE_TYPES}, got {value_dtype}")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown sparse format version {version}")
    width = index_width(numel)  # also refuses tensors that are too large
    if version == 1:
        field, param = width, 0
        index_bytes = idx.astype(INDEX_DTYPES[width]).tobytes()
    else:
        field = ELIAS_FANO
        param, index_bytes = _elias_fano(idx, numel)
    code = _CODE_OF[value_dtype]
    if value_dtype in QUANTIZED:
        if len(idx) and scale is None:
            raise ValueError(f"{value_dtype} values need their scale")
        value_bytes = pack(value_dtype, np.asarray(values), scale or 0.0)
        unpack(value_dtype, value_bytes, len(idx))  # never write what decode refuses
    else:
        value_bytes = (
            np.asarray(values).astype(VALUE_DTYPES[code], copy=False).tobytes()
        )
    header = HEADER.pack(MAGIC, version, field, code, param, numel, len(idx))
    data = header + index_bytes + value_bytes
    return Array(
        dtype=dtype, shape=tuple(int(d) for d in shape), stype=SPARSE_STYPE, data=data
    )


def is_sparse(array: Array) -> bool:
    """Whether an Array carries this module's sparse encoding."""
    return array.stype == SPARSE_STYPE
