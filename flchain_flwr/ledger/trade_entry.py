"""One entry of a model-trading subchain: its bytes, hash and shape.

An entry is RFC 8785 JSON::

    {"format": "flchain-trade/1", "market": <origin>, "index": n,
     "prev": <previous entry's hash, or 64 zeros>,
     "statement": {...}, "signature": <the party's hex signature>}

and its hash, ``sha256(ENTRY_TAG || json)``, is its leaf in the chain's
Merkle log (:class:`~flchain_flwr.ledger.trading.TradingChain`), exactly as a
training ledger's block hashes are in its log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .canonical import encode, parse_canonical, sha256_hex

ENTRY_FORMAT: Final = "flchain-trade/1"
ENTRY_TAG: Final = b"flchain-trade-entry/1\n"
ENTRY_FIELDS: Final = frozenset(
    {"format", "market", "index", "prev", "statement", "signature"}
)


@dataclass(frozen=True)
class TradeEntry:
    """One recorded statement: its place, hash, id and the entry's bytes."""

    index: int
    hash: str
    record_id: str
    entry: bytes

    @property
    def statement(self) -> dict[str, Any]:
        """The signed statement the entry holds."""
        value: dict[str, Any] = parse_canonical(self.entry, 2)["statement"]
        return value

    @property
    def signature(self) -> str:
        """The party's signature of the statement."""
        return str(parse_canonical(self.entry, 2)["signature"])


def entry_hash(entry: bytes) -> str:
    """An entry's hash: its leaf in the chain's Merkle log."""
    return sha256_hex(ENTRY_TAG, entry)


def encode_entry(
    origin: str, index: int, prev: str, statement: Mapping[str, Any], signature: str
) -> bytes:
    """The canonical bytes of the entry at ``index`` of ``origin``'s log."""
    return encode(
        2,
        {
            "format": ENTRY_FORMAT,
            "market": origin,
            "index": index,
            "prev": prev,
            "statement": dict(statement),
            "signature": signature,
        },
    )


def entry_problem(
    value: Any, entry: TradeEntry, origin: str, index: int, prev: str
) -> str | None:
    """What is wrong with ``value``, the parsed ``entry`` stored at ``index``
    of ``origin``'s log after ``prev``; ``None`` if nothing."""
    expected: dict[str, object] = {
        "format": ENTRY_FORMAT,
        "market": origin,
        "index": index,
        "prev": prev,
    }
    if not isinstance(value, dict) or set(value) != ENTRY_FIELDS:
        return f"an entry has exactly the fields {sorted(ENTRY_FIELDS)}"
    for name, wanted in expected.items():
        if type(value[name]) is not type(wanted) or value[name] != wanted:
            return f"its {name} is {str(value[name])[:70]!r}, not {wanted!r}"
    if entry_hash(entry.entry) != entry.hash:
        return "its stored hash is not its entry's"
    return None
