"""The sparse wire format: round trips and every way a payload can be wrong."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st

from flchain_flwr.compression import SparseFormatError, decode, encode, index_width
from flchain_flwr.compression.sparse import HEADER_SIZE, low_bits, payload_size

F32 = np.dtype("float32")


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


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([1, 2]))
def test_round_trip(data: st.DataObject, version: int) -> None:
    dense, idx, value_dtype = data.draw(st.composite(sparse_case)())
    array = encode(
        idx,
        dense.reshape(-1)[idx],
        shape=dense.shape,
        value_dtype=value_dtype,
        version=version,
    )
    assert array.dtype == "float32" and tuple(array.shape) == dense.shape
    assert array.data[4] == version
    assert len(array.data) == payload_size(dense.size, len(idx), value_dtype, version)
    if version == 1:
        assert len(array.data) == HEADER_SIZE + len(idx) * (
            index_width(dense.size) + np.dtype(value_dtype).itemsize
        )
    np.testing.assert_array_equal(decode(array, shape=dense.shape, dtype=F32), dense)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1 << 32), st.data())
def test_elias_fano_stays_within_its_bound(numel: int, data: st.DataObject) -> None:
    """Index bits <= nnz (L + 3) + padding, L = floor(log2(numel / nnz))."""
    nnz = data.draw(st.integers(1, min(numel, 1 << 20)))
    bits = low_bits(numel, nnz)
    assert 2**bits <= numel / nnz < 2 ** (bits + 1)
    index_bytes = payload_size(numel, nnz, "float32") - HEADER_SIZE - 4 * nnz
    assert index_bytes * 8 <= nnz * (bits + 3) + 15


def test_elias_fano_is_at_least_twice_as_small_as_uint32_at_low_density() -> None:
    rng = np.random.default_rng(0)
    numel = 1_605_632  # the Fashion-MNIST CNN's largest tensor
    for density in (0.01, 0.003, 0.001):
        nnz = int(density * numel)
        idx = np.sort(rng.choice(numel, nnz, replace=False))
        array = encode(idx, np.ones(nnz), shape=(numel,), value_dtype="float16")
        index_bytes = len(array.data) - HEADER_SIZE - 2 * nnz
        assert index_bytes * 8 <= nnz * (math.log2(1 / density) + 2.5)
        assert index_bytes * 2 <= 4 * nnz
        np.testing.assert_array_equal(
            np.flatnonzero(decode(array, shape=(numel,), dtype=F32)), idx
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


def good(version: int = 2) -> Array:
    return encode(
        np.array([1, 5, 9]),
        np.array([1.0, -2.0, 3.0]),
        shape=(4, 5),
        version=version,
    )


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
    """Version 1 ``array`` with raw uint8 ``indices`` and float32 ``values``."""
    body = (
        np.array(indices, np.uint8).tobytes() + np.array(values, np.float32).tobytes()
    )
    return Array(
        dtype=array.dtype,
        shape=tuple(array.shape),
        stype=array.stype,
        data=array.data[:HEADER_SIZE] + body,
    )


def elias_fano(
    numel: int,
    highs: list[int],
    lows: list[int],
    values: list[float],
    *,
    bits: int | None = None,
    low_pad: int = 0,
    high_pad: int = 0,
) -> Array:
    """A version 2 payload built by hand from high and low parts, valid or not.

    ``low_pad``/``high_pad`` are OR-ed into the last byte of each section.
    """
    nnz = len(highs)
    bits = low_bits(numel, nnz) if bits is None else bits
    high_bits = nnz + ((numel - 1) >> bits) + 1
    plane = [(low >> b) & 1 for low in lows for b in range(bits)]
    low = bytearray(np.packbits(np.array(plane, np.uint8), bitorder="little"))
    vector = np.zeros(max(high_bits, max(h + i for i, h in enumerate(highs)) + 1))
    for i, high in enumerate(highs):
        vector[high + i] = 1
    high = bytearray(np.packbits(vector.astype(np.uint8), bitorder="little"))
    del high[(high_bits + 7) // 8 :]
    if low_pad:
        low[-1] |= low_pad
    if high_pad:
        high[-1] |= high_pad
    header = struct.pack("<4sBBBBQQ", b"FLSP", 2, 1, 1, bits, numel, nnz)
    body = bytes(low) + bytes(high) + np.array(values, np.float32).tobytes()
    return Array(
        dtype="float32", shape=(numel,), stype="flchain.sparse", data=header + body
    )


def test_the_hand_built_payload_matches_the_encoder() -> None:
    # numel 20, nnz 3: L = 2; indices 1, 5, 9 = (0, 1), (1, 1), (2, 1)
    built = elias_fano(20, [0, 1, 2], [1, 1, 1], [1.0, -2.0, 3.0])
    assert built.data == good().data
    np.testing.assert_array_equal(
        decode(built, shape=(20,), dtype=F32)[[1, 5, 9]], [1.0, -2.0, 3.0]
    )


CORRUPT_V1 = [
    (patched(good(1), version=3), "unknown sparse format version 3"),
    (patched(good(1), version=0), "unknown sparse format version 0"),
    (patched(good(1), magic=b"XXXX"), "magic"),
    (patched(good(1), code=7), "unknown value type code 7"),
    (patched(good(1), width=2), "index width 2 is not the one"),
    (patched(good(1), width=3), "unknown index width 3"),
    (patched(good(1), reserved=1), "reserved"),
    (patched(good(1), numel=21), "declares 21 elements"),
    (patched(good(1), nnz=21), "declares 21 entries for a tensor of 20"),
    (patched(good(1), nnz=4), "payload has"),
    (with_body(good(1), [1, 5, 20], [1, 2, 3]), "index 20 out of range"),
    (with_body(good(1), [1, 5, 5], [1, 2, 3]), "duplicate indices"),
    (with_body(good(1), [5, 1, 9], [1, 2, 3]), "indices are not sorted"),
    (with_body(good(1), [1, 5, 9], [1, np.nan, 3]), "NaN or Inf"),
    (with_body(good(1), [1, 5, 9], [1, np.inf, 3]), "NaN or Inf"),
]
CORRUPT_V2 = [
    (patched(good(), width=4), "unknown index coding 4"),
    (patched(good(), width=0), "unknown index coding 0"),
    (patched(good(), reserved=3), "declares 3 low bits, 3 entries of 20 take 2"),
    (patched(good(), code=0), "unknown value type code 0"),
    (patched(good(), numel=19), "declares 19 elements"),
    (patched(good(), nnz=21), "declares 21 entries for a tensor of 20"),
    (patched(good(), nnz=2, reserved=3), "payload has"),
    (elias_fano(20, [0, 1], [1, 1], [1, 2, 3]), "payload has"),
    (elias_fano(20, [0, 1, 2], [1, 1, 1], [1, 2, 3], low_pad=0x80), "after the low"),
    # numel 20, nnz 2: L = 3, a 5-bit vector in one byte; high 4 sets bit 5
    (elias_fano(20, [0, 4], [1, 1], [1, 2]), "after the high-bit vector are set"),
    (
        elias_fano(20, [0, 1, 2], [1, 1, 1], [1, 2, 3], high_pad=0x80),
        "holds 4 entries, the header declares 3",
    ),
    (elias_fano(20, [0, 1, 1], [1, 1, 1], [1, 2, 3]), "duplicate indices"),
    (elias_fano(20, [0, 1, 1], [1, 3, 2], [1, 2, 3]), "indices are not sorted"),
    (elias_fano(18, [0, 1, 4], [1, 1, 3], [1, 2, 3]), "index 19 out of range"),
    (elias_fano(20, [0, 1, 2], [1, 1, 1], [1, np.nan, 3]), "NaN or Inf"),
    (elias_fano(20, [0, 1, 2], [1, 1, 1], [1, 2, -np.inf]), "NaN or Inf"),
]


@pytest.mark.parametrize(("array", "reason"), CORRUPT_V1 + CORRUPT_V2)
def test_corrupt_payloads_are_rejected_with_a_reason(array: Array, reason: str) -> None:
    shape = tuple(array.shape)
    with pytest.raises(SparseFormatError) as info:
        decode(array, shape=shape, dtype=F32)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("array", "shape", "dtype", "reason"),
    [
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
def test_mismatched_arrays_are_rejected_with_a_reason(
    array: Array, shape: tuple[int, ...], dtype: np.dtype, reason: str
) -> None:
    with pytest.raises(SparseFormatError) as info:
        decode(array, shape=shape, dtype=dtype)
    assert reason in str(info.value)


@pytest.mark.parametrize("version", [1, 2])
def test_extra_and_missing_bytes_are_rejected(version: int) -> None:
    array = good(version)
    for data in (array.data + b"\0", array.data[:-1]):
        bad = Array(dtype="float32", shape=(4, 5), stype=array.stype, data=data)
        with pytest.raises(SparseFormatError, match="payload has"):
            decode(bad, shape=(4, 5), dtype=F32)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7), st.sampled_from([1, 2]))
def test_random_bit_flips_never_crash_and_never_yield_garbage(
    pos: int, bit: int, version: int
) -> None:
    array = encode(
        np.arange(0, 300, 7), np.linspace(-1, 1, 43), shape=(300,), version=version
    )
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


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 300))
def test_arbitrary_bytes_after_a_valid_header_never_crash(
    body: bytes, numel: int
) -> None:
    nnz = min(numel, len(body) // 3)
    header = struct.pack(
        "<4sBBBBQQ", b"FLSP", 2, 1, 2, low_bits(numel, nnz), numel, nnz
    )
    array = Array(
        dtype="float32", shape=(numel,), stype="flchain.sparse", data=header + body
    )
    try:
        dense = decode(array, shape=(numel,), dtype=F32)
    except SparseFormatError:
        return
    assert dense.shape == (numel,) and np.isfinite(dense).all()
    assert np.count_nonzero(dense) <= nnz


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        encode(np.array([3, 1]), np.array([1.0, 2.0]), shape=(5,))
    with pytest.raises(ValueError):
        encode(np.array([5]), np.array([1.0]), shape=(5,))
    with pytest.raises(ValueError):
        encode(np.array([1]), np.array([1.0]), shape=(5,), value_dtype="int8")
    with pytest.raises(ValueError):
        encode(np.array([1]), np.array([1.0]), shape=(5,), version=3)


@pytest.mark.parametrize("version", [1, 2])
def test_values_that_overflow_the_tensor_dtype_are_rejected(version: int) -> None:
    array = encode(
        np.array([0]),
        np.array([1e6], np.float32),
        shape=(4,),
        dtype="float16",
        version=version,
    )
    with pytest.raises(SparseFormatError, match="overflow float16"):
        decode(array, shape=(4,), dtype=np.dtype("float16"))
