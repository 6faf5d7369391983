"""The pending block: what the server asked its committee to sign, kept until
the block is written.

A member that signed a block's header signs no other header and no view
change at that (height, view) (:mod:`flchain_flwr.pov.views`). If the server
dies, or too few members sign, before that block is written, a restarted
server must propose that very block again, or the height can be stuck for
good. So before the first header-signature request the server records the
block (``<ledger>.pending``: its exact header and body bytes, the leader's
signature and the view), atomically and, for a durable ledger, fsynced; the
blobs it names (model, stored update payloads, server state) are already in
the content-addressed store, written before the block. Every commit removes
the record (:meth:`~flchain_flwr.ledger.Ledger.append` and
:meth:`~flchain_flwr.ledger.Ledger.append_block`).

The record is sealed with the ledger's own signing key (:mod:`.sealedrecord`;
the server's, which signs its checkpoints; in deployment kept away from the
ledger's folder, see docs/deployment.md), and a record without a valid seal
is ignored: whoever can write only the ledger's folder cannot make the server
propose a block of theirs. Beyond the seal, :func:`pending_problem` checks it
against the head (chain, format, height, previous hash), its hash against its
header, its body against the header's ``body_hash``, the leader's signature
and every blob it names. The seal says only that this server recorded it:
what makes the block valid are the committee members' own checks before
they sign it again, and ``verify`` afterwards.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..quoting import clip
from .blocks import Block, leader_signed, parse_block
from .canonical import BODY_TAG, HEADER_TAG, sha256_hex
from .consensus import block_view, natural
from .sealedrecord import read_sealed, write_sealed
from .serverstate import state_blobs

if TYPE_CHECKING:
    from .chain import Ledger

PENDING_FORMAT: Final = "flchain-pending/1"
_FIELDS: Final = frozenset(
    {"format", "view", "hash", "header", "body", "signature", "sealed"}
)
SEAL_TAG: Final = b"flchain-pending-seal/1\n"
"""Domain separation of the ledger key's seal over a record."""


class PendingError(ValueError):
    """A pending-block record that cannot be used (it is then ignored)."""


@dataclass(frozen=True)
class PendingBlock:
    """A block its committee was asked to sign, and the view it was asked in."""

    block: Block
    view: int


def pending_path(ledger: Ledger) -> Path:
    """Where ``ledger``'s pending block is recorded."""
    return ledger.path.with_name(ledger.path.name + ".pending")


def record_pending(ledger: Ledger, block: Block, view: int) -> None:
    """Record ``block`` (signed by its leader) as pending in ``view``, before
    its committee is asked to sign it; an earlier record of another block at
    the same height, previous hash and view is kept instead (members may be
    locked on it: a fallback block there must not erase it)."""
    try:
        earlier = read_pending(ledger)
    except PendingError:
        earlier = None
    if (
        earlier is not None
        and earlier.view == view
        and earlier.block.hash != block.hash
        and (earlier.block.height, earlier.block.header.get("prev_hash"))
        == (block.height, block.header.get("prev_hash"))
    ):
        return
    record: dict[str, Any] = {
        "format": PENDING_FORMAT,
        "view": view,
        "hash": block.hash,
        "header": base64.b64encode(block.header_bytes).decode("ascii"),
        "body": base64.b64encode(block.body_bytes).decode("ascii"),
        "signature": block.signature,
    }
    write_sealed(ledger, pending_path(ledger), SEAL_TAG, record)


def clear_pending(ledger: Ledger) -> None:
    """Remove ``ledger``'s pending-block record (a block was written)."""
    pending_path(ledger).unlink(missing_ok=True)


def read_pending(ledger: Ledger) -> PendingBlock | None:
    """``ledger``'s pending block as recorded (``None``: no record);
    :class:`PendingError` if the record is malformed, not sealed by the
    ledger's key, or its hash is not its header's. Nothing here says the
    block extends the head: see :func:`pending_problem`."""
    path = pending_path(ledger)
    record = read_sealed(ledger, path, SEAL_TAG, _FIELDS, PendingError)
    if record is None:
        return None
    if record["format"] != PENDING_FORMAT:
        raise PendingError(f"{path.name} is not {PENDING_FORMAT}")
    view = natural(record["view"])
    if view is None:
        raise PendingError(f"{path.name}: view must be an integer >= 0")
    header_bytes = _base64(record["header"], "header")
    body_bytes = _base64(record["body"], "body")
    if sha256_hex(HEADER_TAG, header_bytes) != record["hash"]:
        raise PendingError(f"{path.name}: its hash is not its header's")
    try:
        header, body = parse_block(header_bytes, body_bytes)
    except (ValueError, RecursionError) as exc:
        raise PendingError(f"{path.name}: its block is not canonical ({exc})") from None
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise PendingError(f"{path.name}: header and body must be JSON objects")
    height = header.get("height")
    if isinstance(height, bool) or not isinstance(height, int):
        raise PendingError(f"{path.name}: the header's height is not an integer")
    block = Block(
        height,
        str(record["hash"]),
        header_bytes,
        body_bytes,
        str(record["signature"]),
        header,
        body,
    )
    return PendingBlock(block, view)


def pending_problem(ledger: Ledger, head: Block, pending: PendingBlock) -> str | None:
    """Why ``pending`` cannot be proposed again on top of ``head`` (or
    ``None``): it must be the next block of this chain, in its format, with
    its body, the view it was asked in, its leader's signature and every
    blob it names stored intact."""
    block, header = pending.block, pending.block.header
    if block.hash == head.hash:
        return "it is already written (the head)"
    if header.get("chain_id") != ledger.chain_id:
        return "it belongs to another chain"
    if header.get("format") != f"flchain-block/{ledger.format_version}":
        return f"its format is {str(header.get('format'))[:40]!r}"
    if (block.height, header.get("prev_hash")) != (head.height + 1, head.hash):
        return (
            f"it is at height {block.height} after "
            f"{str(header.get('prev_hash'))[:12]}…, not the next block after "
            f"the head (height {head.height}, {head.hash[:12]}…)"
        )
    if header.get("body_hash") != sha256_hex(BODY_TAG, block.body_bytes):
        return "its body is not the one its header names"
    if block_view(block.body) != pending.view:
        said = clip(repr(block.body.get("view", 0)), 24)
        return f"its body says view {said}, not {pending.view}"
    if not leader_signed(header, block.header_bytes, block.signature):
        return "its leader's signature is invalid"
    return _blobs_problem(ledger, block.body, str(header.get("model_hash")))


def _blobs_problem(ledger: Ledger, body: dict[str, Any], model: str) -> str | None:
    """Why a blob the block names is not stored intact, or ``None``."""
    try:
        named = [("model blob", model)]
        named += [("server-state blob", d) for d in state_blobs(body).values()]
        named += [
            ("update payload", str(entry["payload"]))
            for entry in body.get("included", [])
            if isinstance(entry, dict) and "payload" in entry
        ]
    except (ValueError, TypeError, AttributeError) as exc:
        return f"its body is malformed ({exc})"
    for what, digest in named:
        if not isinstance(digest, str) or len(digest) != 64:
            return f"it names a {what} that is not a SHA-256"
        try:
            problem = ledger.blobs.check(digest, what)
        except ValueError as exc:
            return f"it names a {what} that is not a SHA-256 ({exc})"
        if problem is not None:
            return problem
    return None


def _base64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise PendingError(f"the pending {what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PendingError(f"the pending {what} is not valid base64") from None
