"""What the replay modules share: what a replay reads and has learnt, the step
it calls, and how a block falls short.

:class:`ReplaySource` is what a replay reads besides the blocks (a ledger, or
what a remote committee member was sent), :class:`ReplayContext` what one
block's checks read of a replay under way, :data:`StepFn` the server step it
recomputes a block with. A block that does not replay to what it records
raises :class:`Failed`; one that lacks what a replay needs (payloads,
recorded settings, a blob) raises :class:`NotReplayable` (a missing blob is
:class:`MissingData`; a block whose payloads were checked but whose model a
wrapped strategy aggregated, :class:`ModelNotRecomputed`). :mod:`.replay`
turns them into its report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
from flwr.app import RecordDict

from ..arrays import NDArrays
from ..strategies.serverstep import StepResult
from .blocks import Block
from .serverstate import ServerState

StepFn = Callable[..., StepResult | None]
"""The signature of :func:`~flchain_flwr.strategies.serverstep.server_step`."""


class Failed(Exception):
    """The block does not replay to what it records."""


class NotReplayable(Exception):
    """The block lacks what a replay needs."""


class MissingData(NotReplayable):
    """A :class:`ReplaySource` does not hold a blob the replay needs."""


class ModelNotRecomputed(NotReplayable):
    """The block's payloads, their trainer signatures and its contributions
    were checked, but its model cannot be recomputed (another strategy's
    aggregation made it)."""


class _Blobs(Protocol):
    def load_model(self, digest: str) -> dict[str, np.ndarray]: ...

    def load_update(self, digest: str) -> tuple[int, RecordDict]: ...


class ReplaySource(Protocol):
    """What a replay reads besides the blocks: a :class:`~.chain.Ledger`, or
    what a remote committee member was sent
    (:mod:`flchain_flwr.pov.memberreplay`)."""

    @property
    def blobs(self) -> _Blobs:
        """Models and update payloads by SHA-256."""

    def server_state(self, block: Block) -> ServerState | None:
        """The server state ``block`` records."""


class ReplayContext(Protocol):
    """What a block's checks read of a replay under way (a
    :class:`~.replayer.Replayer`)."""

    @property
    def ledger(self) -> ReplaySource:
        """What the replay reads besides the blocks."""

    @property
    def versions(self) -> Mapping[int, str]:
        """Model hash of each global version."""

    def model(self, digest: str) -> NDArrays:
        """A stored model, decoded."""
