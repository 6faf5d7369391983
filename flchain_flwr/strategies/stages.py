"""The PoV committee and the ledger as block-pipeline stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import RecordDict
from flwr.supercore import log

from ..arrays import NDArrays
from ..ledger import Block as LedgerBlock
from ..ledger import Ledger, contributions
from ..ledger.canonical import LATEST_FORMAT, encode
from ..ledger.serverstate import ServerState
from ..pov.committee import Committee
from ..pov.decision import Candidate, CommitteeDecision
from ..pov.trust import TrustError, weigh_by_trust
from ..pov.views import carried_votes
from ..pov.watch import CommitteeWatch
from ..runtime import Clock
from .pipeline import (
    Block,
    BlockStage,
    BufferedUpdate,
    RejectFn,
    Rejection,
    ServerStep,
)
from .weighting import ClaimHistory


@dataclass(frozen=True)
class Resumed:
    """What a run resumed from a ledger's head continues with."""

    version: int
    model: NDArrays
    velocity: NDArrays | None
    """The server momentum's velocity (``None``: zero)."""
    claims: list[tuple[int, float]]
    """The example-weighting history, least recently heard node first."""
    participation: dict[int, int]
    """Each node's included updates over the chain (what fairness counts)."""

    def restore(self, server_step: ServerStep, claims: ClaimHistory) -> None:
        """Put the recorded velocity and claim history back in place."""
        server_step.restore_velocity(self.velocity)
        for node_id, claim in self.claims:
            claims.observe(node_id, claim)


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
        self._check_config(head)
        version = int(head.header["model_version"])
        velocity, claims = self._server_state(head, stored, momentum)
        log(
            INFO,
            "Resuming from ledger %s: block %d, version %d",
            self.ledger.path,
            head.height,
            version,
        )
        from ..ledger.replayweights import ledger_participation  # it imports us

        participation = ledger_participation(self.ledger.blocks())
        return Resumed(version, stored, velocity, claims, participation)

    def _check_config(self, head: LedgerBlock) -> None:
        """Refuse (or, if allowed, warn about) a head written with other settings."""
        recorded = str(head.header["config_digest"])
        if recorded == self.config_digest:
            return
        what = (
            f"ledger {self.ledger.path} was written with configuration {recorded} "
            f"and this strategy's is {self.config_digest}; "
            f"{self._config_changes(head)}"
        )
        if not self.resume_with_changed_config:
            raise ValueError(
                f"{what}. Resume with the ledger's settings, or pass "
                "resume_with_changed_config=True to continue with these."
            )
        log(WARNING, "Resuming with changed settings: %s", what)
        self._record_config = True

    def _config_changes(self, head: LedgerBlock) -> str:
        """The settings that differ from those behind ``head``'s digest, in words."""
        old = self.ledger.recorded_config(head)
        if old is None:
            return (
                "the ledger does not record the settings behind its digest "
                "(it was written before they were recorded), so the ones that "
                "differ cannot be named"
            )
        new = self.config
        changes = [
            f"{key}: {_setting(old, key)} in the ledger, {_setting(new, key)} now"
            for key in sorted(set(old) | set(new))
            if _setting(old, key) != _setting(new, key)
        ]
        if not changes:
            return "every setting is the same, but the digests differ"
        return "settings that differ: " + "; ".join(changes)

    def _server_state(
        self, head: LedgerBlock, model: NDArrays, momentum: float
    ) -> tuple[NDArrays | None, list[tuple[int, float]]]:
        """The velocity (with ``momentum``) and claim history ``head`` records."""
        state = self.ledger.server_state(head)
        if state is None:
            if head.height > 0:  # genesis: zero velocity, no claims, as recorded
                log(
                    WARNING,
                    "Ledger %s records no server state at block %d (it was "
                    "written before that was recorded): server momentum restarts "
                    "from zero and example weighting from an empty claim history",
                    self.ledger.path,
                    head.height,
                )
            return None, []
        velocity = state.velocity if momentum > 0.0 else None
        if velocity is not None and _shapes(velocity) != _shapes(model):
            raise ValueError(
                f"ledger {self.ledger.path} block {head.height} records a momentum "
                "velocity whose arrays differ from its model's"
            )
        return velocity, list(state.claims or [])

    def rejected(self, rejection: Rejection) -> None:
        """Keep the rejection for the next block's body."""
        self._rejected.append(
            {
                "node_id": rejection.node_id,
                "digest": rejection.digest,
                "trained_on": rejection.trained_on,
                "reason": rejection.reason,
            }
        )

    def commit(self, block: Block) -> None:
        """Append ``block``: updates, rejections, votes, rewards, server state."""
        assert block.model is not None and block.step is not None
        updates = block.updates
        self.ledger.append(
            model=block.model,
            model_version=block.version,
            base_version=block.version - 1,
            config_digest=self.config_digest,
            included=[
                {
                    "node_id": u.node_id,
                    "digest": u.digest,
                    "trained_on": u.trained_on,
                    "staleness": u.staleness,
                    "weight": u.weight,
                    "num_examples": u.examples,
                }
                for u in updates
            ],
            rejected=self._rejected,
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


class CommitteeStage(BlockStage):
    """The PoV committee: votes on each update at the share it will have.

    Votes and the committee accumulate until a block is committed (a buffer
    whose every update is rejected makes no block); deposits settle once per
    committed block, and the block's leader and more than 2/3 of its
    committee sign it. A leader that is not
    ready hands the height over to the next view's (see
    :meth:`~flchain_flwr.pov.Committee.choose_view`); votes carried from an
    earlier view are dropped, since they sign their view.
    """

    needs_digest = True

    def __init__(
        self,
        committee: Committee,
        *,
        clock: Clock,
        server_lr: float,
        ledger: LedgerStage | None,
        on_decision: Callable[[CommitteeDecision], None] | None = None,
    ) -> None:
        self.committee = committee
        self.needs_payload = committee.needs_payloads  # a remote one sends them
        self.clock = clock
        self.server_lr = server_lr
        self.ledger = ledger
        self.on_decision = on_decision
        self._committee: list[str] = []
        self._votes: list[dict[str, Any]] = []
        self._view = 0
        self._view_changes: list[dict[str, Any]] = []
        self._watch = CommitteeWatch.of(committee)

    def filter(self, block: Block, reject: RejectFn) -> None:
        """Let the committee vote; keep the approved updates."""
        context = self.committee.position(
            self.ledger.ledger if self.ledger else None,
            block.parent,
            block.version,
            self._view,
        )
        sent = self.clock.now()
        decision = self.committee.decide(
            context=context,
            global_model=block.parent,
            candidates=[
                Candidate(
                    u.digest,
                    u.node_id,
                    u.update.delta,
                    u.weight,
                    u.examples,
                    u.content,
                    u.base,
                )
                for u in block.updates
            ],
            round_=block.version - 1,
            server_lr=self.server_lr,
        )
        advance = getattr(self.clock, "advance", None)
        if self.committee.consensus_delay > 0 and callable(advance):
            advance(self.committee.consensus_delay)
        for reason in decision.dropped_votes:
            log(WARNING, "PoV: %s", reason)
        # stops a run no member votes in, or no quorum votes in for too long
        self._watch.observe(decision, sent=sent, now=self.clock.now())
        self._votes = carried_votes(self._votes, self._view, decision)
        self._committee, self._view = decision.committee, decision.view
        self._view_changes += decision.view_changes
        if self.on_decision is not None:
            self.on_decision(decision)
        kept = []
        for u, outcome in zip(block.updates, decision.outcomes, strict=True):
            if outcome.accepted:
                kept.append(u)
            else:
                reject(
                    Rejection(
                        u.node_id,
                        u.trained_on,
                        outcome.reason,
                        u.digest,
                        decision.votes_on(u.digest),
                    )
                )
        if kept and self.committee.trust_weighting:
            try:  # with the votes the block will hold
                weigh_by_trust(kept, self._votes, len(self._committee))
            except TrustError as exc:
                # their approvals must not reach a block that leaves them out
                dropped = {u.digest for u in kept}
                self._votes = [v for v in self._votes if v["candidate"] not in dropped]
                for u in kept:
                    reason = f"trust weighting: {exc}"
                    reject(Rejection(u.node_id, u.trained_on, reason, u.digest))
                kept = []
        block.updates = kept
        if not kept:
            log(INFO, "PoV rejected every candidate; no new version")

    def commit(self, block: Block) -> None:
        """Seal this block: its deposits settle once it has its header quorum
        (at once without a ledger); its leader and committee sign it."""
        sealed, signer = self.committee.seal(
            self._committee, self._votes, self._view, self._view_changes
        )
        block.signer = signer
        if self.ledger is None and signer.on_quorum is not None:
            signer.on_quorum()  # no ledger, no header to sign
        block.extra = {**(block.extra or {}), **sealed}
        block.votes, self._votes, self._view = self._votes, [], 0
        self._view_changes = []


def _payloads(updates: list[BufferedUpdate]) -> list[RecordDict] | None:
    """The replies as received, or ``None`` unless every update kept its own."""
    kept = [u.content for u in updates if u.content is not None]
    return kept if len(kept) == len(updates) else None


def _shapes(arrays: NDArrays) -> dict[str, tuple[int, ...]]:
    """Each array's shape, by name."""
    return {name: value.shape for name, value in arrays.items()}


def _setting(config: Mapping[str, object], key: str) -> str:
    """One setting as RFC 8785 JSON (``<unset>`` if absent), for comparing
    (1.0 and 1 alike: a format-2 ledger records the one as the other)."""
    if key not in config:
        return "<unset>"
    return encode(LATEST_FORMAT, config[key]).decode("utf-8")


def decision_summary(decision: CommitteeDecision, time_: float) -> dict[str, object]:
    """A committee decision as a JSON-friendly summary for the run's result."""
    return {
        "height": decision.height,
        "time": time_,
        "committee": decision.committee,
        "needed": decision.needed,
        "accepted": sum(o.accepted for o in decision.outcomes),
        "rejected": sum(not o.accepted for o in decision.outcomes),
        "dropped_votes": decision.dropped_votes,
    }
