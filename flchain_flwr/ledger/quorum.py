"""Quorum-signed headers and view-change certificates of a PoV chain.

A chain whose genesis ``pov`` entry declares ``"headers": QUORUM_FORMAT``
holds, for every block after the genesis block:

- **header signatures**: more than 2/3 of the block's committee (the vote
  quorum, :func:`~flchain_flwr.ledger.consensus.quorum`) each signed
  :func:`header_statement` over the block's hash, height and view. A member
  signs only after checking the block against the chain it has seen (see
  :mod:`flchain_flwr.pov.headers`); the statement says whether it also
  recomputed the model by replay (``replayed``). They are stored beside the
  block (the ``header_signatures`` table: they sign the header's hash, so
  they cannot be inside it);
- **view-change certificates** (``view_changes`` in the body) when the
  block's view ``v`` is above 0: for each earlier view ``u < v``, more than
  2/3 of the committee signed :func:`view_change_statement` ("I give up view
  ``u`` at this height"). A member never signs both a header and a view
  change at one (height, view), nor two headers there; so two blocks at one
  height that both verify need signed contradicting statements from more
  than 1/3 of the committee (any two quorums of it share more than 1/3),
  which is equivocation evidence (:mod:`.evidence`).

Everything here is a pure function of the statements and the committee; a
verifier needs only the genesis pool keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ..quoting import clip
from .canonical import LATEST_FORMAT, encode, parse_canonical
from .consensus import block_view, quorum
from .statements import header_statement, signature_ok, view_change_statement

QUORUM_FORMAT: Final = "flchain-quorum/1"
"""What a genesis ``pov.headers`` declares: quorum-signed headers and
view-change certificates (this module)."""
VIEW_CHANGES_FIELD: Final = "view_changes"
"""Body field: the certificates that the block's earlier views failed."""
_TABLE: Final = "header_signatures"
_SCHEMA: Final = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} "
    "(height INTEGER PRIMARY KEY, signatures BLOB NOT NULL)"
)
_SIG_FIELDS: Final = frozenset({"verifier", "replayed", "signature"})
_VC_FIELDS: Final = frozenset({"verifier", "signature"})


@runtime_checkable
class HeaderCosigner(Protocol):
    """A block signer that also gathers the committee's header signatures
    (:meth:`~flchain_flwr.ledger.Ledger.append` calls it inside the block's
    transaction, once the header is final)."""

    def cosign(self, ledger: Any, block: Any) -> list[dict[str, Any]]:
        """The header signatures for the pending ``block`` (raise if fewer
        than a quorum signed: the block is then not written)."""


def _signers(
    entries: Any, fields: frozenset[str], committee: Sequence[str], what: str
) -> tuple[list[Mapping[str, Any]], str | None]:
    """Entries well formed (a member's key and a signature, each text), from
    committee members, one per member; for any JSON value, the reason it is
    not that, never an exception."""
    if not isinstance(entries, list):
        return [], f"{what} must be a list"
    members = set(committee)
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != fields:
            return [], f"{what} {index} must have exactly the fields {sorted(fields)}"
        key, signature = entry["verifier"], entry["signature"]
        if not isinstance(key, str) or not isinstance(signature, str):
            return [], f"{what} {index}: its verifier and signature must be text"
        if key not in members:
            return [], f"{what} {index} is by {clip(key, 16)}, not a committee member"
        if key in seen:
            return [], f"{what} {index} is a second one by {clip(key, 16)}"
        seen.add(key)
    return list(entries), None


# pylint: disable=too-many-arguments
def check_header_quorum(
    chain_id: str,
    height: int,
    view: int,
    block_hash: str,
    committee: Sequence[str],
    signatures: Any,
) -> str | None:
    """Why ``signatures`` are not a quorum of ``committee`` signing the block,
    or ``None``. ``signatures=None``: none stored."""
    if signatures is None:
        return "its header carries no committee signatures (only the leader's)"
    entries, problem = _signers(signatures, _SIG_FIELDS, committee, "header signature")
    if problem is not None:
        return problem
    for index, entry in enumerate(entries):
        replayed = entry["replayed"]
        if not isinstance(replayed, bool):
            return f"header signature {index}: replayed must be a boolean"
        statement = header_statement(chain_id, height, view, block_hash, replayed)
        if not signature_ok(str(entry["verifier"]), statement, str(entry["signature"])):
            return f"header signature {index} is invalid"
    needed = quorum(len(committee))
    if len(entries) < needed:
        return (
            f"its header is signed by {len(entries)} of {len(committee)} committee "
            f"members; more than 2/3 ({needed}) must sign it"
        )
    return None


