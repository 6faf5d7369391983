"""The block pipeline: what a triggered buffer flows through to become a version.

::

    buffered updates ──> filter stages ──> server step ──> commit stages
                         (PoV committee)    (pure maths)    (deposits, ledger)

Updates are parsed and validated when their reply is taken (:mod:`.updates`);
a triggered buffer becomes a :class:`Block`. Each :class:`BlockStage` may reject
updates in :meth:`~BlockStage.filter` and records the new version in
:meth:`~BlockStage.commit`. The strategy never asks whether a committee or a
ledger is there: they are stages, and without them the list is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import RecordDict

from ..arrays import NDArrays, apply_step
from ..ledger.blocks import BlockSigner
from ..ledger.canonical import sender_update_digest
from ..protocol import UPDATE_KIND_DELTA
from .state import DEFAULT_STATE_RULE, StateRule, aggregate_state
from .updates import ParsedUpdate, weighted_delta

if TYPE_CHECKING:
    from .memory import RememberedUpdates


@dataclass
class BufferedUpdate:
    """An accepted reply waiting in the buffer."""

    node_id: int
    trained_on: int
    staleness: int
    weight: float
    """Staleness weight ``s(staleness)``."""
    update: ParsedUpdate
    examples: float
    """Example count used in the step (the weighting policy's, not the claim)."""
    metrics: RecordDict
    """The reply's MetricRecords only, not a second copy of its arrays."""
    digest: str = ""
    state_base: NDArrays = field(default_factory=dict)
    """Non-trainable arrays of the version it was trained on."""
    content: RecordDict | None = None
    """The reply as received, kept only while a stage stores payloads."""
    base: NDArrays | None = None
    """A full-weights reply's base model, kept (a reference to the version
    store's copy) only while a stage needs payloads."""
    trust: float = 1.0
    """Its trust in ``[0, 1]``: multiplies its examples in the step (see
    :mod:`flchain_flwr.pov.trust`; 1 without trust weighting)."""
    clip: float = 1.0
    """Its norm clip in ``(0, 1]``: multiplies its delta in the step."""

    @property
    def step_examples(self) -> float:
        """The examples the step weighs it by: ``examples * trust``."""
        return self.examples * self.trust

    @property
    def step_weight(self) -> float:
        """The weight the step scales its delta by: ``weight * clip``."""
        return self.weight * self.clip

    @property
    def average_weight(self) -> float:
        """Its weight in the version's averages, the non-trainable state's and
        the train metrics': ``weight * examples * trust``, its share of the
        step before the norm clip (which scales its delta, not its say)."""
        return self.weight * self.step_examples


@dataclass(frozen=True)
class Rejection:
    """An update that was taken but not used, and why."""

    node_id: int
    trained_on: int
    reason: str
    digest: str
    votes: list[dict[str, Any]] = field(default_factory=list)


RejectFn = Callable[[Rejection], None]
OVERFLOW_REASON = "aggregate would overflow the model"
"""Why every update of a buffer whose aggregate is not finite was rejected."""


@dataclass
class Block:
    """A triggered buffer on its way to becoming global version ``version``."""

    version: int
    parent: NDArrays
    updates: list[BufferedUpdate]
    time: float
    step: NDArrays | None = None
    model: NDArrays | None = None
    votes: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] | None = None
    signer: BlockSigner | None = None
    remembered: list[BufferedUpdate] = field(default_factory=list)
    """Earlier updates an update memory stepped on beside these (:mod:`.memory`)."""

    @property
    def stepping(self) -> list[BufferedUpdate]:
        """Every update the step sums: the buffer's, then the remembered ones."""
        return [*self.updates, *self.remembered]

    def shares(self, server_lr: float) -> list[float]:
        """The fraction of each :attr:`stepping` update's delta that the step
        applies."""
        stepping = self.stepping
        total = sum(u.step_examples for u in stepping)
        scale = server_lr / total if total > 0 else 0.0
        return [scale * u.step_weight * u.step_examples for u in stepping]


class BlockStage:
    """One stage of the pipeline; every hook is optional."""

    needs_digest = False
    """Whether updates need a digest (votes and ledger entries name them)."""
    needs_payload = False
    """Whether updates keep their reply as received (a ledger stores it)."""

    def filter(self, block: Block, reject: RejectFn) -> None:
        """Remove updates from ``block.updates``, reporting each via ``reject``."""

    def commit(self, block: Block) -> None:
        """Record ``block`` once its new model is accepted."""

    def rejected(self, rejection: Rejection) -> None:
        """See every rejection, from any cause (the ledger records them)."""

    def close(self) -> None:
        """Release what the stage opened."""


@dataclass(frozen=True)
class StepResult:
    """What one server step made (see :func:`server_step`)."""

    step: NDArrays
    """The step applied: the aggregate, or with momentum the new velocity."""
    model: NDArrays
    velocity: NDArrays | None
    """The velocity after the step (``None`` without momentum)."""


