"""A triggered buffer on its way to a version: its updates and rejections.

An accepted reply waits in the buffer as a :class:`BufferedUpdate`; a triggered
buffer becomes a :class:`Block`, which the block pipeline (:mod:`.pipeline`)
takes through its stages and the server step (:mod:`.serverstep`). An update
taken but not used becomes a :class:`Rejection`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict

from ..arrays import NDArrays
from ..ledger.blocks import BlockSigner
from .updates import ParsedUpdate


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
    work: float = 1.0
    """The local work the server asked of it (1 when none was set; what
    work normalisation, :mod:`.nova`, divides by)."""
    trainer: str | None = None
    """The trainer key that signed its reply (hex; ``None``: unsigned, see
    :mod:`.trainercheck`)."""

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
    time: float | None = None
    """When it was made, in seconds since the run started (``None``: when
    it is recorded)."""


RejectFn = Callable[[Rejection], None]


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
    model_hash: str | None = None
    """The model's hash, when the ledger stage computed it (its blob's name)."""
    remembered: list[BufferedUpdate] = field(default_factory=list)
    """Earlier updates an update memory stepped on beside these (:mod:`.memory`)."""
    rejected: list[Rejection] = field(default_factory=list)
    """The rejections of the pipeline's current attempt at this block, held
    until it ends (a redo drops them, see :meth:`.Pipeline.run`); a committed
    block's ledger records them in it."""

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
