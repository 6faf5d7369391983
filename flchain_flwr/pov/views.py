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

A server keeps its view only for the run, members (verifier nodes, in their
state files) for good: a restarted server starts a height at view 0 again,
where its members may have signed view changes. They say so with their votes
(:func:`moved_past`), and a view in which too few could still sign a header
(:func:`passed_over`) is given up like a failed leader's: each signs the same
view change again (:func:`take_statement` lets it), and the next view's
leader takes over. Only the last view a member gave up at a height can be
re-signed so (it keeps only its last statement): the certificates of earlier
ones survive a restart in the server's view-change record (:mod:`.viewrecord`).

What a member's view change attests: in-process, that the committee (one
process) saw the leader refuse or fail; on a verifier node, that the server
asked for it (the node cannot watch the leader itself, all traffic goes
through the server). Safety does not rest on it: it rests on no member
signing both a header and a view change at one (height, view).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from logging import WARNING
from typing import Any, Final

from flwr.supercore import log
from nacl.encoding import HexEncoder
from nacl.signing import VerifyKey

from ..ledger import BlockSigner, Ledger, PoVState, VoteContext
from ..ledger.canonical import LATEST_FORMAT, encode
from ..ledger.consensus import quorum
from ..ledger.statements import sign_statement, signature_ok, view_change_statement
from .decision import CommitteeDecision
from .verifier import Behaviour, RefusedRequest, Verifier, position_problem
from .viewrecord import keep_view_change

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
    (a verifier node keeps it in its state file, :mod:`.lockstate`), and
    only at a height and view in their exact shape (:func:`position_problem`)."""
    problem = position_problem(height, view)
    if problem is not None:
        raise RefusedRequest(f"the statement's position: {problem}")
    last = verifier.statements.get(chain_id)
    if last is not None:
        if (height, view) < (last[0], last[1]):
            raise RefusedRequest(
                f"height {height} view {view} is behind height {last[0]} view "
                f"{last[1]}, where this verifier has signed {_what(last[2])}"
            )
        if (height, view) == (last[0], last[1]) and what != last[2]:
            raise RefusedRequest(
                f"this verifier already signed {_what(last[2])} at height "
                f"{height} view {view}"
            )
    verifier.statements[chain_id] = (height, view, what)


def moved_past(verifier: Verifier, chain_id: str, height: int, view: int) -> bool:
    """Whether ``verifier`` signed a view change at (``height``, ``view``) or
    anything at a later view of ``height``: it signs no new header there
    (:func:`take_statement`). A verifier node says so with its votes, so that
    a restarted server, which starts each height at view 0, passes over such
    a view again (:func:`passed_over`)."""
    last = verifier.statements.get(chain_id)
    return (
        last is not None
        and last[0] == height
        and (last[1] > view or (last[1] == view and last[2] == "view-change"))
    )


def passed_over(members: Sequence[str], moved: Collection[str]) -> str | None:
    """Why a view must be given up like a failed leader's: so many of its
    committee ``members`` have moved past it (``moved``, see
    :func:`moved_past`) that fewer than a quorum can sign a header in it;
    ``None`` if enough can."""
    left = len(members) - len(set(moved) & set(members))
    if left >= quorum(len(members)):
        return None
    return (
        f"has lost its view ({len(members) - left} of {len(members)} members "
        "signed a view change in it or something at a later view; "
        f"{quorum(len(members))} must sign the header)"
    )


def view_stays(context: VoteContext, members: Sequence[str], problem: str) -> None:
    """Log that ``context``'s view stays although its leader failed: the last
    view a search tries is not given up (a certificate that it failed does
    not belong in a block at that view), so its block is signed only if that
    leader recovers."""
    log(
        WARNING,
        "PoV: leader %s… of height %d view %d %s; the last view tried "
        "stays (its block is signed only if that leader recovers)",
        members[0][:12],
        context.height,
        context.view,
        problem,
    )


def _what(signed: str) -> str:
    return "a view change" if signed == "view-change" else f"header {signed[:16]}…"


def sign_view_change(verifier: Verifier, context: VoteContext) -> dict[str, Any]:
    """``verifier``'s signed view change for ``context``'s view: refused if
    it goes back on the position it holds (:meth:`Verifier.take_position`) or
    on a header it signed there."""
    problem = position_problem(context.height, context.view, context.prev_hash)
    if problem is not None:
        raise RefusedRequest(f"the view change's position: {problem}")
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


def _signed(entry: Mapping[str, Any], statement: bytes) -> bool:
    return signature_ok(str(entry["verifier"]), statement, str(entry["signature"]))


class Views:
    """How a committee moves through views (mixed into
    :class:`~flchain_flwr.pov.Committee`): who leads, whether the leader is
    ready, and the view-change certificates when it is not."""

    verifiers: dict[str, Verifier]
    state: PoVState

    def view_change_signatures(
        self, members: Sequence[str], context: VoteContext
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Each member's signed view change for ``context``'s view, and why
        the others refused."""
        signatures, problems = [], []
        for key in members:
            try:
                signatures.append(sign_view_change(self.verifiers[key], context))
            except RefusedRequest as exc:
                problems.append(f"verifier {key[:12]}… refused: {exc}")
        return signatures, problems

    def signer(self, leader: str) -> BlockSigner:
        """What signs a block led by ``leader``: here its own signing key."""
        verifier = self.verifiers[leader]
        if verifier.behaviour is Behaviour.REFUSE_TO_LEAD:
            return RefusingSigner(verifier)
        return verifier.key

    def leader_ready(self, leader: str, context: VoteContext) -> str | None:
        """Why ``leader`` cannot lead the block in ``context``, or ``None``.

        The leader must sign a statement that it leads this view
        (:func:`lead_statement`) through the same signer that signs the
        block: one that refuses, fails or (remotely) does not answer in time
        hands over to the next view's leader before any vote is cast in its
        view.
        """
        statement = lead_statement(context, leader)
        try:
            signed = self.signer(leader).sign(statement)
            VerifyKey(leader.encode(), encoder=HexEncoder).verify(
                statement, signed.signature
            )
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return f"cannot lead ({exc})"
        return None

    def choose_view(
        self, context: VoteContext, ledger: Ledger | None = None
    ) -> tuple[VoteContext, list[str], list[dict[str, Any]]]:
        """The first view, from ``context.view`` on, whose leader is ready, its
        committee (leader first) and the certificates that the views before
        it failed (:meth:`certify_view_change`; each recorded in ``ledger``'s
        view-change record, see :meth:`give_up`). The search stops at
        a view whose leader is not ready but that too few members give up,
        or at the last view of one full rotation, which is not given up here:
        its leader is asked again once the votes are in
        (:meth:`~.deciding.Deciding.decide`).
        Either way the certificates are exactly those of the views before the
        one returned."""
        assert context.prev_hash is not None
        certificates: list[dict[str, Any]] = []
        ready, members = context, self.state.committee(context.prev_hash, context.view)
        last = context.view + len(members) - 1
        for view in range(context.view, last + 1):
            members = self.state.committee(context.prev_hash, view)
            ready = replace(context, view=view)
            problem = self.leader_ready(members[0], ready)
            if problem is None:
                return ready, members, certificates
            if view == last:
                view_stays(ready, members, f"{problem}, as did every leader before")
                break
            certificate = self.give_up(ready, members, problem, ledger)
            if certificate is None:
                break
            certificates.append(certificate)
        return ready, members, certificates

    def give_up(
        self,
        context: VoteContext,
        members: list[str],
        problem: str,
        ledger: Ledger | None = None,
    ) -> dict[str, Any] | None:
        """The certificate that ``context``'s view failed, or ``None`` (then
        the view stays), logging why. With a ``ledger`` the certificate is
        recorded beside it before anything happens in the next view
        (:mod:`.viewrecord`): members do not sign it again once they have
        signed anything at a later view."""
        certificate, refusals = self.certify_view_change(members, context)
        if certificate is not None and ledger is not None:
            keep_view_change(ledger, context, certificate)
        for refusal in refusals:
            log(WARNING, "PoV: view change: %s", refusal)
        log(
            WARNING,
            "PoV: leader %s… of height %d view %d %s; %s",
            members[0][:12],
            context.height,
            context.view,
            problem,
            f"view {context.view + 1} takes over"
            if certificate is not None
            else "too few members signed a view change: the view stays",
        )
        return certificate

    def certify_view_change(
        self, members: list[str], context: VoteContext
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """The certificate that ``context``'s view failed (``None`` if fewer
        than a quorum of ``members`` signed it), and why members did not."""
        signatures, problems = self.view_change_signatures(members, context)
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


def carried_votes(
    earlier: Sequence[dict[str, Any]], view: int, decision: CommitteeDecision
) -> list[dict[str, Any]]:
    """The votes the next block holds after ``decision``: those cast since the
    last block in ``view`` and ``decision``'s. Earlier votes go when the view
    changed (they sign their view) and on any update decided again (the same
    update resent to the same parent: the later judgement stands)."""
    decided = {o.digest for o in decision.outcomes}
    kept = [
        v
        for v in earlier
        if decision.view == view and str(v["candidate"]) not in decided
    ]
    return kept + list(decision.votes)


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
