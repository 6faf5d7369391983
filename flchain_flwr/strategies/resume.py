"""Resuming a run from a ledger's head: the checks first, then what it carries.

:class:`~.ledgerstage.LedgerStage` resumes from a ledger that holds blocks.
Before it does, the head's settings are compared with the run's
(:func:`check_config`: refused, or with ``resume_with_changed_config`` a
WARNING naming the settings that differ, :func:`config_changes`), and the
server state the head records is read back (:func:`recorded_server_state`:
the momentum's velocity and the example-weighting claim history). A
:class:`Resumed` holds what the run then continues with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import WARNING

from flwr.supercore import log

from ..arrays import NDArrays
from ..ledger import Block as LedgerBlock
from ..ledger import Ledger
from ..ledger.canonical import LATEST_FORMAT, encode
from ..ledger.included import IncludedDigests
from .claims import ClaimHistory
from .serverstep import ServerStep


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
    trainers: dict[int, str] = field(default_factory=dict)
    """The trainer key each node id's included updates are pinned to
    (:func:`~flchain_flwr.ledger.trainers.pin_included`)."""
    included: IncludedDigests = field(default_factory=IncludedDigests)
    """The signed updates the chain included (none may be included again)."""

    def restore(self, server_step: ServerStep, claims: ClaimHistory) -> None:
        """Put the recorded velocity and claim history back in place."""
        server_step.restore_velocity(self.velocity)
        for node_id, claim in self.claims:
            claims.observe(node_id, claim)


def check_config(
    ledger: Ledger,
    head: LedgerBlock,
    config: Mapping[str, object],
    config_digest: str,
    *,
    allow_changed: bool,
) -> bool:
    """Refuse (or, if allowed, warn about) a head written with other settings.

    Returns
    -------
    bool
        Whether the settings changed (and ``allow_changed`` let the run go
        on): the next block then records the new ones.

    Raises
    ------
    ValueError
        If they changed and ``allow_changed`` is off.
    """
    recorded = str(head.header["config_digest"])
    if recorded == config_digest:
        return False
    what = (
        f"ledger {ledger.path} was written with configuration {recorded} "
        f"and this strategy's is {config_digest}; "
        f"{config_changes(ledger.recorded_config(head), config)}"
    )
    if not allow_changed:
        raise ValueError(
            f"{what}. Resume with the ledger's settings, or pass "
            "resume_with_changed_config=True to continue with these."
        )
    log(WARNING, "Resuming with changed settings: %s", what)
    return True


def config_changes(old: Mapping[str, object] | None, new: Mapping[str, object]) -> str:
    """The settings that differ between ``old`` (those behind the ledger's
    digest; ``None`` if it does not record them) and ``new``, in words."""
    if old is None:
        return (
            "the ledger does not record the settings behind its digest "
            "(it was written before they were recorded), so the ones that "
            "differ cannot be named"
        )
    changes = [
        f"{key}: {_setting(old, key)} in the ledger, {_setting(new, key)} now"
        for key in sorted(set(old) | set(new))
        if _setting(old, key) != _setting(new, key)
    ]
    if not changes:
        return "every setting is the same, but the digests differ"
    return "settings that differ: " + "; ".join(changes)


def recorded_server_state(
    ledger: Ledger, head: LedgerBlock, model: NDArrays, momentum: float
) -> tuple[NDArrays | None, list[tuple[int, float]]]:
    """The velocity (with ``momentum``) and claim history ``head`` records."""
    state = ledger.server_state(head)
    if state is None:
        if head.height > 0:  # genesis: zero velocity, no claims, as recorded
            log(
                WARNING,
                "Ledger %s records no server state at block %d (it was "
                "written before that was recorded): server momentum restarts "
                "from zero and example weighting from an empty claim history",
                ledger.path,
                head.height,
            )
        return None, []
    velocity = state.velocity if momentum > 0.0 else None
    if velocity is not None and _shapes(velocity) != _shapes(model):
        raise ValueError(
            f"ledger {ledger.path} block {head.height} records a momentum "
            "velocity whose arrays differ from its model's"
        )
    return velocity, list(state.claims or [])


def _shapes(arrays: NDArrays) -> dict[str, tuple[int, ...]]:
    """Each array's shape, by name."""
    return {name: value.shape for name, value in arrays.items()}


def _setting(config: Mapping[str, object], key: str) -> str:
    """One setting as RFC 8785 JSON (``<unset>`` if absent), for comparing
    (1.0 and 1 alike: a format-2 ledger records the one as the other)."""
    if key not in config:
        return "<unset>"
    return encode(LATEST_FORMAT, config[key]).decode("utf-8")
