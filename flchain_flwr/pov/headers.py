"""Committee members sign a block's header, after checking it.

A member signs a pending block
(:func:`~flchain_flwr.ledger.statements.header_statement`) only if:

- **continuity**: the header is at the height and after the previous block
  where the member holds its position (where it voted,
  :meth:`~flchain_flwr.pov.Verifier.take_position`), in the chain it voted
  in; and at its (height, view) it has signed neither a view change nor
  another header, nor anything at a later view (:func:`~.views.take_statement`);
  at a view after 0 the block carries a view-change certificate signed by
  more than 2/3 of the committee for each earlier view, as ``verify`` checks
  (:func:`~flchain_flwr.ledger.quorum.check_view_changes`);
- **the block is the one voted on**: its hash, body hash and Merkle root
  match its contents, it names the member in its committee and the view it
  is signed in, its votes are valid signed votes of that committee in this
  very context (chain, height, view, previous hash, parent model, rule), and
  the updates it includes are exactly those with more than 2/3 approving
  votes among them, each once;
- **what verify checks of it**: its leader signed its header, and by the
  chain's PoV rules (``verify``'s own
  :meth:`~flchain_flwr.ledger.PoVState.check_block`, on the chain's state
  before the block) its committee is the one drawn for its previous hash and
  view, leader first, and its votes, quorum, evidence and deposits are what
  ``verify`` accepts. In-process members check it on the committee's state; a
  verifier node, which holds no chain, on the state the header request
  carries (the pool, stakes and deposit rules: the server's word, so there
  what binds a server that holds no key is that the committee is in the
  draw's order for its view and that its first member signed the header);
- **the model**: in-process, its model hash, velocity and contributions are
  what :class:`~flchain_flwr.ledger.replay.PendingReplay` recomputes from the
  parent and the stored updates (the members are one process, so one replay
  serves them all); a block that cannot be replayed (PoVStrategy's) is signed
  with ``replayed: false``. A verifier node replays from the payloads of its
  own vote requests and what the header request carries
  (:mod:`.memberreplay`), and signs ``replayed: false`` only where it cannot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from logging import WARNING
from typing import TYPE_CHECKING, Any

from flwr.supercore import log

from ..ledger import (
    Block,
    BlockSigner,
    Ledger,
    PoVRules,
    PoVState,
    VoteContext,
    check_vote,
    quorum,
)
from ..ledger.blocks import entries_problem, leader_signed
from ..ledger.canonical import BODY_TAG, HEADER_TAG, parse_json, sha256_hex
from ..ledger.consensus import block_view
from ..ledger.merkle import merkle_root
from ..ledger.pending import record_pending
from ..ledger.quorum import VIEW_CHANGES_FIELD, check_view_changes
from ..ledger.statements import header_statement, sign_statement, signature_ok
from ..quoting import clip
from .judging import Rule
from .verifier import RefusedRequest, Verifier
from .views import take_statement

if TYPE_CHECKING:
    from ..ledger.replay import PendingReplay
    from .committee import Committee


def proposal_problem(
    verifier: Verifier, block: Block, view: int, rule_digest: str, state: PoVState
) -> str | None:
    """Why ``verifier`` must not sign the pending ``block`` in ``view``
    (everything but the model, see the module docstring), or ``None``;
    ``state``: the chain's stakes and pool before the block."""
    header, body = block.header, block.body
    chain_id, height = str(header.get("chain_id")), header.get("height")
    if isinstance(height, bool) or not isinstance(height, int):
        return "the header's height is not an integer"
    held = verifier.seen.get(chain_id)
    if held is None or held[:2] != (height, header.get("prev_hash")):
        where = "nothing" if held is None else f"height {held[0]} after {held[1][:12]}…"
        return (
            f"the header is at height {height!r} after "
            f"{str(header.get('prev_hash'))[:12]}…; this verifier holds {where}"
        )
    if sha256_hex(HEADER_TAG, block.header_bytes) != block.hash:
        return "the block hash is not its header's"
    if header.get("body_hash") != sha256_hex(BODY_TAG, block.body_bytes):
        return "the body is not the one the header names"
    if block_view(body) != view:
        said = clip(repr(body.get("view", 0)), 24)
        return f"the body says view {said}, it is signed in view {view}"
    committee = body.get("committee")
    if not isinstance(committee, list) or verifier.public_key not in committee:
        return "this verifier is not in the block's committee"
    if not leader_signed(header, block.header_bytes, block.signature):
        return "its leader's signature over the header is missing or invalid"
    problem = entries_problem(body)
    if problem is not None:
        return f"its body is malformed ({problem})"
    problem = check_view_changes(
        chain_id, height, held[1], view, committee, body.get(VIEW_CHANGES_FIELD)
    )
    if problem is not None:
        return problem
    included = [str(u.get("digest")) for u in body.get("included", [])]
    if header.get("updates_root") != merkle_root(included):
        return "the Merkle root is not the included updates'"
    context = VoteContext(chain_id, height, held[1], held[2], rule_digest, view)
    approving: Counter[str] = Counter()
    voters: set[tuple[str, str]] = set()
    for index, vote in enumerate(body.get("votes", [])):
        problem = check_vote(context, vote)
        if problem is not None:
            return f"vote {index}: {problem}"
        pair = (str(vote["verifier"]), str(vote["candidate"]))
        if pair[0] not in committee or pair in voters:
            return f"vote {index} is not a committee member's first on its update"
        voters.add(pair)
        approving[pair[1]] += vote["verdict"] is True
    needed = quorum(len(committee))
    approved = {digest for digest, n in approving.items() if n >= needed}
    if len(set(included)) != len(included) or set(included) != approved:
        return (
            f"it includes {len(included)} updates; the votes approve "
            f"{len(approved)} (the included set must be the approved set)"
        )
    return _own_votes_problem(verifier, block, view, voters) or _pov_problem(
        state, held[1], header, body
    )


