"""RFC 6962 / RFC 9162 Merkle consistency proofs as plain hash lists.

The proofs C2SP ``tlog-witness`` carries (one hash a line): RFC 9162
§2.1.4.1's ``PROOF(m, D[n])``, made by :class:`HashTree` and checked by
:func:`verify_consistency` (§2.1.4.2). Leaves are hashed
``SHA-256(0x00 || entry)`` and nodes ``SHA-256(0x01 || left || right)``, as
:mod:`~.merkle` (pymerkle) and :class:`~.checkpoint.LogFrontier` do, so the
roots are the checkpoints' roots. pymerkle's own consistency proofs are not
this list (it splits ``m == k`` the other way and adds rule bits), hence this
module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

HASH_SIZE: Final = 32
MAX_PROOF_HASHES: Final = 63
"""tlog-witness's bound; an RFC proof of a tree below 2**63 leaves is shorter."""


class ConsistencyError(ValueError):
    """A consistency proof does not hold (or cannot be made)."""


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(width: int) -> int:
    """The largest power of two below ``width`` (``width >= 2``)."""
    return 1 << ((width - 1).bit_length() - 1)


class HashTree:
    """A growing RFC 6962 tree: every complete, aligned subtree's hash.

    ``levels[h][i]`` is the hash of leaves ``[i * 2**h, (i + 1) * 2**h)``, so
    any subtree a proof needs costs ``O(log n)`` hashes; memory is two hashes
    a leaf.
    """

    def __init__(self, entries: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for entry in entries:
            self.append(entry)

    @property
    def size(self) -> int:
        """How many leaves the tree holds."""
        return len(self.levels[0])

    def append(self, entry: bytes) -> None:
        """Add a leaf (the entry's bytes; it is hashed here)."""
        self.levels[0].append(leaf_hash(entry))
        height = 0
        while len(self.levels[height]) % 2 == 0:
            pair = self.levels[height][-2:]
            if height + 1 == len(self.levels):
                self.levels.append([])
            self.levels[height + 1].append(node_hash(pair[0], pair[1]))
            height += 1

    def subtree(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a range a proof or root uses (``start``
        aligned to the largest power of two not above ``end - start``)."""
        width = end - start
        if width & (width - 1) == 0:
            height = width.bit_length() - 1
            return self.levels[height][start >> height]
        k = _split(width)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (all by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ConsistencyError(f"size {size} is outside 0..{self.size}")
        return hashlib.sha256(b"").digest() if size == 0 else self.subtree(0, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 ``PROOF(old, D[new])``: empty when ``old`` is 0 or ``new``.

        Raises
        ------
        ConsistencyError
            Unless ``0 <= old <= new <= size``.
        """
        if not 0 <= old <= new <= self.size:
            raise ConsistencyError(
                f"need 0 <= old ({old}) <= new ({new}) <= {self.size}"
            )
        if old in (0, new):
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        """``SUBPROOF(m, D[start:end], whole)``, iteratively (path from the
        bottom up, as the RFC lists it)."""
        tail: list[bytes] = []
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                tail.append(self.subtree(start + k, end))
                end = start + k
            else:
                tail.append(self.subtree(start, start + k))
                start, m, whole = start + k, m - k, False
        head = [] if whole else [self.subtree(start, end)]
        return head + tail[::-1]


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree of ``new`` leaves with
    ``new_root`` extends the one of ``old`` leaves with ``old_root``?

    Raises
    ------
    ConsistencyError
        With the first reason the proof fails.
    """
    if not 0 <= old <= new:
        raise ConsistencyError(f"old size {old} is above new size {new}")
    if len(proof) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in proof):
        raise ConsistencyError("a proof is at most 63 hashes of 32 bytes")
    if old in (0, new):
        if proof:
            raise ConsistencyError(f"a proof from size {old} to {new} must be empty")
        if old == new and old_root != new_root:
            raise ConsistencyError(f"two different roots for size {old}")
        return
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise ConsistencyError("the proof is empty")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyError("the proof has more hashes than the trees need")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ConsistencyError("the proof has fewer hashes than the trees need")
    if fr != old_root:
        raise ConsistencyError(f"the proof does not lead to the old root (size {old})")
    if sr != new_root:
        raise ConsistencyError(f"the proof does not lead to the new root (size {new})")
