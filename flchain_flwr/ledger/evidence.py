"""Equivocation evidence: two signed statements of one verifier that contradict.

An honest committee member signs, at one (height, view) of a chain, at most
one of: a header statement for one block, or a view-change statement
(:mod:`.quorum`). An evidence record holds two of its signed statements at
one (chain, height, view) that break this rule: two header statements for
different blocks, or a header statement and a view change. It is
self-checking: anyone holding only the verifier's public key can check it
(:func:`check_equivocation`), with no ledger.

A block may carry records in its body (``evidence``); the deposit rules
(:mod:`.consensus`) then take the whole stake of each accused verifier, once.
These records are the only thing besides a block's own contradicting votes
that slashes: a vote the block's assembler left out costs nothing.

:func:`fork_evidence` builds the records two blocks at one height yield.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .canonical import LATEST_FORMAT, encode, sha256_hex
from .statements import header_statement, signature_ok, view_change_statement

EVIDENCE_FORMAT: Final = "flchain-equivocation/1"
EVIDENCE_FIELD: Final = "evidence"
"""Body field: equivocation records the block's deposits settle."""
_FIELDS: Final = frozenset(
    {"format", "verifier", "chain_id", "height", "view", "statements"}
)
_HEADER: Final = frozenset({"kind", "block", "replayed", "signature"})
_VIEW_CHANGE: Final = frozenset({"kind", "prev_hash", "signature"})


def header_signed(block: str, replayed: bool, signature: str) -> dict[str, Any]:
    """One signed header statement, as an evidence record holds it."""
    return {
        "kind": "header",
        "block": block,
        "replayed": replayed,
        "signature": signature,
    }


def view_change_signed(prev_hash: str, signature: str) -> dict[str, Any]:
    """One signed view-change statement, as an evidence record holds it."""
    return {"kind": "view-change", "prev_hash": prev_hash, "signature": signature}


# pylint: disable=too-many-arguments
def equivocation(
    verifier: str,
    chain_id: str,
    height: int,
    view: int,
    first: Mapping[str, Any],
    second: Mapping[str, Any],
) -> dict[str, Any]:
    """An evidence record (check it with :func:`check_equivocation`)."""
    return {
        "format": EVIDENCE_FORMAT,
        "verifier": verifier,
        "chain_id": chain_id,
        "height": height,
        "view": view,
        "statements": [dict(first), dict(second)],
    }


def evidence_id(record: Mapping[str, Any]) -> str:
    """SHA-256 of the record's canonical form (names it in deposit entries)."""
    return sha256_hex(encode(LATEST_FORMAT, dict(record)))


def _statement(record: Mapping[str, Any], signed: Any) -> bytes | str:
    """The bytes a signed statement signs, or why it is malformed."""
    if not isinstance(signed, Mapping):
        return "a statement must be an object"
    chain_id, height, view = record["chain_id"], record["height"], record["view"]
    if signed.get("kind") == "header" and set(signed) == _HEADER:
        if not isinstance(signed["replayed"], bool):
            return "a header statement's replayed must be a boolean"
        return header_statement(
            chain_id, height, view, str(signed["block"]), signed["replayed"]
        )
    if signed.get("kind") == "view-change" and set(signed) == _VIEW_CHANGE:
        return view_change_statement(chain_id, height, view, str(signed["prev_hash"]))
    return "a statement must be a header or a view change with exactly its fields"


def check_equivocation(record: Any, chain_id: str | None = None) -> str | None:
    """Why ``record`` is not valid evidence (of ``chain_id``, when given)
    that its verifier equivocated, or ``None``."""
    if not isinstance(record, Mapping) or set(record) != _FIELDS:
        return f"evidence must have exactly the fields {sorted(_FIELDS)}"
    if record["format"] != EVIDENCE_FORMAT:
        return f"evidence format must be {EVIDENCE_FORMAT!r}"
    for name in ("height", "view"):
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"evidence {name} must be an integer >= 0"
    if not isinstance(record["chain_id"], str) or not isinstance(
        record["verifier"], str
    ):
        return "evidence chain_id and verifier must be strings"
    if chain_id is not None and record["chain_id"] != chain_id:
        return "evidence is about another chain"
    statements = record["statements"]
    if not isinstance(statements, list) or len(statements) != 2:
        return "evidence must hold exactly two statements"
    kinds = []
    for index, signed in enumerate(statements):
        message = _statement(record, signed)
        if isinstance(message, str):
            return f"statement {index}: {message}"
        if not signature_ok(record["verifier"], message, str(signed["signature"])):
            return f"statement {index} is not signed by the accused verifier"
        kinds.append(signed["kind"])
    first, second = statements
    if kinds == ["header", "header"]:
        if first["block"] == second["block"]:
            return "both header statements approve the same block"
        return None
    if "header" in kinds:
        return None  # a header and a view change at one (height, view)
    return "two view changes do not contradict"


