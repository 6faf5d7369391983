"""Bytes on the wire per global version, measured from the encoded messages.

What is counted is Flower's own measure of a message's content,
``RecordDict`` record by record (``count_bytes``): every Array's serialised
``data`` (a dense array's ``.npy`` bytes with their header, a sparse array's
payload) and its key, and every config and metric entry. Config records are
counted here with Flower's rule (1 byte a bool, 8 an int or float, the length
of a str or bytes) because Flower's ``ConfigRecord.count_bytes`` raises on an
empty list, which any node could send. Protobuf framing,
record names and message metadata are not counted (a few hundred bytes per
message). Train messages and train replies only: federated evaluation is not
part of a version's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's content, as Flower counts them."""
    return sum(
        config_bytes(record)
        if isinstance(record, ConfigRecord)
        else record.count_bytes()
        for record in content.values()
    )


def config_bytes(record: ConfigRecord) -> int:
    """Flower's ``ConfigRecord.count_bytes``, also for empty lists (0 bytes)."""
    total = 0
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        total += len(key) + sum(_scalar_bytes(v) for v in values)
    return total


def _scalar_bytes(value: object) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 8  # 64-bit in the protobuf
    if isinstance(value, str | bytes):
        return len(value)
    raise TypeError(f"not a config value: {type(value).__name__}")


@dataclass
class Traffic:
    """Train traffic since the last global version."""

    messages_down: int = 0
    bytes_down: int = 0
    replies_up: int = 0
    bytes_up: int = 0

    def sent(self, num_bytes: int) -> None:
        """A train message of ``num_bytes`` left for a node."""
        self.messages_down += 1
        self.bytes_down += num_bytes

    def received(self, num_bytes: int) -> None:
        """A train reply of ``num_bytes`` came back (used or not)."""
        self.replies_up += 1
        self.bytes_up += num_bytes

    def as_dict(self) -> dict[str, int]:
        """The counters, for a ledger block's ``traffic`` field."""
        return {
            "messages_down": self.messages_down,
            "bytes_down": self.bytes_down,
            "replies_up": self.replies_up,
            "bytes_up": self.bytes_up,
        }


def human_bytes(num_bytes: float) -> str:
    """``6.5MB``, ``18.3kB``, ``512B`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f}{unit}"
    return f"{num_bytes:.0f}B"
