"""A synchronous PoV run's blocks: the settings, what a block carries, its body.

:class:`~flchain_flwr.pov.PoVStrategy` records its settings once, in a fresh
ledger's genesis block (:func:`settings`, with the wrapper marker that tells
``verify --replay`` to check a block's payloads, not its model), then writes a
block for each round whose approved updates give the wrapped strategy a new
model. The votes, view changes and rejections gathered since the last block
(:class:`NextBlock`) go into it; a round that writes none carries its
rejections and their votes to the next. A block's body (:meth:`NextBlock.body`)
includes each approved update at its effective example count (:func:`entry`),
with its contributions to the model's step, the replies as received
(``payloads``, which ``verify --replay`` checks the entries against) and the
claim history the counts were bounded by (``server_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp.strategy import Strategy

from ..arrays import NDArrays
from ..ledger import contributions
from ..ledger.rewards import model_step
from ..ledger.serverstate import ServerState
from ..ledger.trainers import TRAINER_FIELD
from ..ledger.wrapper import POV_WRAPPER, WRAPPER_FIELD
from ..strategies.claims import ClaimHistory
from ..strategies.weighting import Claimed, ExampleWeighting
from .committee import Committee
from .decision import CommitteeDecision
from .syncintake import Taken
from .views import carried_votes


@dataclass
class NextBlock:
    """What the next block carries, gathered since the last one."""

    votes: list[dict[str, Any]] = field(default_factory=list)
    """Votes since the last block (carried over rounds that write none)."""
    view: int = 0
    view_changes: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """The rejections since the last block, as its body records them."""

    def copy(self) -> NextBlock:
        """A copy whose lists are its own."""
        return NextBlock(
            list(self.votes), self.view, list(self.view_changes), list(self.rejected)
        )

    def decided(self, decision: CommitteeDecision) -> None:
        """Take in a committee decision: its votes, view and view changes."""
        self.votes = carried_votes(self.votes, self.view, decision)
        self.view = decision.view
        self.view_changes += decision.view_changes

    def reject(self, node_id: int, digest: str, trained_on: int, reason: str) -> None:
        """Record a rejection for the block."""
        self.rejected.append(
            {
                "node_id": node_id,
                "digest": digest,
                "trained_on": trained_on,
                "reason": reason,
            }
        )

    def carry(self) -> None:
        """The round wrote no block: keep only the votes on the rejections
        the next one carries."""
        carried = {str(r["digest"]) for r in self.rejected}
        self.votes = [v for v in self.votes if v["candidate"] in carried]

    # pylint: disable=too-many-arguments
    def body(
        self,
        server_round: int,
        accepted: list[Taken],
        new: NDArrays,
        sent: NDArrays,
        config_digest: str,
        claims: ClaimHistory,
    ) -> dict[str, Any]:
        """The block of round ``server_round``, which included ``accepted``
        and moved the model ``sent`` to ``new`` (the ledger's ``append``
        arguments but the header's ``extra`` and ``signer``)."""
        return {
            "model": new,
            "model_version": server_round,
            "base_version": server_round - 1,
            "config_digest": config_digest,
            "included": [entry(t, server_round - 1) for t in accepted],
            "rejected": self.rejected,
            "votes": self.votes,
            "contributions": contributions(
                [t.node_id for t in accepted],
                [t.update.delta for t in accepted],
                [t.candidate.examples for t in accepted],
                model_step(new, sent),
            ),
            "payloads": [t.candidate.content for t in accepted],
            "server_state": ServerState(claims.entries()),
        }


# pylint: disable=too-many-arguments
def settings(
    strategy: Strategy,
    committee: Committee,
    keys: tuple[str, str],
    require_signed_replies: bool,
    example_weighting: ExampleWeighting,
) -> dict[str, Any]:
    """The settings a run records in its genesis block, which its config
    digest hashes: the wrapped strategy's name, the wrapper marker, the
    committee and the ``(arrayrecord_key, weighted_by_key)`` ``keys``."""
    arrayrecord_key, weighted_by_key = keys
    recorded: dict[str, Any] = {
        "strategy": type(strategy).__name__,
        WRAPPER_FIELD: POV_WRAPPER,  # a replay checks payloads, not the model
        "committee": repr(committee),
        "arrayrecord_key": arrayrecord_key,
        "weighted_by_key": weighted_by_key,
    }
    if require_signed_replies:  # as FedBuff records it: only when on
        recorded["require_signed_replies"] = True
    if not isinstance(example_weighting, Claimed):  # Claimed: the old digest
        recorded["example_weighting"] = example_weighting.spec
    return recorded


def entry(taken: Taken, trained_on: int) -> dict[str, Any]:
    """An included update's ledger entry (``trainer`` only for a signed
    reply, so that unsigned ones are recorded as they always were)."""
    recorded: dict[str, Any] = {
        "node_id": taken.node_id,
        "digest": taken.candidate.digest,
        "trained_on": trained_on,
        "staleness": 0,
        "weight": 1.0,
        "num_examples": taken.candidate.examples,
    }
    if taken.trainer is not None:
        recorded[TRAINER_FIELD] = taken.trainer
    return recorded