# pylint: disable=too-many-arguments,too-many-locals
def fork_evidence(
    chain_id: str,
    height: int,
    first: tuple[str, int, Sequence[Mapping[str, Any]], Sequence[Any]],
    second: tuple[str, int, Sequence[Mapping[str, Any]], Sequence[Any]],
    prev_hash: str,
) -> list[dict[str, Any]]:
    """Evidence from two different blocks at ``height`` after ``prev_hash``.

    Each block is ``(hash, view, header signatures, view-change
    certificates)``. At one view, every key that signed both headers; at two
    views, every key that signed the earlier block's header and the later
    block's view change of that view. Records are not checked here (a forged
    signature gives a record :func:`check_equivocation` rejects).
    """
    (hash_a, view_a, sigs_a, _), (hash_b, view_b, sigs_b, certs_b) = sorted(
        (first, second), key=lambda block: block[1]
    )
    records = []
    if view_a == view_b:
        others = {str(s["verifier"]): s for s in sigs_b}
        for sig in sigs_a:
            other = others.get(str(sig["verifier"]))
            if other is not None and hash_a != hash_b:
                records.append(
                    equivocation(
                        str(sig["verifier"]),
                        chain_id,
                        height,
                        view_a,
                        header_signed(hash_a, sig["replayed"], sig["signature"]),
                        header_signed(hash_b, other["replayed"], other["signature"]),
                    )
                )
        return records
    cert = next(
        (c for c in certs_b if isinstance(c, Mapping) and c.get("view") == view_a),
        None,
    )
    gave_up = {str(s["verifier"]): s for s in (cert or {}).get("signatures", [])}
    for sig in sigs_a:
        other = gave_up.get(str(sig["verifier"]))
        if other is not None:
            records.append(
                equivocation(
                    str(sig["verifier"]),
                    chain_id,
                    height,
                    view_a,
                    header_signed(hash_a, sig["replayed"], sig["signature"]),
                    view_change_signed(prev_hash, other["signature"]),
                )
            )
    return records


def ledgers_fork_evidence(first: Any, second: Any) -> list[dict[str, Any]]:
    """Evidence from two ledgers of one chain that hold different blocks at
    one height: at the first such height (both blocks follow the same
    previous block there), the records :func:`fork_evidence` builds from
    their stored header signatures and view changes. Empty if neither
    ledger holds a block the other contradicts. Takes two
    :class:`~flchain_flwr.ledger.Ledger` objects."""
    if first.chain_id != second.chain_id:
        raise ValueError("the two ledgers hold different chains")
    for height in range(1, min(len(first), len(second))):
        a, b = first.block(height), second.block(height)
        if a.hash == b.hash:
            continue
        if a.header["prev_hash"] != b.header["prev_hash"]:
            raise ValueError(f"the ledgers already differ below height {height}")
        blocks = [
            (
                block.hash,
                int(block.body.get("view", 0)),
                ledger.header_signatures(height) or [],
                block.body.get("view_changes", []),
            )
            for ledger, block in ((first, a), (second, b))
        ]
        return fork_evidence(
            first.chain_id, height, blocks[0], blocks[1], str(a.header["prev_hash"])
        )
    return []


def settled_evidence(height: int, body: Mapping[str, Any]) -> list[str]:
    """One line per equivocation record block ``height`` settles (what
    ``verify`` lists; the deposit rules slash for each, whatever the chain's
    header signing)."""
    return [
        f"block {height} settles evidence that {record.get('verifier')!s} signed "
        f"contradicting statements at height {record.get('height')!r} view "
        f"{record.get('view')!r}"
        for record in body.get(EVIDENCE_FIELD, [])
        if isinstance(record, Mapping)
    ]
