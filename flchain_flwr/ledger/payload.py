"""An update's payload: the reply exactly as received, as a content-addressed blob.

A ledger stores each included update's reply content beside the models, so
that anyone holding the ledger can recompute the update's digest (which the
block's Merkle root and the committee's votes name) from the stored bytes, parse
it with the server's own parser and replay the aggregation
(:mod:`flchain_flwr.ledger.replay`). The encoding is lossless for everything a
Flower ``RecordDict`` holds, so the digest recomputed from a decoded payload is
the digest of the reply itself, whatever the digest's format.

Blob layout (little-endian)::

    magic "FLCHAIN-UPDATE/1\\n" | header length u64 | header (canonical JSON)
    | the data of every array, in header order

The header is ``{"format": ..., "node_id": "<decimal>", "records": [...]}``,
each record ``[name, kind, items]`` in the reply's order: for ``"arrays"`` items
are ``[name, dtype, shape, stype, nbytes]``; for ``"metrics"`` and ``"config"``
``[name, value]``. Every name and value is tagged (``["str", text]``,
``["int", hex]``, ``["float", float.hex()]``, ``["bool", b]``, ``["bytes", hex]``,
``["list", [...]]``; ``"str-surrogatepass"`` for text that is not UTF-8), so the
header holds only strings, lists, booleans and small integers. A sparse array
(the DGC mod's) is stored as it was sent: a few bytes per kept value.

An array's dtype and stype are written as plain text: a reply whose arrays
declare anything else (a lone surrogate) has no payload, and the server's
parser never accepts one (it wants numpy's own dtype name and a known stype,
and no ArrayRecord beside the update's: :mod:`flchain_flwr.strategies.updates`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, Final

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .canonical import canonical_json, parse_canonical

PAYLOAD_MAGIC: Final = b"FLCHAIN-UPDATE/1\n"
PAYLOAD_FORMAT: Final = "flchain-update-payload/1"
PAYLOAD_FIELD: Final = "payload"
"""Included-entry field: the SHA-256 of the update's payload blob."""
_LENGTH = struct.Struct("<Q")


def _tag(value: Any) -> list[Any]:
    """A record value (or name) as an unambiguous, JSON-safe tagged form."""
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", hex(value)]
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ["str-surrogatepass", value.encode("utf-8", "surrogatepass").hex()]
        return ["str", value]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, list):
        return ["list", [_tag(v) for v in value]]
    raise ValueError(f"a record value of type {type(value).__name__} cannot be stored")


def _untag(tagged: Any) -> Any:
    """Inverse of :func:`_tag`; ``ValueError`` on anything else."""
    if not isinstance(tagged, list) or len(tagged) != 2:
        raise ValueError("a stored value is not a [tag, value] pair")
    tag, value = tagged
    if tag == "bool" and isinstance(value, bool):
        return value
    if tag == "int" and isinstance(value, str):
        return int(value, 16)
    if tag == "float" and isinstance(value, str):
        return float.fromhex(value)
    if tag == "str" and isinstance(value, str):
        return value
    if tag == "str-surrogatepass" and isinstance(value, str):
        return bytes.fromhex(value).decode("utf-8", "surrogatepass")
    if tag == "bytes" and isinstance(value, str):
        return bytes.fromhex(value)
    if tag == "list" and isinstance(value, list):
        return [_untag(v) for v in value]
    raise ValueError(f"unknown stored value tag {str(tag)[:40]!r}")


def _text(key: str, field: str, value: object) -> str:
    """An array's ``field`` as the header writes it: UTF-8 text, else ValueError."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"array {key!r} has a {field} that is not UTF-8 text: {text[:40]!r}"
        ) from None
    return text


def array_item(
    key: str, dtype: str, shape: Sequence[int], stype: str, nbytes: int
) -> list[Any]:
    """An array's entry in the payload header, before canonical JSON."""
    return [
        _tag(key),
        _text(key, "dtype", dtype),
        [int(d) for d in shape],
        _text(key, "stype", stype),
        nbytes,
    ]


def payload_header(node_id: int, content: RecordDict) -> bytes:
    """The start of the payload blob of ``content`` as sent by ``node_id``:
    everything it stores but its arrays' data (magic, length, header).

    Raises
    ------
    ValueError
        If the content holds a value no Flower record can hold, or an array
        whose dtype or stype is not UTF-8 text.
    """
    records: list[list[Any]] = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            items = [
                array_item(key, arr.dtype, arr.shape, arr.stype, len(arr.data))
                for key, arr in record.items()
            ]
            records.append([_tag(name), "arrays", items])
        elif isinstance(record, MetricRecord | ConfigRecord):
            kind = "metrics" if isinstance(record, MetricRecord) else "config"
            values = [[_tag(k), _tag(v)] for k, v in record.items()]
            records.append([_tag(name), kind, values])
        else:
            raise ValueError(f"record {name!r} is of no kind a payload stores")
    header = canonical_json(
        {"format": PAYLOAD_FORMAT, "node_id": str(int(node_id)), "records": records}
    )
    return PAYLOAD_MAGIC + _LENGTH.pack(len(header)) + header


def payload_chunks(node_id: int, content: RecordDict) -> Iterator[bytes]:
    """The payload blob of ``content`` as sent by ``node_id``, in chunks: its
    :func:`payload_header`, then the data of every array in header order.

    Raises
    ------
    ValueError
        As :func:`payload_header`.
    """
    yield payload_header(node_id, content)
    for record in content.array_records.values():
        for arr in record.values():
            yield bytes(arr.data)


def decode_payload(blob: bytes) -> tuple[int, RecordDict]:
    """The node id and reply content a payload blob holds.

    Raises
    ------
    ValueError
        If the blob is not a well-formed payload.
    """
    if not blob.startswith(PAYLOAD_MAGIC):
        raise ValueError("not a flchain update payload")
    offset = len(PAYLOAD_MAGIC)
    if len(blob) < offset + _LENGTH.size:
        raise ValueError("truncated update payload")
    (head_len,) = _LENGTH.unpack_from(blob, offset)
    offset += _LENGTH.size
    header = parse_canonical(blob[offset : offset + head_len])
    offset += head_len
    if not isinstance(header, dict) or header.get("format") != PAYLOAD_FORMAT:
        raise ValueError("update payload header is not in the known format")
    node_id = int(str(header["node_id"]))
    content = RecordDict()
    for name_tag, kind, items in header["records"]:
        name = _untag(name_tag)
        if kind == "arrays":
            arrays = ArrayRecord()
            for key_tag, dtype, shape, stype, size in items:
                if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                    raise ValueError("update payload is too short for its arrays")
                arrays[_untag(key_tag)] = Array(
                    dtype=str(dtype),
                    shape=tuple(int(d) for d in shape),
                    stype=str(stype),
                    data=blob[offset : offset + size],
                )
                offset += size
            content[name] = arrays
        elif kind in ("metrics", "config"):
            values = {_untag(k): _untag(v) for k, v in items}
            content[name] = (
                MetricRecord(values) if kind == "metrics" else ConfigRecord(values)
            )
        else:
            raise ValueError(f"unknown record kind {str(kind)[:40]!r}")
    if offset != len(blob):
        raise ValueError("update payload has trailing bytes")
    return node_id, content
