"""FedBuff's server step: the pure update and the momentum it carries.

:func:`server_step` turns a block's updates into a new model, a pure function;
:class:`ServerStep` is the pipeline's step (:mod:`.pipeline`): it keeps the
momentum's velocity and an update memory's remembered updates between blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..arrays import NDArrays, apply_step
from .block import Block, BufferedUpdate
from .state import DEFAULT_STATE_RULE, StateRule, aggregate_state
from .updates import weighted_delta

if TYPE_CHECKING:
    from .memory import RememberedUpdates

OVERFLOW_REASON = "aggregate would overflow the model"
"""Why every update of a buffer whose aggregate is not finite was rejected."""


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


@dataclass(frozen=True)
class StepState:
    """What a :class:`ServerStep` carries from one block to the next."""

    velocity: NDArrays | None
    velocity_from_zero: bool
    remembered: dict[int, tuple[int, BufferedUpdate]] | None


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

    def saved(self) -> StepState:
        """The state the next step starts from (see :meth:`restore`)."""
        remembered = None if self.memory is None else dict(self.memory.latest)
        return StepState(self.velocity, self.velocity_from_zero, remembered)

    def restore(self, state: StepState) -> None:
        """Undo the steps since ``state`` was :meth:`saved` (a step whose
        block was not written must not carry into the next)."""
        self.velocity = state.velocity
        self.velocity_from_zero = state.velocity_from_zero
        if self.memory is not None and state.remembered is not None:
            self.memory.latest = dict(state.remembered)

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
