"""The signed updates a chain has included: each at most once in the chain.

A trainer's signature (:mod:`.trainers`) names its node and the model it trained
on, not a block, so without this rule the ledger key's holder could count a
node's signed update again in a later block. An included entry naming a
``trainer`` has a digest (:func:`~.canonical.sender_update_digest`) no other
block of the chain includes: ``verify`` applies it to the blocks
(:mod:`.blockcheck`), and FedBuff's server rejects a signed reply its chain
already included, so an honest server never writes such a chain.

Unsigned updates keep the per-block rule only: the same bytes of a full-weights
reply on another base are another update (the server includes them; a
signature, naming its base, rules that out), and an unsigned update under any
node id is the ledger key holder's to write anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .canonical import is_hex
from .trainers import TRAINER_FIELD


class IncludedDigests:
    """Signed update digest -> the height of the block that included it (32
    bytes a key: a verifier or a long-running server keeps one per included
    signed update)."""

    def __init__(self) -> None:
        self._at: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def problem(self, digest: str) -> str | None:
        """Why the signed update ``digest`` may not be included again, or
        ``None``."""
        height = self._at.get(_key(digest))
        if height is None:
            return None
        return f"signed update {digest} was already included in block {height}"

    def block_problem(self, included: Iterable[Mapping[str, Any]]) -> str | None:
        """Why a block's included entries (digests already checked) include a
        signed update an earlier block did, or ``None``."""
        for index, entry in enumerate(included):
            if TRAINER_FIELD in entry:
                problem = self.problem(str(entry["digest"]))
                if problem is not None:
                    return f"included update {index}: {problem}"
        return None

    def add(self, height: int, digests: Iterable[str]) -> None:
        """Learn the signed updates ``digests`` block ``height`` included."""
        for digest in digests:
            self._at.setdefault(_key(digest), height)

    def add_block(self, height: int, included: Iterable[Mapping[str, Any]]) -> None:
        """Learn the signed updates among block ``height``'s included entries."""
        self.add(height, (str(u["digest"]) for u in included if TRAINER_FIELD in u))


def _key(digest: str) -> bytes:
    """A digest's 32 bytes (other text, which ``verify`` refuses before, as
    itself after a zero byte: never equal to a digest's)."""
    if is_hex(digest, 64):
        return bytes.fromhex(digest)
    return b"\0" + digest.encode("utf-8", "surrogatepass")
