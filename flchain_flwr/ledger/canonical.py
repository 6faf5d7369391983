"""Canonical, versioned serialisation and the digests built on it.

Every hash in the ledger is recomputable by anyone from stored data:

- headers, bodies and votes are canonical JSON prefixed by a format tag, so
  ``sha256(tag + json)`` is well defined. Which canonical JSON is chosen by the
  format version (:func:`encode`): version 2 is RFC 8785 (the JSON
  Canonicalization Scheme, which libraries in other languages implement);
  version 1, what ledgers written before it hold, is Python's
  ``json.dumps(sort_keys=True)`` with no whitespace (integers as integers, floats
  in Python's shortest round-trip form);
- an update digest covers the reply exactly as received (sparse or dense): every
  record's name and kind, every array's dtype, shape, storage type and the
  SHA-256 of its bytes, and every metric and config value;
- a model's hash is the SHA-256 of its blob in the content-addressed store (a
  small canonical header followed by each array's raw C-order bytes).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any, Final

import numpy as np
import rfc8785
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

HEADER_TAG: Final = b"flchain-block-header/1\n"
BODY_TAG: Final = b"flchain-block-body/1\n"
UPDATE_TAG: Final = b"flchain-update/1\n"
VOTE_TAG: Final = b"flchain-vote/1\n"
MODEL_MAGIC: Final = b"FLCHAIN-MODEL/1\n"
ZERO_HASH: Final = "0" * 64


FORMAT_VERSIONS: Final = (1, 2)
"""The encodings :func:`encode` knows."""
LATEST_FORMAT: Final = 2
"""The encoding new ledgers use."""
MAX_SAFE_INTEGER: Final = 2**53 - 1
"""RFC 8785 numbers are IEEE doubles: no integer beyond this is exact."""


class NotCanonical(ValueError):
    """Stored bytes are not the canonical encoding of their content."""


def encode(version: int, value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` in encoding ``version``.

    Version 2 is RFC 8785 (JCS); version 1 is :func:`canonical_json`. Both
    reject NaN and Inf; version 2 also rejects integers beyond
    ``+-(2**53 - 1)``, which a JSON number cannot hold exactly (store such a
    value as a decimal string).

    Raises
    ------
    ValueError
        If ``version`` is unknown or ``value`` has no encoding in it.
    """
    if version == 1:
        return canonical_json(value)
    if version != 2:
        raise ValueError(f"unknown format version {version!r}")
    _check_finite(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        raise ValueError(
            "RFC 8785 JSON numbers are IEEE doubles: an integer beyond "
            f"+-{MAX_SAFE_INTEGER} has no exact encoding; store it as a string"
        ) from None
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"no RFC 8785 encoding: {str(exc)[:200]}") from None


def canonical_json(value: Any) -> bytes:
    """The version-1 canonical JSON encoding of ``value`` (rejects NaN and Inf)."""
    _check_finite(value)
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def _double_or_int(text: str) -> int | float:
    """An RFC 8785 integer literal as Python reads it back: an ``int`` within
    ``+-(2**53 - 1)``, else the double it stands for (RFC 8785 writes a double
    in [2**53, 1e21) as plain digits, e.g. ``1e20`` as ``100000000000000000000``).
    """
    value = int(text)
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else float(text)


def parse_json(data: bytes, version: int = 1) -> Any:
    """Parse JSON bytes; :class:`NotCanonical` if they are not JSON at all, or
    nest too deeply for Python to read.

    Version 2 reads integer literals beyond ``+-(2**53 - 1)`` as doubles (what
    RFC 8785 numbers are), so that its own output parses back to an encodable
    value.
    """
    try:
        if version == 2:
            return json.loads(data.decode("utf-8"), parse_int=_double_or_int)
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotCanonical(f"not valid JSON: {exc}") from None
    except ValueError as exc:  # int() of a literal over Python's 4,300 digits
        raise NotCanonical(f"not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise NotCanonical("not readable JSON: nested too deeply") from None


def encode_round_trip(version: int, value: Any) -> bytes:
    """:func:`encode`, checked to parse back (:func:`parse_canonical`) to bytes
    it re-encodes to: what the ledger writes must always be readable again.

    Raises
    ------
    ValueError
        If ``value`` has no encoding, or one that does not read back.
    """
    data = encode(version, value)
    try:
        parse_canonical(data, version)
    except NotCanonical as exc:
        raise ValueError(
            f"the format-{version} encoding would not read back: {exc}"
        ) from None
    return data


def parse_canonical(data: bytes, version: int = 1) -> Any:
    """Parse canonical JSON of encoding ``version``; raise
    :class:`NotCanonical` if it is not in that canonical form."""
    value = parse_json(data, version)
    try:
        canonical = encode(version, value)
    except ValueError as exc:  # NaN, an integer beyond a double's range
        raise NotCanonical(f"not encodable: {exc}") from None
    except RecursionError:  # read back, but too deep to encode again
        raise NotCanonical("not encodable: nested too deeply") from None
    if canonical != data:
        raise NotCanonical(f"not in canonical form (format {version})")
    return value


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("canonical JSON cannot hold NaN or Inf")
    if isinstance(value, Mapping):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item)


