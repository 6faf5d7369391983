"""Views: who leads a height, and the signed proof that earlier leaders failed.

At each height the committee is drawn from the previous block's hash; view
``v`` rotates it left by ``v`` (:func:`~flchain_flwr.ledger.select_committee`),
so when a leader refuses, fails or does not answer, the next member leads.
A leader takes its view by signing a :func:`lead_statement` (before the votes,
and again once they are in). When it does not, the members sign view changes
(:func:`~flchain_flwr.ledger.statements.view_change_statement`); more than 2/3
of the committee must, for each view given up, and the block carries these
certificates (``view_changes``). A member never signs a view change where it
signed a header, or the reverse (:mod:`.headers`), so a member that skips an
honest view to lead a height itself needs the signed help of more than 2/3 of
the committee, and two blocks at one height need more than 1/3 of it to have
signed contradicting statements (see :mod:`flchain_flwr.ledger.quorum`).

What a member's view change attests: in-process, that the committee (one
process) saw the leader refuse or fail; on a verifier node, that the server
asked for it (the node cannot watch the leader itself, all traffic goes
through the server). Safety does not rest on it: it rests on no member
signing both a header and a view change at one (height, view).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..ledger import VoteContext
from ..ledger.canonical import LATEST_FORMAT, encode
from ..ledger.consensus import quorum
from ..ledger.statements import sign_statement, signature_ok, view_change_statement
from .verifier import RefusedRequest, Verifier

if TYPE_CHECKING:
    from .committee import Committee

LEAD_TAG: Final = b"flchain-pov-lead/1\n"
"""Prefix of the statement a leader signs to take a view (not a header)."""


def lead_statement(context: VoteContext, leader: str) -> bytes:
    """What ``leader`` signs to say it leads the block in ``context``."""
    return LEAD_TAG + encode(
        LATEST_FORMAT,
        {
            "chain_id": context.chain_id,
            "height": context.height,
            "view": context.view,
            "prev_hash": context.prev_hash,
            "parent_model": context.parent_model,
            "leader": leader,
        },
    )


def take_statement(
    verifier: Verifier, chain_id: str, height: int, view: int, what: str
) -> None:
    """Record that ``verifier`` signs ``what`` (a block hash, or
    ``"view-change"``) at (``height``, ``view``); :class:`RefusedRequest` if
    it signed something else there, or has moved past that point. What it
    signs only moves forward, so the last statement per chain is enough
    (a verifier node keeps it in its run state)."""
    last = verifier.statements.get(chain_id)
    if last is not None:
        if (height, view) < (last[0], last[1]):
            raise RefusedRequest(
                f"height {height} view {view} is behind height {last[0]} view "
                f"{last[1]}, where this verifier has signed"
            )
        if (height, view) == (last[0], last[1]) and what != last[2]:
            raise RefusedRequest(
                f"this verifier already signed {_what(last[2])} at height "
                f"{height} view {view}"
            )
    verifier.statements[chain_id] = (height, view, what)


def _what(signed: str) -> str:
    return "a view change" if signed == "view-change" else f"header {signed[:16]}…"


def sign_view_change(verifier: Verifier, context: VoteContext) -> dict[str, Any]:
    """``verifier``'s signed view change for ``context``'s view: refused if
    it goes back on the position it holds (:meth:`Verifier.take_position`) or
    on a header it signed there."""
    assert context.prev_hash is not None
    held = verifier.seen.get(context.chain_id)
    if held is not None and (
        context.height < held[0]
        or (context.height == held[0] and context.prev_hash != held[1])
    ):
        raise RefusedRequest(
            f"a view change at height {context.height} after "
            f"{context.prev_hash[:12]}… goes back on height {held[0]}"
        )
    take_statement(
        verifier, context.chain_id, context.height, context.view, "view-change"
    )
    statement = view_change_statement(
        context.chain_id, context.height, context.view, context.prev_hash
    )
    return {
        "verifier": verifier.public_key,
        "signature": sign_statement(verifier.key, statement),
    }


def certify_view_change(
    committee: Committee, members: list[str], context: VoteContext
) -> tuple[dict[str, Any] | None, list[str]]:
    """The certificate that ``context``'s view failed (``None`` if fewer
    than a quorum of ``members`` signed it), and why members did not."""
    signatures, problems = committee.view_change_signatures(members, context)
    assert context.prev_hash is not None
    statement = view_change_statement(
        context.chain_id, context.height, context.view, context.prev_hash
    )
    valid = [s for s in signatures if _signed(s, statement)]
    problems += [
        f"view change by {str(s['verifier'])[:12]}… has a bad signature"
        for s in signatures
        if s not in valid
    ]
    if len(valid) < quorum(len(members)):
        return None, problems
    return {"view": context.view, "signatures": valid}, problems


def _signed(entry: Mapping[str, Any], statement: bytes) -> bool:
    return signature_ok(str(entry["verifier"]), statement, str(entry["signature"]))


@dataclass(frozen=True)
class RefusingSigner:
    """A leader that will not sign (:attr:`Behaviour.REFUSE_TO_LEAD`)."""

    verifier: Verifier

    @property
    def verify_key(self) -> Any:
        """The leader's public key."""
        return self.verifier.key.verify_key

    def sign(self, smessage: bytes) -> Any:
        """Refuse."""
        raise RuntimeError(f"leader {self.verifier.public_key[:12]}… refuses to sign")
