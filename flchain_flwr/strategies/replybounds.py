"""Pure rules bounding what a client's reply may carry, and how it is described.

An accepted train reply is stored whole, as received: its digest
(:func:`~flchain_flwr.ledger.canonical.sender_update_digest`) is what the
committee's votes, the block's Merkle root and the ledger entry name, and its
payload blob (:mod:`flchain_flwr.ledger.payload`) is what a replay and every
remote verifier parse again. So whatever a reply may carry is stored, hashed and
forwarded; these rules keep that bounded, as stored (the payload's bytes, not
the values' characters: canonical JSON writes a NUL as six bytes), and keep
every reason that quotes a client's value short. Each returns a problem
(``None`` if there is none), which :func:`~.updates.parse_update` raises as
its rejection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Final

import numpy as np
from flwr.app import RecordDict
from numpy.lib import format as npy

from ..ledger.canonical import canonical_json
from ..ledger.payload import array_item, payload_header
from ..quoting import clip

DENSE_STYPE: Final = "numpy.ndarray"
"""The serialisation type of a dense Flower Array (``np.save`` bytes)."""
MAX_RECORDS_BYTES: Final = 262_144
"""Cap on the bytes an accepted reply's stored payload holds beyond its model's
honest stored size (:func:`honest_stored_bytes`): the payload's header (every
record's name, every metric and config key and value, as stored) and whatever
its arrays' entries and own headers (npy's or the sparse format's) hold beyond
an honest dense reply's. A reply over it is refused."""
WIDEST_NODE_ID: Final = 2**64 - 1
"""A node id of the most digits (Flower's are 64-bit): the header is measured
as if this node sent it, so the bound holds whoever did."""


def honest_array_bytes(name: str, value: np.ndarray) -> int:
    """Bytes a dense Array of ``value`` named ``name`` stores, as Flower's
    ``Array(value)`` writes it: ``np.save``'s header and data, and its entry
    in the payload header, with one comma."""
    header = BytesIO()
    fields = npy.header_data_from_array_1_0(value)
    try:
        npy.write_array_header_1_0(header, fields)
    except ValueError:  # a header over 64 KiB: np.save writes version 2.0
        header = BytesIO()
        npy.write_array_header_2_0(header, fields)
    size = len(header.getvalue()) + value.nbytes
    item = array_item(name, str(value.dtype), value.shape, DENSE_STYPE, size)
    return size + len(canonical_json(item)) + 1


def honest_stored_bytes(model: Mapping[str, np.ndarray]) -> int:
    """Bytes an honest dense reply of ``model`` stores for its tensors: the
    sum of :func:`honest_array_bytes`. The names, dtypes and shapes are the
    server's model's (the parser accepts no others), so this is fixed by the
    server; everything else a reply stores counts in ``MAX_RECORDS_BYTES``."""
    return sum(honest_array_bytes(name, value) for name, value in model.items())


def describe(value: object) -> str:
    """A short, always printable description of a client-sent value for a reason.

    ``repr`` of an integer over 4,300 digits raises, and a long string or list
    would flood the logs and the ledger.
    """
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    return clip(repr(value), 80)


def describe_names(names: Sequence[str]) -> str:
    """``names`` for a reason: the list itself if short, else how many and the
    first (a client chooses its names, of any length and number)."""
    text = repr(list(names))
    if len(text) <= 80:
        return text
    return f"{len(names)} names, the first {describe(names[0])}"


def value_bytes(value: object) -> int:
    """Bytes a record value (or name) counts for in a cap: 8 per number, a
    string's UTF-8 or bytes' length, more for a huge int."""
    if isinstance(value, list):
        return sum(value_bytes(v) for v in value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(8, (value.bit_length() + 8) // 8)
    return 8


def array_records_problem(content: RecordDict, arrayrecord_key: str) -> str | None:
    """Why a train reply's ArrayRecords are not one update's: none, or more
    than one (Flower's FedAvg also wants exactly one; a second one would be
    stored and forwarded with the update, unread)."""
    records = content.array_records
    if not records:
        return "reply carries no ArrayRecord"
    if len(records) > 1:
        others = [name for name in records if name != arrayrecord_key]
        return (
            f"reply carries {len(records)} ArrayRecords, only the update's "
            f"({arrayrecord_key!r}) may be sent; also: {describe_names(others)}"
        )
    return None


def stored_size_problem(
    content: RecordDict, honest_bytes: int, limit: int = MAX_RECORDS_BYTES
) -> str | None:
    """Why the payload stored for a reply is too large: over ``honest_bytes``
    (:func:`honest_stored_bytes` of its update's tensors) plus ``limit``
    bytes, measured as :func:`~flchain_flwr.ledger.payload.payload_chunks`
    writes it."""
    try:
        header = len(payload_header(WIDEST_NODE_ID, content))
    except ValueError as exc:
        return f"reply cannot be stored: {describe(str(exc))}"
    data = sum(
        len(arr.data)
        for record in content.array_records.values()
        for arr in record.values()
    )
    beyond = header + data - honest_bytes
    if beyond > limit:
        return (
            f"reply stores {beyond} bytes beyond its model's honest "
            f"{honest_bytes}, over MAX_RECORDS_BYTES={limit}"
        )
    return None