def _pov_problem(
    state: PoVState, prev_hash: str, header: dict[str, Any], body: dict[str, Any]
) -> str | None:
    """What ``verify`` says of the block by the chain's PoV rules
    (:meth:`~flchain_flwr.ledger.PoVState.check_block`: its committee is the
    draw for its previous hash and view, its leader that committee's first,
    its votes, quorum, evidence and the deposits they imply), on ``state``
    before the block, which it leaves as it is."""
    try:
        problem = state.check_block(prev_hash, header, body, apply=False)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"its body is malformed ({clip(repr(exc), 80)})"
    return None if problem is None else f"verify would refuse it: {problem}"


def _own_votes_problem(
    verifier: Verifier, block: Block, view: int, voters: set[tuple[str, str]]
) -> str | None:
    """A block that judges an update this verifier voted on (here, in this
    view) must hold its vote on it."""
    header, body = block.header, block.body
    held = verifier.voted.get(str(header.get("chain_id")))
    if held is None or held[:2] != (header.get("height"), header.get("prev_hash")):
        return None
    mine = held[2].get(view, set())
    judged = {
        str(entry.get("digest"))
        for part in ("included", "rejected")
        for entry in body.get(part, [])
        if isinstance(entry, dict)
    }
    left_out = sorted(
        d for d in mine & judged if (verifier.public_key, d) not in voters
    )
    if left_out:
        return f"it leaves out this verifier's vote on {left_out[0][:16]}…"
    return None


# pylint: disable=too-many-arguments
def cosign_header(
    verifier: Verifier,
    block: Block,
    *,
    view: int,
    rule_digest: str,
    replayed: bool,
    state: PoVState,
    model_problem: str | None = None,
) -> dict[str, Any]:
    """``verifier``'s header signature on ``block``; :class:`RefusedRequest`
    if a check fails (``model_problem``: why the model is not the replay's;
    ``state``: the chain's PoV state before the block)."""
    if model_problem is not None:
        raise RefusedRequest(f"replay refuses the block: {model_problem}")
    problem = proposal_problem(verifier, block, view, rule_digest, state)
    if problem is not None:
        raise RefusedRequest(problem)
    chain_id, height = str(block.header["chain_id"]), int(block.header["height"])
    take_statement(verifier, chain_id, height, view, block.hash)
    statement = header_statement(chain_id, height, view, block.hash, replayed)
    return {
        "verifier": verifier.public_key,
        "replayed": replayed,
        "signature": sign_statement(verifier.key, statement),
    }


class ViewGivenUp(RuntimeError):
    """A block's leader did not sign its header, and its view was given up
    and recorded beside the ledger (:mod:`.viewrecord`): deciding the block
    again, as a restart would, goes on at the next view."""

    def __init__(self, message: str, height: int, view: int) -> None:
        super().__init__(message)
        self.height, self.view = height, view


