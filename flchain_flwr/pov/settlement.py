"""Settling a block: the deposits its votes cause and the evidence it carries.

A PoV block's body names its committee and the deposit changes its votes
cause (:meth:`~flchain_flwr.ledger.PoVState.settlement`: a member whose signed
vote a quorum of signed opposite votes outvotes loses ``slash`` per such
vote), and settles the equivocation evidence reported since the last block
(the accused loses all its stake and leaves the pool for good). Nothing
changes until the block has its quorum of header signatures (the
:class:`~.headers.HeaderSigner` calls back): a block that is never signed
leaves the stakes and the evidence queue as they were.

These functions hold no state: the committee keeps its
:class:`~flchain_flwr.ledger.PoVState` and its queue of evidence and passes
them in (:meth:`~flchain_flwr.pov.Committee.seal`,
:meth:`~flchain_flwr.pov.Committee.report_equivocation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import WARNING
from typing import Any

from flwr.supercore import log

from ..ledger import PoVState
from ..ledger.evidence import EVIDENCE_FIELD
from ..ledger.quorum import VIEW_CHANGES_FIELD


# pylint: disable=too-many-arguments
def block_fields(
    state: PoVState,
    committee: list[str],
    votes: Sequence[dict[str, Any]],
    evidence: list[dict[str, Any]],
    view: int,
    view_changes: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A block's PoV body fields (its committee, the deposits for its votes
    and ``evidence``, and past view 0 the view with its certificates), and
    the deposits alone (to apply once the block is signed, see
    :func:`settle`)."""
    deposits = state.settlement(committee, votes, evidence)
    fields: dict[str, Any] = {"committee": list(committee), "deposits": deposits}
    if view:
        fields["view"] = view
        fields[VIEW_CHANGES_FIELD] = [dict(c) for c in view_changes]
    if evidence:
        fields[EVIDENCE_FIELD] = evidence
    return fields, deposits


def settle(
    state: PoVState,
    deposits: list[dict[str, Any]],
    evidence: list[dict[str, Any]],
    queued: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Apply a signed block's ``deposits`` to ``state`` (logging who leaves
    the pool); the ``queued`` evidence less the ``evidence`` it settles."""
    state.apply(deposits)
    for entry in deposits:
        if entry["removed"]:
            log(WARNING, "Verifier %s… leaves the pool", entry["verifier"][:12])
    return [r for r in queued if r not in evidence]


def checked_evidence(
    state: PoVState, queued: list[dict[str, Any]], record: dict[str, Any]
) -> dict[str, Any]:
    """A copy of ``record`` to queue after the ``queued`` evidence;
    ``ValueError`` if it is not valid evidence about its chain against a pool
    member that still has stake and is not accused already."""
    problem = state.evidence_problem(str(record.get("chain_id")), [*queued, record])
    if problem is not None:
        raise ValueError(problem)
    return dict(record)
