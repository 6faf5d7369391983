"""The trainer signatures a run holds its train replies to.

A reply carrying a trainer signature record
(:data:`~flchain_flwr.protocol.TRAINER_RECORD`) is checked against the node
that sent it and the model the server sent that node
(:func:`~flchain_flwr.ledger.trainers.signed_by`); a malformed or invalid one
is rejected with its reason. A node id whose signed update was included
(earlier in the run, in its ledger's chain, or waiting in the buffer) must sign
with that key from then on (:func:`~flchain_flwr.ledger.trainers.pin_problem`);
with ``require_signed_replies`` every reply must be signed. FedBuff's intake
(:mod:`.buffer`) and :class:`~flchain_flwr.pov.PoVStrategy` both hold replies
to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from flwr.app import RecordDict

from ..ledger.trainers import TrainerSignatureError, pin_problem, signed_by
from ..protocol import TRAINER_RECORD
from .updates import UpdateRejected

UNSIGNED_REASON = "reply is not signed by its trainer (require_signed_replies)"


class Signed(Protocol):
    """An update taken in: its node and the trainer key that signed it
    (``None``: unsigned), as FedBuff's buffered updates and PoVStrategy's
    replies hold them."""

    @property
    def node_id(self) -> int:
        """The node that sent it."""

    @property
    def trainer(self) -> str | None:
        """The key that signed it."""


class TrainerCheck:
    """Which trainer key pins each node id, and whether replies must be signed.

    Parameters
    ----------
    require : bool (default: False)
        Reject replies that carry no trainer signature.
    pins : Mapping[int, str] | None
        Node id -> the trainer key its included updates were signed by (a
        resumed run's, from its ledger's chain).
    """

    def __init__(self, require: bool = False, pins: Mapping[int, str] | None = None):
        self.require = require
        self.pins = dict(pins or {})

    def check(
        self,
        node_id: int,
        content: RecordDict,
        model: str | None,
        buffered: Iterable[Signed] = (),
    ) -> str | None:
        """The trainer key that signed the reply (``None``: unsigned).

        ``model`` is the hash of the model the server sent ``node_id``
        (``None``: no longer known, or not asked for an unsigned reply);
        ``buffered`` the updates taken in but not yet included (waiting in
        FedBuff's buffer, or earlier in PoVStrategy's round), whose keys pin
        their nodes as included ones do.

        Raises
        ------
        UpdateRejected
            If the signature is malformed or invalid, missing while required,
            or not by the key the node id is pinned to.
        """
        key = None
        if TRAINER_RECORD in content:
            if model is None:
                raise UpdateRejected(
                    "signed reply, but the hash of the model it trained on is "
                    "no longer kept"
                )
            try:
                key = signed_by(node_id, content, model)
            except TrainerSignatureError as exc:
                raise UpdateRejected(str(exc)) from None
        if key is None and self.require:
            raise UpdateRejected(UNSIGNED_REASON)
        pending = {u.node_id: u.trainer for u in buffered if u.trainer is not None}
        for pins in (self.pins, pending):
            problem = pin_problem(pins, node_id, key)
            if problem is not None:
                raise UpdateRejected(problem)
        return key

    def included(self, updates: Iterable[Signed]) -> None:
        """Pin the nodes of newly included signed updates to their keys."""
        for u in updates:
            if u.trainer is not None:
                self.pins.setdefault(u.node_id, u.trainer)