# pylint: disable=too-many-arguments
def server_step(
    parent: NDArrays,
    updates: Sequence[BufferedUpdate],
    *,
    lr: float,
    momentum: float,
    velocity: NDArrays | None,
    state_names: frozenset[str] = frozenset(),
    state_rule: StateRule = DEFAULT_STATE_RULE,
    remembered: Sequence[BufferedUpdate] = (),
) -> StepResult | None:
    """FedBuff's server update, a pure function; ``None`` if not finite.

    ``step = sum_i w_i n_i delta_i / sum_i n_i`` (:func:`.weighted_delta`;
    ``n_i`` and ``w_i`` are each update's ``step_examples`` and
    ``step_weight``, its examples and weight unless trust weighting set them);
    with ``momentum > 0``, ``velocity = momentum * velocity + step`` (the step
    itself when ``velocity`` is ``None``) takes the step's place; then ``new =
    parent + lr * step`` (:func:`~flchain_flwr.arrays.apply_step`). Arrays in
    ``state_names`` then follow ``state_rule`` (:func:`.aggregate_state`).
    Reads each update's ``update.delta``, ``examples``, ``weight``, ``trust``,
    ``clip`` and ``state_base`` only. ``remembered`` updates (an update
    memory's, :mod:`.memory`) join the sums of the step, not the state.
    """
    stepping = [*updates, *remembered]
    step = weighted_delta(
        [u.update.delta for u in stepping],
        [u.step_examples for u in stepping],
        [u.step_weight for u in stepping],
    )
    if momentum > 0.0:
        if velocity is not None:
            step = {k: momentum * velocity[k] + step[k] for k in step}
        velocity = step
    else:
        velocity = None
    model = apply_step(parent, step, lr)
    state_weights = [u.average_weight for u in updates]
    if state_names and sum(state_weights) > 0:  # else: nothing reported
        model.update(
            aggregate_state(
                parent,
                state_names,
                [u.state_base for u in updates],
                [u.update.delta for u in updates],
                state_weights,
                state_rule,
            )
        )
    if not all(np.isfinite(v).all() for v in model.values() if v.dtype.kind == "f"):
        return None
    return StepResult(step, model, velocity)


class ServerStep:
    """FedBuff's server update (:func:`server_step`) and its momentum state.

    The velocity starts from zero (``None``): at the start of a run, after
    :meth:`restore_velocity` with ``None``, and after an aggregate that would
    overflow the model. ``velocity_from_zero`` says whether the last step did;
    a ledger records it with the velocity, so a resumed run continues it.
    """

    def __init__(
        self,
        lr: float,
        momentum: float,
        state_names: frozenset[str] = frozenset(),
        state_rule: StateRule = DEFAULT_STATE_RULE,
        memory: RememberedUpdates | None = None,
    ) -> None:
        self.lr = lr
        self.memory = memory
        self.momentum = momentum
        self.state_names = state_names
        self.state_rule = state_rule
        self.velocity: NDArrays | None = None
        """The momentum's velocity after the last step (``None``: zero)."""
        self.velocity_from_zero = False
        """Whether the last step's velocity started from zero."""

    def restore_velocity(self, velocity: NDArrays | None) -> None:
        """Continue from ``velocity`` (a resumed run's; ``None``: from zero)."""
        self.velocity = velocity

    def _step(self, block: Block) -> StepResult | None:
        return server_step(
            block.parent,
            block.updates,
            lr=self.lr,
            momentum=self.momentum,
            velocity=self.velocity,
            state_names=self.state_names,
            state_rule=self.state_rule,
            remembered=block.remembered,
        )

    def __call__(self, block: Block) -> bool:
        """Set ``block.step`` and ``block.model``; ``False`` if not finite."""
        if self.momentum > 0.0:
            self.velocity_from_zero = self.velocity is None
        if self.memory is not None:
            block.remembered = self.memory.others(block.updates, block.version)
        result = self._step(block)
        if result is None and block.remembered and self.memory is not None:
            # one runaway remembered update must not stop every later step
            self.memory.clear()
            block.remembered = []
            result = self._step(block)
        if result is None:
            self.velocity = None
            return False
        if self.memory is not None:
            self.memory.remember(block.updates, block.version)
        self.velocity = result.velocity
        block.step, block.model = result.step, result.model
        return True


class Pipeline:
    """Filter stages, the server step, commit stages, in that order."""

    def __init__(self, stages: Sequence[BlockStage], server_step: ServerStep):
        self.stages = list(stages)
        self.server_step = server_step
        self.needs_digest = any(s.needs_digest for s in self.stages)
        self.needs_payload = any(s.needs_payload for s in self.stages)

    def digest(self, node_id: int, content: RecordDict) -> str:
        """The update's digest, bound to its sender ("" when nobody needs it).

        Two nodes sending byte-identical replies make two distinct candidates;
        the same node replaying its reply makes a duplicate.
        """
        if not self.needs_digest:
            return ""
        return sender_update_digest(node_id, content)

    def payload(self, content: RecordDict) -> RecordDict | None:
        """The reply to keep with its update, as received (``None`` when no
        stage stores it); :func:`.parse_update` has bounded what it holds."""
        return content if self.needs_payload else None

    def base(self, kind: str, reference: NDArrays) -> NDArrays | None:
        """A full-weights reply's base to keep with it (``None`` for a delta,
        or when no stage stores payloads)."""
        return reference if self.needs_payload and kind != UPDATE_KIND_DELTA else None

    def reject(self, rejection: Rejection) -> None:
        """Tell every stage, and the update memory, about a rejection."""
        if self.server_step.memory is not None:
            self.server_step.memory.forget(rejection.node_id)
        for stage in self.stages:
            stage.rejected(rejection)

    def run(self, block: Block, reject: RejectFn) -> str | None:
        """Take ``block`` through every stage; return why it made no version."""
        for stage in self.stages:
            stage.filter(block, reject)
            if not block.updates:
                return "every candidate was rejected"
        if not self.server_step(block):
            for u in block.updates:
                reject(
                    Rejection(
                        u.node_id,
                        u.trained_on,
                        OVERFLOW_REASON,
                        u.digest,
                    )
                )
            return "the aggregate would overflow the model"
        for stage in self.stages:
            stage.commit(block)
        return None

    def close(self) -> None:
        """Close every stage."""
        for stage in self.stages:
            stage.close()
