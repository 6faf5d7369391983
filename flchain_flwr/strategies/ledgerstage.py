"""The ledger as a block-pipeline stage: one block per version, resumed from its head.

:class:`LedgerStage` writes a new ledger's genesis block, or resumes from a
ledger's head (the checks and what the run continues with are in
:mod:`.resume`), then appends each committed version as a block. The PoV
committee's stage (:mod:`.committeestage`) seals a block before this one
appends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import RecordDict
from flwr.supercore import log

from ..arrays import NDArrays
from ..ledger import Ledger, contributions
from ..ledger.included import IncludedDigests
from ..ledger.serverstate import ServerState
from ..ledger.trainers import TRAINER_FIELD, pin_included
from .block import Block, BufferedUpdate, Rejection
from .claims import ClaimHistory
from .fairness import count_participation
from .pipeline import BlockStage
from .resume import Resumed, check_config, recorded_server_state
from .serverstep import ServerStep


class LedgerStage(BlockStage):
    """Append every version to a ledger as a block; resume from its head.

    Rejections since the last block go into the next block's body. Each
    included update's reply, as received, is stored beside the model (see
    :mod:`flchain_flwr.ledger.payload`), so ``flchain ledger verify --replay``
    can recompute the block's model. Each block also records the server state
    a resume needs (see
    :mod:`flchain_flwr.ledger.chain`): the momentum's velocity and the
    example-weighting claim history, once :meth:`record_state` says where they
    are; a resume also counts each node's included updates over the chain, for
    fairness weighting. The genesis block records ``config``, whose digest
    every block's header carries; a resume with other settings is refused
    unless ``resume_with_changed_config``.

    Parameters
    ----------
    ledger : Ledger | str | Path
        The ledger, or its path (opened here, and closed by :meth:`close`).
    config : Mapping[str, object]
        The settings that shape the global model
        (:meth:`~flchain_flwr.strategies.FedBuff.config_dict`).
    genesis_extra : dict[str, Any] | None
        More genesis body fields (a PoV committee's rules).
    resume_with_changed_config : bool (default: False)
        Resume a ledger written with other settings (with a WARNING) instead
        of raising ``ValueError``.
    """

    needs_digest = True
    needs_payload = True

    def __init__(
        self,
        ledger: Ledger | str | Path,
        *,
        config: Mapping[str, object],
        genesis_extra: dict[str, Any] | None = None,
        resume_with_changed_config: bool = False,
    ) -> None:
        if isinstance(ledger, Ledger):
            self.ledger, self._owned = ledger, False
        else:
            self.ledger, self._owned = Ledger(ledger), True
        self.config = dict(config)
        self.config_digest = self.ledger.config_digest(self.config)
        self.genesis_extra = genesis_extra
        self.resume_with_changed_config = resume_with_changed_config
        self._rejected: list[dict[str, object]] = []
        self._record_config = False  # the next block records ``config``
        self._server_step: ServerStep | None = None
        self._claims: ClaimHistory | None = None

    def record_state(self, server_step: ServerStep, claims: ClaimHistory) -> None:
        """Record ``server_step``'s velocity and ``claims`` with every block."""
        self._server_step, self._claims = server_step, claims

    def start(self, model: NDArrays, *, momentum: float = 0.0) -> Resumed | None:
        """Write the genesis block, or return what to resume from.

        Parameters
        ----------
        model : NDArrays
            The initial model (a resumed one must have the same arrays).
        momentum : float (default: 0.0)
            The server momentum; without it no velocity is restored.

        Raises
        ------
        ValueError
            If the ledger holds a model with other arrays, or was written with
            other settings (and ``resume_with_changed_config`` is off).
        """
        head = self.ledger.head()
        if head is None:
            self.ledger.append(
                model=model,
                model_version=0,
                base_version=0,
                config_digest=self.config_digest,
                config=self.config,
                extra=self.genesis_extra,
            )
            return None
        stored = self.ledger.load_model(head)
        expected = {k: (v.shape, v.dtype) for k, v in model.items()}
        if {k: (v.shape, v.dtype) for k, v in stored.items()} != expected:
            raise ValueError(
                f"ledger {self.ledger.path} holds a model with other arrays than "
                "initial_arrays; resume it with the same model architecture"
            )
        if check_config(
            self.ledger,
            head,
            self.config,
            self.config_digest,
            allow_changed=self.resume_with_changed_config,
        ):
            self._record_config = True
        version = int(head.header["model_version"])
        velocity, claims = recorded_server_state(self.ledger, head, stored, momentum)
        log(
            INFO,
            "Resuming from ledger %s: block %d, version %d",
            self.ledger.path,
            head.height,
            version,
        )
        from ..ledger.replayweights import included_nodes  # it imports us

        participation: dict[int, int] = {}
        trainers: dict[int, str] = {}
        included = IncludedDigests()
        for block in self.ledger.blocks():  # one pass: a long chain is read once
            entries = block.body.get("included", [])
            count_participation(participation, included_nodes(block))
            pin_included(trainers, entries)
            included.add_block(block.height, entries)
        return Resumed(
            version, stored, velocity, claims, participation, trainers, included
        )

    def rejected(self, rejection: Rejection) -> None:
        """Keep the rejection for the next block's body."""
        self._rejected.append(_rejection(rejection))

    def commit(self, block: Block) -> None:
        """Append ``block``: updates, rejections (those kept since the last
        block, then its own), votes, rewards, server state."""
        assert block.model is not None and block.step is not None
        updates = block.updates
        written = self.ledger.append(
            model=block.model,
            model_version=block.version,
            base_version=block.version - 1,
            config_digest=self.config_digest,
            included=[_entry(u) for u in updates],
            rejected=[*self._rejected, *map(_rejection, block.rejected)],
            votes=block.votes,
            contributions=contributions(
                [u.node_id for u in updates],
                [u.update.delta for u in updates],
                [u.step_examples for u in updates],
                block.step,
            ),
            sim_time=block.time,
            extra=block.extra,
            signer=block.signer,
            config=self.config if self._record_config else None,
            server_state=self._state(),
            payloads=_payloads(updates),
        )
        block.model_hash = str(written.header["model_hash"])
        self._rejected = []
        self._record_config = False

    def _state(self) -> ServerState | None:
        """The server state after the block being committed (what resume needs)."""
        if self._server_step is None and self._claims is None:
            return None
        claims = self._claims.entries() if self._claims is not None else None
        step = self._server_step
        if step is None or step.momentum == 0.0:
            return ServerState(claims)
        return ServerState(claims, step.velocity, step.velocity_from_zero)

    def close(self) -> None:
        """Close the ledger if this stage opened it."""
        if self._owned:
            self.ledger.close()


def _entry(u: BufferedUpdate) -> dict[str, object]:
    """An included update's ledger entry (``trainer`` only for a signed reply,
    so that unsigned ones are recorded as they always were)."""
    entry: dict[str, object] = {
        "node_id": u.node_id,
        "digest": u.digest,
        "trained_on": u.trained_on,
        "staleness": u.staleness,
        "weight": u.weight,
        "num_examples": u.examples,
    }
    if u.trainer is not None:
        entry[TRAINER_FIELD] = u.trainer
    return entry


def _rejection(rejection: Rejection) -> dict[str, object]:
    """A rejection's ledger entry."""
    return {
        "node_id": rejection.node_id,
        "digest": rejection.digest,
        "trained_on": rejection.trained_on,
        "reason": rejection.reason,
    }


def _payloads(updates: list[BufferedUpdate]) -> list[RecordDict] | None:
    """The replies as received, or ``None`` unless every update kept its own."""
    kept = [u.content for u in updates if u.content is not None]
    return kept if len(kept) == len(updates) else None
