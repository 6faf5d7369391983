"""A PoV chain's stakes and verifier pool, advanced one block at a time.

:class:`PoVState` holds what the chain's blocks have done to its verifiers so
far (their stakes, who was slashed for equivocation) and checks the next block
by :mod:`.consensus`'s rules: the committee drawn for it, its votes, the
quorum of each included update, its equivocation evidence (:mod:`.evidence`),
and the deposit changes all these imply, which it then applies. The live
committee (:mod:`flchain_flwr.pov`) settles its blocks with it, and
:meth:`Ledger.verify <flchain_flwr.ledger.chain.Ledger.verify>` replays them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..configvalues import checked_number
from .consensus import (
    PoVRules,
    VoteRules,
    block_view,
    contradictions,
    quorum_problem,
    select_committee,
    server_lr_value,
    votes_problem,
    weights_problem,
)
from .evidence import EVIDENCE_FIELD, check_equivocation, evidence_id


@dataclass
class PoVState:
    """Stakes and the active pool, advanced one block at a time."""

    rules: PoVRules
    stakes: dict[str, float] = field(default_factory=dict)
    votes: VoteRules | None = None
    """Format-2 vote rules (``None``: a chain of format-1 votes)."""
    signed_headers: bool = False
    """Whether the chain's headers are quorum-signed (:mod:`.quorum`)."""
    equivocated: set[str] = field(default_factory=set)
    """Verifiers slashed for equivocation: out of the pool for good."""

    def __post_init__(self) -> None:
        if not self.stakes:
            self.stakes = {key: self.rules.initial_stake for key in self.rules.pool}

    @classmethod
    def replayed(
        cls,
        rules: PoVRules,
        bodies: Iterable[Mapping[str, Any]],
        votes: VoteRules | None = None,
    ) -> PoVState:
        """The state after the blocks with these bodies (genesis first)."""
        state = cls(rules, votes=votes)
        for height, body in enumerate(bodies):
            if height > 0:
                state.apply(body.get("deposits", []))
        return state

    @property
    def pool(self) -> list[str]:
        """Verifiers still in the pool (stake at or above the floor)."""
        return [
            k
            for k in self.rules.pool
            if self.stakes[k] >= self.rules.floor and k not in self.equivocated
        ]

    def committee(self, prev_hash: str, view: int = 0) -> list[str]:
        """Committee (leader first) for the block following ``prev_hash`` in
        ``view``."""
        return select_committee(self.pool, prev_hash, self.rules.committee_size, view)

    def settlement(
        self,
        committee: Sequence[str],
        votes: Sequence[Mapping[str, Any]],
        evidence: Sequence[Mapping[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Deposit changes one block's votes and equivocation ``evidence``
        cause (not applied; see :meth:`apply`).

        One entry per committee member that loses stake, in committee order;
        then one per evidence record (checked by the caller), taking the
        accused's whole remaining stake. Only a vote present in ``votes``
        and outvoted by a quorum of signed opposite votes counts
        (:func:`contradictions`): a missing vote is not evidence against its
        member, nor against anyone else.
        """
        outvoted = contradictions(votes, committee)
        entries: list[dict[str, Any]] = []
        for member in committee:
            wrong = outvoted.get(member, 0)
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
        after = dict(self.stakes)
        after.update({str(e["verifier"]): float(e["stake"]) for e in entries})
        for record in evidence:
            key = str(record["verifier"])
            entries.append(
                {
                    "verifier": key,
                    "equivocation": evidence_id(record),
                    "slashed": after[key],
                    "stake": 0.0,
                    "removed": True,
                }
            )
            after[key] = 0.0
        return entries

    def evidence_problem(self, chain_id: str, evidence: Any) -> str | None:
        """Why a block's ``evidence`` records cannot be settled, or ``None``:
        each must be valid, about this chain, against a pool member that
        still has stake, at most one per member."""
        if not isinstance(evidence, list):
            return "evidence must be a list"
        accused: set[str] = set()
        for index, record in enumerate(evidence):
            problem = check_equivocation(record, chain_id)
            if problem is not None:
                return f"evidence {index}: {problem}"
            key = str(record["verifier"])
            if key not in self.stakes or key in self.equivocated or key in accused:
                return (
                    f"evidence {index} accuses {key[:16]}…, not a pool member "
                    "or already slashed for equivocation"
                )
            accused.add(key)
        return None

    def apply(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Apply a block's deposit changes."""
        for entry in entries:
            self.stakes[str(entry["verifier"])] = float(entry["stake"])
            if "equivocation" in entry:
                self.equivocated.add(str(entry["verifier"]))

    def committee_problem(
        self,
        prev_hash: str,
        view: int,
        header: Mapping[str, Any],
        body: Mapping[str, Any],
    ) -> str | None:
        """Why a block's committee is not the one drawn for ``prev_hash`` and
        ``view`` (:meth:`committee`) or its header's leader not that
        committee's first, or ``None``."""
        committee = self.committee(prev_hash, view)
        if not committee:
            return "no verifier is left in the pool"
        if body.get("committee") != committee:
            return (
                "committee is not the one drawn from the previous block's hash "
                f"and view {view}"
            )
        if header.get("leader") != committee[0]:
            return "signed by a leader other than the committee's"
        return None

    def check_block(
        self,
        prev_hash: str,
        header: Mapping[str, Any],
        body: Mapping[str, Any],
        *,
        apply: bool = True,
    ) -> str | None:
        """Problem with a PoV block (committee, leader, votes, quorum, deposits),
        or ``None``; on ``None`` the block's deposit changes are applied
        (unless ``apply`` is false: a committee member checks a block it is
        asked to sign, see :mod:`flchain_flwr.pov.headers`).

        Vote signatures are checked by the caller (they need the chain's
        context, :func:`~flchain_flwr.ledger.votes.check_vote`); here, what
        the votes are about.
        """
        view = block_view(body)
        if view is None:
            return "view must be an integer >= 0"
        if view and self.votes is None:
            return "a chain of format-1 votes has no views"
        problem = self.committee_problem(prev_hash, view, header, body)
        if problem is not None:
            return problem
        committee = self.committee(prev_hash, view)
        votes = body.get("votes", [])
        problem = votes_problem(votes, committee)
        if problem is None and self.votes is not None:
            problem = weights_problem(self.votes.server_lr, body)
        if problem is None:
            problem = quorum_problem(body["included"], votes, committee)
        evidence = body.get(EVIDENCE_FIELD, [])
        if problem is None:
            problem = self.evidence_problem(str(header["chain_id"]), evidence)
        if problem is not None:
            return problem
        expected = self.settlement(committee, votes, evidence)
        if body.get("deposits", []) != expected:
            return "deposit changes do not follow from the votes"
        if apply:
            self.apply(expected)
        return None

    def to_json(self) -> dict[str, Any]:
        """The state as JSON (what a verifier node is sent with a header to
        sign: it holds no chain, see :mod:`flchain_flwr.pov.members`)."""
        return {
            "rules": self.rules.to_json(),
            "stakes": dict(self.stakes),
            "equivocated": sorted(self.equivocated),
            "server_lr": None if self.votes is None else self.votes.server_lr,
        }

    @classmethod
    def from_json(cls, data: Any, rule: Mapping[str, Any]) -> PoVState:
        """A state from :meth:`to_json`'s form, its votes judged by ``rule``;
        ``ValueError`` if it is not one (a stake for every pool member, each
        a finite number, the slashed among the pool)."""
        try:
            rules = PoVRules.from_json(data["rules"])
            stakes = {
                str(k): checked_number(v, "stake") for k, v in data["stakes"].items()
            }
            if not isinstance(data["equivocated"], list):
                raise ValueError("equivocated must be a list")
            equivocated = {str(k) for k in data["equivocated"]}
            lr = data["server_lr"]
            votes = None if lr is None else VoteRules(dict(rule), server_lr_value(lr))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a PoV state ({exc!r})"[:200]) from None
        if set(stakes) != set(rules.pool) or not equivocated <= set(rules.pool):
            raise ValueError("not a PoV state: its stakes are not its pool's")
        return cls(rules, stakes, votes, True, equivocated)
