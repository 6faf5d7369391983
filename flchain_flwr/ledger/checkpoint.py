"""C2SP tlog checkpoints (c2sp.org/tlog-checkpoint) of a ledger's block log.

A checkpoint is a signed note (see :mod:`flchain_flwr.ledger.notes`) whose text
is exactly::

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the RFC 6962 root hash>
    [extension lines, each non-empty]

For a ledger, the tree is its Merkle log: the leaves are the 32-byte block
hashes (``sha256(HEADER_TAG || canonical header)``) in height order, so the
tree size is the number of blocks and the root is RFC 6962's
``MTH(block_hash[0:size])`` (leaf hash ``sha256(0x00 || block hash)``, node
hash ``sha256(0x01 || left || right)``, ``sha256("")`` for no blocks), the
root :func:`~flchain_flwr.ledger.merkle.merkle_root` computes. A block hash
covers its header, and the header its parent's hash, its body's hash, its
updates' Merkle root and its model's hash; it does not cover the leader's
signature beside the header.

A checkpoint kept away from the ledger pins its first ``size`` blocks: a
ledger that is cut short, rewritten or forked below that size no longer
matches it (:func:`~.checkpointcheck.check_against_ledger`), and two
checkpoints of one log are checked against each other with a consistency proof
(:func:`~.checkpointcheck.check_consistency`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .merkle import merkle_root
from .noteformat import decode_b64
from .notes import (
    NoteError,
    SignedNote,
    SignerKey,
    VerifierKey,
    check_key_name,
    parse_note,
    read_note,
    sign_note,
    verify_note,
    write_file_atomically,
)

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""RFC 6962's root of the empty tree: SHA-256 of the empty string."""
MAX_TREE_SIZE: Final = 2**63 - 1
ORIGIN_PREFIX: Final = "flchain-flwr/"
"""What :func:`ledger_origin` puts in front of a ledger's chain id."""
MAX_CHAIN_ID_CHARS: Final = 128
"""The longest chain id a new chain takes (a ledger's own default is a 32-digit
hex UUID): verifier nodes keep their signing locks by chain id, and bound it
(:mod:`flchain_flwr.pov.lockstate`)."""


class CheckpointError(ValueError):
    """A checkpoint's text is malformed."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, RFC 6962 root hash.

    Parameters
    ----------
    origin : str
        Identifies the log (non-empty, one line).
    size : int
        Number of leaves (for a ledger: blocks), ``0 <= size < 2**63``.
    root : bytes
        The 32-byte RFC 6962 root of the first ``size`` leaves.
    extensions : tuple[str, ...] (default: ())
        Opaque extra lines, each non-empty (the spec discourages them).
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError(f"tree size must be an integer, not {self.size!r}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.size} is out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash has {len(self.root)} bytes, not 32")
        for number, line in enumerate(self.extensions, 1):
            _check_line(line, f"extension line {number}")

    def text(self) -> str:
        """The note text: origin, size, base64 root, extensions, each a line."""
        root = base64.b64encode(self.root).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text strictly.

    Raises
    ------
    CheckpointError
        If the text does not end in a newline, has fewer than three lines or an
        empty line, or the size is not plain decimal (no sign, spaces or leading
        zeros) or the root not canonical base64 of 32 bytes.
    """
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"checkpoint text has {len(lines)} lines, needs origin, size and root"
        )
    origin, size_line, root_line, *extensions = lines
    if not size_line or any(c not in "0123456789" for c in size_line):
        raise CheckpointError(f"tree size {size_line!r} is not a decimal number")
    if size_line != "0" and size_line.startswith("0"):
        raise CheckpointError(f"tree size {size_line!r} has leading zeros")
    if len(size_line) > len(str(MAX_TREE_SIZE)):
        raise CheckpointError(f"tree size {size_line} is out of range")
    root = decode_b64(
        root_line,
        CheckpointError,
        not_base64=f"root hash {root_line!r} is not base64",
        not_canonical=f"root hash {root_line!r} is not canonical base64",
    )
    return Checkpoint(origin, int(size_line), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[SignerKey]) -> SignedNote:
    """The checkpoint as a note signed by ``signers`` (the log's key name
    should be the origin)."""
    try:
        return sign_note(checkpoint.text(), signers)
    except NoteError as exc:  # the origin or an extension is not note text
        raise CheckpointError(str(exc)) from None


