"""A run's block pipeline, built: its ledger opened, resumed or refused, its stages.

:func:`open_ledger` writes the genesis block of a new ledger or reads what a
ledger holding blocks resumes with (:class:`~.resume.Resumed`). With a PoV
committee the committee resumes from the chain too, and a block the previous
run's leader proposed but never appended is proposed again first; a PoV chain
without its committee is refused, as its next blocks would fail verify.
:func:`carry_over` puts what the chain already counted into the run's result
(see :mod:`.carryover`). :func:`block_pipeline` puts the stages in order
around the server step: the committee, then the ledger and the anchoring of
what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..arrays import NDArrays, to_arrayrecord
from ..pov.decision import CommitteeDecision
from ..pov.pending import repropose_pending
from ..runtime import Clock
from .adaptive import AdaptiveScheduling
from .anchor import AnchorStage
from .carryover import ledger_weight_share
from .claims import ClaimHistory
from .committeestage import CommitteeStage
from .history import NodeHistory
from .ledgerstage import LedgerStage
from .pipeline import BlockStage, Pipeline
from .result import AsyncResult
from .resume import Resumed
from .scheduling import SchedulingPolicy
from .serverstep import ServerStep

if TYPE_CHECKING:
    from .fedbuff import FedBuff


def open_ledger(
    strategy: FedBuff, model: NDArrays
) -> tuple[LedgerStage | None, Resumed | None]:
    """The run's ledger stage and what it resumes with (``None`` for either
    when there is no ledger, or nothing to resume); closed again if refused."""
    s = strategy
    if s.ledger is None:
        return None, None
    ledger = LedgerStage(
        s.ledger,
        config=s.config_dict(),
        genesis_extra=(
            s.committee.genesis_fields(s.server_lr) if s.committee else None
        ),
        resume_with_changed_config=s.resume_with_changed_config,
    )
    try:
        resumed = ledger.start(model, momentum=s.server_momentum)
        if resumed is not None and s.committee is not None:
            s.committee.resume(ledger.ledger, s.server_lr)
            if repropose_pending(ledger.ledger, s.committee) is not None:
                resumed = ledger.start(model, momentum=s.server_momentum)
                s.committee.resume(ledger.ledger, s.server_lr)
        elif resumed is not None and "pov" in ledger.ledger.block(0).body:
            raise ValueError(
                f"ledger {ledger.ledger.path} is a PoV chain: resume it "
                "with its verifier committee (committee=...); blocks "
                "written without one would fail verify"
            )
    except BaseException:  # a refused resume must not leave it open
        ledger.close()
        raise
    return ledger, resumed


def carry_over(
    result: AsyncResult,
    ledger: LedgerStage,
    resumed: Resumed,
    policy: SchedulingPolicy,
) -> None:
    """Start ``result`` from the resumed model and count the chain's earlier
    updates in it (and in FedSA's history)."""
    result.arrays = to_arrayrecord(resumed.model)
    result.participation = dict(resumed.participation)
    result.weight_share = ledger_weight_share(ledger.ledger.blocks())
    if isinstance(policy, AdaptiveScheduling):  # FedSA counts on from the chain
        policy.history = NodeHistory(policy.history.smoothing)
        policy.history.count_earlier(resumed.participation)


# pylint: disable=too-many-arguments
def block_pipeline(
    strategy: FedBuff,
    *,
    clock: Clock,
    names: frozenset[str],
    ledger: LedgerStage | None,
    resumed: Resumed | None,
    claims: ClaimHistory,
    on_decision: Callable[[CommitteeDecision], None],
) -> Pipeline:
    """The run's pipeline; with a ledger, every block records the server
    state and the example-weighting ``claims`` (what a resume restores), and
    a resumed run restores them here."""
    s = strategy
    stages: list[BlockStage] = []
    if s.committee is not None:
        s.committee.parse_keys = (s.arrayrecord_key, s.weighted_by_key)
        stages.append(
            CommitteeStage(
                s.committee,
                clock=clock,
                server_lr=s.server_lr,
                ledger=ledger,
                on_decision=on_decision,
            )
        )
    if ledger is not None:
        stages.append(ledger)
        if s.anchor is not None:  # after the ledger: anchors what it wrote
            stages.append(AnchorStage(ledger.ledger, s.anchor))
    pipeline = Pipeline(
        stages,
        ServerStep(
            s.server_lr,
            s.server_momentum,
            names,
            s.state_rule,
            s.update_memory.start() if s.update_memory is not None else None,
        ),
    )
    if ledger is not None:
        ledger.record_state(pipeline.server_step, claims)
        if resumed is not None:
            resumed.restore(pipeline.server_step, claims)
    return pipeline
