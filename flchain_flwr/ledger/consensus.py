"""The Proof-of-Verifying rules a block must follow, as pure functions.

A PoV chain declares its verifier pool and rules in the genesis block body
(``"pov"``). From then on anyone holding the ledger can recompute, block by
block:

- the committee: the pool ranked by ``sha256(COMMITTEE_TAG + prev_hash + key)``,
  first ``committee_size`` keys; the first is the block's leader and must have
  signed it;
- the quorum: an update may be included only with approving votes from more
  than 2/3 of the committee (``2n // 3 + 1`` members);
- the deposits: per candidate, the outcome is "approved" iff the quorum was
  reached; every committee member whose vote contradicts the outcome, or who
  cast no valid vote on it, loses ``slash``; a verifier whose stake falls below
  ``floor`` leaves the pool.

The live committee (:mod:`flchain_flwr.pov`) and :meth:`Ledger.verify` both use
this module, so what is written is exactly what is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .canonical import sha256_hex

COMMITTEE_TAG: Final = b"flchain-committee/1\n"


def quorum(committee_size: int) -> int:
    """Smallest number of approvals that is more than 2/3 of the committee."""
    return 2 * committee_size // 3 + 1


def select_committee(pool: Sequence[str], prev_hash: str, size: int) -> list[str]:
    """The committee for the block after ``prev_hash``; its first key leads."""
    seed = bytes.fromhex(prev_hash)
    ranked = sorted(
        pool, key=lambda key: (sha256_hex(COMMITTEE_TAG, seed, bytes.fromhex(key)), key)
    )
    return ranked[: max(0, min(size, len(ranked)))]


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
        if self.slash < 0 or self.floor < 0 or self.initial_stake < self.floor:
            raise ValueError("need slash >= 0 and initial_stake >= floor >= 0")

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
        """Rules from a genesis body's ``"pov"`` entry (raises on bad input)."""
        return cls(
            pool=tuple(str(k) for k in data["pool"]),
            committee_size=int(data["committee_size"]),
            initial_stake=float(data["initial_stake"]),
            slash=float(data["slash"]),
            floor=float(data["floor"]),
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


@dataclass
class PoVState:
    """Stakes and the active pool, advanced one block at a time."""

    rules: PoVRules
    stakes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stakes:
            self.stakes = {key: self.rules.initial_stake for key in self.rules.pool}

    @classmethod
    def replayed(cls, rules: PoVRules, bodies: Iterable[Mapping[str, Any]]) -> PoVState:
        """The state after the blocks with these bodies (genesis first)."""
        state = cls(rules)
        for height, body in enumerate(bodies):
            if height > 0:
                state.apply(body.get("deposits", []))
        return state

    @property
    def pool(self) -> list[str]:
        """Verifiers still in the pool (stake at or above the floor)."""
        return [k for k in self.rules.pool if self.stakes[k] >= self.rules.floor]

    def committee(self, prev_hash: str) -> list[str]:
        """Committee (leader first) for the block following ``prev_hash``."""
        return select_committee(self.pool, prev_hash, self.rules.committee_size)

    def settlement(
        self, committee: Sequence[str], votes: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Deposit changes one block's votes cause (not applied; see :meth:`apply`).

        One entry per committee member that loses stake, in committee order.
        """
        passed = quorum(len(committee))
        counts = approvals(votes, committee)
        candidates = sorted({str(v["candidate"]) for v in votes})
        cast = {
            (str(v["verifier"]), str(v["candidate"])): v["verdict"] is True
            for v in votes
        }
        entries = []
        for member in committee:
            wrong = sum(
                cast.get((member, c)) is not (counts.get(c, 0) >= passed)
                for c in candidates
            )
            if wrong == 0 or self.rules.slash == 0:
                continue
            stake = self.stakes[member] - wrong * self.rules.slash
            entries.append(
                {
                    "verifier": member,
                    "contradictions": wrong,
                    "slashed": wrong * self.rules.slash,
                    "stake": stake,
                    "removed": stake < self.rules.floor,
                }
            )
        return entries

    def apply(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Apply a block's deposit changes."""
        for entry in entries:
            self.stakes[str(entry["verifier"])] = float(entry["stake"])

    def check_block(
        self, prev_hash: str, header: Mapping[str, Any], body: Mapping[str, Any]
    ) -> str | None:
        """Problem with a PoV block (committee, leader, votes, quorum, deposits),
        or ``None``; on ``None`` the block's deposit changes are applied."""
        committee = self.committee(prev_hash)
        if not committee:
            return "no verifier is left in the pool"
        if body.get("committee") != committee:
            return "committee is not the one drawn from the previous block's hash"
        if header["leader"] != committee[0]:
            return "signed by a leader other than the committee's"
        votes = body.get("votes", [])
        members = set(committee)
        seen: set[tuple[str, str]] = set()
        for index, vote in enumerate(votes):
            key = (str(vote["verifier"]), str(vote["candidate"]))
            if key[0] not in members:
                return f"vote {index} is from a verifier outside the committee"
            if key in seen:
                return f"vote {index} is a second vote by the same verifier"
            seen.add(key)
        counts = approvals(votes, committee)
        needed = quorum(len(committee))
        for update in body["included"]:
            got = counts.get(str(update["digest"]), 0)
            if got < needed:
                return (
                    f"update {str(update['digest'])[:16]}… is included with "
                    f"{got} approvals; the quorum is {needed}"
                )
        expected = self.settlement(committee, votes)
        if body.get("deposits", []) != expected:
            return "deposit changes do not follow from the votes"
        self.apply(expected)
        return None
