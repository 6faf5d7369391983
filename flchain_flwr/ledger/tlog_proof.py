"""C2SP tlog proofs (c2sp.org/tlog-proof@v1): one entry's inclusion in a
signed checkpoint, as text that is checked offline.

A proof is::

    c2sp.org/tlog-proof@v1
    index <zero-based leaf index, decimal>
    <base64 RFC 6962 audit path hash, leaf's sibling first>
    ...
    <empty line>
    <the signed checkpoint, verbatim>

The spec's optional ``extra`` line is read but carries unauthenticated data,
so :func:`parse_tlog_proof` refuses it unless ``allow_extra`` (nothing here
writes one). The audit path is RFC 6962 section 2.1.1's ``PATH(m, D[n])``
over leaf hashes ``sha256(0x00 || entry)`` and node hashes ``sha256(0x01 ||
left || right)``, the tree :func:`~flchain_flwr.ledger.merkle.merkle_root`
and :class:`~flchain_flwr.ledger.checkpoint.LogFrontier` build; it is checked
with RFC 9162 section 2.1.3.2's algorithm.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .checkpoint import HASH_SIZE, MAX_TREE_SIZE, Checkpoint, parse_checkpoint
from .noteformat import NoteError, decode_b64
from .notes import SignedNote, parse_note
from .rfc6962 import leaf_hash, node_hash

HEADER: Final = "c2sp.org/tlog-proof@v1"
MAX_PATH: Final = 64
"""Longest audit path a tree of fewer than 2**63 leaves can need."""


class TlogProofError(ValueError):
    """A tlog proof is malformed, or its path does not lead to its root."""


@dataclass(frozen=True)
class TlogProof:
    """A parsed tlog proof: leaf index, audit path, the signed checkpoint."""

    index: int
    path: tuple[bytes, ...]
    note: SignedNote
    extra: bytes | None = None

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint the note's text holds (its signatures unchecked)."""
        return parse_checkpoint(self.note.text)

    def text(self) -> str:
        """The proof as C2SP text."""
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(node).decode("ascii") for node in self.path)
        return "\n".join(lines) + "\n\n" + str(self.note)


def _subtree_root(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (at least one)."""
    level = list(hashes)
    while len(level) > 1:
        paired = [
            node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])  # RFC 6962's unbalanced right edge
        level = paired
    return level[0]


def audit_path(entries: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 ``PATH(index, entries)``: sibling hashes from the leaf up."""
    if not 0 <= index < len(entries):
        raise IndexError(f"leaf index {index} out of range for {len(entries)} leaves")
    hashes = [leaf_hash(entry) for entry in entries]
    path: list[bytes] = []
    low, high, position = 0, len(hashes), index
    while high - low > 1:
        split = 1 << ((high - low - 1).bit_length() - 1)  # largest 2^k < n
        if position < split:
            path.append(_subtree_root(hashes[low + split : high]))
            high = low + split
        else:
            path.append(_subtree_root(hashes[low : low + split]))
            low, position = low + split, position - split
    path.reverse()  # computed from the root down; the proof goes leaf up
    return path


def root_from_path(entry: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root an audit path leads to (RFC 9162 2.1.3.2).

    Raises
    ------
    TlogProofError
        If ``index`` is not below ``size`` or the path has the wrong length.
    """
    if not 0 <= index < size:
        raise TlogProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn, root = index, size - 1, leaf_hash(entry)
    for node in path:
        if sn == 0:
            raise TlogProofError("the audit path is longer than the tree needs")
        if fn & 1 or fn == sn:
            root = node_hash(node, root)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            root = node_hash(root, node)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise TlogProofError("the audit path is shorter than the tree needs")
    return root


def make_tlog_proof(
    entries: Sequence[bytes], index: int, note: SignedNote
) -> TlogProof:
    """The proof that ``entries[index]`` is in the tree a signed checkpoint
    of ``len(entries)`` leaves covers.

    Raises
    ------
    TlogProofError
        If the checkpoint is of another size or root.
    """
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.size != len(entries):
        raise TlogProofError(
            f"the checkpoint covers {checkpoint.size} leaves, not {len(entries)}"
        )
    proof = TlogProof(index, tuple(audit_path(entries, index)), note)
    check_inclusion(proof, entries[index])
    return proof


def check_inclusion(proof: TlogProof, entry: bytes) -> Checkpoint:
    """Check that ``entry`` is leaf ``proof.index`` of the checkpoint's tree
    (the note's signatures are the caller's to check); the checkpoint.

    Raises
    ------
    TlogProofError
        If the path does not lead to the checkpoint's root.
    """
    checkpoint = proof.checkpoint
    if root_from_path(entry, proof.index, checkpoint.size, proof.path) != (
        checkpoint.root
    ):
        raise TlogProofError(
            f"entry {proof.index} is not in the checkpoint's tree of "
            f"{checkpoint.size}: the audit path leads to another root"
        )
    return checkpoint


def parse_tlog_proof(text: str, *, allow_extra: bool = False) -> TlogProof:
    """Parse a tlog proof strictly (canonical numbers and base64, a signed
    checkpoint after the empty line).

    Raises
    ------
    TlogProofError
        If it is malformed, or carries an ``extra`` line and not
        ``allow_extra``.
    """
    head, separator, note_text = text.partition("\n\n")
    if not separator:
        raise TlogProofError("no empty line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise TlogProofError(f"the first line must be {HEADER!r}")
    position = 1
    extra = None
    if len(lines) > 1 and lines[1].startswith("extra "):
        if not allow_extra:
            raise TlogProofError("an 'extra' line carries unauthenticated data")
        extra = _b64(lines[1][len("extra ") :], "extra data")
        position = 2
    if len(lines) <= position or not lines[position].startswith("index "):
        raise TlogProofError("missing the 'index' line")
    index = _decimal(lines[position][len("index ") :])
    path = lines[position + 1 :]
    if len(path) > MAX_PATH:
        raise TlogProofError(f"{len(path)} audit path hashes: at most {MAX_PATH}")
    nodes = tuple(_b64(line, f"audit path hash {n}") for n, line in enumerate(path))
    if any(len(node) != HASH_SIZE for node in nodes):
        raise TlogProofError("an audit path hash is not 32 bytes")
    try:
        note = parse_note(note_text)
        parse_checkpoint(note.text)
    except (NoteError, ValueError) as exc:
        raise TlogProofError(f"the checkpoint is malformed: {exc}") from None
    return TlogProof(index, nodes, note, extra)


def _decimal(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (text != "0" and text[0] == "0"):
        raise TlogProofError(f"index {text[:30]!r} is not a plain decimal number")
    if len(text) > len(str(MAX_TREE_SIZE)) or int(text) > MAX_TREE_SIZE:
        raise TlogProofError("index is out of range")
    return int(text)


def _b64(text: str, what: str) -> bytes:
    return decode_b64(
        text,
        TlogProofError,
        not_base64=f"{what} is not base64",
        not_canonical=f"{what} is not canonical base64",
    )
