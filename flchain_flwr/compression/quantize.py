"""Values below float16: per-tensor scaled integers and signs, with their codecs.

A sparse tensor's sent values may travel as small integer codes ``q`` and one
float32 ``scale`` per tensor; the value at an index is ``float32(q) * scale``:

- ``int8``: ``q`` in [-127, 127], ``scale = max|v| / 127``;
- ``int4``: ``q`` in [-7, 7], ``scale = max|v| / 7``, two codes per byte (low
  nibble first, two's complement);
- ``sign``: ``q`` in {-1, +1}, ``scale = mean|v|``, one bit per code (set:
  negative): Sparse Ternary Compression (Sattler et al., IEEE TNNLS 2019).

Entries whose code is 0 are not sent (the DGC mod keeps them in its residual,
with every other rounding error), so a code is never 0. For ``int8`` and
``int4`` the largest ``|q|`` is the top code, which makes the scale, and so the
encoding, unique. These functions are pure; :mod:`.sparse` puts the bytes in
its payload and checks them.
"""

from __future__ import annotations

from typing import Final

import numpy as np

QUANTIZED: Final = ("int8", "int4", "sign")
"""The value types that travel as codes and one scale."""
TOP_CODE: Final = {"int8": 127, "int4": 7, "sign": 1}


def quantize(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Codes for ``values``: ``(kept, codes, scale)``.

    ``kept`` is a boolean mask over ``values`` (the entries whose code is not
    0), ``codes`` the int8 codes of the kept entries, ``scale`` a float32
    value > 0 (0.0 when nothing is kept).
    """
    v = np.asarray(values, dtype=np.float32)
    magnitude = np.abs(v)
    if not v.size or not np.isfinite(v).all() or not magnitude.max() > 0:
        return np.zeros(v.shape, bool), np.zeros(0, np.int8), 0.0
    top = TOP_CODE[kind]
    if kind == "sign":
        nonzero = magnitude > 0
        scale = np.float32(magnitude[nonzero].mean(dtype=np.float64))
        codes = np.where(v > 0, 1, -1).astype(np.int8)
        return nonzero, codes[nonzero], float(scale)
    scale = np.float32(magnitude.max() / np.float32(top))
    if not scale > 0:  # max|v| / top underflows float32
        return np.zeros(v.shape, bool), np.zeros(0, np.int8), 0.0
    q = np.clip(np.rint(v / scale), -top, top).astype(np.int8)
    q[np.argmax(magnitude)] = top if v[np.argmax(magnitude)] > 0 else -top
    kept = q != 0
    return kept, q[kept], float(scale)


def dequantize(codes: np.ndarray, scale: float) -> np.ndarray:
    """The float32 values the codes stand for (what the decoder produces)."""
    with np.errstate(over="ignore"):  # an overflow is inf, which decoders refuse
        return np.asarray(codes, dtype=np.float32) * np.float32(scale)


def packed_size(kind: str, nnz: int) -> int:
    """Bytes of ``nnz`` codes of ``kind`` and their scale (0 when empty)."""
    if nnz == 0:
        return 0
    bits = {"int8": 8, "int4": 4, "sign": 1}[kind]
    return 4 + (nnz * bits + 7) // 8


def pack(kind: str, codes: np.ndarray, scale: float) -> bytes:
    """The scale (float32, little-endian) then the packed codes."""
    q = np.asarray(codes, dtype=np.int8)
    if not len(q):
        return b""
    head: bytes = np.array([scale], dtype="<f4").tobytes()
    if kind == "int8":
        return head + q.tobytes()
    if kind == "int4":
        nibbles = (q.astype(np.uint8) & 0x0F).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        return head + (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
    return head + np.packbits(q < 0, bitorder="little").tobytes()


def unpack(kind: str, data: bytes, nnz: int) -> tuple[np.ndarray, float]:
    """Codes and scale from :func:`pack`'s bytes (their size already checked).

    Raises
    ------
    ValueError
        On a scale that is not a finite float32 > 0, a code of 0 or out of
        range, set padding, or (``int8``, ``int4``) a largest ``|code|`` that is
        not the top code.
    """
    if nnz == 0:
        return np.zeros(0, np.int8), 0.0
    scale = np.frombuffer(data, dtype="<f4", count=1)[0]
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{kind} scale {float(scale)!r} is not a finite value > 0")
    raw = np.frombuffer(data, dtype=np.uint8, offset=4)
    if kind == "int8":
        q = raw.view(np.int8).copy()
    elif kind == "int4":
        nibbles = np.empty(2 * len(raw), dtype=np.uint8)
        nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
        if nibbles[nnz:].any():
            raise ValueError("padding bits after the int4 codes are set")
        signed = nibbles[:nnz].astype(np.int8)
        q = np.where(signed >= 8, signed - 16, signed).astype(np.int8)
    else:
        bits = np.unpackbits(raw, bitorder="little")
        if bits[nnz:].any():
            raise ValueError("padding bits after the signs are set")
        return np.where(bits[:nnz] == 1, -1, 1).astype(np.int8), float(scale)
    top = TOP_CODE[kind]
    if np.any(q == 0):
        raise ValueError(f"an {kind} code is 0 (zero entries are not sent)")
    if np.any(np.abs(q.astype(np.int16)) > top):
        raise ValueError(f"an {kind} code is outside [-{top}, {top}]")
    if int(np.abs(q.astype(np.int16)).max()) != top:
        raise ValueError(f"the largest {kind} code is not {top} (scale not canonical)")
    return q, float(scale)