def open_checkpoint(
    note: str | bytes | SignedNote, keys: Iterable[VerifierKey]
) -> tuple[Checkpoint, tuple[VerifierKey, ...]]:
    """Verify a signed checkpoint, then parse its text.

    Parameters
    ----------
    note : str | bytes | SignedNote
        The signed checkpoint.
    keys : Iterable[VerifierKey]
        The trusted keys (the log's, witnesses').

    Returns
    -------
    tuple[Checkpoint, tuple[VerifierKey, ...]]
        The checkpoint and the trusted keys that signed it.

    Raises
    ------
    NoteError
        If the note is malformed (:class:`~.notes.NoteVerificationError` if no
        trusted key signed it, or a trusted key's signature fails).
    CheckpointError
        If the signed text is not a checkpoint.
    """
    signed = note if isinstance(note, SignedNote) else parse_note(note)
    verified = verify_note(signed, keys)
    return parse_checkpoint(signed.text), verified


def read_checkpoint(
    path: str | Path, keys: Iterable[VerifierKey]
) -> tuple[Checkpoint, tuple[VerifierKey, ...]]:
    """:func:`open_checkpoint` on a file's bytes."""
    return open_checkpoint(read_note(path), keys)


def write_checkpoint(
    path: str | Path, note: SignedNote, *, durable: bool = True
) -> None:
    """Replace the file at ``path`` with a signed checkpoint, atomically (renamed
    into place) and, if ``durable``, fsynced with its folder; mode 0644."""
    write_file_atomically(
        path, note.encode(), mode=0o644, overwrite=True, durable=durable
    )


# ----------------------------------------------------------------- ledgers
def ledger_origin(chain_id: str) -> str:
    """A ledger's checkpoint origin (and its checkpoint key's name):
    ``flchain-flwr/<chain id>``.

    Raises
    ------
    CheckpointError
        If the chain id holds spaces, '+' or control characters (it could not
        name a key).
    """
    origin = ORIGIN_PREFIX + chain_id
    try:
        check_key_name(origin)
    except NoteError as exc:
        raise CheckpointError(
            f"chain id {chain_id!r} cannot be an origin: {exc}"
        ) from None
    return origin


def new_chain_origin(chain_id: str) -> str:
    """:func:`ledger_origin` of a new chain's id, which must also be 1 to
    :data:`MAX_CHAIN_ID_CHARS` characters long (an existing chain's is read
    as it is).

    Raises
    ------
    CheckpointError
        If the chain id is empty, too long, or cannot be an origin.
    """
    if not chain_id or len(chain_id) > MAX_CHAIN_ID_CHARS:
        raise CheckpointError(
            f"a new chain's id must be 1 to {MAX_CHAIN_ID_CHARS} characters long, "
            f"not {len(chain_id)}"
        )
    return ledger_origin(chain_id)


def ledger_checkpoint(
    origin: str, block_hashes: Sequence[str], size: int | None = None
) -> Checkpoint:
    """The checkpoint of a ledger's first ``size`` blocks (all by default).

    Parameters
    ----------
    origin : str
        The log's origin (:func:`ledger_origin` of its chain id).
    block_hashes : Sequence[str]
        The ledger's hex block hashes by height (``Ledger.block_hashes()``).
    size : int, optional
        How many blocks the checkpoint covers.
    """
    count = len(block_hashes) if size is None else size
    if not 0 <= count <= len(block_hashes):
        raise ValueError(f"size {count} is outside 0..{len(block_hashes)}")
    root = bytes.fromhex(merkle_root(list(block_hashes[:count])))
    return Checkpoint(origin, count, root)


class LogFrontier:
    """The RFC 6962 root of a growing log in O(log n) per leaf.

    Holds the roots of the perfect subtrees the log splits into (largest
    first), which is all an append-only log's next root needs; gives the same
    root as :func:`~flchain_flwr.ledger.merkle.merkle_root` over the hex leaves.
    """

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        self.size = 0
        self._peaks: list[tuple[int, bytes]] = []  # (subtree height, root)
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: str) -> None:
        """Add a leaf (a hex block hash)."""
        node = (0, hashlib.sha256(b"\x00" + bytes.fromhex(leaf)).digest())
        while self._peaks and self._peaks[-1][0] == node[0]:
            height, left = self._peaks.pop()
            node = (height + 1, hashlib.sha256(b"\x01" + left + node[1]).digest())
        self._peaks.append(node)
        self.size += 1

    def root(self) -> bytes:
        """The 32-byte root of the leaves so far (:data:`EMPTY_ROOT` for none)."""
        if not self._peaks:
            return EMPTY_ROOT
        root = self._peaks[-1][1]
        for _, peak in reversed(self._peaks[:-1]):
            root = hashlib.sha256(b"\x01" + peak + root).digest()
        return root


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"{what} must not be empty")
    if any(ord(c) < 0x20 for c in line):
        raise CheckpointError(f"{what} {line!r} holds a newline or control character")
