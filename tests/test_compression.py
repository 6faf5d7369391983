"""The sparse wire format: round trips and every way a payload can be wrong."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st

from flchain_flwr.compression import SparseFormatError, decode, encode, index_width
from flchain_flwr.compression.sparse import HEADER_SIZE


def sparse_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, str]:
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    numel = int(np.prod(shape))
    idx = np.array(
        sorted(draw(st.sets(st.integers(0, numel - 1), max_size=numel))), dtype=np.int64
    )
    values = np.array(
        draw(
            st.lists(
                st.floats(-1e4, 1e4, width=16), min_size=len(idx), max_size=len(idx)
            )
        ),
        dtype=np.float32,
    )
    dense = np.zeros(numel, np.float32)
    dense[idx] = values
    return dense.reshape(shape), idx, draw(st.sampled_from(["float32", "float16"]))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_round_trip(data: st.DataObject) -> None:
    dense, idx, value_dtype = data.draw(st.composite(sparse_case)())
    array = encode(
        idx, dense.reshape(-1)[idx], shape=dense.shape, value_dtype=value_dtype
    )
    assert array.dtype == "float32" and tuple(array.shape) == dense.shape
    width = index_width(dense.size)
    assert len(array.data) == HEADER_SIZE + len(idx) * (
        width + np.dtype(value_dtype).itemsize
    )
    np.testing.assert_array_equal(
        decode(array, shape=dense.shape, dtype=np.dtype("float32")), dense
    )


def test_index_width_follows_the_tensor_size() -> None:
    assert [index_width(n) for n in (1, 256, 257, 65536, 65537, 2**32)] == [
        1,
        1,
        2,
        2,
        4,
        4,
    ]
    with pytest.raises(ValueError):
        index_width(2**32 + 1)


def good() -> Array:
    return encode(np.array([1, 5, 9]), np.array([1.0, -2.0, 3.0]), shape=(4, 5))


def patched(array: Array, **fields: int) -> Array:
    magic, version, width, code, reserved, numel, nnz = struct.unpack_from(
        "<4sBBBBQQ", array.data
    )
    values = dict(
        magic=magic,
        version=version,
        width=width,
        code=code,
        reserved=reserved,
        numel=numel,
        nnz=nnz,
    )
    values.update(fields)  # type: ignore[arg-type]
    header = struct.pack("<4sBBBBQQ", *values.values())
    return Array(
        dtype=array.dtype,
        shape=tuple(array.shape),
        stype=array.stype,
        data=header + array.data[HEADER_SIZE:],
    )


def with_body(array: Array, indices: list[int], values: list[float]) -> Array:
    body = (
        np.array(indices, np.uint8).tobytes() + np.array(values, np.float32).tobytes()
    )
    return Array(
        dtype=array.dtype,
        shape=tuple(array.shape),
        stype=array.stype,
        data=array.data[:HEADER_SIZE] + body,
    )


F32 = np.dtype("float32")


@pytest.mark.parametrize(
    ("array", "shape", "dtype", "reason"),
    [
        (patched(good(), version=2), (4, 5), F32, "unknown sparse format version 2"),
        (patched(good(), magic=b"XXXX"), (4, 5), F32, "magic"),
        (patched(good(), code=7), (4, 5), F32, "unknown value type code 7"),
        (patched(good(), width=2), (4, 5), F32, "index width 2 is not the one"),
        (patched(good(), width=3), (4, 5), F32, "unknown index width 3"),
        (patched(good(), reserved=1), (4, 5), F32, "reserved"),
        (patched(good(), numel=21), (4, 5), F32, "declares 21 elements"),
        (
            patched(good(), nnz=21),
            (4, 5),
            F32,
            "declares 21 entries for a tensor of 20",
        ),
        (patched(good(), nnz=4), (4, 5), F32, "payload has"),
        (
            with_body(good(), [1, 5, 20], [1, 2, 3]),
            (4, 5),
            F32,
            "index 20 out of range",
        ),
        (with_body(good(), [1, 5, 5], [1, 2, 3]), (4, 5), F32, "duplicate indices"),
        (
            with_body(good(), [5, 1, 9], [1, 2, 3]),
            (4, 5),
            F32,
            "indices are not sorted",
        ),
        (with_body(good(), [1, 5, 9], [1, np.nan, 3]), (4, 5), F32, "NaN or Inf"),
        (with_body(good(), [1, 5, 9], [1, np.inf, 3]), (4, 5), F32, "NaN or Inf"),
        (good(), (5, 4), F32, "shape (4, 5) does not match (5, 4)"),
        (good(), (4, 5), np.dtype("float64"), "does not match float64"),
        (
            Array(dtype="float32", shape=(4, 5), stype="flchain.sparse", data=b"FLSP"),
            (4, 5),
            F32,
            "shorter than the sparse header",
        ),
        (
            Array(
                dtype="bogus", shape=(4, 5), stype="flchain.sparse", data=good().data
            ),
            (4, 5),
            F32,
            "dtype 'bogus'",
        ),
        (Array(np.zeros((4, 5), np.float32)), (4, 5), F32, "not a sparse array"),
    ],
)
def test_corrupt_payloads_are_rejected_with_a_reason(
    array: Array, shape: tuple[int, ...], dtype: np.dtype, reason: str
) -> None:
    with pytest.raises(SparseFormatError) as info:
        decode(array, shape=shape, dtype=dtype)
    assert reason in str(info.value)


def test_extra_and_missing_bytes_are_rejected() -> None:
    array = good()
    for data in (array.data + b"\0", array.data[:-1]):
        bad = Array(dtype="float32", shape=(4, 5), stype=array.stype, data=data)
        with pytest.raises(SparseFormatError, match="payload has"):
            decode(bad, shape=(4, 5), dtype=F32)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_random_bit_flips_never_crash_and_never_yield_garbage(
    pos: int, bit: int
) -> None:
    array = encode(np.arange(0, 300, 7), np.linspace(-1, 1, 43), shape=(300,))
    data = bytearray(array.data)
    data[pos % len(data)] ^= 1 << bit
    flipped = Array(dtype="float32", shape=(300,), stype=array.stype, data=bytes(data))
    try:
        dense = decode(flipped, shape=(300,), dtype=F32)
    except SparseFormatError:
        return
    # a flip that survives validation changed an index or a value, nothing else
    assert dense.shape == (300,) and np.isfinite(dense).all()
    assert np.count_nonzero(dense) <= 43


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        encode(np.array([3, 1]), np.array([1.0, 2.0]), shape=(5,))
    with pytest.raises(ValueError):
        encode(np.array([5]), np.array([1.0]), shape=(5,))
    with pytest.raises(ValueError):
        encode(np.array([1]), np.array([1.0]), shape=(5,), value_dtype="int8")


def test_values_that_overflow_the_tensor_dtype_are_rejected() -> None:
    array = encode(
        np.array([0]), np.array([1e6], np.float32), shape=(4,), dtype="float16"
    )
    with pytest.raises(SparseFormatError, match="overflow float16"):
        decode(array, shape=(4,), dtype=np.dtype("float16"))
