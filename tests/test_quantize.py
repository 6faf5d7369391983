"""Values below float16 (issue 15 item 2): int8, int4 and sign codes with one
scale per tensor, their strict decoding, and the DGC mod's residual."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import given, settings
from hypothesis import strategies as st

from flchain_flwr.compression import SparseFormatError, decode, encode
from flchain_flwr.compression.quantize import (
    QUANTIZED,
    dequantize,
    packed_size,
    quantize,
)
from flchain_flwr.compression.sparse import HEADER_SIZE, payload_size
from flchain_flwr.mods import DGCConfig, DGCState, compress

F32 = np.dtype("float32")
RNG = np.random.default_rng(5)


def encoded(
    kind: str, values: np.ndarray, numel: int = 1000
) -> tuple[Array, np.ndarray, np.ndarray]:
    idx = np.sort(RNG.choice(numel, size=len(values), replace=False))
    kept, codes, scale = quantize(values, kind)
    array = encode(idx[kept], codes, shape=(numel,), value_dtype=kind, scale=scale)
    return array, idx[kept], dequantize(codes, scale)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(QUANTIZED),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=300),
    st.sampled_from([1, 2]),
)
def test_round_trip_is_what_dequantize_says(
    kind: str, raw: list[float], version: int
) -> None:
    values = np.array(raw, np.float32)
    kept, codes, scale = quantize(values, kind)
    idx = np.flatnonzero(kept)
    array = encode(
        idx, codes, shape=(len(values),), value_dtype=kind, scale=scale, version=version
    )
    assert len(array.data) == payload_size(len(values), len(idx), kind, version)
    dense = decode(array, shape=(len(values),), dtype=F32)
    expected = np.zeros(len(values), np.float32)
    expected[idx] = dequantize(codes, scale)
    np.testing.assert_array_equal(dense, expected)
    if kind != "sign" and len(idx):  # error at most half a step per entry
        step = scale
        assert np.all(np.abs(dense - values) <= 0.5 * step * (1 + 1e-5) + 1e-30)


def test_sizes_per_entry() -> None:
    # 1000 entries: codes only (the scale is 4 bytes per tensor)
    assert packed_size("int8", 1000) == 4 + 1000
    assert packed_size("int4", 1000) == 4 + 500
    assert packed_size("sign", 1000) == 4 + 125
    assert packed_size("int8", 0) == 0


def test_sign_is_sparse_ternary_compression() -> None:
    values = np.array([0.5, -1.5, 0.0, 2.0], np.float32)
    kept, codes, scale = quantize(values, "sign")
    assert kept.tolist() == [True, True, False, True]
    assert codes.tolist() == [1, -1, 1] and scale == pytest.approx(4.0 / 3)


def _patched_values(array: Array, values: bytes) -> Array:
    data = array.data[: len(array.data) - len(values)] + values
    return Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=data)


def _bad_cases() -> list[tuple[str, Array, str]]:
    cases = []
    values = np.array([3.0, -1.0, 0.5, 2.0, -2.5], np.float32)
    for kind in QUANTIZED:
        array, _, _ = encoded(kind, values, numel=64)
        tail = array.data[-packed_size(kind, 5) :]
        codes = tail[4:]
        for bad_scale, why in (
            (0.0, "scale"),
            (-1.0, "scale"),
            (float("nan"), "scale"),
            (float("inf"), "scale"),
        ):
            cases.append(
                (
                    kind,
                    _patched_values(array, struct.pack("<f", bad_scale) + codes),
                    why,
                )
            )
        huge = struct.pack("<f", 3e38) + codes  # 127 * 3e38 overflows float32
        if kind != "sign":
            cases.append((kind, _patched_values(array, huge), "NaN or Inf"))
    array, _, _ = encoded("int8", values, numel=64)
    scale = array.data[-9:-5]
    cases += [
        ("int8", _patched_values(array, scale + bytes([1, 0, 2, 3, 127])), "code is 0"),
        ("int8", _patched_values(array, scale + bytes([1, 2, 3, 4, 128])), "outside"),
        ("int8", _patched_values(array, scale + bytes([1, 2, 3, 4, 100])), "canonical"),
    ]
    array, _, _ = encoded("int4", values, numel=64)  # 5 codes: 3 bytes, 1 pad nibble
    scale = array.data[-7:-3]
    cases += [
        ("int4", _patched_values(array, scale + bytes([0x71, 0x22, 0x13])), "padding"),
        ("int4", _patched_values(array, scale + bytes([0x81, 0x22, 0x07])), "outside"),
        (
            "int4",
            _patched_values(array, scale + bytes([0x01, 0x22, 0x07])),
            "code is 0",
        ),
        (
            "int4",
            _patched_values(array, scale + bytes([0x11, 0x22, 0x03])),
            "canonical",
        ),
    ]
    array, _, _ = encoded("sign", values, numel=64)
    scale = array.data[-5:-1]
    cases.append(
        ("sign", _patched_values(array, scale + bytes([0xE0 | 0x05])), "padding")
    )
    return cases


@pytest.mark.parametrize(("kind", "array", "reason"), _bad_cases())
def test_malformed_codes_are_rejected_with_a_reason(
    kind: str, array: Array, reason: str
) -> None:
    with pytest.raises(SparseFormatError, match=reason):
        decode(array, shape=(64,), dtype=F32)


def test_missing_or_extra_value_bytes_are_rejected() -> None:
    array, _, _ = encoded("int4", np.array([1.0, -2.0, 3.0], np.float32), numel=64)
    for data in (array.data[:-1], array.data + b"\x00"):
        forged = Array(
            dtype=array.dtype, shape=array.shape, stype=array.stype, data=data
        )
        with pytest.raises(SparseFormatError, match="payload has"):
            decode(forged, shape=(64,), dtype=F32)


def test_unknown_value_code_is_rejected() -> None:
    array, _, _ = encoded("sign", np.array([1.0, -2.0], np.float32), numel=64)
    data = bytearray(array.data)
    data[6] = 6  # the value code byte
    forged = Array(
        dtype=array.dtype, shape=array.shape, stype=array.stype, data=bytes(data)
    )
    with pytest.raises(SparseFormatError, match="unknown value type code 6"):
        decode(forged, shape=(64,), dtype=F32)


def test_encode_refuses_codes_the_decoder_would_refuse() -> None:
    with pytest.raises(ValueError, match="canonical"):
        encode(
            np.array([1, 2]),
            np.array([3, 4], np.int8),
            shape=(8,),
            value_dtype="int8",
            scale=1.0,
        )
    with pytest.raises(ValueError, match="scale"):
        encode(np.array([1]), np.array([1], np.int8), shape=(8,), value_dtype="sign")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(QUANTIZED), st.integers(0, 2**31))
def test_the_mod_keeps_the_quantisation_error_in_the_residual(
    kind: str, seed: int
) -> None:
    """Sent (as the server decodes it) + residual = the deltas' sum."""
    rng = np.random.default_rng(seed)
    cfg = DGCConfig(density=0.05, value_dtype=kind, min_sparse_size=64)
    shapes = {"w": (40, 50), "b": (7,)}
    state = DGCState()
    sent = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    total = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    for _ in range(5):
        delta = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        compressed, state = compress(delta, state, cfg)
        assert compressed.arrays["w"].stype == "flchain.sparse"
        for k in shapes:
            got = compressed.arrays[k]
            dense = (
                decode(got, shape=shapes[k], dtype=F32)
                if got.stype == "flchain.sparse"
                else got.numpy()
            )
            sent[k] += dense
            total[k] += delta[k]
    for k in shapes:
        np.testing.assert_allclose(sent[k] + state.residual[k], total[k], atol=1e-4)


def test_smaller_codes_make_smaller_replies() -> None:
    delta = {"w": RNG.normal(size=100_000).astype(np.float32)}
    sizes = {}
    for kind in ("float32", "float16", "int8", "int4", "sign"):
        compressed, _ = compress(
            delta, DGCState(), DGCConfig(density=0.01, value_dtype=kind)
        )
        sizes[kind] = len(compressed.arrays["w"].data)
    assert (
        sizes["float32"]
        > sizes["float16"]
        > sizes["int8"]
        > sizes["int4"]
        > sizes["sign"]
    )
    assert sizes["sign"] < HEADER_SIZE + 1000 * (11 + 1) / 8 + 8
