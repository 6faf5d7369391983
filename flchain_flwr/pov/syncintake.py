"""A synchronous round's train replies as PoV candidates, signatures checked.

:class:`~flchain_flwr.pov.PoVStrategy` holds each valid train reply to
FedBuff's intake rules before its committee sees it (:func:`signed`): a
reply signed by its trainer (the client mod
:func:`~flchain_flwr.mods.signreply_mod`) must verify over the sender's node id
and the model the round sent, a node id whose signed update was included must
sign with that key from then on, and a signed update is included once in the
run (:class:`~flchain_flwr.strategies.trainercheck.TrainerCheck`,
:class:`~flchain_flwr.ledger.included.IncludedDigests`); a reply that breaks
them is refused with its reason.

Each included entry of a signed reply records its key as ``trainer``
(:func:`.syncblock.entry`), which ``verify`` checks; the candidates' claims are
weighed next (:mod:`.syncclaims`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from flwr.app import Message

from ..arrays import NDArrays
from ..ledger.canonical import model_hash, sender_update_digest
from ..ledger.included import IncludedDigests
from ..protocol import TRAINER_RECORD
from ..strategies.trainercheck import TrainerCheck
from ..strategies.updates import ParsedUpdate, UpdateRejected
from .decision import Candidate


@dataclass(frozen=True)
class Taken:
    """A reply put before the committee, with the trainer key that signed
    it (``None``: unsigned)."""

    reply: Message
    candidate: Candidate
    update: ParsedUpdate
    trainer: str | None

    @property
    def node_id(self) -> int:
        """The node that sent it."""
        return self.candidate.node_id


class Refused(NamedTuple):
    """A reply kept from the committee, why, and its digest."""

    reply: Message
    reason: str
    digest: str


def signed(
    updates: list[tuple[Message, ParsedUpdate]],
    sent: NDArrays,
    trainers: TrainerCheck,
    included: IncludedDigests,
) -> tuple[list[Taken], list[Refused]]:
    """The round's valid ``updates`` as candidates at their claimed counts,
    and those refused, in reply order.

    Each reply's trainer signature is checked against the model ``sent``
    (hashed for a signed reply only, once) and the keys ``trainers`` pins
    and the round's earlier candidates hold; a signed update that
    ``included`` names is refused.
    """
    taken: list[Taken] = []
    refused: list[Refused] = []
    sent_hash: str | None = None  # hashed for the first signed reply only
    for reply, u in updates:
        node = reply.metadata.src_node_id
        digest = sender_update_digest(node, reply.content)
        is_signed = TRAINER_RECORD in reply.content
        if is_signed and sent_hash is None:
            sent_hash = model_hash(sent)
        try:
            trainer = trainers.check(
                node, reply.content, sent_hash if is_signed else None, taken
            )
            problem = included.problem(digest) if trainer else None
            if problem is not None:
                raise UpdateRejected(problem)
        except UpdateRejected as exc:
            refused.append(Refused(reply, exc.reason, digest))
            continue
        candidate = Candidate(
            digest, node, u.delta, 1.0, float(u.num_examples), reply.content
        )
        taken.append(Taken(reply, candidate, u, trainer))
    return taken, refused
