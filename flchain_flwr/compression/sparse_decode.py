"""The strict decoder of the sparse format (:mod:`.sparse`).

It trusts nothing: every way a broken or malicious client could get the bytes
wrong raises :class:`~.sparse.SparseFormatError` with a reason, and every
tensor has exactly one valid encoding per version.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array

from .quantize import QUANTIZED, dequantize, packed_size, unpack
from .sparse import (
    ELIAS_FANO,
    HEADER,
    HEADER_SIZE,
    INDEX_DTYPES,
    MAGIC,
    MAX_NUMEL,
    QUANTIZED_CODES,
    SPARSE_STYPE,
    SUPPORTED_VERSIONS,
    VALUE_DTYPES,
    VALUE_TYPES,
    SparseFormatError,
    index_width,
    low_bits,
    payload_size,
    section_sizes,
)


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
    magic, version, field, value_code, param, numel, nnz = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SparseFormatError("payload does not start with the sparse magic")
    if version not in SUPPORTED_VERSIONS:
        raise SparseFormatError(f"unknown sparse format version {version}")
    if value_code not in VALUE_DTYPES and value_code not in QUANTIZED_CODES:
        raise SparseFormatError(f"unknown value type code {value_code}")
    if version == 1 and field not in INDEX_DTYPES:
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
            data, dtype=INDEX_DTYPES[field], count=nnz, offset=HEADER_SIZE
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
    low_size, high_bits, _ = section_sizes(numel, nnz, bits)
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