class HeaderSigner:
    """Signs a PoV block: its leader's signature over the header (as before),
    then more than 2/3 of its committee's header signatures (what ``verify``
    checks against the genesis pool keys).

    A :class:`~flchain_flwr.ledger.quorum.HeaderCosigner`: the ledger calls
    :meth:`sign` and then :meth:`cosign` inside the block's transaction. A
    leader that refuses, fails or does not answer in time when asked for its
    header signature has its view given up as a leader that cannot lead
    (:meth:`~.views.Views.give_up`: the members sign a view change, recorded
    beside ``ledger``) before :meth:`sign` raises :class:`ViewGivenUp`:
    FedBuff's committee stage and PoVStrategy then decide the block again at
    the next view (:meth:`HeaderSigning.decides_again`), and a FedBuff run
    that stops there resumes the height at that view.
    """

    attempts: int = 3
    """How many times the members that have not signed are asked (a member
    re-signs the same block hash, so asking again is safe)."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        committee: Committee,
        leader: BlockSigner,
        members: Sequence[str],
        view: int,
        *,
        on_quorum: Callable[[], None] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.committee = committee
        self.leader = leader
        self.members = list(members)
        self.view = view
        self.on_quorum = on_quorum
        self.ledger = ledger
        """Where a view given up for a leader that did not sign is recorded."""

    @property
    def verify_key(self) -> Any:
        """The leader's public key (the header's ``leader``)."""
        return self.leader.verify_key

    def sign(self, smessage: bytes) -> Any:
        """The leader's signature over the header ``smessage``; if it does
        not come, the view is given up (see the class docstring) and
        :class:`ViewGivenUp` raised, or ``RuntimeError`` if too few members
        signed the view change or there is no ledger to record it beside."""
        try:
            return self.leader.sign(smessage)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            failed = f"did not sign the header ({clip(str(exc))})"
            header = parse_json(smessage[len(HEADER_TAG) :])
            context = VoteContext(
                str(header["chain_id"]),
                int(header["height"]),
                str(header["prev_hash"]),
                view=self.view,
            )
            given_up = self.committee.give_up(
                context, self.members, failed, self.ledger
            )
            where = f"block {context.height}: leader {self.members[0][:12]}… of view"
            if given_up is None or self.ledger is None:
                raise RuntimeError(
                    f"{where} {self.view} {failed}; too few members signed a "
                    "view change: the view stays"
                ) from exc
            raise ViewGivenUp(
                f"{where} {self.view} {failed}; the view is given up, and a "
                f"restart resumes the height at view {self.view + 1}",
                context.height,
                self.view,
            ) from exc

    def cosign(self, ledger: Ledger, block: Block) -> list[dict[str, Any]]:
        """The members' header signatures (each checked), asking those that
        have not signed up to :attr:`attempts` times, after recording the
        block as pending (:mod:`.pending`); ``RuntimeError`` if
        fewer than a quorum signed, naming why the others did not. Calls
        ``on_quorum`` once the quorum is there."""
        record_pending(ledger, block, self.view)  # before the first request
        needed = quorum(len(self.members))
        valid: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for _ in range(self.attempts):
            asked = [k for k in self.members if k not in valid]
            signatures, problems = self.committee.header_signatures(
                asked, ledger, block, self.view
            )
            for entry in signatures:
                if self._valid(block, entry, asked):
                    valid[str(entry["verifier"])] = entry
                else:
                    problems.append(
                        f"header signature by {entry['verifier']} is invalid"
                    )
            if len(valid) >= needed:
                if self.on_quorum is not None:
                    self.on_quorum()
                return [valid[k] for k in self.members if k in valid]
        raise RuntimeError(
            f"block {block.header['height']}: {len(valid)} of {len(self.members)} "
            f"committee members signed its header, {needed} needed; "
            + "; ".join(problems)
        )

    def _valid(self, block: Block, entry: dict[str, Any], asked: list[str]) -> bool:
        statement = header_statement(
            str(block.header["chain_id"]),
            int(block.header["height"]),
            self.view,
            block.hash,
            entry["replayed"] is True,
        )
        return entry["verifier"] in asked and signature_ok(
            str(entry["verifier"]), statement, str(entry["signature"])
        )


class HeaderSigning:
    """How in-process members are asked to sign a header (mixed into
    :class:`~flchain_flwr.pov.Committee`; a remote committee asks its
    nodes instead)."""

    verifiers: dict[str, Verifier]
    rule: Rule
    rules: PoVRules
    state: PoVState
    pending_replay: PendingReplay | None = None
    """The replay the in-process members share (made on first use)."""

    def header_signatures(
        self, members: Sequence[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Each member's signature on the pending ``block`` (see
        :mod:`.headers`), and why the others refused. In-process members
        share one replay of the block (they are one process)."""
        if self.pending_replay is None or self.pending_replay.ledger is not ledger:
            from ..ledger.replay import PendingReplay  # it imports the strategies

            self.pending_replay = PendingReplay(ledger)
        replayed, problem = self.pending_replay.check(block)
        signatures, problems = [], []
        for key in members:
            try:
                signatures.append(
                    cosign_header(
                        self.verifiers[key],
                        block,
                        view=view,
                        rule_digest=self.rule.digest,
                        replayed=replayed,
                        state=self.state,
                        model_problem=problem,
                    )
                )
            except RefusedRequest as exc:
                problems.append(f"verifier {key[:12]}… refused: {exc}")
        return signatures, problems

    def decides_again(self, error: BaseException, failures: int) -> bool:
        """Whether a block whose ``failures``-th attempt raised ``error`` is
        decided again: when its leader did not sign the header and its view
        was given up (:class:`ViewGivenUp`), the next decision reads the
        recorded view changes, as a restart's does, and goes on at the next
        view. At most one rotation of the committee: after
        ``committee_size`` such failures the run stops."""
        if not isinstance(error, ViewGivenUp):
            return False
        if failures >= max(1, self.rules.committee_size):
            return False
        log(
            WARNING,
            "PoV: block %d is decided again: view %d was given up (its leader "
            "did not sign the header)",
            error.height,
            error.view,
        )
        return True