def is_hex(value: object, length: int) -> bool:
    """Lower-case hex of exactly ``length`` characters: the only stored form."""
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )


def sha256_hex(*parts: bytes | memoryview) -> str:
    """Hex SHA-256 over the concatenation of ``parts``."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


# ---------------------------------------------------------------- update digests
WIRE_INT_MIN: Final = -(2**63)
"""The smallest integer a Flower record carries over the wire (sint64)."""
WIRE_INT_MAX: Final = 2**64 - 1
"""The largest integer a Flower record carries over the wire (uint64)."""


def _plain(value: Any) -> Any:
    """A JSON-safe, unambiguous stand-in for any record value a client can send."""
    if isinstance(value, int) and not isinstance(value, bool):
        if WIRE_INT_MIN <= value <= WIRE_INT_MAX:
            return value
        # Beyond what the wire carries (an in-process reply): Python cannot
        # print ints over 4,300 digits in decimal, but hex has no such limit.
        return {"int-hex": hex(value)}
    if isinstance(value, bytes):
        return {"bytes-sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}  # NaN and Inf have no JSON number
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: hash their code units
            return {"str-surrogatepass": value.encode("utf-8", "surrogatepass").hex()}
    return value


def _key(name: str) -> str:
    """A record or array name as a JSON-safe key (lone surrogates escaped)."""
    return name if isinstance(_plain(name), str) else repr(name)


def update_digest(content: RecordDict) -> str:
    """SHA-256 of a reply's content as received (format ``flchain-update/1``).

    Total: any content a client can send has a digest (NaN, Inf, odd strings
    and integers beyond the wire's 64 bits are encoded in tagged forms; every
    other value is encoded as it always was).
    """
    records: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            records[_key(name)] = {
                "kind": "arrays",
                "order": [_key(k) for k in record],
                "arrays": {
                    _key(key): {
                        "dtype": _plain(str(arr.dtype)),
                        "shape": [int(d) for d in arr.shape],
                        "stype": _plain(str(arr.stype)),
                        "sha256": hashlib.sha256(arr.data).hexdigest(),
                    }
                    for key, arr in record.items()
                },
            }
        elif isinstance(record, MetricRecord | ConfigRecord):
            kind = "metrics" if isinstance(record, MetricRecord) else "config"
            records[_key(name)] = {
                "kind": kind,
                "values": {_key(k): _plain(v) for k, v in record.items()},
            }
    return sha256_hex(UPDATE_TAG, canonical_json(records))


def sender_update_digest(node_id: int, content: RecordDict) -> str:
    """The digest of a reply bound to the node it came from.

    Votes, ledger entries and duplicate checks name updates by this digest, so
    two nodes that send byte-identical replies make two distinct candidates,
    while one node replaying its own reply makes a duplicate.
    """
    payload = {"node_id": int(node_id), "update": update_digest(content)}
    return sha256_hex(UPDATE_TAG, canonical_json(payload))


# ------------------------------------------------------------------ model blobs
def _array_chunks(arrays: Mapping[str, np.ndarray]) -> Iterator[memoryview]:
    header = {
        "arrays": [
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape)}
            for name, a in arrays.items()
        ]
    }
    head = canonical_json(header)
    yield memoryview(MODEL_MAGIC + struct.pack("<Q", len(head)) + head)
    for a in arrays.values():
        contiguous = np.ascontiguousarray(a)
        yield contiguous.data.cast("B")


def model_chunks(arrays: Mapping[str, np.ndarray]) -> list[memoryview]:
    """The model's blob as a list of zero-copy chunks (header, then array bytes)."""
    return list(_array_chunks(arrays))


def model_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the model's blob, without materialising the blob."""
    return sha256_hex(*model_chunks(arrays))


def decode_model(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of the blob encoding; raises ``ValueError`` on any inconsistency."""
    if not blob.startswith(MODEL_MAGIC):
        raise ValueError("not a flchain model blob")
    offset = len(MODEL_MAGIC)
    if len(blob) < offset + 8:
        raise ValueError("truncated model blob")
    (head_len,) = struct.unpack_from("<Q", blob, offset)
    offset += 8
    header = parse_canonical(blob[offset : offset + head_len])
    offset += head_len
    arrays: dict[str, np.ndarray] = {}
    for spec in header["arrays"]:
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        size = count * dtype.itemsize
        if offset + size > len(blob):
            raise ValueError(f"model blob too short for array {spec['name']!r}")
        arrays[spec["name"]] = (
            np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            .reshape(spec["shape"])
            .copy()
        )
        offset += size
    if offset != len(blob):
        raise ValueError("model blob has trailing bytes")
    return arrays
