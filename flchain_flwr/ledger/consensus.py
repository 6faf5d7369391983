"""The Proof-of-Verifying rules a block must follow, as pure functions.

A PoV chain declares its verifier pool and rules in the genesis block body
(``"pov"``). From then on anyone holding the ledger can recompute, block by
block:

- the committee: the pool ranked by ``sha256(COMMITTEE_TAG + prev_hash + key)``,
  first ``committee_size`` keys, rotated left by the block's ``view`` (0 unless
  earlier leaders at this height failed); the first is the block's leader and
  must have signed it. Nothing else (no time, no block content) seeds the draw;
- the votes (format 2, declared in the genesis body): each signs the chain id,
  height, view, previous block hash, parent model hash, the candidate's digest,
  the weight it was judged at and the digest of the judging rule; a vote is on
  an update the block includes or rejects, and a vote on an included update
  carries the share of it the block applies before any trust weighting
  (:func:`judged_shares` over the included entries; a rule with
  ``aggregation`` then scales each by its trust, read from the votes);
- the quorum: an update may be included only with approving votes from more
  than 2/3 of the committee (``2n // 3 + 1`` members);
- the deposits: a committee member loses ``slash`` per candidate on which
  its signed vote in the block is outvoted by a quorum (``2n // 3 + 1``) of
  the committee's signed votes in the block for the opposite verdict
  (:func:`contradictions`); a pool member against whom the block carries
  equivocation evidence (two contradicting signed statements, see
  :mod:`.evidence`) loses its whole stake, once. A vote the block does not
  hold costs nothing, and leaving votes out can never make a held vote
  slashable: it takes a quorum of signed opposite votes, which the assembler
  cannot forge (an update that misses the quorum because votes were left
  out is rejected, but nobody is slashed for it; its members refuse to sign
  a header that leaves out their own vote, see :mod:`flchain_flwr.pov.headers`).
  A verifier whose stake falls below ``floor`` leaves the pool.

The live committee (:mod:`flchain_flwr.pov`) and :meth:`Ledger.verify` both use
this module, so what is written is exactly what is checked; the stakes and the
pool they carry from block to block, and the check of a whole block by these
rules, are :class:`~flchain_flwr.ledger.povstate.PoVState`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..configvalues import checked_number
from .canonical import LATEST_FORMAT, MAX_SAFE_INTEGER, encode, sha256_hex

COMMITTEE_TAG: Final = b"flchain-committee/1\n"
VOTE_FORMAT: Final = "flchain-vote/2"
"""The vote format a genesis body declares in ``pov.votes.format``."""
RULE_FORMAT: Final = "flchain-pov-rule/1"
"""The ``format`` of a judging rule (:func:`rule_digest`)."""
TRUST_WEIGHTING = "fltrust"
"""A judging rule's ``aggregation`` (and a FedBuff config's ``trust_weighting``)
when approved updates are weighed by trust (:mod:`flchain_flwr.pov.trust`)."""


def quorum(committee_size: int) -> int:
    """Smallest number of approvals that is more than 2/3 of the committee."""
    return 2 * committee_size // 3 + 1


def select_committee(
    pool: Sequence[str], prev_hash: str, size: int, view: int = 0
) -> list[str]:
    """The committee for the block after ``prev_hash`` in ``view``; its first
    key leads. Every view has the same members; view ``v`` rotates them left by
    ``v`` so each failed leader hands over to the next member."""
    if view < 0:
        raise ValueError(f"view must be >= 0, not {view}")
    seed = bytes.fromhex(prev_hash)
    ranked = sorted(
        pool, key=lambda key: (sha256_hex(COMMITTEE_TAG, seed, bytes.fromhex(key)), key)
    )
    members = ranked[: max(0, min(size, len(ranked)))]
    if not members:
        return members
    turn = view % len(members)
    return members[turn:] + members[:turn]


def rule_digest(rule: Mapping[str, Any]) -> str:
    """The digest a format-2 vote signs for its judging rule (metric,
    thresholds, reference settings, scoring: see
    :meth:`~flchain_flwr.pov.Rule.to_json`)."""
    return sha256_hex(encode(LATEST_FORMAT, dict(rule)))


def judged_shares(
    server_lr: float, weights: Sequence[float], examples: Sequence[float]
) -> list[float]:
    """The share of each update's delta a block applies: ``lr * w_i * n_i /
    sum_j n_j`` (FedBuff's step; a synchronous FedAvg is ``lr = w_i = 1``).

    The committee judges each candidate at this share over the updates it
    approves, and :func:`weights_problem` recomputes it from a block's
    included entries, so both must compute it here, in this order.
    """
    total = math.fsum(float(n) for n in examples)
    if total <= 0:
        return [0.0 for _ in examples]
    return [
        float(server_lr) * float(w) * float(n) / total
        for w, n in zip(weights, examples, strict=True)
    ]


@dataclass(frozen=True)
class VoteRules:
    """What a chain's format-2 votes are judged by (the genesis ``pov.votes``)."""

    rule: Mapping[str, Any]
    """The judging rule; votes sign its :func:`rule_digest`."""
    server_lr: float
    """The ``lr`` of :func:`judged_shares`."""

    def to_json(self) -> dict[str, Any]:
        """The genesis body's ``pov.votes`` entry."""
        return {
            "format": VOTE_FORMAT,
            "rule": dict(self.rule),
            "server_lr": self.server_lr,
        }

    @property
    def digest(self) -> str:
        """The rule digest votes sign."""
        return rule_digest(self.rule)

    @classmethod
    def from_genesis(cls, pov: Mapping[str, Any]) -> VoteRules | None:
        """The rules a genesis ``pov`` entry declares; ``None`` for a chain of
        format-1 votes (written before votes bound their context)."""
        if "votes" not in pov:
            return None
        votes = pov["votes"]
        if not isinstance(votes, Mapping) or votes.get("format") != VOTE_FORMAT:
            raise ValueError(f"pov.votes must declare format {VOTE_FORMAT!r}")
        rule = votes.get("rule")
        if not isinstance(rule, Mapping) or rule.get("format") != RULE_FORMAT:
            raise ValueError(f"pov.votes.rule must be a {RULE_FORMAT!r} rule")
        return cls(dict(rule), server_lr_value(votes.get("server_lr")))


def server_lr_value(value: Any) -> float:
    """A declared ``server_lr``: a finite number > 0 (never a bool or a
    string), else ``ValueError``."""
    return checked_number(value, "pov.votes.server_lr", low=0.0, low_open=True)


@dataclass(frozen=True)
class PoVRules:
    """A chain's verifier pool and its deposit rules (stored in the genesis body)."""

    pool: tuple[str, ...]
    committee_size: int
    initial_stake: float = 100.0
    slash: float = 1.0
    floor: float = 50.0

    def __post_init__(self) -> None:
        if not self.pool:
            raise ValueError("the verifier pool is empty")
        if len(set(self.pool)) != len(self.pool):
            raise ValueError("the verifier pool holds a key twice")
        if self.committee_size < 1:
            raise ValueError("committee_size must be >= 1")
        stakes = (self.initial_stake, self.slash, self.floor)
        if not all(map(math.isfinite, stakes)) or not (
            self.slash >= 0 and self.initial_stake >= self.floor >= 0
        ):
            raise ValueError("need finite slash >= 0 and initial_stake >= floor >= 0")

    def to_json(self) -> dict[str, Any]:
        """The genesis body's ``"pov"`` entry."""
        return {
            "pool": list(self.pool),
            "committee_size": self.committee_size,
            "initial_stake": self.initial_stake,
            "slash": self.slash,
            "floor": self.floor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PoVRules:
        """Rules from a genesis body's ``"pov"`` entry, taken only in its exact
        shape (a list of key strings, an integer committee size, finite
        numbers; never a bool or a number as a string): rules a stricter
        reader would refuse are not read here as some other rules. Raises
        ``ValueError`` (or ``KeyError`` for a missing field)."""
        pool, size = data["pool"], natural(data["committee_size"])
        if not isinstance(pool, list) or not all(isinstance(k, str) for k in pool):
            raise ValueError("pov.pool must be a list of verifier keys")
        if size is None:
            raise ValueError("pov.committee_size must be an integer >= 1")
        return cls(
            pool=tuple(pool),
            committee_size=size,
            initial_stake=checked_number(data["initial_stake"], "pov.initial_stake"),
            slash=checked_number(data["slash"], "pov.slash"),
            floor=checked_number(data["floor"], "pov.floor"),
        )


def approvals(
    votes: Sequence[Mapping[str, Any]], committee: Sequence[str]
) -> dict[str, int]:
    """Approving votes per candidate digest, counting committee members only."""
    members = set(committee)
    counts: dict[str, int] = {}
    for vote in votes:
        if vote["verifier"] in members and vote["verdict"] is True:
            candidate = str(vote["candidate"])
            counts[candidate] = counts.get(candidate, 0) + 1
    return counts


def contradictions(
    votes: Sequence[Mapping[str, Any]], committee: Sequence[str]
) -> dict[str, int]:
    """Per committee member, the candidates on which its vote in ``votes`` is
    outvoted by a quorum of committee votes for the opposite verdict (only
    members with at least one). Computed from the votes held alone, so
    leaving votes out can only lower a count, never raise it."""
    members, passed = set(committee), quorum(len(committee))
    cast = {
        (str(v["verifier"]), str(v["candidate"])): v["verdict"] is True
        for v in votes
        if v["verifier"] in members
    }
    tally: dict[tuple[str, bool], int] = {}
    for (_, candidate), verdict in cast.items():
        tally[(candidate, verdict)] = tally.get((candidate, verdict), 0) + 1
    counts: dict[str, int] = {}
    for (member, candidate), verdict in cast.items():
        if tally.get((candidate, not verdict), 0) >= passed:
            counts[member] = counts.get(member, 0) + 1
    return counts


def votes_problem(
    votes: Sequence[Mapping[str, Any]], committee: Sequence[str]
) -> str | None:
    """Why a block's ``votes`` cannot count, or ``None``: each must be from a
    member of ``committee``, at most one per member and candidate."""
    members = set(committee)
    seen: set[tuple[str, str]] = set()
    for index, vote in enumerate(votes):
        key = (str(vote["verifier"]), str(vote["candidate"]))
        if key[0] not in members:
            return f"vote {index} is from a verifier outside the committee"
        if key in seen:
            return f"vote {index} is a second vote by the same verifier"
        seen.add(key)
    return None


def share_problem(vote: Mapping[str, Any], share: float) -> str | None:
    """Why a format-2 ``vote`` was not judged at ``share`` (the share of its
    update the block applies, :func:`judged_shares`), or ``None``.

    :func:`weights_problem` checks a block's votes by it, and the leader
    checks each incoming vote by it against the share it asked about
    (:func:`~flchain_flwr.pov.tally.collect_votes`), so no vote a block
    holds fails it.
    """
    if vote["weight"] != share:
        return (
            f"judged update {str(vote['candidate'])[:16]}… at weight "
            f"{vote['weight']!r}, not at its share {share!r}"
        )
    return None


def weights_problem(server_lr: float, body: Mapping[str, Any]) -> str | None:
    """Why a block's format-2 votes were not judged at its shares, or ``None``:
    each is on an update the block includes or rejects, and a vote on an
    included update was judged at the share applied (:func:`judged_shares`
    with ``server_lr``, before trust weighting, which the votes' own scores
    then set)."""
    included = body["included"]
    shares = judged_shares(
        server_lr,
        [u["weight"] for u in included],
        [u["num_examples"] for u in included],
    )
    applied = {str(u["digest"]): s for u, s in zip(included, shares, strict=True)}
    rejected = {str(r["digest"]) for r in body.get("rejected", [])}
    for index, vote in enumerate(body.get("votes", [])):
        digest = str(vote["candidate"])
        if digest in applied:
            problem = share_problem(vote, applied[digest])
            if problem is not None:
                return f"vote {index} {problem}, which the block's entries give"
        elif digest not in rejected:
            return (
                f"vote {index} is on update {digest[:16]}…, which the block "
                "neither includes nor rejects"
            )
    return None


def quorum_problem(
    included: Sequence[Mapping[str, Any]],
    votes: Sequence[Mapping[str, Any]],
    committee: Sequence[str],
) -> str | None:
    """Why an ``included`` update lacks a quorum of ``committee``'s approving
    ``votes``, or ``None``."""
    counts = approvals(votes, committee)
    needed = quorum(len(committee))
    for update in included:
        got = counts.get(str(update["digest"]), 0)
        if got < needed:
            return (
                f"update {str(update['digest'])[:16]}… is included with "
                f"{got} approvals; the quorum is {needed}"
            )
    return None


def natural(value: Any) -> int | None:
    """``value`` if it is an integer (never a bool) from 0 to
    :data:`~.canonical.MAX_SAFE_INTEGER` (what canonical JSON holds
    exactly), else ``None``: what a view or a height must be."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_SAFE_INTEGER else None


def block_view(body: Mapping[str, Any]) -> int | None:
    """A block body's ``view`` (0 when absent); ``None`` if it is not an
    integer >= 0 (:func:`natural`)."""
    return natural(body.get("view", 0))
