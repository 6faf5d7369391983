"""A compact, versioned sparse encoding for one tensor, and its strict decoder.

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

:func:`decode` trusts nothing: every way a broken or malicious client could get
the bytes wrong raises :class:`SparseFormatError` with a reason, and every
tensor has exactly one valid encoding per version.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np
from flwr.app import Array

from .quantize import QUANTIZED, dequantize, pack, packed_size, unpack

SPARSE_STYPE: Final = "flchain.sparse"
FORMAT_VERSION: Final = 2
"""The version :func:`encode` writes by default."""
SUPPORTED_VERSIONS: Final = (1, 2)
ELIAS_FANO: Final = 1
"""Version 2's index field: the Elias-Fano index coding."""
MAGIC: Final = b"FLSP"
MAX_NUMEL: Final = 1 << 32
_HEADER = struct.Struct("<4sBBBBQQ")
HEADER_SIZE: Final = _HEADER.size
VALUE_DTYPES: Final[dict[int, np.dtype[Any]]] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
QUANTIZED_CODES: Final[dict[int, str]] = {3: "int8", 4: "int4", 5: "sign"}
"""Value codes of the scaled integer values (:mod:`.quantize`)."""
_CODE_OF: Final = {"float32": 1, "float16": 2, "int8": 3, "int4": 4, "sign": 5}
VALUE_TYPES: Final = tuple(_CODE_OF)
"""Every value type a sparse tensor can carry."""
_INDEX_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}


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


def _section_sizes(numel: int, nnz: int, bits: int) -> tuple[int, int, int]:
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
    low, _, high = _section_sizes(numel, nnz, low_bits(numel, nnz))
    return HEADER_SIZE + low + high + values


def _elias_fano(idx: np.ndarray, numel: int) -> tuple[int, bytes]:
    """Low-bit section and high-bit vector of sorted, distinct ``idx``."""
    nnz = len(idx)
    bits = low_bits(numel, nnz)
    _, high_bits, _ = _section_sizes(numel, nnz, bits)
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
        index_bytes = idx.astype(_INDEX_DTYPES[width]).tobytes()
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
    header = _HEADER.pack(MAGIC, version, field, code, param, numel, len(idx))
    data = header + index_bytes + value_bytes
    return Array(
        dtype=dtype, shape=tuple(int(d) for d in shape), stype=SPARSE_STYPE, data=data
    )


def is_sparse(array: Array) -> bool:
    """Whether an Array carries this module's sparse encoding."""
    return array.stype == SPARSE_STYPE


