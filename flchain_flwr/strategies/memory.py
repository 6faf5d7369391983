"""Update memory: every version steps on each node's latest update (MIFA).

In FedBuff a 20x slower device reaches the model 20 times less often, and each
of its updates moves the model once. When data and device class go together,
the classes only slow devices hold are then pushed once in a long while and
forgotten in between. MIFA (Gu et al., "Fast Federated Learning in the
Presence of Arbitrary Device Unavailability", NeurIPS 2021) keeps each
device's latest update on the server and averages *all* of them at every
step, so a device's influence lasts until it sends a newer one: a node that
replies k times less often keeps its update in the step k times longer, and
every node weighs by its data, not by its speed.

:class:`UpdateMemory` does this inside FedBuff's step: the buffer's updates
replace their nodes' remembered ones, and the step is FedBuff's
``sum_i w_i n_i delta_i / sum_i n_i`` over the buffer *and* every other
remembered update, each with the staleness weight ``w_i`` it arrived with.
Keep FedBuff's ``1/sqrt(1+s)`` there: with ``staleness="constant"`` (MIFA's
plain average, whose analysis assumes a small, decaying learning rate) the
stragglers benchmark's model collapsed to one class (11 % accuracy, seed 0),
as every remembered multi-step update is applied again version after
version. An update is remembered for at most ``max_age`` versions after it
arrived, so a node that left stops steering the model. Non-trainable arrays
(``state_names``) follow the buffer's updates only. Memory: one delta per
remembered node (a model's size, in the delta's dtype, for the nodes of the
last ``max_age`` versions).

A node whose latest reply was rejected (malformed, NaN, too stale, ...) is
forgotten; a node that only failed or timed out is not (an unavailable device
is what the memory is for). A step that would not be finite with the
remembered updates clears the memory and is taken on the buffer's alone, so
one runaway update cannot stop the run. Like the other straggler policies it
acts in ``FedBuff.start``'s loop only, not in the synchronous path.

A ledger cannot replay it yet (a block's step would depend on updates of
earlier blocks), so FedBuff refuses it with a ledger or a PoV committee; and
with fairness weighting, which makes up for rare nodes a second time (the
stragglers benchmark's model collapsed with both, on every seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..configvalues import checked_integer
from ..numbertext import decimal_integer
from .adaptive import AdaptiveScheduling
from .bafl import AdaptiveLocalWork
from .block import BufferedUpdate
from .fedsa import FedSALearningRate


@dataclass(frozen=True)
class UpdateMemory:
    """The policy: remember each node's latest update for ``max_age`` versions
    (an int >= 1, not a bool, as ``"mifa:<max_age>"`` reads it)."""

    max_age: int = 100

    def __post_init__(self) -> None:
        checked_integer(self.max_age, "max_age", minimum=1)

    def start(self) -> RememberedUpdates:
        """An empty memory for one run."""
        return RememberedUpdates(self.max_age)

    @property
    def spec(self) -> str:
        """``"mifa:<max_age>"``."""
        return f"mifa:{self.max_age}"


class RememberedUpdates:
    """One run's memory: node id -> (version it arrived in, its update)."""

    def __init__(self, max_age: int) -> None:
        self.max_age = max_age
        self.latest: dict[int, tuple[int, BufferedUpdate]] = {}

    def others(
        self, fresh: Sequence[BufferedUpdate], version: int
    ) -> list[BufferedUpdate]:
        """The remembered updates that step beside ``fresh`` at ``version``: of
        the nodes not in ``fresh``, in node order, at most ``max_age`` old."""
        nodes = {u.node_id for u in fresh}
        return [
            update
            for node, (arrived, update) in sorted(self.latest.items())
            if node not in nodes and version - arrived <= self.max_age
        ]

    def forget(self, node_id: int) -> None:
        """``node_id``'s latest reply was rejected: its update steers no more."""
        self.latest.pop(node_id, None)

    def clear(self) -> None:
        """Forget every update (a step with them would not be finite)."""
        self.latest.clear()

    def remember(self, fresh: Sequence[BufferedUpdate], version: int) -> None:
        """``fresh`` made ``version``: each replaces its node's update (a node's
        last one in the buffer wins); updates past ``max_age`` are dropped."""
        for update in fresh:
            self.latest[update.node_id] = (version, update)
        for node in [
            n for n, (v, _) in self.latest.items() if version - v >= self.max_age
        ]:
            del self.latest[node]


def memory_conflict(
    update_memory: UpdateMemory | None, *, ledger: bool, committee: bool, fairness: bool
) -> str | None:
    """Why ``update_memory`` cannot run beside the others, or ``None``."""
    if update_memory is None:
        return None
    if fairness:
        return (
            "fairness and update_memory both make up for rare nodes: together "
            "they compensate them twice (the stragglers benchmark's model "
            "collapsed to 10-30 % accuracy on 3 of 3 seeds); choose one"
        )
    if ledger or committee:
        return (
            "update_memory cannot be replayed from a ledger yet: run it without "
            "ledger and committee"
        )
    return None


def memory_caution(
    update_memory: UpdateMemory | None, scheduling: object
) -> str | None:
    """A warning for ``update_memory`` beside FedSA's learning rates without
    BAFL's adaptive local work (from ``scheduling``). Not a refusal: measured
    at one setting, not understood well enough to forbid."""
    if update_memory is None or not isinstance(scheduling, AdaptiveScheduling):
        return None
    kinds = {type(adjuster) for adjuster in scheduling.adjusters}
    if FedSALearningRate not in kinds or AdaptiveLocalWork in kinds:
        return None
    return (
        "FedSA's learning rates and the update memory both make up for rare "
        "nodes: in the stragglers benchmark (100 nodes) the pair collapsed the "
        "model to one class on 3 of 3 seeds (9.7 % accuracy), and with K tuning "
        "beside them on seed 0; with BAFL's adaptive local work beside them it "
        "held on 3 of 3 seeds (69.7 %): add adaptive-work, check the model, or "
        "choose one"
    )


def update_memory(spec: str) -> UpdateMemory | None:
    """``""`` or ``"none"``: off; ``"mifa"`` or ``"mifa:<max_age>"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "mifa" and len(params) <= 1:
        try:
            return UpdateMemory(*(decimal_integer(p) for p in params))
        except ValueError as exc:
            raise ValueError(f"bad update memory {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown update memory {spec!r}; expected '', 'none', 'mifa' or "
        "'mifa:<max_age>'"
    )
