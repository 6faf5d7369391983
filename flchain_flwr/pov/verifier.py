"""A verifier: an Ed25519 identity that signs votes on candidate updates.

It judges each candidate on its own trusted data by a
:class:`~flchain_flwr.pov.judging.Rule` (its own, else the committee's; see
:mod:`.judging` for the loss and direction tests), signs one vote per
candidate bound to the block position
(:class:`~flchain_flwr.ledger.VoteContext`), and refuses
(:class:`RefusedRequest`) a request that contradicts what it knows: another
rule, a global model that is not the parent named, a position that goes
back on one it has voted at, or one that would take the votes it keeps at
one (height, previous hash) past :data:`MAX_VOTED`. Byzantine :class:`Behaviour`
values exist to test the committee.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from ..arrays import NDArrays
from ..ledger import VoteContext, model_hash, sign_vote
from ..ledger.canonical import is_hex
from ..ledger.consensus import natural
from ..quoting import clip
from .judging import ReferenceFn, Rule, ScoreFn, cosine, signed_score
from .memory import MemberMemory
from .norms import norm_ratios

MAX_VOTED: Final = 1024
"""A verifier node's bound on the votes it keeps at one (height, previous
hash) of a chain, all views together (:attr:`Verifier.voted`; with 1024 in
one view its state file is 74 KiB, measured): past it, it refuses to vote on
new candidates there."""


class RefusedRequest(ValueError):
    """A verifier will not vote on a request that contradicts what it knows."""


def position_problem(height: Any, view: Any, *hashes: Any) -> str | None:
    """Why a requested block position is not in its exact shape, or ``None``:
    its height and view integers >= 0 (:func:`~flchain_flwr.ledger.consensus.natural`,
    ``verify``'s rule for a block's view) and each of ``hashes`` (previous
    block, parent model) a SHA-256 as 64 lower-case hex digits. A verifier
    takes nothing else as its position or statement, so what it keeps (a
    verifier node's state file, :mod:`.lockstate`) stays bounded."""
    if natural(height) is None:
        return f"height {_quoted(height)} is not an integer >= 0"
    if natural(view) is None:
        return f"view {_quoted(view)} is not an integer >= 0"
    for value in hashes:
        if not is_hex(value, 64):
            return (
                f"{_quoted(value)} is not a SHA-256 (64 lower-case hex "
                "digits), as a block's or a model's hash is"
            )
    return None


def _quoted(value: Any) -> str:
    """``value`` quoted short (a huge integer by its size: Python refuses to
    write one of more than 4300 digits)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(an integer of {value.bit_length()} bits)"
    return clip(repr(value), 24)


class Behaviour(StrEnum):
    """How a verifier votes: honestly, or one of the Byzantine ways tests use."""

    HONEST = "honest"
    APPROVE_ALL = "approve-all"
    """Approves every candidate, poisoned or not."""
    REJECT_ALL = "reject-all"
    """Rejects every candidate, good or not."""
    INVERT = "invert"
    """Votes the opposite of its honest verdict."""
    GARBAGE_SIGNATURE = "garbage-signature"
    """Votes honestly but signs with random bytes."""
    REFUSE_TO_LEAD = "refuse-to-lead"
    """Votes honestly but refuses to sign a block header as its leader."""


class Verifier:
    """A committee member: signs votes on candidates judged on its trusted data.

    Parameters
    ----------
    score_fn : ScoreFn
        Scores a model on this verifier's trusted test data (e.g. 100 examples).
    key : nacl.signing.SigningKey, optional
        Its Ed25519 identity; a fresh key if not given.
    reference_fn : ReferenceFn, optional
        Trains this verifier's reference update from the global model on its
        trusted data (ideally with the clients' own local training); needed by
        a :class:`~.judging.Threshold` with ``min_cosine``.
    behaviour : Behaviour (default: HONEST)
        Byzantine behaviours exist to test the committee; see :class:`Behaviour`.
    seed : int (default: 0)
        Seeds the garbage of ``GARBAGE_SIGNATURE``.
    rule : Rule, optional
        The verifier's own judging rule. When set, it judges by it alone and
        refuses requests that name another; a verifier on a node of its own
        must have one. Without it (an in-process committee's members) it
        judges by the rule it is given.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        score_fn: ScoreFn,
        key: SigningKey | None = None,
        *,
        reference_fn: ReferenceFn | None = None,
        behaviour: Behaviour | str = Behaviour.HONEST,
        seed: int = 0,
        rule: Rule | None = None,
    ) -> None:
        self.score_fn = score_fn
        self.rule = rule
        self.seen: dict[str, tuple[int, str, str]] = {}
        """By chain id, the last ``(height, previous hash, parent model
        hash)`` it voted at or led (a verifier node keeps it in its state file)."""
        self.statements: dict[str, tuple[int, int, str]] = {}
        """By chain id, the last (height, view, block hash or "view-change")
        it signed as a committee member (see :mod:`flchain_flwr.pov.views`)."""
        self.voted: dict[str, tuple[int, str, dict[int, set[str]]]] = {}
        """By chain id, the (height, previous hash) of its last votes and, by
        view, the candidates it voted on there: a header in a view that leaves
        out one of its votes in that view is refused (see
        :mod:`flchain_flwr.pov.headers`; a verifier node keeps it in its
        state file). Every view's are kept, so a vote request at another view
        frees no header of an earlier one."""
        self.max_voted: int | None = None
        """At most this many votes in :attr:`voted` at one (height, previous
        hash), all views together (a vote request that would take it past
        that is refused); ``None``: no bound, as in-process members hold it in
        memory. A verifier node, which writes it to its state file, is bounded
        at :data:`MAX_VOTED`."""
        self.memory = MemberMemory()
        """On a verifier node: the chain's models it saw and the pending
        height's candidates (see :mod:`flchain_flwr.pov.memory`)."""
        self.headers: dict[str, tuple[int, str]] = {}
        """By chain id, the height and SHA-256 of the last block header it
        signed as a leader (a verifier node keeps it in its state file)."""
        self.state_file: Path | None = None
        """On a verifier node: the file :attr:`seen`, :attr:`headers`,
        :attr:`statements` and :attr:`voted` are kept in (see
        :mod:`flchain_flwr.pov.lockstate`)."""
        self._reference: tuple[str, NDArrays] | None = None
        """The reference update, by the parent model hash it was trained from."""
        self.reference_fn = reference_fn
        self.key = key or SigningKey.generate()
        self.behaviour = Behaviour(behaviour)
        self.public_key: str = self.key.verify_key.encode(HexEncoder).decode()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Verifier({self.public_key[:12]}…, {self.behaviour.value})"

    # pylint: disable=too-many-arguments,too-many-locals
    def vote(
        self,
        *,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[tuple[str, NDArrays]],
        weights: Sequence[float],
        deltas: Sequence[NDArrays],
        rule: Rule | None = None,
    ) -> list[dict[str, Any]]:
        """Signed votes on ``(digest, candidate model)`` pairs in ``context``.

        ``weights`` are the shares of each candidate's delta the block would
        apply (each vote signs its own), ``deltas`` the candidates' updates
        (the direction test needs them), in the same order. The request is
        refused (:class:`RefusedRequest`) if ``global_model`` does not hash to
        ``context.parent_model``, if ``context.rule`` is not this verifier's
        rule (its own, else ``rule``), or if the position goes back on what
        it has voted on in this chain: a lower height, or the same height
        after another block or parent model, or if it would then keep more
        than :attr:`max_voted` votes at this height and previous block (a
        request asked again there, in any view, adds its candidates to that
        view's). With
        ``max_norm_ratio`` each candidate's norm is compared with the median
        norm of ``deltas``.
        The global model is scored once per call,
        each candidate once (not at all with metric none), and the reference
        update once per parent model. The signed score is the candidate's
        cosine with the reference update when the direction test is on (its
        deciding quantity), else the candidate's accuracy; -1.0 if not finite
        (:func:`~.judging.signed_score`).
        """
        judged = self._check_request(context, global_model, rule)
        if not len(weights) == len(deltas) == len(candidates):
            raise RefusedRequest("one weight and one delta per candidate needed")
        voted = self._voted_with(context, [digest for digest, _ in candidates])
        threshold = judged.threshold
        direction: NDArrays | None = None
        if threshold.min_cosine is not None:
            direction = self._reference_from(global_model, context.parent_model)
        reference = self.score_fn(global_model) if threshold.scores_models else None
        ratios: list[float | None] = (
            list(norm_ratios(deltas))
            if threshold.max_norm_ratio is not None
            else [None] * len(deltas)
        )
        votes = []
        for index, (digest, model) in enumerate(candidates):
            score = self.score_fn(model) if threshold.scores_models else None
            similarity = (
                cosine(deltas[index], direction) if direction is not None else None
            )
            verdict = self._verdict(
                threshold.approves(score, reference, similarity, ratios[index])
            )
            vote = sign_vote(
                self.key,
                context,
                digest,
                verdict,
                signed_score(similarity, score),
                float(weights[index]),
            )
            if self.behaviour is Behaviour.GARBAGE_SIGNATURE:
                vote["signature"] = self._rng.randbytes(64).hex()
            votes.append(vote)
        self.voted[context.chain_id] = voted
        return votes

    def _voted_with(
        self, context: VoteContext, digests: Sequence[str]
    ) -> tuple[int, str, dict[int, set[str]]]:
        """:attr:`voted`'s entry once it votes on ``digests`` in ``context``:
        added to its votes in this view at this (height, previous hash), the
        other views' kept, replacing those of another (height, previous
        hash); :class:`RefusedRequest` if that holds more than
        :attr:`max_voted` votes."""
        where = (context.height, str(context.prev_hash))
        last = self.voted.get(context.chain_id)
        views = (
            {view: set(held) for view, held in last[2].items()}
            if last is not None and last[:2] == where
            else {}
        )
        if digests:
            views[context.view] = views.get(context.view, set()) | set(digests)
        if self.max_voted is not None and (
            sum(map(len, views.values())) > self.max_voted
        ):
            raise RefusedRequest(
                f"it would hold more than {self.max_voted} votes at height "
                f"{context.height} (all views); it votes on no new candidates there"
            )
        return (*where, views)

    def _reference_from(self, global_model: NDArrays, parent: str) -> NDArrays:
        """The reference update from ``global_model`` (hash ``parent``), trained
        once per parent: candidates judged again at a new share reuse it."""
        if self.reference_fn is None:
            raise ValueError("the direction test needs a reference_fn")
        if self._reference is None or self._reference[0] != parent:
            self._reference = (parent, self.reference_fn(global_model))
        return self._reference[1]

    def _check_request(
        self, context: VoteContext, global_model: NDArrays, rule: Rule | None
    ) -> Rule:
        """The rule to judge by, after checking the request against what this
        verifier knows; raises :class:`RefusedRequest`."""
        judged = self.rule or rule
        if judged is None:
            raise RefusedRequest("this verifier has no judging rule")
        if context.format != 2:
            raise RefusedRequest("votes must bind their context (format 2)")
        if context.rule != judged.digest:
            raise RefusedRequest(
                f"the request names rule {context.rule[:16]}…, this verifier "
                f"judges by {judged.digest[:16]}…"
            )
        if model_hash(global_model) != context.parent_model:
            raise RefusedRequest(
                "the global model sent does not hash to the parent model named"
            )
        self.take_position(context)
        return judged

    def take_position(self, context: VoteContext) -> None:
        """Record that this verifier acts at ``context``'s height after its
        previous block on its parent model in its chain;
        :class:`RefusedRequest` if the position (its view too) is not in its
        exact shape (:func:`position_problem`), or goes back on what it has
        voted on or led there: a lower height, or the same height after
        another block or parent model."""
        problem = position_problem(
            context.height, context.view, context.prev_hash, context.parent_model
        )
        if problem is not None:
            raise RefusedRequest(f"the request's position: {problem}")
        chain_id, height = context.chain_id, context.height
        prev_hash, parent_model = str(context.prev_hash), context.parent_model
        if chain_id in self.seen:
            seen_height, seen_prev, seen_parent = self.seen[chain_id]
            if height < seen_height:
                raise RefusedRequest(
                    f"height {height} is behind height {seen_height} "
                    "this verifier has voted at"
                )
            if height == seen_height and (seen_prev, seen_parent) != (
                prev_hash,
                parent_model,
            ):
                raise RefusedRequest(
                    f"height {height} was voted on after another block or model"
                )
        self.seen[chain_id] = (height, prev_hash, parent_model)

    def _verdict(self, honest: bool) -> bool:
        match self.behaviour:
            case Behaviour.APPROVE_ALL:
                return True
            case Behaviour.REJECT_ALL:
                return False
            case Behaviour.INVERT:
                return not honest
            case _:
                return honest