def decode_entries(
    array: Array, *, shape: tuple[int, ...], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices and values (in ``dtype``) a sparse Array sends, checked
    against the expected ``shape`` and ``dtype``.

    Raises
    ------
    SparseFormatError
        On an unknown format version, index field or value code, a header field
        that is not the one the tensor implies, a declared size that does not
        match the bytes, more entries than the tensor holds, set padding bits, a
        bit vector whose entry count differs from the header's, indices out of
        range, unsorted or duplicate, non-finite values, or a dtype or shape that
        differs from the expected one; for ``int8``, ``int4`` and ``sign``
        values also a scale that is not a finite float32 > 0, a code of 0 or out
        of range, set padding, or a largest code that is not the top one.
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
    magic, version, field, value_code, param, numel, nnz = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SparseFormatError("payload does not start with the sparse magic")
    if version not in SUPPORTED_VERSIONS:
        raise SparseFormatError(f"unknown sparse format version {version}")
    if value_code not in VALUE_DTYPES and value_code not in QUANTIZED_CODES:
        raise SparseFormatError(f"unknown value type code {value_code}")
    if version == 1 and field not in _INDEX_DTYPES:
        raise SparseFormatError(f"unknown index width {field}")
    if version == 2 and field != ELIAS_FANO:
        raise SparseFormatError(f"unknown index coding {field}")
    expected_numel = math.prod(shape)
    if numel != expected_numel:
        raise SparseFormatError(
            f"declares {numel} elements, the tensor has {expected_numel}"
        )
    if numel > MAX_NUMEL:
        raise SparseFormatError(f"a tensor of {numel} elements is too large to decode")
    if nnz > numel:
        raise SparseFormatError(f"declares {nnz} entries for a tensor of {numel}")
    if version == 1:
        if param != 0:
            raise SparseFormatError("reserved header byte is not zero")
        if field != index_width(numel):
            raise SparseFormatError(
                f"index width {field} is not the one for {numel} elements"
            )
    elif param != low_bits(numel, nnz):
        raise SparseFormatError(
            f"declares {param} low bits, {nnz} entries of {numel} take "
            f"{low_bits(numel, nnz)}"
        )
    value_name = VALUE_TYPES[value_code - 1]
    expected_size = payload_size(numel, nnz, value_name, version)
    if len(data) != expected_size:
        raise SparseFormatError(
            f"declares {nnz} entries ({expected_size} bytes), "
            f"payload has {len(data)} bytes"
        )
    values_at = expected_size - (
        packed_size(value_name, nnz)
        if value_name in QUANTIZED
        else nnz * VALUE_DTYPES[value_code].itemsize
    )
    if version == 1:
        idx = np.frombuffer(
            data, dtype=_INDEX_DTYPES[field], count=nnz, offset=HEADER_SIZE
        ).astype(np.int64)
    else:
        idx = _elias_fano_indices(data[HEADER_SIZE:values_at], numel, nnz, param)
    values = _values(data[values_at:], value_name, nnz)
    if nnz:
        steps = np.diff(idx)
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
    with np.errstate(over="ignore"):
        cast = values.astype(dtype)
    if nnz and not np.isfinite(cast).all():
        raise SparseFormatError(f"values overflow {dtype}")
    return idx, cast


def decode(array: Array, *, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode a sparse Array into a dense tensor of the expected ``shape``/``dtype``
    (zeros where no entry is sent).

    Raises
    ------
    SparseFormatError
        As :func:`decode_entries`.
    """
    idx, values = decode_entries(array, shape=shape, dtype=dtype)
    dense = np.zeros(math.prod(shape), dtype=dtype)
    dense[idx] = values
    return dense.reshape(shape)


def _values(section: bytes, value_name: str, nnz: int) -> np.ndarray:
    """The values of the values section (its size already checked)."""
    if value_name not in QUANTIZED:
        return np.frombuffer(section, dtype=np.dtype(value_name).newbyteorder("<"))
    try:
        codes, scale = unpack(value_name, section, nnz)
    except ValueError as exc:
        raise SparseFormatError(str(exc)) from None
    return dequantize(codes, scale)


def _elias_fano_indices(section: bytes, numel: int, nnz: int, bits: int) -> np.ndarray:
    """The indices of version 2's index section (sizes already checked)."""
    if nnz == 0:
        return np.zeros(0, dtype=np.int64)
    low_size, high_bits, _ = _section_sizes(numel, nnz, bits)
    raw = np.frombuffer(section, dtype=np.uint8)
    low_plane = np.unpackbits(raw[:low_size], bitorder="little")
    if low_plane[nnz * bits :].any():
        raise SparseFormatError("padding bits after the low bits are set")
    vector = np.unpackbits(raw[low_size:], bitorder="little")
    ones = np.flatnonzero(vector)
    if len(ones) != nnz:
        raise SparseFormatError(
            f"the high-bit vector holds {len(ones)} entries, the header declares {nnz}"
        )
    if int(ones[-1]) >= high_bits:
        raise SparseFormatError("padding bits after the high-bit vector are set")
    high = ones.astype(np.int64) - np.arange(nnz, dtype=np.int64)
    low = np.zeros(nnz, dtype=np.int64)
    if bits:
        weights = np.int64(1) << np.arange(bits, dtype=np.int64)
        low = low_plane[: nnz * bits].reshape(nnz, bits).astype(np.int64) @ weights
    return (high << bits) | low


def _known_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except (TypeError, ValueError):
        return False
    return True