# pylint: disable=too-many-arguments
def check_view_changes(
    chain_id: str,
    height: int,
    prev_hash: str,
    view: int,
    committee: Sequence[str],
    certificates: Any,
) -> str | None:
    """Why ``certificates`` do not prove that views ``0 .. view-1`` failed at
    ``height``, or ``None``: each must be signed by more than 2/3 of the
    committee (the same members in every view)."""
    if view == 0:
        return None if certificates in (None, []) else "view 0 needs no view change"
    if not isinstance(certificates, list) or len(certificates) != view:
        return (
            f"view {view} needs a view-change certificate for each of views "
            f"0..{view - 1}"
        )
    needed = quorum(len(committee))
    for earlier, cert in enumerate(certificates):
        if not isinstance(cert, Mapping) or set(cert) != {"view", "signatures"}:
            return f"view change {earlier} must have exactly view and signatures"
        if cert["view"] != earlier or isinstance(cert["view"], bool):
            return f"view change {earlier} names view {clip(repr(cert['view']), 24)}"
        what = f"view-{earlier} change signature"
        entries, problem = _signers(cert["signatures"], _VC_FIELDS, committee, what)
        if problem is not None:
            return problem
        statement = view_change_statement(chain_id, height, earlier, prev_hash)
        for index, entry in enumerate(entries):
            if not signature_ok(str(entry["verifier"]), statement, entry["signature"]):
                return f"{what} {index} is invalid"
        if len(entries) < needed:
            return (
                f"view {earlier} gave way on {len(entries)} of {len(committee)} "
                f"members' signed view changes; more than 2/3 ({needed}) must sign"
            )
    return None


def store_signatures(
    db: sqlite3.Connection, height: int, signatures: Sequence[Mapping[str, Any]]
) -> None:
    """Store a block's header signatures (inside the caller's transaction)."""
    db.execute(_SCHEMA)
    db.execute(
        f"INSERT OR REPLACE INTO {_TABLE} (height, signatures) VALUES (?, ?)",
        (height, encode(LATEST_FORMAT, [dict(s) for s in signatures])),
    )


def load_signatures(db: sqlite3.Connection, height: int) -> list[Any] | None:
    """A block's stored header signatures (``None``: none stored). Raises
    ``ValueError`` if they are not a canonical JSON list."""
    tables = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
    ).fetchone()
    if tables is None:
        return None
    row = db.execute(
        f"SELECT signatures FROM {_TABLE} WHERE height = ?", (height,)
    ).fetchone()
    if row is None:
        return None
    if not isinstance(row[0], bytes):
        raise ValueError("corrupt header signatures: the stored value is not bytes")
    value = parse_canonical(row[0], LATEST_FORMAT)
    if not isinstance(value, list):
        raise ValueError("stored header signatures are not a list")
    return value


def verify_statement(public_hex: str, message: bytes, signature: bytes) -> None:
    """Raise ``ValueError`` unless ``signature`` is ``public_hex``'s over
    ``message`` (for signatures that come back from another machine)."""
    try:
        VerifyKey(public_hex.encode(), encoder=HexEncoder).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise ValueError(f"bad signature from {public_hex[:12]}…: {exc}") from None


def headers_declared(pov: Mapping[str, Any]) -> bool:
    """Whether a genesis ``pov`` entry declares quorum-signed headers
    (``ValueError`` if it declares something else)."""
    declared = pov.get("headers")
    if declared is None:
        return False
    if declared != QUORUM_FORMAT:
        raise ValueError(f"pov.headers must be {QUORUM_FORMAT!r}")
    return True


# pylint: disable=too-many-arguments
def check_signed_block(
    committee: Sequence[str],
    chain_id: str,
    height: int,
    prev_hash: str,
    block_hash: str,
    body: Mapping[str, Any],
    signatures: Any,
) -> tuple[str | None, bool]:
    """A block of a quorum-signed chain: why its view-change certificates or
    header signatures fail (or ``None``), and whether a quorum of its signers
    say they replayed its model."""
    view = block_view(body)
    if view is None:
        return "view must be an integer >= 0", False
    problem = check_view_changes(
        chain_id, height, prev_hash, view, committee, body.get(VIEW_CHANGES_FIELD)
    )
    if problem is None:
        problem = check_header_quorum(
            chain_id, height, view, block_hash, committee, signatures
        )
    if problem is not None:
        return problem, False
    replayed = sum(1 for s in signatures if s["replayed"] is True)
    return None, replayed >= quorum(len(committee))
